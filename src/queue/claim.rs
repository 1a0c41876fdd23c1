//! Claiming jobs, keeping leases alive, and rescuing the leases of lost workers.

use super::{ClaimedJob, Lease, QueueError};
use crate::ids::{JobId, WorkerId};
use sqlx::PgConnection;
use std::time::Duration;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Claim up to `limit` ready jobs from `queue` for `worker`, each under a lease of
/// `lease` length. Paused queues (or a fleet-wide pause, queue `*`) yield nothing;
/// jobs that require a capability are left to workers that have it
/// ([`claim_capable`]).
///
/// # Errors
/// [`QueueError::Db`] on database failure; nothing is claimed then.
pub async fn claim(
    conn: &mut PgConnection,
    worker: WorkerId,
    queue: &str,
    limit: i64,
    lease: Duration,
) -> Result<Vec<ClaimedJob>, QueueError> {
    claim_capable(conn, worker, queue, limit, lease, &[]).await
}

/// [`claim`] for a worker with `capabilities`: it also takes jobs that require one of
/// them.
///
/// # Errors
/// [`QueueError::Db`] on database failure; nothing is claimed then.
pub async fn claim_capable(
    conn: &mut PgConnection,
    worker: WorkerId,
    queue: &str,
    limit: i64,
    lease: Duration,
    capabilities: &[String],
) -> Result<Vec<ClaimedJob>, QueueError> {
    let jobs = sqlx::query_as::<_, ClaimedJob>(
        "WITH next AS (
             SELECT id FROM jobs
             WHERE state = 'ready' AND queue = $1 AND run_at <= now()
               AND (requires IS NULL OR requires = ANY($5))
               AND NOT EXISTS (SELECT 1 FROM queue_pauses p WHERE p.queue IN ($1, '*'))
             ORDER BY priority DESC, run_at, id
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         )
         UPDATE jobs j
            SET state = 'running', attempts = j.attempts + 1,
                lease_token = GREATEST(j.lease_token + 1, (extract(epoch FROM now()) * 1000000)::bigint),
                lease_owner = $3, lease_expires_at = now() + make_interval(secs => $4::float8 / 1000),
                started_at = now()
           FROM next WHERE j.id = next.id
         RETURNING j.id, j.queue, j.kind, j.payload, j.attempts, j.max_attempts, j.rescues,
                   j.run_id, j.lease_token, j.created_at, j.run_at",
    )
    .bind(queue)
    .bind(limit)
    .bind(worker)
    .bind(millis(lease))
    .bind(capabilities)
    .fetch_all(&mut *conn)
    .await?;
    Ok(jobs)
}

/// What a heartbeat found out about the leases it extended.
#[derive(Debug, Default, Clone)]
pub struct HeartbeatReport {
    /// Leases that are no longer ours: stop working on these, apply nothing.
    pub lost: Vec<JobId>,
    /// Of `lost`, the jobs that have left the queue (completed, most likely by this
    /// worker while the heartbeat was on its way): nothing was taken from anyone.
    pub gone: Vec<JobId>,
    /// Jobs someone asked to cancel: interrupt them.
    pub cancel_requested: Vec<JobId>,
    /// Leases still ours but not extended this time: another transaction held the
    /// job's row (its completion, most likely). The next heartbeat tries again.
    pub busy: Vec<JobId>,
}

/// A lease [`heartbeat`] renewed, or found held by another transaction.
#[derive(sqlx::FromRow)]
struct LeaseRenewal {
    id: JobId,
    renewed: bool,
    cancel_requested: bool,
}

/// Extend every lease in `leases` by `lease` from now, in one statement. A job whose
/// row another transaction holds (its own completion or hand-over, most likely) is
/// skipped, not waited for: waiting, the renewal would hold the rows it extended
/// already until that transaction ends, and every other completion among them would
/// queue behind it. Such a lease is reported `busy` and renewed next time.
///
/// # Errors
/// [`QueueError::Db`] on database failure.
pub async fn heartbeat(
    conn: &mut PgConnection,
    leases: &[Lease],
    lease: Duration,
) -> Result<HeartbeatReport, QueueError> {
    if leases.is_empty() {
        return Ok(HeartbeatReport::default());
    }
    let (ids, keys) = super::lease_keys(leases);
    let found: std::collections::HashMap<JobId, (bool, bool)> =
        sqlx::query_as::<_, LeaseRenewal>(concat!(
            "WITH free AS (
                 SELECT j.id FROM jobs j WHERE ",
            super::held_leases!(),
            "    FOR NO KEY UPDATE SKIP LOCKED
             ), renewed AS (
                 UPDATE jobs j SET lease_expires_at = now() + make_interval(secs => $3::float8 / 1000)
                   FROM free WHERE j.id = free.id
                 RETURNING j.id, j.cancel_requested
             )
             SELECT id, true AS renewed, cancel_requested FROM renewed
             UNION ALL
             SELECT j.id, false, false FROM jobs j WHERE ",
            super::held_leases!(),
            "    AND j.id NOT IN (SELECT id FROM free)",
        ))
        .bind(&ids)
        .bind(&keys)
        .bind(millis(lease))
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| (r.id, (r.renewed, r.cancel_requested)))
        .collect();
    let mut report = HeartbeatReport::default();
    for l in leases {
        match found.get(&l.job_id) {
            None => report.lost.push(l.job_id),
            Some((false, _)) => report.busy.push(l.job_id),
            Some((true, true)) => report.cancel_requested.push(l.job_id),
            Some((true, false)) => {}
        }
    }
    if !report.lost.is_empty() {
        report.gone = jobs_absent(conn, &report.lost).await?;
    }
    Ok(report)
}

/// Which of `ids` are no longer in the queue.
async fn jobs_absent(conn: &mut PgConnection, ids: &[JobId]) -> Result<Vec<JobId>, QueueError> {
    let present: Vec<JobId> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
    Ok(ids
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect())
}

/// A job taken back from a lost worker.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Rescued {
    pub id: JobId,
    /// True when the job had no attempts left and went to the dead-letter state.
    pub dead: bool,
}

/// Take back up to `limit` jobs whose lease expired. A rescue counts as a spent
/// attempt: a job that kills every worker that touches it dead-letters instead of
/// looping forever. Any worker may run this; `SKIP LOCKED` keeps them from colliding.
///
/// # Errors
/// [`QueueError::Db`] on database failure.
pub async fn rescue_expired(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<Rescued>, QueueError> {
    let rescued = sqlx::query_as::<_, Rescued>(
        "WITH expired AS (
             SELECT id FROM jobs
             WHERE state = 'running' AND lease_expires_at < now()
             ORDER BY lease_expires_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED
         )
         UPDATE jobs j
            SET state = CASE WHEN j.attempts >= j.max_attempts THEN 'dead'::job_state ELSE 'ready'::job_state END,
                rescues = j.rescues + 1, run_at = now(), lease_owner = NULL, lease_expires_at = NULL,
                finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
                last_error = 'lease expired: worker lost while running attempt ' || j.attempts
           FROM expired WHERE j.id = expired.id
         RETURNING j.id, (j.state = 'dead') AS dead",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rescued)
}
