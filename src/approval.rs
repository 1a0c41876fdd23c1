//! Decisions on approval requests. One transaction records the decision and enqueues
//! the next phase, re-runs the phase (revise) or ends the run. The same decision twice
//! is a no-op; a different second decision is refused.

use crate::advance::{self, LockedRun};
use crate::events::NewEvent;
use crate::ids::{ApprovalId, RunId};
use crate::queue::QueueError;
use crate::state::{PhaseState, RunState};
use crate::store::StoreError;
use crate::store::approvals;
use crate::teams::Scope;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

pub use crate::store::approvals::{Action, ApprovalRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decided {
    Recorded,
    /// The same decision was already recorded; nothing changed.
    AlreadyDecided,
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("approval request {0} not found")]
    NotFound(ApprovalId),
    #[error(
        "approval request {id} was already decided as {}; a different decision is refused",
        existing.as_str()
    )]
    Conflict { id: ApprovalId, existing: Action },
    #[error("run is {0} and no longer waits on this approval")]
    RunNotWaiting(&'static str),
    #[error(
        "this request is about round {round} of its phase, which is at round {now} now: decide the newer request"
    )]
    Superseded { round: i32, now: i32 },
    #[error("invalid decision: {0}")]
    Invalid(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

crate::from_advance_error!(ApprovalError);

/// Requests that wait on a human, oldest first; only those of runs `scope` sees.
///
/// # Errors
/// Database errors.
pub async fn pending(
    conn: &mut PgConnection,
    scope: &Scope,
    limit: i64,
) -> Result<Vec<ApprovalRow>, sqlx::Error> {
    approvals::approvals_pending(conn, scope, limit).await
}

/// The undecided requests of any of `runs`.
///
/// # Errors
/// Database errors.
pub async fn pending_for_runs(
    conn: &mut PgConnection,
    runs: &[RunId],
) -> Result<Vec<ApprovalRow>, sqlx::Error> {
    approvals::approvals_pending_for_runs(conn, runs).await
}

/// Every request of a run, with decisions.
///
/// # Errors
/// Database errors.
pub async fn for_run(conn: &mut PgConnection, run: RunId) -> Result<Vec<ApprovalRow>, sqlx::Error> {
    approvals::approvals_for_run(conn, run).await
}

/// A decision as the caller gave it.
struct Decision<'a> {
    action: Action,
    comment: Option<&'a str>,
    by: Option<&'a str>,
}

fn check_decision(
    action: Action,
    comment: Option<&str>,
    by: Option<&str>,
) -> Result<(), ApprovalError> {
    let invalid = |m: &str| Err(ApprovalError::Invalid(m.to_owned()));
    if action == Action::Revise && comment.is_none() {
        return invalid("revise needs a comment telling the agent what to change");
    }
    if comment.is_some_and(|c| c.contains('\0')) {
        return invalid("comment contains a NUL character, which cannot be stored");
    }
    if by.is_some_and(|c| c.contains('\0')) {
        return invalid("decided_by contains a NUL character");
    }
    if comment.is_some_and(|c| c.chars().count() > 20_000) {
        return invalid("comment longer than 20000 characters");
    }
    Ok(())
}

/// Decide a request of a run `scope` sees.
///
/// # Errors
/// [`ApprovalError::NotFound`] (also for another team's request),
/// [`ApprovalError::Conflict`] for a different second decision,
/// [`ApprovalError::RunNotWaiting`] when the run ended meanwhile,
/// [`ApprovalError::Invalid`] for a revise without a comment.
pub async fn decide(
    pool: &PgPool,
    scope: &Scope,
    id: ApprovalId,
    action: Action,
    comment: Option<&str>,
    decided_by: Option<&str>,
) -> Result<Decided, ApprovalError> {
    let comment = comment.map(str::trim).filter(|c| !c.is_empty());
    check_decision(action, comment, decided_by)?;
    let decision = Decision {
        action,
        comment,
        by: decided_by,
    };
    let mut tx = pool.begin().await?;
    // 1. Lock the run, then the request (the order of every engine transaction).
    let run_id = approvals::approvals_get_run(&mut tx, id)
        .await?
        .ok_or(ApprovalError::NotFound(id))?;
    let (run, phases) = crate::store::runs::runs_lock_with_phases(&mut tx, run_id)
        .await?
        .filter(|(r, _)| scope.sees(&r.team))
        .ok_or(ApprovalError::NotFound(id))?;
    let request = approvals::approvals_lock(&mut tx, id)
        .await?
        .ok_or(ApprovalError::NotFound(id))?;
    // 2. A repeated decision changes nothing; a different one is refused.
    if let Some(prev) = request.action {
        return if prev == action && request.comment.as_deref() == comment {
            Ok(Decided::AlreadyDecided)
        } else {
            Err(ApprovalError::Conflict { id, existing: prev })
        };
    }
    // Another branch may still run: the run waits on this request as long as it has
    // not ended and the phase still awaits approval.
    let phase = phases.iter().find(|p| p.phase_key == request.phase_key);
    let waits = phase.is_some_and(|p| p.state == PhaseState::AwaitingApproval);
    if run.state.is_terminal() || !waits {
        return Err(ApprovalError::RunNotWaiting(run.state.as_str()));
    }
    // An operator's retry re-ran the phase: this request is about an artifact of an
    // earlier round, not the one that waits now.
    if let Some(p) = phase.filter(|p| p.round != request.round) {
        return Err(ApprovalError::Superseded {
            round: request.round,
            now: p.round,
        });
    }
    // 3. Record it and act on it; 4. append the events; commit.
    let mut locked = LockedRun::new(run, phases);
    approvals::approvals_record_decision(&mut tx, &request, action, comment, decided_by).await?;
    locked.events.push(NewEvent::approval_decided(
        &request.phase_key,
        id,
        action.as_str(),
        comment,
        decided_by,
    ));
    act(&mut tx, &mut locked, &request, &decision).await?;
    locked.flush_events(&mut tx).await?;
    tx.commit().await?;
    Ok(Decided::Recorded)
}

/// What a decision does to the run.
async fn act(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    request: &ApprovalRow,
    d: &Decision<'_>,
) -> Result<(), ApprovalError> {
    let phase = request.phase_key.as_str();
    let who = d.by.unwrap_or("a reviewer");
    let because = d.comment.map(|c| format!(": {c}")).unwrap_or_default();
    match d.action {
        Action::Approve => advance::phase_accepted(conn, locked, phase).await?,
        Action::Reject => {
            let error = format!("phase {phase} rejected by {who}{because}");
            locked
                .set_phase_state(conn, phase, PhaseState::Failed, Some(&error))
                .await?;
            advance::end_run(conn, locked, RunState::Failed, Some(&error)).await?;
        }
        Action::Abort => {
            let error = format!("aborted at phase {phase} by {who}{because}");
            advance::end_run(conn, locked, RunState::Aborted, Some(&error)).await?;
        }
        Action::Revise => {
            locked.new_round(conn, phase, d.comment).await?;
            let row = locked
                .phase(phase)
                .cloned()
                .ok_or(StoreError::Stale("phase"))?;
            advance::enqueue_first_attempt(conn, locked, &row, true).await?;
            advance::settle(conn, locked).await?;
        }
    }
    Ok(())
}
