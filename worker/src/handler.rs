//! What a job handler sees and returns.

use phasefleet::WorkerId;
use phasefleet::queue::{ClaimedJob, Completed, QueueError};
use sqlx::PgPool;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything a handler needs for one delivery.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub job: ClaimedJob,
    pub pool: PgPool,
    pub worker_id: WorkerId,
    /// Fires when the handler must stop: the job was cancelled, its lease was lost, or
    /// the worker is shutting down past its grace period. Whatever the handler returns
    /// after this fires, the runtime records the right outcome.
    pub cancel: CancellationToken,
    pub(crate) completer: crate::completer::Completer,
    /// Whether the handler may go on with more work of the same job after this piece.
    pub may_go_on: MayGoOn,
}

/// Whether a handler may go on with more work under the same job (a phase job going on
/// with the next attempt of its run): not while the worker drains or shuts down.
#[derive(Debug, Clone, Default)]
pub struct MayGoOn {
    pub(crate) draining: Arc<AtomicBool>,
    pub(crate) stopping: CancellationToken,
}

impl MayGoOn {
    /// True while the worker neither drains nor shuts down.
    #[must_use]
    pub fn now(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && !self.stopping.is_cancelled()
    }
}

impl JobContext {
    /// Complete the job inside the caller's transaction (fenced by the lease).
    ///
    /// # Errors
    /// [`QueueError::LeaseLost`] when another worker owns the job now.
    pub async fn complete(&self, conn: &mut sqlx::PgConnection) -> Result<Completed, QueueError> {
        phasefleet::queue::complete(conn, &self.job.lease()).await
    }

    /// Complete the job in the worker's next completion batch: many jobs in one
    /// statement, each fenced by its own lease. For handlers whose effects do not live
    /// in this database (or are idempotent): the completion commits shortly after the
    /// effects, not with them, so a crash in between runs the job again. Do not await
    /// it while holding a connection or a transaction that locked the job's row: the
    /// batch would wait on it. Not cancel-safe: once queued, the completion is written
    /// even if this future is dropped.
    ///
    /// # Errors
    /// [`QueueError::LeaseLost`] when another worker owns the job now; database errors
    /// when neither the batch nor a direct completion could be written.
    pub async fn complete_batched(&self) -> Result<Completed, QueueError> {
        self.completer.complete(self.job.lease()).await
    }
}

/// Why a delivery did not complete.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Try again later (after `after`, or the queue's backoff).
    #[error("{message}")]
    Retry {
        message: String,
        after: Option<Duration>,
    },
    /// Do not try again: dead-letter the job.
    #[error("{0}")]
    Permanent(String),
    /// The handler stopped because `cancel` fired.
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl JobError {
    #[must_use]
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry {
            message: message.into(),
            after: None,
        }
    }
}

/// Runs one kind (or several kinds) of job. The handler completes the job itself with
/// [`JobContext::complete`] in the transaction that applies its effects (or, when it
/// has none there, with [`JobContext::complete_batched`]), and returns the proof.
pub trait JobHandler: Send + Sync + 'static {
    fn handle(&self, ctx: JobContext) -> impl Future<Output = Result<Completed, JobError>> + Send;

    /// What this handler can do beyond any job (e.g. `provider:NAME` for each model
    /// provider whose key it holds): the worker advertises these and claims the jobs
    /// that require one of them.
    fn capabilities(&self) -> Vec<String> {
        Vec::new()
    }

    /// Periodic housekeeping, run by every worker every few seconds (e.g. failing runs
    /// whose job was dead-lettered). Must be idempotent and safe to run concurrently.
    fn maintain(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
