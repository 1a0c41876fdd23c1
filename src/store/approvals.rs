//! `approval_requests` and `approval_decisions`: a gated phase's request for a human,
//! keyed by run, phase, round and artifact path; at most one decision each.

use crate::ids::{ApprovalId, RunId};
use crate::teams::Scope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
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

/// A request with its decision, if any.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
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
    /// When `on_timeout` applies to it if nobody decided.
    pub deadline_at: Option<DateTime<Utc>>,
    /// `reject`, `abort`, `approve` or `escalate`.
    pub on_timeout: Option<String>,
    /// The approver group it goes to on escalation.
    pub escalate_to: Option<String>,
    /// Set once the deadline escalated it: from then on only `escalate_to` decides.
    pub escalated_at: Option<DateTime<Utc>>,
}

const APPROVAL_SELECT: &str =
    "SELECT r.id, r.run_id, r.phase_key, r.round, r.gates, r.artifact_id, r.created_at,
        d.action, d.comment, d.decided_by, d.decided_at,
        r.deadline_at, r.on_timeout, r.escalate_to, r.escalated_at
   FROM approval_requests r LEFT JOIN approval_decisions d ON d.request_id = r.id";

/// A new approval request.
#[derive(Debug, Clone)]
pub struct NewRequest<'a> {
    pub id: ApprovalId,
    pub run: RunId,
    pub phase: &'a str,
    pub round: i32,
    pub artifact_id: i64,
    pub gates: &'a [String],
    /// Unique per run: run, phase, round and artifact path.
    pub key: &'a str,
    /// The deadline (seconds from now, by the database's clock), what it does, and the
    /// group an escalation goes to.
    pub deadline: Option<(f64, &'a str, Option<&'a str>)>,
}

/// A request [`approvals_insert_request`] created.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct CreatedRequest {
    pub id: ApprovalId,
    pub deadline_at: Option<DateTime<Utc>>,
}

/// Create the request; `None` when the run has one under this key already.
///
/// # Errors
/// Database errors.
pub async fn approvals_insert_request(
    conn: &mut PgConnection,
    r: &NewRequest<'_>,
) -> Result<Option<CreatedRequest>, sqlx::Error> {
    sqlx::query_as::<_, CreatedRequest>(
        "INSERT INTO approval_requests (id, run_id, phase_key, round, artifact_id, gates, idempotency_key,
                                        deadline_at, on_timeout, escalate_to)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8), $9, $10)
         ON CONFLICT (run_id, idempotency_key) DO NOTHING RETURNING id, deadline_at",
    )
    .bind(r.id)
    .bind(r.run)
    .bind(r.phase)
    .bind(r.round)
    .bind(r.artifact_id)
    .bind(r.gates)
    .bind(r.key)
    .bind(r.deadline.map(|d| d.0))
    .bind(r.deadline.map(|d| d.1))
    .bind(r.deadline.and_then(|d| d.2))
    .fetch_optional(&mut *conn)
    .await
}

/// The run a request belongs to (no lock: the caller locks the run, then the request).
///
/// # Errors
/// Database errors.
pub async fn approvals_get_run(
    conn: &mut PgConnection,
    id: ApprovalId,
) -> Result<Option<RunId>, sqlx::Error> {
    let row: Option<(RunId,)> =
        sqlx::query_as("SELECT run_id FROM approval_requests WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(r,)| r))
}

/// Lock a request and read it with its decision.
///
/// # Errors
/// Database errors.
pub async fn approvals_lock(
    conn: &mut PgConnection,
    id: ApprovalId,
) -> Result<Option<ApprovalRow>, sqlx::Error> {
    sqlx::query_as::<_, ApprovalRow>(sqlx::AssertSqlSafe(format!(
        "{APPROVAL_SELECT} WHERE r.id = $1 FOR UPDATE OF r"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
}

/// Record the decision and mark the request decided, in one statement.
///
/// # Errors
/// Database errors.
pub async fn approvals_record_decision(
    conn: &mut PgConnection,
    request: &ApprovalRow,
    action: Action,
    comment: Option<&str>,
    decided_by: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH decided AS (
             UPDATE approval_requests SET state = 'decided' WHERE id = $1
         )
         INSERT INTO approval_decisions (request_id, run_id, action, comment, decided_by)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(request.id)
    .bind(request.run_id)
    .bind(action)
    .bind(comment)
    .bind(decided_by)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Mark a request escalated to its group (its deadline has passed).
///
/// # Errors
/// Database errors.
pub async fn approvals_mark_escalated(
    conn: &mut PgConnection,
    id: ApprovalId,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE approval_requests SET escalated_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// What makes an undecided request one a human is waited on for: its phase awaits
/// approval in the request's round (another branch of the run may still be running; a
/// request of an ended run, or of an earlier round an operator's retry left behind,
/// is not).
const WAITED_ON: &str = "JOIN runs ON runs.id = r.run_id
     JOIN run_phases ph ON ph.run_id = r.run_id AND ph.phase_key = r.phase_key
                       AND ph.round = r.round AND ph.state = 'awaiting_approval'";

/// Requests that wait on a human, oldest first; only those of runs `scope` sees.
///
/// # Errors
/// Database errors.
pub async fn approvals_pending(
    conn: &mut PgConnection,
    scope: &Scope,
    limit: i64,
) -> Result<Vec<ApprovalRow>, sqlx::Error> {
    sqlx::query_as::<_, ApprovalRow>(sqlx::AssertSqlSafe(format!(
        "{APPROVAL_SELECT} {WAITED_ON}
          WHERE r.state = 'pending' AND ($2::text IS NULL OR runs.team = $2)
          ORDER BY r.created_at LIMIT $1"
    )))
    .bind(limit)
    .bind(scope.team())
    .fetch_all(&mut *conn)
    .await
}

/// The requests of any of `runs` that wait on a human (a cancelled run's undecided
/// request does not), oldest first.
///
/// # Errors
/// Database errors.
pub async fn approvals_pending_for_runs(
    conn: &mut PgConnection,
    runs: &[RunId],
) -> Result<Vec<ApprovalRow>, sqlx::Error> {
    sqlx::query_as::<_, ApprovalRow>(sqlx::AssertSqlSafe(format!(
        "{APPROVAL_SELECT} {WAITED_ON}
          WHERE r.run_id = ANY($1) AND r.state = 'pending'
          ORDER BY r.created_at"
    )))
    .bind(runs)
    .fetch_all(&mut *conn)
    .await
}

/// Every request of a run, with decisions, oldest first.
///
/// # Errors
/// Database errors.
pub async fn approvals_for_run(
    conn: &mut PgConnection,
    run: RunId,
) -> Result<Vec<ApprovalRow>, sqlx::Error> {
    sqlx::query_as::<_, ApprovalRow>(sqlx::AssertSqlSafe(format!(
        "{APPROVAL_SELECT} WHERE r.run_id = $1 ORDER BY r.created_at"
    )))
    .bind(run)
    .fetch_all(&mut *conn)
    .await
}

/// One request with its decision, if any.
///
/// # Errors
/// Database errors.
pub async fn approvals_get(
    conn: &mut PgConnection,
    id: ApprovalId,
) -> Result<Option<ApprovalRow>, sqlx::Error> {
    sqlx::query_as::<_, ApprovalRow>(sqlx::AssertSqlSafe(format!(
        "{APPROVAL_SELECT} WHERE r.id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
}
