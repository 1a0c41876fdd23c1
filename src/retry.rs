//! Re-open a failed run at the phases that failed (operator action, `admin requeue
//! --run`). One transaction: each failed phase starts a new round, the skipped phases
//! are pending again (in a new round), the run is running again (its retry count goes
//! up), its stale report is removed, and every phase whose needs are met starts again
//! (a condition is tested again; a fan-out starts the items it has that are not done).

use crate::advance::{self, LockedRun};
use crate::events::NewEvent;
use crate::ids::RunId;
use crate::queue::QueueError;
use crate::state::{PhaseState, RunState};
use crate::store::StoreError;
use crate::store::run_phases::PhaseRow;
use crate::store::{reports, run_phases, runs};
use serde::Serialize;
use sqlx::PgPool;

crate::from_advance_error!(RetryError);

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

/// Re-open a failed run at its failed phases (or, when none failed, its first phase
/// that did not complete). With `dry_run` the
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
    let failed: Vec<PhaseRow> = phases
        .iter()
        .filter(|p| p.state == PhaseState::Failed)
        .cloned()
        .collect();
    let phase = failed
        .first()
        .or_else(|| phases.iter().find(|p| p.state != PhaseState::Completed))
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
    // 1. The failed phases start a new round; the skipped ones are pending again.
    reopen(&mut tx, &mut locked, &failed).await?;
    locked.set_state(&mut tx, RunState::Running, None).await?;
    reports::reports_delete(&mut tx, run_id).await?;
    locked.events.push(NewEvent::run_retried(
        &phase.phase_key,
        retried.round,
        retried.retries,
        previous_error.as_deref(),
        by,
    ));
    // 2. Start every phase whose needs are met.
    let ready: Vec<String> = locked
        .phases
        .iter()
        .filter(|p| p.parent.is_none() && p.state == PhaseState::Pending && locked.needs_met(p))
        .map(|p| p.phase_key.clone())
        .collect();
    advance::start_ready(&mut tx, &mut locked, ready).await?;
    advance::settle(&mut tx, &mut locked).await?;
    locked.flush_events(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(run_id = %run_id, phase = %phase.phase_key, round = retried.round, "failed run re-opened");
    Ok(retried)
}

/// Failed phases start a new round; skipped ones are pending again in a new round.
async fn reopen(
    conn: &mut sqlx::PgConnection,
    locked: &mut LockedRun,
    failed: &[PhaseRow],
) -> Result<(), RetryError> {
    for p in failed {
        locked.new_round(conn, &p.phase_key, None).await?;
    }
    run_phases::run_phases_reopen_skipped(conn, locked.run.id).await?;
    for p in &mut locked.phases {
        if p.state == PhaseState::Skipped {
            p.state = PhaseState::Pending;
            p.round += 1;
            p.attempts = 0;
            p.error = None;
        }
    }
    Ok(())
}
