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
use crate::store::run_phases::PhaseRow;
use crate::store::runs::RunRow;
use crate::teams::Scope;
use crate::workflow::OnTimeout;
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
    #[error(
        "this approval was escalated to group {0:?} when its deadline passed; decide it with a token of that group"
    )]
    EscalatedTo(String),
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

/// Decide a request of a run `scope` sees, as someone who may decide any request
/// (an operator at the CLI, a fleet-wide admin). See [`decide_as_member`].
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
    decide_as_member(pool, scope, None, id, action, comment, decided_by).await
}

/// [`decide`] by a member of `groups` (`None`: any group): a request escalated to a
/// group the decider is not in is refused.
///
/// # Errors
/// As [`decide`]; [`ApprovalError::EscalatedTo`] for a request escalated elsewhere.
pub async fn decide_as_member(
    pool: &PgPool,
    scope: &Scope,
    decider_groups: Option<&[String]>,
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
    let (run, phases, request) = lock_request(&mut tx, id)
        .await?
        .filter(|(r, _, _)| scope.sees(&r.team))
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
    // An escalated request waits on its group: only that group (or a fleet-wide
    // admin, or an operator at the CLI) decides it.
    if let (Some(group), Some(groups)) = (
        request
            .escalate_to
            .as_deref()
            .filter(|_| request.escalated_at.is_some()),
        decider_groups,
    ) && !groups.iter().any(|g| g == group)
    {
        return Err(ApprovalError::EscalatedTo(group.to_owned()));
    }
    // 3. Record it and act on it; 4. append the events; commit.
    let mut locked = LockedRun::new(run, phases);
    record_and_act(&mut tx, &mut locked, &request, &decision).await?;
    tx.commit().await?;
    Ok(Decided::Recorded)
}

/// A request with its run and the run's phases, locked in the engine's order: the run
/// (with its phases), then the request. `None` when there is no such request.
async fn lock_request(
    conn: &mut PgConnection,
    id: ApprovalId,
) -> Result<Option<(RunRow, Vec<PhaseRow>, ApprovalRow)>, sqlx::Error> {
    let Some(run_id) = approvals::approvals_get_run(conn, id).await? else {
        return Ok(None);
    };
    let Some((run, phases)) = crate::store::runs::runs_lock_with_phases(conn, run_id).await? else {
        return Ok(None);
    };
    Ok(approvals::approvals_lock(conn, id)
        .await?
        .map(|request| (run, phases, request)))
}

/// Record `d` on `request`, act on it and append the events.
async fn record_and_act(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    request: &ApprovalRow,
    d: &Decision<'_>,
) -> Result<(), ApprovalError> {
    approvals::approvals_record_decision(conn, request, d.action, d.comment, d.by).await?;
    locked.events.push(NewEvent::approval_decided(
        &request.phase_key,
        request.id,
        d.action.as_str(),
        d.comment,
        d.by,
    ));
    act(conn, locked, request, d).await?;
    locked.flush_events(conn).await?;
    Ok(())
}

/// The queue job that applies an approval's deadline.
pub const DEADLINE_JOB_KIND: &str = "approval_deadline";

/// Schedule the job that applies approval `id`'s deadline at `at`, on the run's queue
/// (in the transaction that creates the request). No process waits for it.
///
/// # Errors
/// Queue errors.
pub async fn schedule_deadline(
    conn: &mut PgConnection,
    queue: &str,
    run: RunId,
    id: ApprovalId,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), QueueError> {
    let job =
        crate::queue::NewJob::new(DEADLINE_JOB_KIND, serde_json::json!({ "approval_id": id }))
            .queue(queue)
            .run_at(at)
            .run_id(run)
            .unique_key(format!("approval-deadline:{id}"));
    crate::queue::enqueue(conn, &job).await?;
    Ok(())
}

/// What a deadline did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineOutcome {
    /// Decided (or escalated) as the gate said.
    Applied(OnTimeout),
    /// A person decided in time, the run ended or moved on: nothing to do.
    NothingWaits,
}

/// Apply approval `id`'s deadline, and complete its job under `lease`, in one
/// transaction: an undecided request of a run that still waits on it is rejected,
/// aborted, approved or escalated as its gate says; anything else changes nothing.
///
/// # Errors
/// [`ApprovalError`]; a lost lease is [`QueueError::LeaseLost`] (nothing applied).
pub async fn apply_deadline(
    pool: &PgPool,
    lease: &crate::queue::Lease,
    id: ApprovalId,
) -> Result<(DeadlineOutcome, crate::queue::Completed), ApprovalError> {
    let mut tx = pool.begin().await?;
    let outcome = apply_deadline_in(&mut tx, id).await?;
    let completed = crate::queue::complete(&mut tx, lease).await?;
    tx.commit().await?;
    Ok((outcome, completed))
}

async fn apply_deadline_in(
    conn: &mut PgConnection,
    id: ApprovalId,
) -> Result<DeadlineOutcome, ApprovalError> {
    let Some((run, phases, request)) = lock_request(conn, id).await? else {
        return Ok(DeadlineOutcome::NothingWaits);
    };
    let waits = phases.iter().any(|p| {
        p.phase_key == request.phase_key
            && p.round == request.round
            && p.state == PhaseState::AwaitingApproval
    });
    let on_timeout = request.on_timeout.as_deref().and_then(OnTimeout::parse);
    let (Some(on_timeout), true, None, None, false) = (
        on_timeout,
        waits,
        request.action,
        request.escalated_at,
        run.state.is_terminal(),
    ) else {
        return Ok(DeadlineOutcome::NothingWaits);
    };
    let mut locked = LockedRun::new(run, phases);
    let action = match on_timeout {
        OnTimeout::Reject => Action::Reject,
        OnTimeout::Abort => Action::Abort,
        OnTimeout::Approve => Action::Approve,
        OnTimeout::Escalate => {
            approvals::approvals_mark_escalated(conn, id).await?;
            let group = request.escalate_to.as_deref().unwrap_or_default();
            locked
                .events
                .push(NewEvent::approval_escalated(&request.phase_key, id, group));
            locked.flush_events(conn).await?;
            return Ok(DeadlineOutcome::Applied(on_timeout));
        }
    };
    let comment = "no decision before the approval's deadline";
    let decision = Decision {
        action,
        comment: Some(comment),
        by: Some("deadline"),
    };
    record_and_act(conn, &mut locked, &request, &decision).await?;
    Ok(DeadlineOutcome::Applied(on_timeout))
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
