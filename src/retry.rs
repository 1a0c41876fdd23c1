//! Re-open a failed run at the phase that failed (operator action, `admin requeue
//! --run`). One transaction: the failed phase starts a new round, the phases skipped
//! after it are pending again, the run is running again (its retry count goes up), its
//! stale report is removed and the phase job is enqueued on the run's queue.

use crate::advance::LockedRun;
use crate::events::NewEvent;
use crate::ids::RunId;
use crate::phase_job::PhaseJob;
use crate::queue::QueueError;
use crate::state::{PhaseState, RunState};
use crate::store::StoreError;
use crate::store::{reports, run_phases, runs};
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
    #[error(transparent)]
    Store(#[from] StoreError),
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
    let (run, phases) = runs::runs_lock_with_phases(&mut tx, run_id)
        .await?
        .ok_or(RetryError::NotFound(run_id))?;
    if run.state != RunState::Failed {
        return Err(RetryError::NotFailed {
            run: run_id,
            state: run.state.as_str(),
        });
    }
    let phase = phases
        .iter()
        .find(|p| p.state != PhaseState::Completed)
        .cloned()
        .ok_or(RetryError::NothingToRetry(run_id))?;
    let retried = Retried {
        run_id,
        phase: phase.phase_key.clone(),
        round: phase.round + 1,
        retries: run.retries + 1,
    };
    if dry_run {
        return Ok(retried);
    }
    let previous_error = run.error.clone();
    let mut locked = LockedRun::new(run, phases);
    run_phases::run_phases_new_round(&mut tx, run_id, &phase, None).await?;
    run_phases::run_phases_reopen_after(&mut tx, run_id, phase.position).await?;
    locked.set_state(&mut tx, RunState::Running, None).await?;
    reports::reports_delete(&mut tx, run_id).await?;
    locked.events.push(NewEvent::run_retried(
        &phase.phase_key,
        retried.round,
        retried.retries,
        previous_error.as_deref(),
        by,
    ));
    PhaseJob::first_attempt(
        run_id,
        &phase.phase_key,
        retried.round,
        phase.requires.as_deref(),
    )
    .enqueue(&mut tx, &locked.run.queue)
    .await?;
    locked.flush_events(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(run_id = %run_id, phase = %phase.phase_key, round = retried.round, "failed run re-opened");
    Ok(retried)
}
