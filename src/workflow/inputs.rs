//! What a run is given: its inputs and its budget.

use serde::{Deserialize, Serialize};

/// The run's inputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunInputs {
    /// Requirements, as markdown.
    #[serde(default)]
    pub requirements: String,
    #[serde(default = "empty_object")]
    pub objective: serde_json::Value,
    #[serde(default = "empty_object")]
    pub extra: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// A run's spending limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[schema(exclusive_minimum = 0.0)]
    pub usd: Option<f64>,
    #[schema(minimum = 1)]
    pub tokens: Option<i64>,
}
