//! Cancel: the run stops, its waiting jobs are cancelled and its running job is
//! interrupted by its worker (which makes no further LLM call for it).

use crate::advance::{self, AdvanceError};
use crate::ids::RunId;
use crate::runs::{self, RunState};
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

/// Cancel a run `scope` sees. Its running job's worker hears of it at once (a
/// NOTIFY sent at commit) and aborts the in-flight model request.
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
    let r = runs::lock(&mut tx, run)
        .await?
        .filter(|r| scope.sees(&r.team))
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
    advance::end_run(&mut tx, run, RunState::Cancelled, Some(&error)).await?;
    tx.commit().await?;
    Ok(Cancelled::Cancelled)
}
