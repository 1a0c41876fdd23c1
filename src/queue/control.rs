//! Operating the queue: pause, cancel, requeue, prune, inspect.

use super::{JobState, QueueError};
use crate::ids::{JobId, RunId, WorkerId};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use std::time::Duration;

/// Pause claiming on `queue` (`*` pauses every queue, fleet-wide). Running jobs finish.
///
/// # Errors
/// [`QueueError::Db`] on database failure.
pub async fn pause(
    conn: &mut PgConnection,
    queue: &str,
    reason: Option<&str>,
) -> Result<(), QueueError> {
    sqlx::query(
        "INSERT INTO queue_pauses (queue, reason) VALUES ($1, $2)
         ON CONFLICT (queue) DO UPDATE SET reason = EXCLUDED.reason",
    )
    .bind(queue)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Undo [`pause`]. Returns whether the queue was paused. Wakes idle workers.
///
/// # Errors
/// [`QueueError::Db`] on database failure.
pub async fn resume(conn: &mut PgConnection, queue: &str) -> Result<bool, QueueError> {
    let r = sqlx::query("DELETE FROM queue_pauses WHERE queue = $1")
        .bind(queue)
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_notify('phasefleet_jobs', $1)")
        .bind(queue)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Whether `queue` (or the whole fleet) is paused.
///
/// # Errors
/// [`QueueError::Db`] on database failure.
pub async fn is_paused(conn: &mut PgConnection, queue: &str) -> Result<bool, QueueError> {
    let (paused,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM queue_pauses WHERE queue IN ($1, '*'))")
            .bind(queue)
            .fetch_one(&mut *conn)
            .await?;
    Ok(paused)
}

/// What [`cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// It was waiting; it is cancelled now.
    Cancelled,
    /// It is running; its worker interrupts it when the notification arrives (at the
    /// latest at its next heartbeat).
    Requested,
    /// It had already finished; nothing changed.
    AlreadyFinished(JobState),
}

/// Cancel a job: at once if it waits, through its worker if it runs.
///
/// # Errors
/// [`QueueError::NotFound`]; [`QueueError::Db`].
pub async fn cancel(conn: &mut PgConnection, id: JobId) -> Result<CancelOutcome, QueueError> {
    let row: Option<(JobState,)> =
        sqlx::query_as("SELECT state FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((state,)) = row else {
        return Err(QueueError::NotFound(id));
    };
    match state {
        JobState::Ready => {
            sqlx::query("UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok(CancelOutcome::Cancelled)
        }
        JobState::Running => {
            sqlx::query("UPDATE jobs SET cancel_requested = true WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            super::notify::cancel_job(conn, id).await?;
            Ok(CancelOutcome::Requested)
        }
        done => Ok(CancelOutcome::AlreadyFinished(done)),
    }
}

/// A run ended: cancel its waiting jobs and ask the worker of its running job to stop
/// (told at commit, through [`super::notify::CANCEL_CHANNEL`], and at its next
/// heartbeat). One statement.
///
/// # Errors
/// [`QueueError::Db`] on database failure.
pub async fn cancel_run_jobs(conn: &mut PgConnection, run: RunId) -> Result<(), QueueError> {
    sqlx::query(
        "WITH changed AS (
             UPDATE jobs SET state = CASE WHEN state = 'ready' THEN 'cancelled'::job_state ELSE state END,
                    finished_at = CASE WHEN state = 'ready' THEN now() ELSE finished_at END,
                    cancel_requested = (state = 'running')
              WHERE run_id = $1 AND state IN ('ready', 'running')
          RETURNING cancel_requested
         )
         SELECT count(*) FROM changed
          WHERE cancel_requested AND pg_notify($2, $1::text)::text IS NOT NULL",
    )
    .bind(run)
    .bind(super::notify::CANCEL_CHANNEL)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Delete finished jobs (cancelled, and completed ones an earlier release kept; dead
/// too when `include_dead`) that
/// finished more than `older_than` ago, at most `batch` rows per call so a large prune
/// never holds long locks. Returns how many rows went.
///
/// # Errors
/// [`QueueError::Db`] on database failure.
pub async fn prune(
    conn: &mut PgConnection,
    older_than: Duration,
    include_dead: bool,
    batch: i64,
) -> Result<u64, QueueError> {
    let secs = older_than.as_secs_f64();
    let r = sqlx::query(
        "DELETE FROM jobs WHERE id IN (
             SELECT id FROM jobs
             WHERE (state IN ('completed', 'cancelled') OR ($2 AND state = 'dead'))
               AND finished_at < now() - make_interval(secs => $1)
             LIMIT $3 FOR UPDATE SKIP LOCKED)",
    )
    .bind(secs)
    .bind(include_dead)
    .bind(batch)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected())
}

/// Put a dead, cancelled or ready job back to ready now with a fresh attempt budget.
/// A running job is refused: its worker still holds the lease.
///
/// # Errors
/// [`QueueError::NotFound`] (also for a completed job: it left the table);
/// [`QueueError::Conflict`] for a running job.
pub async fn requeue(conn: &mut PgConnection, id: JobId) -> Result<(), QueueError> {
    let row: Option<(JobState,)> =
        sqlx::query_as("SELECT state FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    match row {
        None => Err(QueueError::NotFound(id)),
        Some((JobState::Running,)) => Err(QueueError::Conflict {
            job_id: id,
            state: "running",
            what: "a running job cannot be requeued; cancel it or wait for its lease to expire",
        }),
        Some(_) => {
            sqlx::query(
                "UPDATE jobs SET state = 'ready', run_at = now(), attempts = 0, cancel_requested = false,
                        finished_at = NULL WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
    }
}

/// Requeue every dead job of `queue` (or list them, with `dry_run`).
///
/// # Errors
/// [`QueueError::Db`] on database failure.
pub async fn requeue_dead(
    conn: &mut PgConnection,
    queue: &str,
    dry_run: bool,
) -> Result<Vec<JobId>, QueueError> {
    let sql = if dry_run {
        "SELECT id FROM jobs WHERE state = 'dead' AND queue = $1 ORDER BY id"
    } else {
        "UPDATE jobs SET state = 'ready', run_at = now(), attempts = 0, finished_at = NULL
          WHERE state = 'dead' AND queue = $1 RETURNING id"
    };
    let ids: Vec<(JobId,)> = sqlx::query_as(sql)
        .bind(queue)
        .fetch_all(&mut *conn)
        .await?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// One job, as operators see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct JobRow {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub state: JobState,
    pub priority: i16,
    pub attempts: i32,
    pub max_attempts: i32,
    pub rescues: i32,
    pub run_id: Option<RunId>,
    pub unique_key: Option<String>,
    pub lease_owner: Option<WorkerId>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub payload: serde_json::Value,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

const JOB_COLUMNS: &str =
    "id, queue, kind, state, priority, attempts, max_attempts, rescues, run_id,
    unique_key, lease_owner, lease_expires_at, last_error, payload, run_at, created_at,
    started_at, finished_at";

/// One job by id.
///
/// # Errors
/// [`QueueError::NotFound`]; [`QueueError::Db`].
pub async fn get(conn: &mut PgConnection, id: JobId) -> Result<JobRow, QueueError> {
    sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(QueueError::NotFound(id))
}

/// Jobs filtered by state and queue, newest first.
///
/// # Errors
/// [`QueueError::InvalidArgument`] for state `completed` (completed jobs are not
/// kept); [`QueueError::Db`] on database failure.
pub async fn list(
    conn: &mut PgConnection,
    state: Option<JobState>,
    queue: Option<&str>,
    run_id: Option<RunId>,
    limit: i64,
) -> Result<Vec<JobRow>, QueueError> {
    if state == Some(JobState::Completed) {
        return Err(QueueError::InvalidArgument(
            "completed jobs are not kept in the queue (they leave it as they complete); \
             list ready, running, dead or cancelled jobs, or read the run's events"
                .into(),
        ));
    }
    let rows = sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs
          WHERE ($1::job_state IS NULL OR state = $1) AND ($2::text IS NULL OR queue = $2)
            AND ($3::uuid IS NULL OR run_id = $3)
          ORDER BY id DESC LIMIT $4"
    )))
    .bind(state)
    .bind(queue)
    .bind(run_id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StateCount {
    pub queue: String,
    pub state: JobState,
    pub count: i64,
}

/// Queue depth and health, cheap enough to poll for autoscaling.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    pub by_state: Vec<StateCount>,
    /// Ready jobs whose `run_at` has passed (the autoscaling signal).
    pub ready_now: i64,
    pub oldest_ready_age_secs: Option<f64>,
    /// Jobs workers reported completed over the last minute (each worker reports with
    /// its heartbeat, every third of its lease).
    pub completed_last_minute: i64,
    pub running_with_expired_lease: i64,
}

/// Snapshot of the queue.
///
/// # Errors
/// [`QueueError::Db`] on database failure.
pub async fn stats(conn: &mut PgConnection) -> Result<QueueStats, QueueError> {
    // Cancelled jobs are counted over the last hour only (through the finished index).
    // Completed jobs left the table: their count is what workers reported to
    // `job_completions`.
    let by_state = sqlx::query_as::<_, StateCount>(concat!(
        "SELECT queue, state, count(*) AS count FROM (",
        super::unfinished_jobs!(),
        " UNION ALL SELECT queue, state FROM jobs
                WHERE state = 'cancelled' AND finished_at > now() - interval '1 hour'
         ) AS recent GROUP BY queue, state ORDER BY queue, state",
    ))
    .fetch_all(&mut *conn)
    .await?;
    let health = sqlx::query_as::<_, QueueHealth>(
        "SELECT
           (SELECT count(*) FROM jobs WHERE state = 'ready' AND run_at <= now()) AS ready_now,
           (SELECT EXTRACT(EPOCH FROM now() - min(run_at))::float8 FROM jobs
             WHERE state = 'ready' AND run_at <= now()) AS oldest_ready_age_secs,
           (SELECT COALESCE(sum(completed), 0)::int8 FROM job_completions
             WHERE at > now() - interval '1 minute') AS completed_last_minute,
           (SELECT count(*) FROM jobs
             WHERE state = 'running' AND lease_expires_at < now()) AS running_with_expired_lease",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(QueueStats {
        by_state,
        ready_now: health.ready_now,
        oldest_ready_age_secs: health.oldest_ready_age_secs,
        completed_last_minute: health.completed_last_minute,
        running_with_expired_lease: health.running_with_expired_lease,
    })
}

/// The counts of [`QueueStats`] besides those by state, read in one statement.
#[derive(sqlx::FromRow)]
struct QueueHealth {
    ready_now: i64,
    oldest_ready_age_secs: Option<f64>,
    completed_last_minute: i64,
    running_with_expired_lease: i64,
}

/// One queue as the fleet page shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct QueueSummary {
    pub queue: String,
    pub ready: i64,
    pub running: i64,
    pub dead: i64,
    /// Jobs cancelled within the last hour.
    pub cancelled_last_hour: i64,
    /// Ready jobs whose `run_at` has passed.
    pub ready_now: i64,
    pub oldest_ready_age_secs: Option<f64>,
    /// Paused by its own pause or by the fleet-wide one (`*`).
    pub paused: bool,
    pub pause_reason: Option<String>,
    /// Jobs workers reported completed over the last 15 minutes.
    pub completed_last_15_minutes: i64,
    /// Live workers serving it.
    pub workers: i64,
}

