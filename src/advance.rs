//! Moving a run forward after a phase is accepted (validated, or approved): enqueue the
//! next phase, or complete the run; and ending a run in any terminal state with its
//! report. Always called inside the caller's transaction, with the run row locked.

use crate::events;
use crate::ids::RunId;
use crate::phase::enqueue_first_attempt;
use crate::queue::QueueError;
use crate::report;
use crate::runs::{self, PhaseState, RunState};
use sqlx::PgConnection;

#[derive(Debug, thiserror::Error)]
pub enum AdvanceError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Mark `phase` completed and start the next phase, or complete the run.
///
/// # Errors
/// Database errors.
pub async fn phase_accepted(
    conn: &mut PgConnection,
    run: RunId,
    phase: &str,
    round: i32,
    queue_name: &str,
) -> Result<(), AdvanceError> {
    runs::set_phase_state(conn, run, phase, PhaseState::Completed, None).await?;
    events::append(
        conn,
        run,
        "phase.completed",
        Some(phase),
        &format!("phase:{phase}:r{round}:completed"),
        serde_json::json!({ "round": round }),
    )
    .await?;
    let next: Option<(String, i32)> = sqlx::query_as(
        "SELECT phase_key, round FROM run_phases
          WHERE run_id = $1 AND position > (SELECT position FROM run_phases WHERE run_id = $1 AND phase_key = $2)
          ORDER BY position LIMIT 1",
    )
    .bind(run)
    .bind(phase)
    .fetch_optional(&mut *conn)
    .await?;
    match next {
        Some((key, next_round)) => {
            runs::set_state(conn, run, RunState::Running, None).await?;
            enqueue_first_attempt(conn, run, &key, next_round, queue_name).await?;
            events::append(
                conn,
                run,
                "phase.queued",
                Some(&key),
                &format!("phase:{key}:r{next_round}:queued"),
                serde_json::json!({}),
            )
            .await?;
        }
        None => end_run(conn, run, RunState::Completed, None).await?,
    }
    Ok(())
}

/// End the run in `state` (completed, failed, aborted or cancelled): skip unfinished
/// phases, cancel its remaining jobs, record the event and store the report.
///
/// # Errors
/// Database errors.
pub async fn end_run(
    conn: &mut PgConnection,
    run: RunId,
    state: RunState,
    error: Option<&str>,
) -> Result<(), AdvanceError> {
    runs::set_state(conn, run, state, error).await?;
    // A run re-opened by an operator ends again under a new key (see `retry`).
    let (retries,): (i32,) = sqlx::query_as("SELECT retries FROM runs WHERE id = $1")
        .bind(run)
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE run_phases SET state = 'skipped', finished_at = now()
          WHERE run_id = $1 AND state IN ('pending', 'running', 'validating', 'awaiting_approval')",
    )
    .bind(run)
    .execute(&mut *conn)
    .await?;
    // Waiting jobs of the run are cancelled; running ones are interrupted by their
    // worker, which hears of it at commit (NOTIFY) and at its next heartbeat.
    let running: Vec<(bool,)> = sqlx::query_as(
        "UPDATE jobs SET state = CASE WHEN state = 'ready' THEN 'cancelled'::job_state ELSE state END,
                finished_at = CASE WHEN state = 'ready' THEN now() ELSE finished_at END,
                cancel_requested = (state = 'running')
          WHERE run_id = $1 AND state IN ('ready', 'running') RETURNING cancel_requested",
    )
    .bind(run)
    .fetch_all(&mut *conn)
    .await?;
    if running.iter().any(|(r,)| *r) {
        crate::queue::notify::cancel_run(conn, run).await?;
    }
    let kind = format!("run.{}", state.as_str());
    let key = if retries == 0 {
        kind.clone()
    } else {
        format!("{kind}:retry{retries}")
    };
    events::append(
        conn,
        run,
        &kind,
        None,
        &key,
        serde_json::json!({ "error": error }),
    )
    .await?;
    report::compose_and_store(conn, run).await?;
    tracing::info!(run_id = %run, state = state.as_str(), "run ended");
    Ok(())
}
