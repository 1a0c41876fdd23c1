//! Ending a delivery: complete, retry, dead-letter or hand back. Every function here is
//! fenced by the lease token and takes the caller's connection or transaction.

use super::{Backoff, Lease, QueueError};
use crate::ids::JobId;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::time::Duration;

/// Proof that a job was completed under its lease. Only [`complete`] and
/// [`CompletedMany::proof`] make one, so a handler that returns `Completed` has provably
/// committed (or will commit, with its transaction) the job's completion.
#[derive(Debug)]
#[must_use]
pub struct Completed {
    _proof: (),
}

fn lost(lease: &Lease) -> QueueError {
    QueueError::LeaseLost {
        job_id: lease.job_id,
        token: lease.token,
    }
}

/// Complete the job, if `lease` still holds it: the row leaves `jobs` (a completed job
/// keeps no row there; its effects are its record). Run it in the same transaction as
/// the job's effects: if the lease was lost, the error makes the caller roll back.
///
/// # Errors
/// [`QueueError::LeaseLost`] when the lease is stale; [`QueueError::Db`] otherwise.
pub async fn complete(conn: &mut PgConnection, lease: &Lease) -> Result<Completed, QueueError> {
    let done =
        sqlx::query("DELETE FROM jobs WHERE id = $1 AND lease_token = $2 AND state = 'running'")
            .bind(lease.job_id)
            .bind(lease.token)
            .execute(&mut *conn)
            .await?;
    if done.rows_affected() == 1 {
        Ok(Completed { _proof: () })
    } else {
        Err(lost(lease))
    }
}

/// Hand a running job over to the next piece of work of the same run, if `lease` still
/// holds it and its queue is not paused: the row takes `next`'s payload, unique key and
/// requirement, its delivery count starts again at 1, and the worker that holds the
/// lease goes on with it (no row inserted, claimed or deleted). Run it in the
/// transaction that makes `next` due. `false`: nothing changed (the lease is lost, the
/// queue paused, or someone asked to cancel this job: that was meant for the work it
/// carries now); enqueue `next` and complete the job instead, which tells them apart.
///
/// # Errors
/// [`QueueError::Db`].
pub async fn hand_over(
    conn: &mut PgConnection,
    lease: &Lease,
    next: &super::NewJob,
) -> Result<bool, QueueError> {
    let done = sqlx::query(
        "UPDATE jobs SET payload = $3, unique_key = $4, requires = $5, attempts = 1,
                         rescues = 0, last_error = NULL
          WHERE id = $1 AND lease_token = $2 AND state = 'running' AND kind = $6
            AND NOT cancel_requested
            AND NOT EXISTS (SELECT 1 FROM queue_pauses p WHERE p.queue IN (jobs.queue, '*'))",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .bind(&next.payload)
    .bind(&next.unique_key)
    .bind(&next.requires)
    .bind(&next.kind)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The jobs a [`complete_many`] statement completed: those whose leases still held.
#[derive(Debug, Default)]
#[must_use]
pub struct CompletedMany {
    /// The leases (job and token) the statement completed.
    held: std::collections::HashSet<(JobId, i64)>,
}

impl CompletedMany {
    /// The proof for one job of the batch, or `LeaseLost` when its lease was stale
    /// and the statement left it alone.
    ///
    /// # Errors
    /// [`QueueError::LeaseLost`] when the job was not completed by the batch.
    pub fn proof(&self, lease: &Lease) -> Result<Completed, QueueError> {
        if self.held.contains(&(lease.job_id, lease.token)) {
            Ok(Completed { _proof: () })
        } else {
            Err(lost(lease))
        }
    }

    /// How many jobs the batch completed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when no lease of the batch still held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// Complete many jobs in one statement (their rows leave `jobs`, as in [`complete`]);
/// each lease is fenced on its own, so jobs whose leases were lost are left alone (and
/// [`CompletedMany::proof`] says so).
///
/// # Errors
/// [`QueueError::Db`] on database failure.
pub async fn complete_many(
    conn: &mut PgConnection,
    leases: &[Lease],
) -> Result<CompletedMany, QueueError> {
    let (ids, keys) = super::lease_keys(leases);
    let done: Vec<(JobId, i64)> = sqlx::query_as(concat!(
        "DELETE FROM jobs j WHERE ",
        super::held_leases!(),
        " RETURNING j.id, j.lease_token",
    ))
    .bind(&ids)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    Ok(CompletedMany {
        held: done.into_iter().collect(),
    })
}

/// What [`retry`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Ready again at this time.
    Scheduled(DateTime<Utc>),
    /// No attempts left: dead-lettered.
    Dead,
}

/// Give the job back for another delivery after a backoff (or `after`, e.g. a
/// Retry-After the handler learned), or dead-letter it when its attempts are spent.
///
/// # Errors
/// [`QueueError::LeaseLost`] when the lease is stale; [`QueueError::Db`] otherwise.
pub async fn retry(
    conn: &mut PgConnection,
    lease: &Lease,
    error: &str,
    backoff: &Backoff,
    after: Option<Duration>,
) -> Result<RetryOutcome, QueueError> {
    let row: Option<(i32, i32)> = sqlx::query_as(
        "SELECT attempts, max_attempts FROM jobs
          WHERE id = $1 AND lease_token = $2 AND state = 'running' FOR UPDATE",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((attempts, max_attempts)) = row else {
        return Err(lost(lease));
    };
    if attempts >= max_attempts {
        fail(conn, lease, error).await?;
        return Ok(RetryOutcome::Dead);
    }
    let delay = after.unwrap_or_else(|| backoff.delay(attempts));
    let ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let (run_at,): (DateTime<Utc>,) = sqlx::query_as(
        "UPDATE jobs SET state = 'ready', run_at = now() + make_interval(secs => $3::float8 / 1000),
                last_error = $4, lease_owner = NULL, lease_expires_at = NULL
          WHERE id = $1 AND lease_token = $2
         RETURNING run_at",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .bind(ms)
    .bind(error)
    .fetch_one(&mut *conn)
    .await?;
    Ok(RetryOutcome::Scheduled(run_at))
}

/// Dead-letter the job now (a permanent failure), whatever attempts remain.
///
/// # Errors
/// [`QueueError::LeaseLost`] when the lease is stale; [`QueueError::Db`] otherwise.
pub async fn fail(conn: &mut PgConnection, lease: &Lease, error: &str) -> Result<(), QueueError> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'dead', finished_at = now(), last_error = $3,
                lease_owner = NULL, lease_expires_at = NULL
          WHERE id = $1 AND lease_token = $2 AND state = 'running'",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .bind(error)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(lost(lease))
    }
}

/// Return an unfinished job on shutdown without spending an attempt: the delivery is
/// uncounted and the job is ready at once for another worker.
///
/// # Errors
/// [`QueueError::LeaseLost`] when the lease is stale; [`QueueError::Db`] otherwise.
pub async fn hand_back(conn: &mut PgConnection, lease: &Lease) -> Result<(), QueueError> {
    let done = sqlx::query(
        "UPDATE jobs SET state = CASE WHEN cancel_requested THEN 'cancelled'::job_state ELSE 'ready'::job_state END,
                finished_at = CASE WHEN cancel_requested THEN now() END,
                attempts = GREATEST(attempts - 1, 0), run_at = now(),
                lease_owner = NULL, lease_expires_at = NULL
          WHERE id = $1 AND lease_token = $2 AND state = 'running'",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(lost(lease))
    }
}
