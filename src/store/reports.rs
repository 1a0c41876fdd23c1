//! `reports`: the JSON and Markdown report of an ended run; and everything a report is
//! composed from, read in one statement.

use crate::ids::RunId;
use crate::state::RunState;
use crate::store::approvals::ApprovalRow;
use crate::store::artifacts::ArtifactMeta;
use crate::store::run_phases::PhaseRow;
use crate::store::runs::{RUN_COLUMNS, RunRow};
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgConnection;
use sqlx::types::Json;

/// The costs a report shows: calls, tokens and USD, from the ledger.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct CostTotals {
    pub llm_calls: i64,
    pub tokens: i64,
    pub usd: f64,
}

/// One phase's model calls from the ledger.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PhaseCost {
    pub phase_key: String,
    pub llm_calls: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub usd: f64,
}

/// What a run's report is composed from.
#[derive(Debug, Clone)]
pub struct ReportInputs {
    pub run: RunRow,
    pub template_name: String,
    pub template_version: String,
    pub phases: Vec<PhaseRow>,
    pub artifacts: Vec<ArtifactMeta>,
    pub approvals: Vec<ApprovalRow>,
    pub costs: CostTotals,
    pub phase_costs: Vec<PhaseCost>,
}

#[derive(sqlx::FromRow)]
struct InputsRow {
    #[sqlx(flatten)]
    run: RunRow,
    template_name: String,
    template_version: String,
    phases: Json<Vec<PhaseRow>>,
    artifacts: Json<Vec<ArtifactMeta>>,
    approvals: Json<Vec<ApprovalRow>>,
    costs: Json<CostTotals>,
    phase_costs: Json<Vec<PhaseCost>>,
}

/// Read everything a run's report shows (its current state included), in one statement.
///
/// # Errors
/// Database errors.
pub async fn reports_load_inputs(
    conn: &mut PgConnection,
    run: RunId,
) -> Result<Option<ReportInputs>, sqlx::Error> {
    let row = sqlx::query_as::<_, InputsRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS},
                t.name AS template_name, t.version AS template_version,
                (SELECT COALESCE(jsonb_agg(to_jsonb(p) - 'run_id' - 'item' ORDER BY p.position, p.item_index NULLS FIRST), '[]'::jsonb)
                   FROM run_phases p WHERE p.run_id = r.id) AS phases,
                (SELECT COALESCE(jsonb_agg(jsonb_build_object('id', a.id, 'phase_key', a.phase_key,
                        'round', a.round, 'attempt', a.attempt, 'path', a.path, 'schema_id', a.schema_id,
                        'sha256', a.sha256, 'valid', a.valid, 'validation_errors', a.validation_errors,
                        'bytes', octet_length(a.content), 'created_at', a.created_at) ORDER BY a.id), '[]'::jsonb)
                   FROM artifacts a WHERE a.run_id = r.id) AS artifacts,
                (SELECT COALESCE(jsonb_agg(jsonb_build_object('id', q.id, 'run_id', q.run_id,
                        'phase_key', q.phase_key, 'round', q.round, 'gates', q.gates,
                        'artifact_id', q.artifact_id, 'created_at', q.created_at, 'action', d.action,
                        'comment', d.comment, 'decided_by', d.decided_by, 'decided_at', d.decided_at)
                        ORDER BY q.created_at), '[]'::jsonb)
                   FROM approval_requests q LEFT JOIN approval_decisions d ON d.request_id = q.id
                  WHERE q.run_id = r.id) AS approvals,
                (SELECT jsonb_build_object('llm_calls', count(*),
                        'tokens', COALESCE(sum(tokens_in + tokens_out), 0),
                        'usd', COALESCE(sum(cost_usd), 0))
                   FROM llm_calls WHERE run_id = r.id) AS costs,
                (SELECT COALESCE(jsonb_agg(to_jsonb(c)), '[]'::jsonb) FROM (
                    SELECT phase_key, count(*) AS llm_calls, COALESCE(sum(tokens_in), 0) AS tokens_in,
                           COALESCE(sum(tokens_out), 0) AS tokens_out, COALESCE(sum(cost_usd), 0) AS usd
                      FROM llm_calls WHERE run_id = r.id GROUP BY phase_key) c) AS phase_costs
           FROM runs r JOIN templates t ON t.hash = r.template_hash WHERE r.id = $1"
    )))
    .bind(run)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(ReportInputs {
        run: row.run,
        template_name: row.template_name,
        template_version: row.template_version,
        phases: row.phases.0,
        artifacts: row.artifacts.0,
        approvals: row.approvals.0,
        costs: row.costs.0,
        phase_costs: row.phase_costs.0,
    }))
}

/// Store (or replace) a run's report.
///
/// # Errors
/// Database errors.
pub async fn reports_upsert(
    conn: &mut PgConnection,
    run: RunId,
    final_state: RunState,
    json: &Value,
    markdown: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO reports (run_id, final_state, json, markdown) VALUES ($1, $2, $3, $4)
         ON CONFLICT (run_id) DO UPDATE SET final_state = EXCLUDED.final_state, json = EXCLUDED.json,
                markdown = EXCLUDED.markdown, created_at = now()",
    )
    .bind(run)
    .bind(final_state)
    .bind(json)
    .bind(markdown)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The stored report: (json, markdown).
///
/// # Errors
/// Database errors.
pub async fn reports_get(
    conn: &mut PgConnection,
    run: RunId,
) -> Result<Option<(Value, String)>, sqlx::Error> {
    sqlx::query_as("SELECT json, markdown FROM reports WHERE run_id = $1")
        .bind(run)
        .fetch_optional(&mut *conn)
        .await
}

/// Remove a run's report (an operator re-opened it).
///
/// # Errors
/// Database errors.
pub async fn reports_delete(conn: &mut PgConnection, run: RunId) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM reports WHERE run_id = $1")
        .bind(run)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
