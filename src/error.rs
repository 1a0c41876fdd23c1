//! Every error of the library, classified once: the caller's fault (not found, a
//! conflict, invalid input naming its field) or ours (unavailable: retry; internal).
//! The API maps these kinds to HTTP statuses in one place (`api/src/error.rs`), the
//! CLI to exit codes in one place (`cli/src/exit.rs`).

use crate::advance::AdvanceError;
use crate::approval::ApprovalError;
use crate::budget::BudgetError;
use crate::cancel::CancelError;
use crate::config::ConfigError;
use crate::queue::QueueError;
use crate::retry::RetryError;
use crate::store::StoreError;
use crate::submit::SubmitError;
use crate::workflow::DefinitionError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// What was asked for does not exist (or is not the caller's to see).
    NotFound,
    /// It exists, but its state refuses the request.
    Conflict,
    /// The input is wrong; `field` names where, when known.
    Invalid { field: Option<String> },
    /// A dependency (the database) is unreachable: retry.
    Unavailable,
    /// A fault of ours.
    Internal,
}

impl ErrorKind {
    fn invalid(field: impl Into<String>) -> Self {
        Self::Invalid {
            field: Some(field.into()),
        }
    }
}

/// What kind of failure an error is.
pub trait Classify {
    fn kind(&self) -> ErrorKind;
}

impl Classify for sqlx::Error {
    fn kind(&self) -> ErrorKind {
        if crate::queue::is_transient_db(self) {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Internal
        }
    }
}

impl Classify for QueueError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict { .. } | Self::LeaseLost { .. } => ErrorKind::Conflict,
            Self::InvalidArgument(_) => ErrorKind::Invalid { field: None },
            Self::Db(e) => e.kind(),
        }
    }
}

impl Classify for crate::operator::OperatorError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NoSuchWorker(_) | Self::NoLiveWorker => ErrorKind::NotFound,
            Self::BadQueue => ErrorKind::invalid("queue"),
            Self::ReasonTooLong => ErrorKind::invalid("reason"),
            Self::Queue(e) => e.kind(),
            Self::Db(e) => e.kind(),
        }
    }
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Transition(_) | Self::Stale(_) => ErrorKind::Conflict,
            Self::Corrupt(_) => ErrorKind::Internal,
            Self::Db(e) => e.kind(),
        }
    }
}

impl Classify for AdvanceError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Queue(e) => e.kind(),
            Self::Store(e) => e.kind(),
            Self::Db(e) => e.kind(),
        }
    }
}

impl Classify for SubmitError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid { field, .. } => ErrorKind::invalid(field.clone()),
            Self::KeyReused { .. } => ErrorKind::Conflict,
            Self::Db(e) => e.kind(),
        }
    }
}

impl Classify for ApprovalError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict { .. } | Self::RunNotWaiting(_) | Self::Superseded { .. } => {
                ErrorKind::Conflict
            }
            Self::Invalid(_) => ErrorKind::invalid("comment"),
            Self::EscalatedTo(_) => ErrorKind::Conflict,
            Self::Queue(e) => e.kind(),
            Self::Store(e) => e.kind(),
            Self::Db(e) => e.kind(),
        }
    }
}

impl Classify for CancelError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Advance(e) => e.kind(),
            Self::Db(e) => e.kind(),
        }
    }
}

impl Classify for RetryError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::NotFailed { .. } | Self::NothingToRetry(_) => ErrorKind::Conflict,
            Self::Queue(e) => e.kind(),
            Self::Store(e) => e.kind(),
            Self::Db(e) => e.kind(),
        }
    }
}

impl Classify for BudgetError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Ended { .. } | Self::NotParked { .. } => ErrorKind::Conflict,
            Self::Invalid { field, .. } => ErrorKind::Invalid {
                field: Some((*field).to_owned()),
            },
            Self::Queue(e) => e.kind(),
            Self::Store(e) => e.kind(),
            Self::Db(e) => e.kind(),
        }
    }
}

impl Classify for DefinitionError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid { field, .. } => ErrorKind::invalid(field.clone()),
            Self::Parse { .. } | Self::Read { .. } => ErrorKind::Invalid { field: None },
        }
    }
}

impl Classify for ConfigError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid { field, .. } => ErrorKind::invalid(field.clone()),
            Self::Load(_) => ErrorKind::Invalid { field: None },
        }
    }
}
