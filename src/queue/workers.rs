//! The `workers` table: who is alive, what they hold, and drain requests. Drain works
//! across hosts because it is a row, not a signal.

use crate::ids::WorkerId;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::time::Duration;

/// A worker process as it registers.
#[derive(Debug, Clone)]
pub struct NewWorker<'a> {
    pub id: WorkerId,
    pub name: &'a str,
    pub host: &'a str,
    pub pid: u32,
    pub queues: &'a [String],
    pub concurrency: usize,
    /// What it can do, e.g. `provider:openrouter`.
    pub capabilities: &'a [String],
}

/// Register a worker process (its row lives until pruned; `state` tells if it runs).
///
/// # Errors
/// Database errors.
pub async fn register(pool: &PgPool, w: &NewWorker<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO workers (id, name, host, pid, queues, concurrency, capabilities)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(w.id)
    .bind(w.name)
    .bind(w.host)
    .bind(i32::try_from(w.pid).unwrap_or(i32::MAX))
    .bind(w.queues)
    .bind(i32::try_from(w.concurrency).unwrap_or(i32::MAX))
    .bind(w.capabilities)
    .execute(pool)
    .await?;
    Ok(())
}

/// What a worker reports on each heartbeat.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat<'a> {
    pub id: WorkerId,
    /// The queue the worker serves (where its completions are counted).
    pub queue: &'a str,
    pub in_flight: usize,
    pub state: &'a str,
    /// Jobs completed since the previous heartbeat that was written.
    pub completed: u64,
}

/// Record liveness and load, and add the jobs completed since the last heartbeat to
/// `job_completions` (the throughput `admin stats` reads: completed jobs leave `jobs`);
/// returns whether a drain is requested.
///
/// # Errors
/// Database errors.
pub async fn heartbeat(pool: &PgPool, beat: &Heartbeat<'_>) -> Result<bool, sqlx::Error> {
    let row: Option<(bool,)> = sqlx::query_as(
        "WITH counted AS (
             INSERT INTO job_completions (worker_id, queue, completed)
             SELECT $1, $4, $5 WHERE $5 > 0
         )
         UPDATE workers SET heartbeat_at = now(), in_flight = $2, state = $3
          WHERE id = $1 RETURNING drain_requested",
    )
    .bind(beat.id)
    .bind(i32::try_from(beat.in_flight).unwrap_or(i32::MAX))
    .bind(beat.state)
    .bind(beat.queue)
    .bind(i32::try_from(beat.completed).unwrap_or(i32::MAX))
    .fetch_optional(pool)
    .await?;
    Ok(row.is_some_and(|(d,)| d))
}

/// Delete throughput rows older than `older_than` (workers call it now and then).
///
/// # Errors
/// Database errors.
pub async fn prune_completions(pool: &PgPool, older_than: Duration) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM job_completions WHERE at < now() - make_interval(secs => $1)")
        .bind(older_than.as_secs_f64())
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}

/// Mark a worker stopped (it shut down).
///
/// # Errors
/// Database errors.
pub async fn mark_stopped(pool: &PgPool, id: WorkerId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE workers SET state = 'stopped', in_flight = 0, stopped_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ask one worker (or every live worker, with `None`) to stop claiming and finish its
/// in-flight jobs. Returns the workers asked.
///
/// # Errors
/// Database errors.
pub async fn drain(
    conn: &mut sqlx::PgConnection,
    worker: Option<WorkerId>,
) -> Result<Vec<WorkerId>, sqlx::Error> {
    set_drain(conn, worker, true).await
}

/// Undo [`drain`].
///
/// # Errors
/// Database errors.
pub async fn undrain(
    conn: &mut sqlx::PgConnection,
    worker: Option<WorkerId>,
) -> Result<Vec<WorkerId>, sqlx::Error> {
    set_drain(conn, worker, false).await
}

async fn set_drain(
    conn: &mut sqlx::PgConnection,
    worker: Option<WorkerId>,
    on: bool,
) -> Result<Vec<WorkerId>, sqlx::Error> {
    let ids: Vec<(WorkerId,)> = sqlx::query_as(
        "UPDATE workers SET drain_requested = $2
          WHERE state <> 'stopped' AND ($1::uuid IS NULL OR id = $1) RETURNING id",
    )
    .bind(worker)
    .bind(on)
    .fetch_all(&mut *conn)
    .await?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// A worker as operators see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WorkerRow {
    pub id: WorkerId,
    pub name: String,
    pub host: String,
    pub pid: i32,
    pub queues: Vec<String>,
    pub concurrency: i32,
    pub state: String,
    pub drain_requested: bool,
    pub in_flight: i32,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub heartbeat_age_secs: f64,
}

/// Workers, live ones first. `include_stopped` adds the stopped ones.
///
/// # Errors
/// Database errors.
pub async fn list_workers(
    pool: &PgPool,
    include_stopped: bool,
) -> Result<Vec<WorkerRow>, sqlx::Error> {
    sqlx::query_as::<_, WorkerRow>(
        "SELECT id, name, host, pid, queues, concurrency, state, drain_requested, in_flight,
                started_at, heartbeat_at,
                EXTRACT(EPOCH FROM now() - heartbeat_at)::float8 AS heartbeat_age_secs
           FROM workers WHERE $1 OR state <> 'stopped'
          ORDER BY state = 'stopped', started_at DESC",
    )
    .bind(include_stopped)
    .fetch_all(pool)
    .await
}

/// Whether a live worker (running, heartbeat within `within`) takes jobs from `queue`
/// that require `capability`.
///
/// # Errors
/// Database errors.
pub async fn workers_serving(
    conn: &mut sqlx::PgConnection,
    queue: &str,
    capability: &str,
    within: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM workers
                         WHERE state = 'running' AND $1 = ANY(queues) AND $2 = ANY(capabilities)
                           AND heartbeat_at > now() - make_interval(secs => $3))",
    )
    .bind(queue)
    .bind(capability)
    .bind(within.as_secs_f64())
    .fetch_one(&mut *conn)
    .await
}

/// How many workers started at or after `since` run on `queue` now.
///
/// # Errors
/// Database errors.
pub async fn workers_count_started_since(
    conn: &mut sqlx::PgConnection,
    queue: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM workers WHERE state = 'running' AND $1 = ANY(queues) AND started_at >= $2",
    )
    .bind(queue)
    .bind(since)
    .fetch_one(&mut *conn)
    .await
}
