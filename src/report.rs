//! The run report, composed when a run ends and stored in PostgreSQL (JSON and
//! Markdown): phases, attempts, durations, artifacts, approvals, costs and the error.

use crate::ids::RunId;
use crate::runs;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use std::fmt::Write;

#[derive(sqlx::FromRow)]
struct ArtifactSummary {
    phase_key: String,
    round: i32,
    attempt: i32,
    path: String,
    schema_id: String,
    sha256: Option<String>,
    valid: bool,
    validation_errors: Value,
}

#[derive(sqlx::FromRow)]
struct ApprovalSummary {
    phase_key: String,
    round: i32,
    gates: Vec<String>,
    action: Option<String>,
    comment: Option<String>,
    decided_by: Option<String>,
    decided_at: Option<DateTime<Utc>>,
}

/// Build the report from the database and upsert it.
///
/// # Errors
/// Database errors.
pub async fn compose_and_store(conn: &mut PgConnection, run_id: RunId) -> Result<(), sqlx::Error> {
    let Some(run) = runs::get(conn, run_id).await? else {
        return Ok(());
    };
    let (template_name, template_version): (String, String) =
        sqlx::query_as("SELECT name, version FROM templates WHERE hash = $1")
            .bind(&run.template_hash)
            .fetch_one(&mut *conn)
            .await?;
    let phases = runs::phases(conn, run_id).await?;
    let artifacts = sqlx::query_as::<_, ArtifactSummary>(
        "SELECT phase_key, round, attempt, path, schema_id, sha256, valid, validation_errors
           FROM artifacts WHERE run_id = $1 ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(&mut *conn)
    .await?;
    let approvals = sqlx::query_as::<_, ApprovalSummary>(
        "SELECT r.phase_key, r.round, r.gates, d.action::text AS action, d.comment, d.decided_by, d.decided_at
           FROM approval_requests r LEFT JOIN approval_decisions d ON d.request_id = r.id
          WHERE r.run_id = $1 ORDER BY r.created_at",
    )
    .bind(run_id)
    .fetch_all(&mut *conn)
    .await?;
    let (llm_calls, tokens, cost): (i64, i64, f64) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(tokens_in + tokens_out), 0)::bigint, COALESCE(sum(cost_usd), 0)::float8
           FROM llm_calls WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(&mut *conn)
    .await?;

    let duration_ms = |s: Option<DateTime<Utc>>, f: Option<DateTime<Utc>>| match (s, f) {
        (Some(s), Some(f)) => Some((f - s).num_milliseconds()),
        _ => None,
    };
    let phase_json: Vec<Value> = phases
        .iter()
        .map(|p| {
            let arts: Vec<Value> = artifacts
                .iter()
                .filter(|a| a.phase_key == p.phase_key)
                .map(|a| json!({ "round": a.round, "attempt": a.attempt, "path": a.path, "schema": a.schema_id,
                                 "sha256": a.sha256, "valid": a.valid, "validation_errors": a.validation_errors }))
                .collect();
            json!({ "key": p.phase_key, "role": p.role, "state": p.state, "attempts": p.attempts,
                    "max_attempts": p.max_attempts, "round": p.round, "error": p.error,
                    "started_at": p.started_at, "finished_at": p.finished_at,
                    "duration_ms": duration_ms(p.started_at, p.finished_at), "artifacts": arts })
        })
        .collect();
    let approval_json: Vec<Value> = approvals
        .iter()
        .map(|a| json!({ "phase": a.phase_key, "round": a.round, "gates": a.gates, "decision": a.action,
                         "comment": a.comment, "decided_by": a.decided_by, "decided_at": a.decided_at }))
        .collect();
    let report = json!({
        "run_id": run.id, "template": { "name": template_name, "version": template_version, "hash": run.template_hash },
        "state": run.state, "error": run.error,
        "created_at": run.created_at, "started_at": run.started_at, "finished_at": run.finished_at,
        "duration_ms": duration_ms(run.started_at.or(Some(run.created_at)), run.finished_at),
        "phases": phase_json, "approvals": approval_json,
        "costs": { "llm_calls": llm_calls, "tokens": tokens, "usd": cost,
                   "budget_usd": run.budget_usd, "budget_tokens": run.budget_tokens },
    });

    let mut md = String::new();
    let _ = writeln!(md, "# Run {}\n", run.id);
    let _ = writeln!(md, "- Template: {template_name} v{template_version}");
    let _ = writeln!(md, "- State: **{}**", run.state.as_str());
    if let Some(e) = &run.error {
        let _ = writeln!(md, "- Error: {e}");
    }
    let _ = writeln!(
        md,
        "- Cost: ${cost:.4} over {llm_calls} LLM call(s), {tokens} tokens\n"
    );
    let _ = writeln!(
        md,
        "## Phases\n\n| phase | state | attempts | round | duration | artifact sha256 |\n|---|---|---|---|---|---|"
    );
    for p in &phases {
        let sha = artifacts
            .iter()
            .rev()
            .find(|a| a.phase_key == p.phase_key && a.valid)
            .and_then(|a| a.sha256.as_deref())
            .map_or("-".to_owned(), |s| s.chars().take(12).collect());
        let dur = duration_ms(p.started_at, p.finished_at)
            .map_or("-".to_owned(), |d| format!("{:.1}s", d as f64 / 1000.0));
        let state = serde_json::to_value(p.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {state} | {}/{} | {} | {dur} | {sha} |",
            p.phase_key, p.attempts, p.max_attempts, p.round
        );
    }
    if !approvals.is_empty() {
        let _ = writeln!(md, "\n## Approvals\n");
        for a in &approvals {
            let _ = writeln!(
                md,
                "- {} (round {}, gates {}): {}{}",
                a.phase_key,
                a.round,
                a.gates.join(", "),
                a.action.as_deref().unwrap_or("pending"),
                a.comment
                    .as_deref()
                    .map(|c| format!(" — {c}"))
                    .unwrap_or_default()
            );
        }
    }
    let invalid: Vec<&ArtifactSummary> = artifacts.iter().filter(|a| !a.valid).collect();
    if !invalid.is_empty() {
        let _ = writeln!(md, "\n## Invalid attempts\n");
        for a in invalid {
            let _ = writeln!(
                md,
                "- {} round {} attempt {} ({}): {}",
                a.phase_key, a.round, a.attempt, a.path, a.validation_errors
            );
        }
    }
    sqlx::query(
        "INSERT INTO reports (run_id, final_state, json, markdown) VALUES ($1, $2, $3, $4)
         ON CONFLICT (run_id) DO UPDATE SET final_state = EXCLUDED.final_state, json = EXCLUDED.json,
                markdown = EXCLUDED.markdown, created_at = now()",
    )
    .bind(run_id)
    .bind(run.state)
    .bind(&report)
    .bind(&md)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The stored report: (json, markdown).
///
/// # Errors
/// Database errors.
pub async fn get(
    conn: &mut PgConnection,
    run_id: RunId,
) -> Result<Option<(Value, String)>, sqlx::Error> {
    sqlx::query_as("SELECT json, markdown FROM reports WHERE run_id = $1")
        .bind(run_id)
        .fetch_optional(&mut *conn)
        .await
}
