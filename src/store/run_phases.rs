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
    /// The phases it needs; `None` for runs stored before phases named their needs:
    /// the phase before it by position (see [`PhaseRow::needs_in`]).
    #[serde(default)]
    pub needs: Option<Vec<String>>,
    /// For an item of a fan-out: the fan-out phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// For an item of a fan-out: its element's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_index: Option<i32>,
}

impl PhaseRow {
    /// The phases it needs, among the run's `phases` (a row without `needs` needs the
    /// top-level phase before it by position).
    #[must_use]
    pub fn needs_in(&self, phases: &[PhaseRow]) -> Vec<String> {
        if self.parent.is_some() {
            return Vec::new();
        }
        self.needs.clone().unwrap_or_else(|| {
            phases
                .iter()
                .filter(|p| p.parent.is_none() && p.position < self.position)
                .max_by_key(|p| p.position)
                .map(|p| vec![p.phase_key.clone()])
                .unwrap_or_default()
        })
    }

    /// The key of the template phase it runs (an item runs its fan-out's phase).
    #[must_use]
    pub fn template_key(&self) -> &str {
        self.parent.as_deref().unwrap_or(&self.phase_key)
    }
}

/// The key of item `index` of fan-out phase `phase`.
#[must_use]
pub fn item_key(phase: &str, index: usize) -> String {
    format!("{phase}[{index}]")
}

const PHASE_COLUMNS: &str = "position, phase_key, role, state, attempts, max_attempts, round,
    revise_comment, error, started_at, finished_at, requires, needs, parent, item_index";

/// The phases of a run in template order.
///
/// # Errors
/// Database errors.
pub async fn run_phases_list(
    conn: &mut PgConnection,
    run: RunId,
) -> Result<Vec<PhaseRow>, sqlx::Error> {
    sqlx::query_as::<_, PhaseRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {PHASE_COLUMNS} FROM run_phases WHERE run_id = $1 ORDER BY position, item_index NULLS FIRST"
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

/// A change of one phase row that a [`crate::advance::LockedRun`] holds back until its
/// transaction writes its events: the phase goes from `from` (its state as the row
/// holds it now) to `to`; `attempts` is set when an attempt starts (`started`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseWrite {
    pub phase_key: String,
    pub from: PhaseState,
    pub to: PhaseState,
    pub attempts: Option<i32>,
    pub error: Option<String>,
    pub started: bool,
}

/// The `UPDATE` that writes [`PhaseWrite`]s of run `$1`, its arrays bound from parameter
/// `$first` on (see [`PhaseWriteArrays`]); the same stamps as
/// [`run_phases_set_state`] and [`run_phases_start_attempt`]. A row no longer in its
/// `from` state is not written (the caller compares the count).
pub(super) fn write_many_sql(first: usize) -> String {
    let [keys, from, to, attempts, errors, started] = std::array::from_fn(|i| first + i);
    format!(
        "UPDATE run_phases p SET state = w.next, attempts = COALESCE(w.attempts, p.attempts),
                error = w.error,
                started_at = CASE WHEN w.started THEN COALESCE(p.started_at, now()) ELSE p.started_at END,
                finished_at = CASE WHEN w.next IN ('completed', 'failed', 'skipped') THEN now() END
           FROM unnest(${keys}::text[], ${from}::phase_state[], ${to}::phase_state[], ${attempts}::int4[],
                       ${errors}::text[], ${started}::bool[]) AS w(key, expected, next, attempts, error, started)
          WHERE p.run_id = $1 AND p.phase_key = w.key AND p.state = w.expected
      RETURNING 1"
    )
}

/// [`PhaseWrite`]s as the columns [`write_many_sql`] binds, in order.
pub(super) struct PhaseWriteArrays<'a> {
    pub keys: Vec<&'a str>,
    pub from: Vec<PhaseState>,
    pub to: Vec<PhaseState>,
    pub attempts: Vec<Option<i32>>,
    pub errors: Vec<Option<&'a str>>,
    pub started: Vec<bool>,
}

