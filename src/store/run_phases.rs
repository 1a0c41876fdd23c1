//! `run_phases`: one row per phase of a run, with its state, attempts and round. State
//! changes go through functions that take their allowed source states from the
//! transition table (`crate::state`).

use super::StoreError;
use crate::ids::RunId;
use crate::state::PhaseState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
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
    /// The capability its jobs require (`provider:NAME`), if any.
    #[serde(default)]
    pub requires: Option<String>,
}

const PHASE_COLUMNS: &str = "position, phase_key, role, state, attempts, max_attempts, round,
    revise_comment, error, started_at, finished_at, requires";

/// The phases of a run in template order.
///
/// # Errors
/// Database errors.
pub async fn run_phases_list(
    conn: &mut PgConnection,
    run: RunId,
) -> Result<Vec<PhaseRow>, sqlx::Error> {
    sqlx::query_as::<_, PhaseRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {PHASE_COLUMNS} FROM run_phases WHERE run_id = $1 ORDER BY position"
    )))
    .bind(run)
    .fetch_all(&mut *conn)
    .await
}

/// Move `phase` (read under the run's lock) to `next`, stamping times; `error` is
/// stored as given (a phase leaving `failed` clears it). Refuses what the transition
/// table does not allow.
///
/// # Errors
/// [`StoreError::Transition`]; database errors.
pub async fn run_phases_set_state(
    conn: &mut PgConnection,
    run: RunId,
    phase: &PhaseRow,
    next: PhaseState,
    error: Option<&str>,
) -> Result<(), StoreError> {
    phase.state.check_becomes(next)?;
    let done = sqlx::query(
        "UPDATE run_phases SET state = $4, error = $5,
                finished_at = CASE WHEN $4 IN ('completed', 'failed', 'skipped') THEN now() END
          WHERE run_id = $1 AND phase_key = $2 AND state = $3",
    )
    .bind(run)
    .bind(&phase.phase_key)
    .bind(phase.state)
    .bind(next)
    .bind(error)
    .execute(&mut *conn)
    .await?;
    super::one_row_changed(&done, "phase")
}

/// Start attempt `attempt` of `phase`: it becomes `running` with that attempt count.
///
/// # Errors
/// [`StoreError::Transition`]; database errors.
pub async fn run_phases_start_attempt(
    conn: &mut PgConnection,
    run: RunId,
    phase: &PhaseRow,
    attempt: i32,
) -> Result<(), StoreError> {
    phase.state.check_becomes(PhaseState::Running)?;
    let done = sqlx::query(
        "UPDATE run_phases SET state = 'running', attempts = $4, error = NULL,
                started_at = COALESCE(started_at, now()), finished_at = NULL
          WHERE run_id = $1 AND phase_key = $2 AND state = $3",
    )
    .bind(run)
    .bind(&phase.phase_key)
    .bind(phase.state)
    .bind(attempt)
    .execute(&mut *conn)
    .await?;
    super::one_row_changed(&done, "phase")
}

/// Start a new round of `phase` (a revision with the reviewer's `comment`, or an
/// operator's retry without one): it becomes `pending` with no attempts.
///
/// # Errors
/// [`StoreError::Transition`]; database errors.
pub async fn run_phases_new_round(
    conn: &mut PgConnection,
    run: RunId,
    phase: &PhaseRow,
    comment: Option<&str>,
) -> Result<i32, StoreError> {
    phase.state.check_becomes(PhaseState::Pending)?;
    let round = phase.round + 1;
    let done = sqlx::query(
        "UPDATE run_phases SET state = 'pending', round = $4, attempts = 0, revise_comment = $5,
                error = NULL, finished_at = NULL
          WHERE run_id = $1 AND phase_key = $2 AND state = $3",
    )
    .bind(run)
    .bind(&phase.phase_key)
    .bind(phase.state)
    .bind(round)
    .bind(comment)
    .execute(&mut *conn)
    .await?;
    super::one_row_changed(&done, "phase")?;
    Ok(round)
}

/// Every phase that may become `skipped` (the run ended) does.
///
/// # Errors
/// Database errors.
pub async fn run_phases_skip_unfinished(
    conn: &mut PgConnection,
    run: RunId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE run_phases SET state = 'skipped', finished_at = now()
          WHERE run_id = $1 AND state = ANY($2)",
    )
    .bind(run)
    .bind(PhaseState::sources_of(PhaseState::Skipped))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Phases after `position` that were skipped go back to `pending` (an operator
/// re-opens a failed run; its failed phase starts a new round separately).
///
/// # Errors
/// Database errors.
pub async fn run_phases_reopen_after(
    conn: &mut PgConnection,
    run: RunId,
    position: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE run_phases SET state = 'pending', error = NULL, finished_at = NULL
          WHERE run_id = $1 AND position > $2 AND state = 'skipped'",
    )
    .bind(run)
    .bind(position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
