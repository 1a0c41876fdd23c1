//! Re-open a failed run at the phase that failed (operator action, `admin requeue
//! --run`). One transaction: the phase and every later one go back to pending, the
//! failed phase starts a new round of attempts, the run is running again, its stale
//! report is removed and the phase job is enqueued on the run's queue.

use crate::events;
use crate::ids::RunId;
use crate::phase::enqueue_first_attempt;
use crate::queue::QueueError;
use crate::runs::{self, RunState};
use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Clone, Serialize)]
pub struct Retried {
    pub run_id: RunId,
    pub phase: String,
    pub round: i32,
    /// How many times the run has been re-opened, this one included.
    pub retries: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("run {0} not found")]
    NotFound(RunId),
    #[error("run {run} is {state}; only a failed run can be re-opened")]
    NotFailed { run: RunId, state: &'static str },
    #[error("run {0} has no phase left to retry")]
    NothingToRetry(RunId),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Re-open a failed run at its first phase that did not complete. With `dry_run` the
/// answer says what would happen and nothing changes.
///
/// # Errors
/// [`RetryError::NotFound`], [`RetryError::NotFailed`] for any other state (a refused
/// request changes nothing), database errors.
pub async fn retry_failed_run(
    pool: &PgPool,
    run_id: RunId,
    by: Option<&str>,
    dry_run: bool,
) -> Result<Retried, RetryError> {
    let mut tx = pool.begin().await?;
    let run = runs::lock(&mut tx, run_id)
        .await?
        .ok_or(RetryError::NotFound(run_id))?;
    if run.state != RunState::Failed {
        return Err(RetryError::NotFailed {
            run: run_id,
            state: run.state.as_str(),
        });
    }
    let phase: Option<(String, i32, i32)> = sqlx::query_as(
        "SELECT phase_key, round, position FROM run_phases
          WHERE run_id = $1 AND state <> 'completed' ORDER BY position LIMIT 1",
    )
    .bind(run_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (phase, round, position) = phase.ok_or(RetryError::NothingToRetry(run_id))?;
    let retried = Retried {
        run_id,
        phase: phase.clone(),
        round: round + 1,
        retries: run.retries + 1,
    };
    if dry_run {
        return Ok(retried);
    }
    sqlx::query(
        "UPDATE run_phases SET state = 'pending', error = NULL, finished_at = NULL,
                attempts = CASE WHEN position = $2 THEN 0 ELSE attempts END,
                round = CASE WHEN position = $2 THEN round + 1 ELSE round END
          WHERE run_id = $1 AND position >= $2",
    )
    .bind(run_id)
    .bind(position)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE runs SET state = 'running', error = NULL, finished_at = NULL,
                retries = retries + 1, updated_at = now() WHERE id = $1",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM reports WHERE run_id = $1")
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    events::append(
        &mut tx,
        run_id,
        "run.retried",
        Some(&phase),
        &format!("run.retried:{}", retried.retries),
        serde_json::json!({ "phase": phase, "round": retried.round, "previous_error": run.error, "by": by }),
    )
    .await?;
    enqueue_first_attempt(&mut tx, run_id, &phase, retried.round, &run.queue).await?;
    tx.commit().await?;
    tracing::info!(run_id = %run_id, phase = %phase, round = retried.round, "failed run re-opened");
    Ok(retried)
}
