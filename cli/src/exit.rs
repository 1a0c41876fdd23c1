//! Exit codes, mapped in one place from the library's error kinds: 0 ok, 1 failure,
//! 2 usage or invalid input (also clap's own), 3 not found, 4 conflict.

use phasefleet::error::{Classify, ErrorKind};

pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const NOT_FOUND: u8 = 3;
pub const CONFLICT: u8 = 4;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub error: anyhow::Error,
}

fn code_for(kind: &ErrorKind) -> u8 {
    match kind {
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::Conflict => CONFLICT,
        ErrorKind::Invalid { .. } => USAGE,
        ErrorKind::Unavailable | ErrorKind::Internal => FAILURE,
    }
}

/// The kind of a library error inside `e`, if it is one.
fn kind_of(e: &anyhow::Error) -> Option<ErrorKind> {
    use phasefleet::{
        approval, budget, cancel, config, operator, queue, retry, store, submit, workflow,
    };
    macro_rules! try_kind {
        ($($t:ty),*) => {
            $(if let Some(x) = e.downcast_ref::<$t>() { return Some(x.kind()); })*
        };
    }
    try_kind!(
        queue::QueueError,
        operator::OperatorError,
        store::StoreError,
        submit::SubmitError,
        approval::ApprovalError,
        cancel::CancelError,
        retry::RetryError,
        budget::BudgetError,
        config::ConfigError,
        workflow::DefinitionError
    );
    None
}

impl<E: Into<anyhow::Error>> From<E> for CliError {
    fn from(e: E) -> Self {
        let error: anyhow::Error = e.into();
        let code = kind_of(&error).map_or(FAILURE, |k| code_for(&k));
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
