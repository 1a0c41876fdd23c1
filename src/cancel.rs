//! Cancel: the run stops, its waiting jobs are cancelled and its running job is
//! interrupted by its worker (told at commit), which makes no further model call.

use crate::advance::{self, AdvanceError, LockedRun};
use crate::ids::RunId;
use crate::state::RunState;
use crate::store::runs;
use crate::teams::Scope;
use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cancelled {
    Cancelled,
    /// The run had already ended in this state; nothing changed.
    AlreadyEnded(RunState),
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("run {0} not found")]
    NotFound(RunId),
    #[error(transparent)]
    Advance(#[from] AdvanceError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Cancel a run `scope` sees.
///
/// # Errors
/// [`CancelError::NotFound`] (also for another team's run); database errors.
pub async fn cancel_run(
    pool: &PgPool,
    scope: &Scope,
    run: RunId,
    reason: Option<&str>,
) -> Result<Cancelled, CancelError> {
    let mut tx = pool.begin().await?;
    let (r, phases) = runs::runs_lock_with_phases(&mut tx, run)
        .await?
        .filter(|(r, _)| scope.sees(&r.team))
        .ok_or(CancelError::NotFound(run))?;
    if r.state.is_terminal() {
        return Ok(Cancelled::AlreadyEnded(r.state));
    }
    // A NUL cannot be stored in PostgreSQL text; the reason is free text, so replace it.
    let error = format!(
        "cancelled{}",
        reason
            .map(|r| format!(": {}", r.replace('\0', "\u{FFFD}")))
            .unwrap_or_default()
    );
    let mut locked = LockedRun::new(r, phases);
    advance::end_run(&mut tx, &mut locked, RunState::Cancelled, Some(&error)).await?;
    locked.flush_events(&mut tx).await?;
    tx.commit().await?;
    Ok(Cancelled::Cancelled)
}
