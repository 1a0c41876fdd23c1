//! The job queue: one PostgreSQL row per job, claimed with `FOR UPDATE SKIP LOCKED`.
//!
//! Invariants this module keeps (see docs/adr/0001-own-queue-on-sqlx.md):
//! - a job in state `running` has exactly one lease (owner, expiry, fencing token);
//! - every claim raises the fencing token, and every state change a worker makes after
//!   a claim (`complete`, `retry`, `hand_back`, …) presents that token, so a worker
//!   whose lease was rescued (a "zombie") can change nothing. The token is the claim's
//!   time in microseconds (or one more than the last, if larger): a claim lost in a
//!   database failover is not handed out again with the same token;
//! - completion and enqueue take a `&mut PgConnection`, so callers make them part of
//!   their own transaction: a job's effects and its completion commit together.

/// The condition of a statement fenced by many leases at once (on `jobs j`): the rows
/// are found by primary key (`$1`, job ids) and each must still hold its lease (`$2`,
/// `id:token` keys from [`lease_keys`]). Comparing keys keeps the plan linear in the
/// batch: joining an `unnest` of the leases was planned as a nested loop over every
/// running job, about 90 µs per completed job at 500 per batch.
macro_rules! held_leases {
    () => {
        "j.id = ANY($1::bigint[]) AND j.state = 'running'
            AND j.id::text || ':' || j.lease_token::text = ANY($2::text[])"
    };
}
use held_leases;

/// The ready, running and dead jobs as `(queue, state)` rows, each state read through
/// its own partial index (claim, lease, dead): depth by state without a `(queue, state)`
/// index that every claim would have to write (docs/adr/0012). For `admin stats` and
/// the fleet gauges.
macro_rules! unfinished_jobs {
    () => {
        "SELECT queue, state FROM jobs WHERE state = 'ready'
         UNION ALL SELECT queue, state FROM jobs WHERE state = 'running'
         UNION ALL SELECT queue, state FROM jobs WHERE state = 'dead'"
    };
}
pub(crate) use unfinished_jobs;

mod backoff;
mod claim;
mod control;
mod enqueue;
mod finish;
pub mod notify;
pub mod workers;

pub use backoff::Backoff;
pub use claim::{HeartbeatReport, Rescued, claim, claim_capable, heartbeat, rescue_expired};
pub use control::{
    CancelOutcome, JobRow, QueueStats, QueueSummary, StateCount, ThroughputPoint, cancel,
    cancel_run_jobs, get, is_paused, list, pause, prune, queue_summaries, requeue, requeue_dead,
    resume, stats, throughput_by_minute,
};
pub use enqueue::{Enqueued, NewJob, enqueue};
pub use finish::{
    Completed, CompletedMany, RetryOutcome, complete, complete_many, fail, hand_back, hand_over,
    retry,
};

use crate::ids::{JobId, RunId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "job_state", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for `run_at` and a free worker.
    Ready,
    /// Claimed under a live lease.
    Running,
    /// Not stored by this release: a completed job leaves the table as it completes.
    /// Rows an earlier release completed keep it until `prune` removes them.
    Completed,
    /// Dead-lettered: out of attempts or failed permanently. `requeue` revives it.
    Dead,
    Cancelled,
}

impl JobState {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    #[must_use]
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Dead | Self::Cancelled)
    }
}

impl std::str::FromStr for JobState {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ready" => Self::Ready,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "dead" => Self::Dead,
            "cancelled" => Self::Cancelled,
            other => {
                return Err(QueueError::InvalidArgument(format!(
                    "unknown job state {other:?}: expected ready, running, completed, dead or cancelled"
                )));
            }
        })
    }
}

/// Proof of a claim: the job and the fencing token the claim received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub job_id: JobId,
    pub token: i64,
}

/// A job handed to a worker by [`claim`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// Deliveries so far, including this one (1 on the first claim).
    pub attempts: i32,
    pub max_attempts: i32,
    pub rescues: i32,
    pub run_id: Option<RunId>,
    pub lease_token: i64,
    pub created_at: DateTime<Utc>,
    pub run_at: DateTime<Utc>,
}

impl ClaimedJob {
    #[must_use]
    pub fn lease(&self) -> Lease {
        Lease {
            job_id: self.id,
            token: self.lease_token,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The job is no longer held under this lease: it was rescued, finished or
    /// cancelled by someone else. The caller must not apply its effects.
    #[error(
        "lease lost on job {job_id} (token {token}): the job was rescued, finished or cancelled elsewhere"
    )]
    LeaseLost { job_id: JobId, token: i64 },
    /// No such job: never enqueued, pruned, or completed (a completed job leaves the
    /// table in the statement that completes it).
    #[error("job {0} not found (completed jobs are not kept: see their run's events)")]
    NotFound(JobId),
    #[error("job {job_id} is {state}: {what}")]
    Conflict {
        job_id: JobId,
        state: &'static str,
        what: &'static str,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl QueueError {
    /// True for errors a retry may cure (connection loss, server restart).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Db(e) if is_transient_db(e))
    }
}

/// Connection-level failures, as opposed to constraint violations or bad SQL.
#[must_use]
pub fn is_transient_db(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now,
            // 08xxx connection exceptions, 40001 serialization, 40P01 deadlock
            c.starts_with("08") || c.starts_with("57P") || c == "40001" || c == "40P01"
        }),
        _ => false,
    }
}

/// The arguments `$1` and `$2` of [`held_leases`].
fn lease_keys(leases: &[Lease]) -> (Vec<i64>, Vec<String>) {
    leases
        .iter()
        .map(|l| (l.job_id.0, format!("{}:{}", l.job_id.0, l.token)))
        .unzip()
}

/// The default queue name.
pub const DEFAULT_QUEUE: &str = "default";
