//! Read models for the API, the UI and the CLI: everything they show comes from here,
//! read from PostgreSQL through the store (nothing shown lives only in a process).

use crate::ids::RunId;
use crate::store::approvals::ApprovalRow;
use crate::store::artifacts::{self, ArtifactMeta};
use crate::store::files::{self, RunFile};
use crate::store::ledger::{self, CostLine};
use crate::store::run_phases::{self, PhaseRow};
use crate::store::runs::{self, RunRow, RunSummary};
use crate::store::{approvals, reports, run_inputs, templates};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

pub use crate::store::runs::RunFilter;

/// A page of runs, newest first, and the cursor of the next page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A malformed cursor.
#[derive(Debug, thiserror::Error)]
#[error("invalid cursor {0:?}: pass the next_cursor of a previous page")]
pub struct BadCursor(pub String);

/// Every cursor this module makes, and nothing else: microseconds since 1970 (up to
/// the year 2286), `_`, the run id in lower-case hyphenated form.
pub const CURSOR_PATTERN: &str =
    r"^[0-9]{1,16}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

/// Where a page of runs starts: after this run, in (created_at, id) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    created_at: DateTime<Utc>,
    id: RunId,
}

impl Cursor {
    /// Parse the `next_cursor` of an earlier page.
    ///
    /// # Errors
    /// [`BadCursor`] for anything this module did not produce.
    pub fn parse(c: &str) -> Result<Self, BadCursor> {
        static SHAPE: std::sync::LazyLock<Option<regex::Regex>> =
            std::sync::LazyLock::new(|| regex::Regex::new(CURSOR_PATTERN).ok());
        let bad = || BadCursor(c.to_owned());
        if !SHAPE.as_ref().is_some_and(|r| r.is_match(c)) {
            return Err(bad());
        }
        let (ts, id) = c.split_once('_').ok_or_else(bad)?;
        let micros: i64 = ts.parse().map_err(|_| bad())?;
        let created_at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
        Ok(Self {
            created_at,
            id: id.parse().map_err(|_| bad())?,
        })
    }

    fn of(r: &RunSummary) -> String {
        format!("{}_{}", r.created_at.timestamp_micros(), r.id)
    }
}

/// Runs matching `filter`, newest first, keyset-paginated on (created_at, id).
///
/// # Errors
/// Database errors.
pub async fn list_runs(
    conn: &mut PgConnection,
    filter: &RunFilter,
    after: Option<Cursor>,
    limit: i64,
) -> Result<RunPage, sqlx::Error> {
    let limit = limit.clamp(1, 500);
    let after = after.map(|c| (c.created_at, c.id));
    let mut runs = runs::runs_list_summaries(conn, filter, after, limit + 1).await?;
    let more = runs.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    runs.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if more {
        runs.last().map(Cursor::of)
    } else {
        None
    };
    Ok(RunPage { runs, next_cursor })
}

/// The full detail of one run, as the API and the CLI show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunDetail {
    pub run: RunRow,
    pub template: serde_json::Value,
    pub inputs: serde_json::Value,
    pub bindings: serde_json::Value,
    pub phases: Vec<PhaseRow>,
    pub artifacts: Vec<ArtifactMeta>,
    /// The run's files: inputs (`origin` "") and what accepted phases wrote.
    pub files: Vec<RunFile>,
    pub approvals: Vec<ApprovalRow>,
    pub costs: Vec<CostLine>,
    pub report: Option<serde_json::Value>,
}

/// Everything about a run but its events and artifact contents.
///
/// # Errors
/// Database errors.
pub async fn run_detail(
    conn: &mut PgConnection,
    id: RunId,
) -> Result<Option<RunDetail>, sqlx::Error> {
    // One snapshot for every table: read statement by statement, a phase committing in
    // between showed, say, its approval request on a run still `running`.
    let mut tx = sqlx::Connection::begin_with(
        &mut *conn,
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    )
    .await?;
    let Some(run) = runs::runs_get(&mut tx, id).await? else {
        return Ok(None);
    };
    let template = templates::templates_get_summary(&mut tx, &run.template_hash).await?;
    let (inputs, bindings) = run_inputs::run_inputs_detail(&mut tx, id).await?;
    let detail = RunDetail {
        template,
        inputs,
        bindings,
        phases: run_phases::run_phases_list(&mut tx, id).await?,
        artifacts: artifacts::artifacts_list(&mut tx, id).await?,
        files: files::run_files_list(&mut tx, id).await?,
        approvals: approvals::approvals_for_run(&mut tx, id).await?,
        costs: ledger::llm_calls_cost_lines(&mut tx, id).await?,
        report: reports::reports_get(&mut tx, id).await?.map(|(j, _)| j),
        run,
    };
    tx.commit().await?;
    Ok(Some(detail))
}

/// One artifact's content as stored (the agent's file, byte for byte).
///
/// # Errors
/// Database errors.
pub async fn artifact_content(
    conn: &mut PgConnection,
    run: RunId,
    id: i64,
) -> Result<Option<(ArtifactMeta, Option<String>)>, sqlx::Error> {
    artifacts::artifacts_get_with_content(conn, run, id).await
}

/// The latest artifact of a phase with its content (what an approval shows).
///
/// # Errors
/// Database errors.
pub async fn phase_artifact(
    conn: &mut PgConnection,
    run: RunId,
    phase: &str,
) -> Result<Option<(ArtifactMeta, Option<String>)>, sqlx::Error> {
    artifacts::artifacts_latest_for_phase(conn, run, phase).await
}
