//! Personas: which model plays a role, through which provider, with which prompt. A
//! persona names an operator-configured provider (`[providers.NAME]` in the
//! configuration) and a model; it can never carry a URL or the name of a variable.

use super::{Definition, Problem, at_most, problem};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Built-in offline backend that writes a schema-valid artifact. For demos and tests.
    Synthetic,
    /// An OpenAI-compatible Chat Completions provider (OpenRouter, OpenAI, Ollama,
    /// vLLM, llama.cpp) that the operator configured; the persona names it in `provider`.
    Openai,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub name: String,
    #[schema(max_length = 64)]
    pub version: String,
    pub backend: Backend,
    #[schema(max_length = 200, pattern = r"\S")]
    pub model: String,
    #[schema(max_length = 65536)]
    pub system_prompt: String,
    /// The operator-configured provider that serves `model` (backend `openai` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub provider: Option<String>,
    /// Refused: providers are operator configuration. Kept so the error names the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub base_url: Option<serde_json::Value>,
    /// Refused, like `base_url`: the key's variable is the provider's, in the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub api_key_env: Option<serde_json::Value>,
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_tokens: Option<u32>,
    /// Bound on model turns per attempt.
    #[serde(default = "default_max_turns")]
    #[schema(minimum = 1, maximum = 200)]
    pub max_turns: u32,
    /// Temperature for repair attempts (attempt 2 and later), to vary a model that
    /// repeats its mistake; default: `temperature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub repair_temperature: Option<f64>,
    /// Sampling seed sent to the provider; attempt N sends `seed + N - 1`, so a repair
    /// samples differently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// How the model hands the artifact back: `tool` (a `submit_artifact` tool whose
    /// parameters are the schema; `write_file` works too) or `response_format` (the
    /// reply itself, constrained with `response_format: json_schema`, for providers
    /// that support it).
    #[serde(default, skip_serializing_if = "ArtifactVia::is_default")]
    pub artifact_via: ArtifactVia,
}

/// How the model hands back the artifact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactVia {
    #[default]
    Tool,
    ResponseFormat,
}

impl ArtifactVia {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_max_turns() -> u32 {
    20
}

impl Definition for Persona {
    fn problems(&self) -> Result<(), Problem> {
        self.refused_fields()?;
        self.check_texts()?;
        self.check_provider()?;
        self.check_sampling()
    }
}

impl Persona {
    /// `base_url` and `api_key_env` are the operator's, never a persona's.
    fn refused_fields(&self) -> Result<(), Problem> {
        for (field, present) in [
            ("base_url", self.base_url.is_some()),
            ("api_key_env", self.api_key_env.is_some()),
        ] {
            if present {
                return Err(problem(
                    field,
                    format!(
                        "a persona cannot carry `{field}`: providers are operator configuration; name one with `provider`"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_texts(&self) -> Result<(), Problem> {
        for (field, text, max) in [
            ("name", &self.name, 64),
            ("version", &self.version, 64),
            ("model", &self.model, 200),
            ("system_prompt", &self.system_prompt, 64 * 1024),
        ] {
            at_most(field, text, max)?;
        }
        if self.model.trim().is_empty() {
            return Err(problem("model", "must not be empty"));
        }
        if !crate::config::is_name(&self.name) {
            return Err(problem(
                "name",
                "persona names use letters, digits, '_', '-', '.'",
            ));
        }
        Ok(())
    }

    fn check_provider(&self) -> Result<(), Problem> {
        match (self.backend, &self.provider) {
            (Backend::Openai, None) => Err(problem(
                "provider",
                "backend openai needs the name of an operator-configured provider",
            )),
            (Backend::Synthetic, Some(_)) => Err(problem(
                "provider",
                "the synthetic backend uses no provider",
            )),
            (_, Some(p)) if !crate::config::is_name(p) => Err(problem(
                "provider",
                "provider names use letters, digits, '_', '-', '.'",
            )),
            _ => Ok(()),
        }
    }

    fn check_sampling(&self) -> Result<(), Problem> {
        for (field, value) in [
            ("temperature", self.temperature),
            ("repair_temperature", self.repair_temperature),
        ] {
            if let Some(t) = value.filter(|t| !(0.0..=2.0).contains(t)) {
                return Err(problem(field, format!("must be within 0..=2, got {t}")));
            }
        }
        if let Some(p) = self.top_p.filter(|p| !(0.0..=1.0).contains(p)) {
            return Err(problem("top_p", format!("must be within 0..=1, got {p}")));
        }
        if !(1..=200).contains(&self.max_turns) {
            return Err(problem(
                "max_turns",
                format!("must be 1..=200, got {}", self.max_turns),
            ));
        }
        if self
            .max_tokens
            .is_some_and(|t| !(1..=1_000_000).contains(&t))
        {
            return Err(problem("max_tokens", "must be 1..=1000000"));
        }
        Ok(())
    }
}
