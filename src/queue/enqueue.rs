//! Putting jobs on the queue, inside the caller's transaction.

use super::{DEFAULT_QUEUE, QueueError};
use crate::ids::{JobId, RunId};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// A job to enqueue. Build with [`NewJob::new`] and the `with_*` methods.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// Higher runs first.
    pub priority: i16,
    /// Not before this time (scheduled jobs). `None` means now.
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: i32,
    /// Idempotent enqueue: a second job with the same key is not created; the first
    /// one's id is returned instead. Keys stay taken until the job is pruned.
    pub unique_key: Option<String>,
    pub run_id: Option<RunId>,
    /// A capability the claiming worker must have (`None`: any worker).
    pub requires: Option<String>,
}

impl NewJob {
    #[must_use]
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            queue: DEFAULT_QUEUE.to_owned(),
            kind: kind.into(),
            payload,
            priority: 0,
            run_at: None,
            max_attempts: 5,
            unique_key: None,
            run_id: None,
            requires: None,
        }
    }
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }
    #[must_use]
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }
    #[must_use]
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }
    #[must_use]
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n;
        self
    }
    /// A key no other job in the table may hold: enqueueing it again while the first
    /// job waits, runs, is dead or cancelled returns that job. A completed job has left
    /// the table and freed its key; callers that must never repeat work check their own
    /// state first (a phase attempt checks its run's phases under the run's lock).
    #[must_use]
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
    /// Only a worker with this capability may claim the job.
    #[must_use]
    pub fn requires(mut self, capability: Option<String>) -> Self {
        self.requires = capability;
        self
    }
    #[must_use]
    pub fn run_id(mut self, run: RunId) -> Self {
        self.run_id = Some(run);
        self
    }

    fn check(&self) -> Result<(), QueueError> {
        if self.queue.is_empty() || self.queue == "*" {
            return Err(QueueError::InvalidArgument(format!(
                "queue name {:?} is reserved or empty",
                self.queue
            )));
        }
        if self.kind.is_empty() {
            return Err(QueueError::InvalidArgument("job kind is empty".into()));
        }
        if self.max_attempts < 1 {
            return Err(QueueError::InvalidArgument(format!(
                "max_attempts must be at least 1, got {}",
                self.max_attempts
            )));
        }
        Ok(())
    }
}

/// What [`enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Created(JobId),
    /// A job with the same unique key is in the table; nothing was inserted.
    Existing(JobId),
}

impl Enqueued {
    #[must_use]
    pub fn id(self) -> JobId {
        match self {
            Self::Created(id) | Self::Existing(id) => id,
        }
    }
}

/// Enqueue a job on `conn`. Pass a transaction to make the enqueue atomic with the
/// caller's own writes: a rollback leaves no job and wakes no worker.
///
/// # Errors
/// [`QueueError::InvalidArgument`] for an empty kind or queue, or `max_attempts < 1`;
/// [`QueueError::Db`] otherwise.
pub async fn enqueue(conn: &mut PgConnection, job: &NewJob) -> Result<Enqueued, QueueError> {
    job.check()?;
    // A conflicting job that completes (and leaves the table) between the insert and
    // the lookup frees its key: the next insert then takes it.
    for _ in 0..3 {
        if let Some(id) = insert(conn, job).await? {
            return Ok(Enqueued::Created(id));
        }
        let existing: Option<(JobId,)> =
            sqlx::query_as("SELECT id FROM jobs WHERE unique_key = $1")
                .bind(&job.unique_key)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some((id,)) = existing {
            return Ok(Enqueued::Existing(id));
        }
    }
    Err(QueueError::InvalidArgument(format!(
        "unique key {:?} kept changing hands during the enqueue",
        job.unique_key
    )))
}

/// Insert the job unless its unique key is taken; its id when inserted.
async fn insert(conn: &mut PgConnection, job: &NewJob) -> Result<Option<JobId>, QueueError> {
    let inserted: Option<(JobId,)> = sqlx::query_as(
        "INSERT INTO jobs (queue, kind, payload, priority, run_at, max_attempts, unique_key, run_id, requires)
         VALUES ($1, $2, $3, $4, COALESCE($5, now()), $6, $7, $8, $9)
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
         RETURNING id",
    )
    .bind(&job.queue)
    .bind(&job.kind)
    .bind(&job.payload)
    .bind(job.priority)
    .bind(job.run_at)
    .bind(job.max_attempts)
    .bind(&job.unique_key)
    .bind(job.run_id)
    .bind(&job.requires)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(inserted.map(|(id,)| id))
}
