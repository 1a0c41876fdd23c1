//! Runs and their phases: states, allowed transitions, and the queries that read and
//! change them. Every engine transaction starts with [`lock`], so changes to one run
//! are serialised (two workers racing on one run cannot both complete a phase).

use crate::ids::RunId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "run_state", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Running,
    AwaitingApproval,
    Completed,
    Failed,
    Aborted,
    Cancelled,
}

impl RunState {
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Aborted | Self::Cancelled
        )
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
            Self::Cancelled => "cancelled",
        }
    }

    /// The allowed transitions, in one place.
    #[must_use]
    pub fn can_become(self, next: Self) -> bool {
        use RunState::{Aborted, AwaitingApproval, Cancelled, Completed, Failed, Queued, Running};
        matches!(
            (self, next),
            (Queued, Running | Failed | Cancelled)
                | (
                    Running,
                    Running | AwaitingApproval | Completed | Failed | Cancelled
                )
                | (
                    AwaitingApproval,
                    Running | Completed | Failed | Aborted | Cancelled
                )
        )
    }
}

impl std::str::FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "awaiting_approval" => Self::AwaitingApproval,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "aborted" => Self::Aborted,
            "cancelled" => Self::Cancelled,
            o => return Err(format!("unknown run state {o:?}")),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "phase_state", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum PhaseState {
    Pending,
    Running,
    Validating,
    AwaitingApproval,
    Completed,
    Failed,
    Skipped,
}

impl PhaseState {
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Skipped)
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Validating => "validating",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Run {
    pub id: RunId,
    pub template_hash: String,
    pub state: RunState,
    pub idempotency_key: Option<String>,
    pub submitted_by: Option<String>,
    pub budget_usd: Option<f64>,
    pub budget_tokens: Option<i64>,
    pub spent_usd: f64,
    pub spent_tokens: i64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The queue its phase jobs go to.
    pub queue: String,
    /// How many times an operator re-opened it after it failed.
    pub retries: i32,
    /// The team it belongs to.
    pub team: String,
}

const RUN_COLUMNS: &str =
    "id, template_hash, state, idempotency_key, submitted_by, budget_usd, budget_tokens,
    spent_usd, spent_tokens, error, created_at, started_at, finished_at, queue, retries, team";

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PhaseRow {
    pub position: i32,
    pub phase_key: String,
    pub role: String,
    pub state: PhaseState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub round: i32,
    pub revise_comment: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Lock and read a run. `None` when it does not exist.
///
/// # Errors
/// Database errors.
pub async fn lock(conn: &mut PgConnection, id: RunId) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as::<_, Run>(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
}

/// Read a run without locking it.
///
/// # Errors
/// Database errors.
pub async fn get(conn: &mut PgConnection, id: RunId) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as::<_, Run>(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
}

/// Runs, newest first, optionally filtered by state; keyset-paginated by `before`.
///
/// # Errors
/// Database errors.
pub async fn list(
    conn: &mut PgConnection,
    state: Option<RunState>,
    before: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as::<_, Run>(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs
          WHERE ($1::run_state IS NULL OR state = $1) AND ($2::timestamptz IS NULL OR created_at < $2)
          ORDER BY created_at DESC, id LIMIT $3"
    )))
    .bind(state)
    .bind(before)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Move a run to `next`, stamping start/finish times. The caller holds the lock.
///
/// # Errors
/// Database errors.
pub async fn set_state(
    conn: &mut PgConnection,
    id: RunId,
    next: RunState,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE runs SET state = $2, error = COALESCE($3, error), updated_at = now(),
                started_at = CASE WHEN $2 = 'running' THEN COALESCE(started_at, now()) ELSE started_at END,
                finished_at = CASE WHEN $2 IN ('completed', 'failed', 'aborted', 'cancelled') THEN now() ELSE finished_at END
          WHERE id = $1",
    )
    .bind(id)
    .bind(next)
    .bind(error)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The phases of a run in template order.
///
/// # Errors
/// Database errors.
pub async fn phases(conn: &mut PgConnection, id: RunId) -> Result<Vec<PhaseRow>, sqlx::Error> {
    sqlx::query_as::<_, PhaseRow>(
        "SELECT position, phase_key, role, state, attempts, max_attempts, round, revise_comment, error,
                started_at, finished_at
           FROM run_phases WHERE run_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await
}

/// One phase of a run.
///
/// # Errors
/// Database errors.
pub async fn phase(
    conn: &mut PgConnection,
    id: RunId,
    key: &str,
) -> Result<Option<PhaseRow>, sqlx::Error> {
    sqlx::query_as::<_, PhaseRow>(
        "SELECT position, phase_key, role, state, attempts, max_attempts, round, revise_comment, error,
                started_at, finished_at
           FROM run_phases WHERE run_id = $1 AND phase_key = $2",
    )
    .bind(id)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await
}

/// Update a phase's state (and optionally its error), stamping times.
///
/// # Errors
/// Database errors.
pub async fn set_phase_state(
    conn: &mut PgConnection,
    id: RunId,
    key: &str,
    next: PhaseState,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE run_phases SET state = $3, error = $4,
                started_at = CASE WHEN $3 = 'running' THEN COALESCE(started_at, now()) ELSE started_at END,
                finished_at = CASE WHEN $3 IN ('completed', 'failed', 'skipped') THEN now() ELSE NULL END
          WHERE run_id = $1 AND phase_key = $2",
    )
    .bind(id)
    .bind(key)
    .bind(next)
    .bind(error)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Delete up to `batch` runs that ended more than `older_than` ago, with everything of
/// theirs (events, artifacts, approvals, ledger, report; by cascade). Returns how many.
/// Call in a loop until it returns 0; small batches keep locks short.
///
/// # Errors
/// Database errors.
pub async fn prune_ended(
    conn: &mut PgConnection,
    older_than: std::time::Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM runs WHERE id IN (
             SELECT id FROM runs
              WHERE state IN ('completed', 'failed', 'aborted', 'cancelled')
                AND finished_at < now() - make_interval(secs => $1)
              LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(older_than.as_secs_f64())
    .bind(batch)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected())
}