/// Every queue that has unfinished jobs, a pause, recent completions or a live worker
/// (at most `limit`, by name).
///
/// # Errors
/// [`QueueError::Db`] on database failure.
pub async fn queue_summaries(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<QueueSummary>, QueueError> {
    let rows = sqlx::query_as::<_, QueueSummary>(
        "WITH names AS (
             SELECT DISTINCT queue FROM jobs WHERE state IN ('ready', 'running', 'dead')
             UNION SELECT queue FROM queue_pauses WHERE queue <> '*'
             UNION SELECT queue FROM job_completions WHERE at > now() - interval '15 minutes'
             UNION SELECT unnest(queues) FROM workers WHERE state <> 'stopped'
                                                      AND heartbeat_at > now() - interval '1 minute'
         ), q AS (SELECT queue FROM names ORDER BY queue LIMIT $1)
         SELECT q.queue,
                (SELECT count(*) FROM jobs j WHERE j.queue = q.queue AND j.state = 'ready') AS ready,
                (SELECT count(*) FROM jobs j WHERE j.queue = q.queue AND j.state = 'running') AS running,
                (SELECT count(*) FROM jobs j WHERE j.queue = q.queue AND j.state = 'dead') AS dead,
                (SELECT count(*) FROM jobs j WHERE j.queue = q.queue AND j.state = 'cancelled'
                                               AND j.finished_at > now() - interval '1 hour') AS cancelled_last_hour,
                (SELECT count(*) FROM jobs j WHERE j.queue = q.queue AND j.state = 'ready'
                                               AND j.run_at <= now()) AS ready_now,
                (SELECT EXTRACT(EPOCH FROM now() - min(j.run_at))::float8 FROM jobs j
                  WHERE j.queue = q.queue AND j.state = 'ready' AND j.run_at <= now()) AS oldest_ready_age_secs,
                EXISTS (SELECT 1 FROM queue_pauses p WHERE p.queue IN (q.queue, '*')) AS paused,
                (SELECT p.reason FROM queue_pauses p WHERE p.queue IN (q.queue, '*')
                  ORDER BY p.queue = '*' LIMIT 1) AS pause_reason,
                (SELECT COALESCE(sum(c.completed), 0)::int8 FROM job_completions c
                  WHERE c.queue = q.queue AND c.at > now() - interval '15 minutes') AS completed_last_15_minutes,
                (SELECT count(*) FROM workers w WHERE q.queue = ANY(w.queues) AND w.state <> 'stopped'
                                                  AND w.heartbeat_at > now() - interval '1 minute') AS workers
           FROM q ORDER BY q.queue",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}

/// Jobs completed per minute, fleet-wide.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ThroughputPoint {
    pub minute: DateTime<Utc>,
    pub completed: i64,
}

/// Completions per minute over the last `minutes` minutes (a minute without any is
/// there with 0), oldest first.
///
/// # Errors
/// [`QueueError::Db`] on database failure.
pub async fn throughput_by_minute(
    conn: &mut PgConnection,
    minutes: i32,
) -> Result<Vec<ThroughputPoint>, QueueError> {
    let rows = sqlx::query_as::<_, ThroughputPoint>(
        "SELECT m.minute, COALESCE(sum(c.completed), 0)::int8 AS completed
           FROM generate_series(date_trunc('minute', now()) - make_interval(mins => $1 - 1),
                                date_trunc('minute', now()), interval '1 minute') AS m(minute)
           LEFT JOIN job_completions c ON c.at >= m.minute AND c.at < m.minute + interval '1 minute'
          GROUP BY m.minute ORDER BY m.minute",
    )
    .bind(minutes)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}
