//! Read models for the API, the UI and the CLI: everything they show comes from here,
//! read from PostgreSQL (nothing shown lives only in a process).

use crate::ids::RunId;
use crate::runs::{Run, RunState};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// A page of runs, newest first, and the cursor of the next page.
#[derive(Debug, Clone, Serialize)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunSummary {
    pub id: RunId,
    pub state: RunState,
    pub team: String,
    pub template: String,
    pub template_version: String,
    pub submitted_by: Option<String>,
    pub spent_usd: f64,
    pub spent_tokens: i64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub pending_approvals: i64,
}

/// A malformed cursor.
#[derive(Debug, thiserror::Error)]
#[error("invalid cursor {0:?}: pass the next_cursor of a previous page")]
pub struct BadCursor(pub String);

fn parse_cursor(c: &str) -> Result<(DateTime<Utc>, RunId), BadCursor> {
    let bad = || BadCursor(c.to_owned());
    let (ts, id) = c.split_once('_').ok_or_else(bad)?;
    let micros: i64 = ts.parse().map_err(|_| bad())?;
    let at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
    Ok((at, id.parse().map_err(|_| bad())?))
}

fn cursor(r: &RunSummary) -> String {
    format!("{}_{}", r.created_at.timestamp_micros(), r.id)
}

#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this team's runs (a team's caller always has its own here).
    pub team: Option<String>,
    pub state: Option<RunState>,
    pub template: Option<String>,
    pub submitted_by: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Cursor(#[from] BadCursor),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Runs matching `filter`, newest first, keyset-paginated on (created_at, id).
///
/// # Errors
/// [`ViewError::Cursor`] for a cursor this function did not produce; database errors.
pub async fn list_runs(
    conn: &mut PgConnection,
    filter: &RunFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<RunPage, ViewError> {
    let limit = limit.clamp(1, 500);
    let after = after.map(parse_cursor).transpose()?;
    let mut runs = sqlx::query_as::<_, RunSummary>(
        "SELECT r.id, r.state, r.team, t.name AS template, t.version AS template_version, r.submitted_by,
                r.spent_usd, r.spent_tokens, r.error, r.created_at, r.finished_at,
                (SELECT count(*) FROM approval_requests a WHERE a.run_id = r.id AND a.state = 'pending') AS pending_approvals
           FROM runs r JOIN templates t ON t.hash = r.template_hash
          WHERE ($1::run_state IS NULL OR r.state = $1)
            AND ($2::text IS NULL OR t.name = $2)
            AND ($3::text IS NULL OR r.submitted_by = $3)
            AND ($4::timestamptz IS NULL OR (r.created_at, r.id) < ($4, $5))
            AND ($7::text IS NULL OR r.team = $7)
          ORDER BY r.created_at DESC, r.id DESC
          LIMIT $6",
    )
    .bind(filter.state)
    .bind(&filter.template)
    .bind(&filter.submitted_by)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit + 1)
    .bind(&filter.team)
    .fetch_all(&mut *conn)
    .await?;
    let more = runs.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    runs.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if more { runs.last().map(cursor) } else { None };
    Ok(RunPage { runs, next_cursor })
}

/// An artifact without its content.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ArtifactMeta {
    pub id: i64,
    pub phase_key: String,
    pub round: i32,
    pub attempt: i32,
    pub path: String,
    pub schema_id: String,
    pub sha256: Option<String>,
    pub valid: bool,
    pub validation_errors: serde_json::Value,
    pub bytes: Option<i32>,
    pub created_at: DateTime<Utc>,
}

const ARTIFACT_COLUMNS: &str = "id, phase_key, round, attempt, path, schema_id, sha256, valid,
    validation_errors, octet_length(content) AS bytes, created_at";

