//! The run report, composed when a run ends and stored in PostgreSQL (JSON and
//! Markdown): phases, attempts, durations, artifacts, approvals, costs and the error.
//! Three steps: load (one statement), render (pure), store.

use crate::ids::RunId;
use crate::store::reports::{self, ReportInputs};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use std::fmt::Write;

/// Build the report from the database and upsert it.
///
/// # Errors
/// Database errors.
pub async fn compose_and_store(conn: &mut PgConnection, run_id: RunId) -> Result<(), sqlx::Error> {
    let Some(inputs) = reports::reports_load_inputs(conn, run_id).await? else {
        return Ok(());
    };
    let (json, markdown) = (render_json(&inputs), render_markdown(&inputs));
    reports::reports_upsert(conn, run_id, inputs.run.state, &json, &markdown).await
}

fn phase_cost(r: &ReportInputs, phase: &str) -> reports::PhaseCost {
    r.phase_costs
        .iter()
        .find(|c| c.phase_key == phase)
        .cloned()
        .unwrap_or_default()
}

fn duration_ms(start: Option<DateTime<Utc>>, finish: Option<DateTime<Utc>>) -> Option<i64> {
    Some((finish? - start?).num_milliseconds())
}

/// The report as JSON.
#[must_use]
pub fn render_json(r: &ReportInputs) -> Value {
    let run = &r.run;
    let phases: Vec<Value> = r
        .phases
        .iter()
        .map(|p| {
            let artifacts: Vec<Value> = r
                .artifacts
                .iter()
                .filter(|a| a.phase_key == p.phase_key)
                .map(|a| json!({ "round": a.round, "attempt": a.attempt, "path": a.path, "schema": a.schema_id,
                                 "sha256": a.sha256, "valid": a.valid, "validation_errors": a.validation_errors }))
                .collect();
            let cost = phase_cost(r, &p.phase_key);
            json!({ "key": p.phase_key, "needs": p.needs_in(&r.phases), "parent": p.parent,
                    "role": p.role, "state": p.state, "attempts": p.attempts,
                    "max_attempts": p.max_attempts, "round": p.round, "error": p.error,
                    "started_at": p.started_at, "finished_at": p.finished_at,
                    "duration_ms": duration_ms(p.started_at, p.finished_at), "artifacts": artifacts,
                    "llm_calls": cost.llm_calls, "tokens_in": cost.tokens_in, "tokens_out": cost.tokens_out,
                    "usd": cost.usd })
        })
        .collect();
    let approvals: Vec<Value> = r
        .approvals
        .iter()
        .map(|a| json!({ "phase": a.phase_key, "round": a.round, "gates": a.gates, "decision": a.action,
                         "comment": a.comment, "decided_by": a.decided_by, "decided_at": a.decided_at }))
        .collect();
    json!({
        "run_id": run.id, "team": run.team,
        "template": { "name": r.template_name, "version": r.template_version, "hash": run.template_hash },
        "state": run.state, "error": run.error,
        "created_at": run.created_at, "started_at": run.started_at, "finished_at": run.finished_at,
        "duration_ms": duration_ms(run.started_at.or(Some(run.created_at)), run.finished_at),
        "phases": phases, "approvals": approvals,
        "costs": { "llm_calls": r.costs.llm_calls, "tokens": r.costs.tokens, "usd": r.costs.usd,
                   "budget_usd": run.budget_usd, "budget_tokens": run.budget_tokens },
    })
}

/// The report as Markdown: a summary, the phases' table, their graph, the approvals
/// and the invalid attempts.
#[must_use]
pub fn render_markdown(r: &ReportInputs) -> String {
    let mut md = String::new();
    summary(&mut md, r);
    phase_table(&mut md, r);
    graph(&mut md, r);
    approvals(&mut md, r);
    invalid_attempts(&mut md, r);
    md
}

fn summary(md: &mut String, r: &ReportInputs) {
    let run = &r.run;
    let _ = writeln!(md, "# Run {}\n", run.id);
    let _ = writeln!(
        md,
        "- Template: {} v{}",
        r.template_name, r.template_version
    );
    let _ = writeln!(md, "- State: **{}**", run.state.as_str());
    if let Some(e) = &run.error {
        let _ = writeln!(md, "- Error: {e}");
    }
    let _ = writeln!(
        md,
        "- Cost: ${:.4} over {} LLM call(s), {} tokens\n",
        r.costs.usd, r.costs.llm_calls, r.costs.tokens
    );
}

