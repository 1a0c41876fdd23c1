//! Fleet-wide gauges read across `jobs`, `runs`, `approval_requests` and `workers`
//! (the API's `/metrics` refreshes them every few seconds). Each query is served by a
//! partial index and stays flat with history.

use sqlx::PgConnection;

/// One reading of the fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetGauges {
    /// Ready, running and dead jobs.
    pub jobs_by_state: Vec<QueueJobs>,
    pub ready_now: Vec<QueueReady>,
    /// Runs not yet ended.
    pub active_runs: Vec<RunsInState>,
    pub pending_approvals: i64,
    /// Live workers.
    pub workers: Vec<WorkersInState>,
}

/// A queue's jobs in one state.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueueJobs {
    pub queue: String,
    pub state: String,
    pub jobs: i64,
}

/// A queue's jobs ready to run now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueueReady {
    pub queue: String,
    pub jobs: i64,
    /// The age of the oldest, in seconds.
    pub oldest_secs: f64,
}

/// The runs in one state.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunsInState {
    pub state: String,
    pub runs: i64,
}

/// The live workers in one state.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkersInState {
    pub state: String,
    pub workers: i64,
    /// The jobs they hold.
    pub in_flight: i64,
}

/// Read the gauges.
///
/// # Errors
/// Database errors.
pub async fn fleet_gauges(conn: &mut PgConnection) -> Result<FleetGauges, sqlx::Error> {
    let jobs_by_state = sqlx::query_as(concat!(
        "SELECT queue, state::text AS state, count(*) AS jobs FROM (",
        crate::queue::unfinished_jobs!(),
        ") AS unfinished GROUP BY queue, state ORDER BY 1, 2",
    ))
    .fetch_all(&mut *conn)
    .await?;
    let ready_now = sqlx::query_as(
        "SELECT queue, count(*) AS jobs,
                COALESCE(EXTRACT(EPOCH FROM now() - min(run_at)), 0)::float8 AS oldest_secs
           FROM jobs WHERE state = 'ready' AND run_at <= now() GROUP BY queue ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let active_runs = sqlx::query_as(
        "SELECT state::text AS state, count(*) AS runs FROM runs
          WHERE state IN ('queued', 'running', 'awaiting_approval', 'awaiting_budget') GROUP BY state ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let (pending_approvals,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM approval_requests a
               JOIN run_phases ph ON ph.run_id = a.run_id AND ph.phase_key = a.phase_key
                                 AND ph.round = a.round AND ph.state = 'awaiting_approval'
              WHERE a.state = 'pending'",
    )
    .fetch_one(&mut *conn)
    .await?;
    let workers = sqlx::query_as(
        "SELECT state, count(*) AS workers, COALESCE(sum(in_flight), 0)::bigint AS in_flight FROM workers
          WHERE state <> 'stopped' AND heartbeat_at > now() - interval '1 minute' GROUP BY state ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(FleetGauges {
        jobs_by_state,
        ready_now,
        active_runs,
        pending_approvals,
        workers,
    })
}
