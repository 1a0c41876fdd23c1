//! Exit codes: 0 ok, 1 failure, 2 usage error (clap's own), 3 not found, 4 conflict.

use phasefleet::queue::QueueError;

pub const FAILURE: u8 = 1;
pub const NOT_FOUND: u8 = 3;
pub const CONFLICT: u8 = 4;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for CliError {
    fn from(e: E) -> Self {
        let error: anyhow::Error = e.into();
        let code = match error.downcast_ref::<QueueError>() {
            Some(QueueError::NotFound(_)) => NOT_FOUND,
            Some(QueueError::Conflict { .. }) => CONFLICT,
            Some(QueueError::InvalidArgument(_)) => 2,
            _ => FAILURE,
        };
        Self { code, error }
    }
}

impl CliError {
    pub fn new(code: u8, msg: impl Into<String>) -> Self {
        Self {
            code,
            error: anyhow::anyhow!(msg.into()),
        }
    }
}