fn phase_table(md: &mut String, r: &ReportInputs) {
    let _ = writeln!(
        md,
        "## Phases\n\n| phase | needs | state | attempts | round | duration | model calls | tokens in/out | artifact sha256 |\n|---|---|---|---|---|---|---|---|---|"
    );
    for p in &r.phases {
        let needs = match &p.parent {
            Some(parent) => format!("item of {parent}"),
            None => p.needs_in(&r.phases).join(", "),
        };
        let sha = r
            .artifacts
            .iter()
            .rev()
            .find(|a| a.phase_key == p.phase_key && a.valid)
            .and_then(|a| a.sha256.as_deref())
            .map_or("-".to_owned(), |s| s.chars().take(12).collect());
        let dur = duration_ms(p.started_at, p.finished_at)
            .map_or("-".to_owned(), |d| format!("{:.1}s", d as f64 / 1000.0));
        let cost = phase_cost(r, &p.phase_key);
        let _ = writeln!(
            md,
            "| {} | {needs} | {} | {}/{} | {} | {dur} | {} | {}/{} | {sha} |",
            p.phase_key,
            p.state.as_str(),
            p.attempts,
            p.max_attempts,
            p.round,
            cost.llm_calls,
            cost.tokens_in,
            cost.tokens_out
        );
    }
}

fn approvals(md: &mut String, r: &ReportInputs) {
    if r.approvals.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n## Approvals\n");
    for a in &r.approvals {
        let _ = writeln!(
            md,
            "- {} (round {}, gates {}): {}{}",
            a.phase_key,
            a.round,
            a.gates.join(", "),
            a.action.map_or("pending", |x| x.as_str()),
            a.comment
                .as_deref()
                .map(|c| format!(" — {c}"))
                .unwrap_or_default()
        );
    }
}

fn invalid_attempts(md: &mut String, r: &ReportInputs) {
    let invalid: Vec<_> = r.artifacts.iter().filter(|a| !a.valid).collect();
    if invalid.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n## Invalid attempts\n");
    for a in invalid {
        let _ = writeln!(
            md,
            "- {} round {} attempt {} ({}): {}",
            a.phase_key,
            a.round,
            a.attempt,
            a.path.as_deref().unwrap_or("files"),
            a.validation_errors
        );
    }
}

/// The phase graph as a Mermaid flowchart: each phase (a fan-out with its item count)
/// with its state, an edge from each need, skipped phases greyed.
fn graph(md: &mut String, r: &ReportInputs) {
    let _ = writeln!(md, "\n## Graph\n\n```mermaid\nflowchart LR");
    let top: Vec<&str> = r
        .phases
        .iter()
        .filter(|p| p.parent.is_none())
        .map(|p| p.phase_key.as_str())
        .collect();
    let node = |key: &str| format!("p{}", top.iter().position(|k| *k == key).unwrap_or(0));
    for p in r.phases.iter().filter(|p| p.parent.is_none()) {
        let items = r
            .phases
            .iter()
            .filter(|i| i.parent.as_deref() == Some(&p.phase_key))
            .count();
        let label = if items > 0 {
            format!("{} x{items}", p.phase_key)
        } else {
            p.phase_key.clone()
        };
        let _ = writeln!(
            md,
            "  {}[\"{label}<br/>{}\"]",
            node(&p.phase_key),
            p.state.as_str()
        );
        for need in p.needs_in(&r.phases) {
            let _ = writeln!(md, "  {} --> {}", node(&need), node(&p.phase_key));
        }
        if p.state == crate::state::PhaseState::Skipped {
            let _ = writeln!(md, "  class {} skipped", node(&p.phase_key));
        }
    }
    let _ = writeln!(
        md,
        "  classDef skipped fill:#eee,color:#999,stroke-dasharray:4\n```"
    );
}

/// The stored report: (json, markdown).
///
/// # Errors
/// Database errors.
pub async fn get(
    conn: &mut PgConnection,
    run_id: RunId,
) -> Result<Option<(Value, String)>, sqlx::Error> {
    reports::reports_get(conn, run_id).await
}
