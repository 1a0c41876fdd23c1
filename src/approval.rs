//! Flow 5, decisions on approval requests. One transaction records the decision and
//! enqueues the next phase, re-runs the phase (revise) or ends the run. The same
//! decision twice is a no-op; a different second decision is refused.

use crate::advance::{self, AdvanceError};
use crate::events;
use crate::ids::{ApprovalId, RunId};
use crate::phase::enqueue_first_attempt;
use crate::queue::QueueError;
use crate::runs::{self, PhaseState, RunState};
use crate::teams::Scope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "approval_action", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Approve,
    Reject,
    Abort,
    /// Re-run the phase with the reviewer's comment (a new round).
    Revise,
}

impl Action {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
            Self::Abort => "abort",
            Self::Revise => "revise",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "approve" => Ok(Self::Approve),
            "reject" => Ok(Self::Reject),
            "abort" => Ok(Self::Abort),
            "revise" => Ok(Self::Revise),
            o => Err(format!(
                "unknown action {o:?}: expected approve, reject, abort or revise"
            )),
        }
    }
}

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
        "approval request {id} was already decided as {existing:?}; a different decision is refused"
    )]
    Conflict { id: ApprovalId, existing: Action },
    #[error("run is {0} and no longer waits on this approval")]
    RunNotWaiting(&'static str),
    #[error("invalid decision: {0}")]
    Invalid(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<AdvanceError> for ApprovalError {
    fn from(e: AdvanceError) -> Self {
        match e {
            AdvanceError::Queue(q) => Self::Queue(q),
            AdvanceError::Db(d) => Self::Db(d),
        }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApprovalRow {
    pub id: ApprovalId,
    pub run_id: RunId,
    pub phase_key: String,
    pub round: i32,
    pub gates: Vec<String>,
    pub artifact_id: i64,
    pub created_at: DateTime<Utc>,
    pub action: Option<Action>,
    pub comment: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
}

const APPROVAL_SELECT: &str =
    "SELECT r.id, r.run_id, r.phase_key, r.round, r.gates, r.artifact_id, r.created_at,
        d.action, d.comment, d.decided_by, d.decided_at
   FROM approval_requests r LEFT JOIN approval_decisions d ON d.request_id = r.id";

/// Requests that wait on a human (their run is parked on them), oldest first; only
/// those of runs `scope` sees.
///
/// # Errors
/// Database errors.
pub async fn pending(
    conn: &mut PgConnection,
    scope: &Scope,
    limit: i64,
) -> Result<Vec<ApprovalRow>, sqlx::Error> {
    sqlx::query_as::<_, ApprovalRow>(sqlx::AssertSqlSafe(format!(
        "{APPROVAL_SELECT} JOIN runs ON runs.id = r.run_id
          WHERE r.state = 'pending' AND runs.state = 'awaiting_approval'
            AND ($2::text IS NULL OR runs.team = $2)
          ORDER BY r.created_at LIMIT $1"
    )))
    .bind(limit)
    .bind(scope.team())
    .fetch_all(&mut *conn)
    .await
}

/// Every request of a run, with decisions.
///
/// # Errors
/// Database errors.
pub async fn for_run(conn: &mut PgConnection, run: RunId) -> Result<Vec<ApprovalRow>, sqlx::Error> {
    sqlx::query_as::<_, ApprovalRow>(sqlx::AssertSqlSafe(format!(
        "{APPROVAL_SELECT} WHERE r.run_id = $1 ORDER BY r.created_at"
    )))
    .bind(run)
    .fetch_all(&mut *conn)
    .await
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
    if action == Action::Revise && comment.is_none() {
        return Err(ApprovalError::Invalid(
            "revise needs a comment telling the agent what to change".into(),
        ));
    }
    if comment.is_some_and(|c| c.contains('\0')) {
        return Err(ApprovalError::Invalid(
            "comment contains a NUL character, which cannot be stored".into(),
        ));
    }
    if decided_by.is_some_and(|c| c.contains('\0')) {
        return Err(ApprovalError::Invalid(
            "decided_by contains a NUL character".into(),
        ));
    }
    if comment.is_some_and(|c| c.len() > 20_000) {
        return Err(ApprovalError::Invalid(
            "comment longer than 20000 bytes".into(),
        ));
    }
    let mut tx = pool.begin().await?;
    let run_id: Option<(RunId,)> =
        sqlx::query_as("SELECT run_id FROM approval_requests WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((run_id,)) = run_id else {
        return Err(ApprovalError::NotFound(id));
    };
    // Lock order: run, then request (as every engine transaction).
    let run = runs::lock(&mut tx, run_id)
        .await?
        .filter(|r| scope.sees(&r.team))
        .ok_or(ApprovalError::NotFound(id))?;
    let (phase_key, round): (String, i32) =
        sqlx::query_as("SELECT phase_key, round FROM approval_requests WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    let existing: Option<(Action, Option<String>)> =
        sqlx::query_as("SELECT action, comment FROM approval_decisions WHERE request_id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((prev, prev_comment)) = existing {
        return if prev == action && prev_comment.as_deref() == comment {
            Ok(Decided::AlreadyDecided)
        } else {
            Err(ApprovalError::Conflict { id, existing: prev })
        };
    }
    if run.state != RunState::AwaitingApproval {
        return Err(ApprovalError::RunNotWaiting(run.state.as_str()));
    }
    sqlx::query("INSERT INTO approval_decisions (request_id, run_id, action, comment, decided_by) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(run_id)
        .bind(action)
        .bind(comment)
        .bind(decided_by)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE approval_requests SET state = 'decided' WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    events::append(
        &mut tx,
        run_id,
        "approval.decided",
        Some(&phase_key),
        &format!("approval:{id}:decided"),
        serde_json::json!({ "approval_id": id, "action": action, "comment": comment, "by": decided_by }),
    )
    .await?;
    let who = decided_by.unwrap_or("a reviewer");
    match action {
        Action::Approve => {
            advance::phase_accepted(&mut tx, run_id, &phase_key, round, &run.queue).await?
        }
        Action::Reject => {
            let error = format!(
                "phase {phase_key} rejected by {who}{}",
                comment.map(|c| format!(": {c}")).unwrap_or_default()
            );
            runs::set_phase_state(
                &mut tx,
                run_id,
                &phase_key,
                PhaseState::Failed,
                Some(&error),
            )
            .await?;
            advance::end_run(&mut tx, run_id, RunState::Failed, Some(&error)).await?;
        }
        Action::Abort => {
            let error = format!(
                "aborted at phase {phase_key} by {who}{}",
                comment.map(|c| format!(": {c}")).unwrap_or_default()
            );
            advance::end_run(&mut tx, run_id, RunState::Aborted, Some(&error)).await?;
        }
        Action::Revise => {
            let next_round = round + 1;
            sqlx::query(
                "UPDATE run_phases SET state = 'pending', round = $3, attempts = 0, revise_comment = $4, finished_at = NULL
                  WHERE run_id = $1 AND phase_key = $2",
            )
            .bind(run_id)
            .bind(&phase_key)
            .bind(next_round)
            .bind(comment)
            .execute(&mut *tx)
            .await?;
            runs::set_state(&mut tx, run_id, RunState::Running, None).await?;
            enqueue_first_attempt(&mut tx, run_id, &phase_key, next_round, &run.queue).await?;
            events::append(
                &mut tx,
                run_id,
                "phase.queued",
                Some(&phase_key),
                &format!("phase:{phase_key}:r{next_round}:queued"),
                serde_json::json!({ "revise": true }),
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(Decided::Recorded)
}
