//! Fleet-wide gauges read across `jobs`, `runs`, `approval_requests` and `workers`
//! (the API's `/metrics` refreshes them every few seconds). Each query is served by a
//! partial index and stays flat with history.

use sqlx::PgConnection;

/// One reading of the fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetGauges {
    /// (queue, state, jobs) for ready, running and dead jobs.
    pub jobs_by_state: Vec<(String, String, i64)>,
    /// (queue, jobs ready now, age in seconds of the oldest).
    pub ready_now: Vec<(String, i64, f64)>,
    /// (state, runs) of runs not yet ended.
    pub active_runs: Vec<(String, i64)>,
    pub pending_approvals: i64,
    /// (state, workers, jobs in flight) of live workers.
    pub workers: Vec<(String, i64, i64)>,
}

/// Read the gauges.
///
/// # Errors
/// Database errors.
pub async fn fleet_gauges(conn: &mut PgConnection) -> Result<FleetGauges, sqlx::Error> {
    let jobs_by_state = sqlx::query_as(concat!(
        "SELECT queue, state::text, count(*) FROM (",
        crate::queue::unfinished_jobs!(),
        ") AS unfinished GROUP BY queue, state ORDER BY 1, 2",
    ))
    .fetch_all(&mut *conn)
    .await?;
    let ready_now = sqlx::query_as(
        "SELECT queue, count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(run_at)), 0)::float8
           FROM jobs WHERE state = 'ready' AND run_at <= now() GROUP BY queue ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let active_runs = sqlx::query_as(
        "SELECT state::text, count(*) FROM runs
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
        "SELECT state, count(*), COALESCE(sum(in_flight), 0)::bigint FROM workers
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