impl<'a> PhaseWriteArrays<'a> {
    pub(super) fn of(writes: &'a [PhaseWrite]) -> Self {
        Self {
            keys: writes.iter().map(|w| w.phase_key.as_str()).collect(),
            from: writes.iter().map(|w| w.from).collect(),
            to: writes.iter().map(|w| w.to).collect(),
            attempts: writes.iter().map(|w| w.attempts).collect(),
            errors: writes.iter().map(|w| w.error.as_deref()).collect(),
            started: writes.iter().map(|w| w.started).collect(),
        }
    }

    /// Bind the arrays to `query`, in [`write_many_sql`]'s order.
    pub(super) fn bind<'q, O>(self, query: super::PgQueryAs<'q, O>) -> super::PgQueryAs<'q, O>
    where
        'a: 'q,
    {
        query
            .bind(self.keys)
            .bind(self.from)
            .bind(self.to)
            .bind(self.attempts)
            .bind(self.errors)
            .bind(self.started)
    }
}

static WRITE_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH written AS ({}) SELECT count(*) FROM written",
        write_many_sql(2)
    )
});

/// Write `writes` of run `run` in one statement.
///
/// # Errors
/// [`StoreError::Stale`] when a row was not in its `from` state; database errors.
pub async fn run_phases_write_many(
    conn: &mut PgConnection,
    run: RunId,
    writes: &[PhaseWrite],
) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    let query = sqlx::query_as::<_, (i64,)>(WRITE_MANY.as_str()).bind(run);
    let (written,) = PhaseWriteArrays::of(writes)
        .bind(query)
        .fetch_one(&mut *conn)
        .await?;
    all_written(written, writes)
}

/// `Ok` when a write statement changed one row per write.
///
/// # Errors
/// [`StoreError::Stale`] otherwise.
pub(super) fn all_written(written: i64, writes: &[PhaseWrite]) -> Result<(), StoreError> {
    if usize::try_from(written).is_ok_and(|n| n == writes.len()) {
        Ok(())
    } else {
        Err(StoreError::Stale("phase"))
    }
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

/// Every skipped phase goes back to `pending` in a new round (an operator re-opens a
/// failed run; its failed phases start a new round separately). A new round gives a
/// re-opened phase new job keys: its earlier round's job may have been cancelled.
///
/// # Errors
/// Database errors.
pub async fn run_phases_reopen_skipped(
    conn: &mut PgConnection,
    run: RunId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE run_phases SET state = 'pending', round = round + 1, attempts = 0, error = NULL,
                finished_at = NULL
          WHERE run_id = $1 AND state = 'skipped'",
    )
    .bind(run)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A fan-out's items, pending, each with its element.
pub struct NewItems<'a> {
    pub parent: &'a PhaseRow,
    pub elements: &'a [serde_json::Value],
}

/// Insert the items of a fan-out phase (`parent[0]`, `parent[1]`, ...): each pending,
/// with its parent's role, attempts and capability, and its element. Returns the rows.
///
/// # Errors
/// Database errors.
pub async fn run_phases_insert_items(
    conn: &mut PgConnection,
    run: RunId,
    new: &NewItems<'_>,
) -> Result<Vec<PhaseRow>, sqlx::Error> {
    let p = new.parent;
    let keys: Vec<String> = (0..new.elements.len())
        .map(|i| item_key(&p.phase_key, i))
        .collect();
    let indexes: Vec<i32> = (0..new.elements.len())
        .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
        .collect();
    sqlx::query_as::<_, PhaseRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO run_phases (run_id, position, phase_key, role, max_attempts, requires, needs,
                                 parent, item_index, item)
         SELECT $1, $2, i.key, $3, $4, $5, '{{}}', $6, i.index, i.element
           FROM unnest($7::text[], $8::int[], $9::jsonb[]) AS i(key, index, element)
         RETURNING {PHASE_COLUMNS}"
    )))
    .bind(run)
    .bind(p.position)
    .bind(&p.role)
    .bind(p.max_attempts)
    .bind(&p.requires)
    .bind(&p.phase_key)
    .bind(&keys)
    .bind(&indexes)
    .bind(new.elements)
    .fetch_all(&mut *conn)
    .await
}
