//! Handlers, one module per resource.

pub mod admin;
pub mod approvals;
pub mod files;
pub mod fleet;
pub mod runs;
pub mod stream;
pub mod system;
pub mod ui;

use crate::error::ApiError;

/// A page size: `default` when none was asked for, a 400 outside `1..=max`.
pub(crate) fn page_limit(asked: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match asked {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(format!(
            "limit must be between 1 and {max}"
        ))),
    }
}