/// The artifacts of a run, oldest first.
///
/// # Errors
/// Database errors.
pub async fn artifacts(
    conn: &mut PgConnection,
    run: RunId,
) -> Result<Vec<ArtifactMeta>, sqlx::Error> {
    sqlx::query_as::<_, ArtifactMeta>(sqlx::AssertSqlSafe(format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE run_id = $1 ORDER BY id"
    )))
    .bind(run)
    .fetch_all(&mut *conn)
    .await
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
    #[derive(sqlx::FromRow)]
    struct WithContent {
        #[sqlx(flatten)]
        meta: ArtifactMeta,
        content: Option<String>,
    }
    let row = sqlx::query_as::<_, WithContent>(sqlx::AssertSqlSafe(format!(
        "SELECT {ARTIFACT_COLUMNS}, content FROM artifacts WHERE run_id = $1 AND id = $2"
    )))
    .bind(run)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| (r.meta, r.content)))
}

/// LLM spend of a run, per phase and model.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CostLine {
    pub phase_key: String,
    pub model: String,
    pub calls: i64,
    pub failed_calls: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub tokens_cached: i64,
    pub tokens_reasoning: i64,
    pub cost_usd: f64,
    pub latency_ms: i64,
}

/// The cost ledger of a run summed per phase and model.
///
/// # Errors
/// Database errors.
pub async fn costs(conn: &mut PgConnection, run: RunId) -> Result<Vec<CostLine>, sqlx::Error> {
    sqlx::query_as::<_, CostLine>(
        "SELECT phase_key, model, count(*) AS calls, count(*) FILTER (WHERE status <> 'ok') AS failed_calls,
                COALESCE(sum(tokens_in), 0)::bigint AS tokens_in, COALESCE(sum(tokens_out), 0)::bigint AS tokens_out,
                COALESCE(sum(tokens_cached), 0)::bigint AS tokens_cached,
                COALESCE(sum(tokens_reasoning), 0)::bigint AS tokens_reasoning,
                COALESCE(sum(cost_usd), 0)::float8 AS cost_usd, COALESCE(sum(latency_ms), 0)::bigint AS latency_ms
           FROM llm_calls WHERE run_id = $1 GROUP BY phase_key, model ORDER BY min(id)",
    )
    .bind(run)
    .fetch_all(&mut *conn)
    .await
}

/// The full detail of one run, as the API and the CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    pub run: Run,
    pub template: serde_json::Value,
    pub inputs: serde_json::Value,
    pub bindings: serde_json::Value,
    pub phases: Vec<crate::runs::PhaseRow>,
    pub artifacts: Vec<ArtifactMeta>,
    pub approvals: Vec<crate::approval::ApprovalRow>,
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
    let Some(run) = crate::runs::get(conn, id).await? else {
        return Ok(None);
    };
    let (template,): (serde_json::Value,) =
        sqlx::query_as("SELECT jsonb_build_object('name', name, 'version', version, 'hash', hash) FROM templates WHERE hash = $1")
            .bind(&run.template_hash)
            .fetch_one(&mut *conn)
            .await?;
    let inputs: Option<(serde_json::Value,)> = sqlx::query_as(
        "SELECT jsonb_build_object('requirements', requirements, 'objective', objective, 'extra', extra)
           FROM run_inputs WHERE run_id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let (bindings,): (serde_json::Value,) = sqlx::query_as(
        "SELECT COALESCE(jsonb_agg(jsonb_build_object(
                'role', b.role, 'persona', p.name, 'persona_version', p.version, 'model', p.body->'model',
                'backend', p.body->'backend', 'persona_hash', b.persona_hash, 'binding_hash', b.binding_hash,
                'overridden', b.overridden) ORDER BY b.role), '[]'::jsonb)
           FROM run_bindings b JOIN personas p ON p.hash = b.persona_hash WHERE b.run_id = $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let phases = crate::runs::phases(conn, id).await?;
    let artifacts = artifacts(conn, id).await?;
    let approvals = crate::approval::for_run(conn, id).await?;
    let costs = costs(conn, id).await?;
    let report = crate::report::get(conn, id).await?.map(|(j, _)| j);
    Ok(Some(RunDetail {
        run,
        template,
        inputs: inputs.map_or(serde_json::Value::Null, |i| i.0),
        bindings,
        phases,
        artifacts,
        approvals,
        costs,
        report,
    }))
}
