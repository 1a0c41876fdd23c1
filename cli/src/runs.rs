//! `phasefleet runs …`: list, show, watch and cancel runs; read their artifacts and
//! files.

use crate::exit::{CliError, FAILURE, NOT_FOUND};
use crate::output::{Output, cell, print_one, print_rows};
use clap::Subcommand;
use phasefleet::RunId;
use phasefleet::budget::{BudgetDecision, BudgetOutcome};
use phasefleet::state::RunState;
use phasefleet::store::runs;
use phasefleet::teams::Scope;
use sqlx::PgPool;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum Runs {
    /// Runs, newest first.
    List {
        #[arg(long, value_parser = |s: &str| s.parse::<RunState>())]
        state: Option<RunState>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// One run: phases, approvals, costs and the report.
    Show { id: RunId },
    /// Stream a run's events until it ends; exits 0 when it completed, 1 otherwise.
    Watch { id: RunId },
    /// Cancel a run; its in-flight agent is interrupted.
    Cancel {
        id: RunId,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Raise a run's budget (a run awaiting budget resumes), or abort a run awaiting
    /// budget.
    Budget {
        id: RunId,
        #[arg(long)]
        usd: Option<f64>,
        #[arg(long)]
        tokens: Option<i64>,
        #[arg(long, conflicts_with_all = ["usd", "tokens"])]
        abort: bool,
        #[arg(long, requires = "abort")]
        reason: Option<String>,
    },
    /// The artifact of a phase (the latest: the one an approval waits on, or the
    /// accepted one), as stored.
    Artifact { id: RunId, phase: String },
    /// The run's files: inputs, and what each accepted phase wrote.
    Files { id: RunId },
    /// One file's content, to stdout (or --out FILE).
    File {
        id: RunId,
        path: String,
        /// Which writer's version: a phase key, or "" for the input (default: the
        /// latest phase that wrote it).
        #[arg(long)]
        origin: Option<String>,
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
}

pub async fn run(pool: &PgPool, cmd: Runs, output: Output) -> Result<(), CliError> {
    match cmd {
        Runs::List { state, limit } => list(pool, state, limit, output).await,
        Runs::Show { id } => show(pool, id, output).await,
        Runs::Watch { id } => {
            let state = watch(pool, id, |_| {}).await?;
            if state == RunState::Completed {
                Ok(())
            } else {
                Err(CliError::new(
                    FAILURE,
                    format!("run {id} ended {}", state.as_str()),
                ))
            }
        }
        Runs::Budget {
            id,
            usd,
            tokens,
            abort,
            reason,
        } => {
            let decision = if abort {
                BudgetDecision::Abort { reason }
            } else {
                BudgetDecision::Raise { usd, tokens }
            };
            budget(pool, id, &decision, output).await
        }
        Runs::Artifact { id, phase } => artifact(pool, id, &phase, output).await,
        Runs::Files { id } => files(pool, id, output).await,
        Runs::File {
            id,
            path,
            origin,
            out,
        } => file(pool, id, &path, origin.as_deref(), out.as_deref()).await,
        Runs::Cancel { id, reason } => {
            let out =
                phasefleet::cancel::cancel_run(pool, &Scope::Fleet, id, reason.as_deref()).await?;
            print_one(output, &out, |o| match o {
                phasefleet::cancel::Cancelled::Cancelled => "cancelled".to_owned(),
                phasefleet::cancel::Cancelled::AlreadyEnded(s) => {
                    format!("already ended ({})", s.as_str())
                }
            })?;
            Ok(())
        }
    }
}

async fn list(
    pool: &PgPool,
    state: Option<RunState>,
    limit: i64,
    output: Output,
) -> Result<(), CliError> {
    let mut conn = pool.acquire().await?;
    let rows = runs::runs_list(&mut conn, state, limit.clamp(1, 1000)).await?;
    print_rows(
        output,
        &rows,
        &["ID", "TEAM", "STATE", "CREATED", "COST", "ERROR"],
        |r| {
            vec![
                r.id.to_string(),
                r.team.clone(),
                r.state.as_str().into(),
                r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                format!("${:.4}", r.spent_usd),
                cell(r.error.as_deref().unwrap_or_default(), 60),
            ]
        },
    )?;
    Ok(())
}

async fn show(pool: &PgPool, id: RunId, output: Output) -> Result<(), CliError> {
    let mut conn = pool.acquire().await?;
    let detail = phasefleet::views::run_detail(&mut conn, id)
        .await?
        .ok_or_else(|| CliError::new(NOT_FOUND, format!("run {id} not found")))?;
    let markdown = phasefleet::report::get(&mut conn, id)
        .await?
        .map(|(_, md)| md);
    print_one(output, &detail, |d| {
        let mut s = summary(d);
        if let Some(md) = &markdown {
            s.push('\n');
            s.push_str(md);
        }
        s
    })?;
    Ok(())
}

/// A run's state, error, phases and approvals, a line each.
fn summary(d: &phasefleet::views::RunDetail) -> String {
    let run = &d.run;
    let mut s = format!(
        "run {} — {} (team {})\n",
        run.id,
        run.state.as_str(),
        cell(&run.team, 64)
    );
    if let Some(e) = &run.error {
        s.push_str(&format!("  error: {}\n", cell(e, 2000)));
    }
    for p in &d.phases {
        s.push_str(&format!(
            "  {:<12} {:<18} attempts {}/{} round {}\n",
            cell(&p.phase_key, 64),
            p.state.as_str(),
            p.attempts,
            p.max_attempts,
            p.round
        ));
    }
    for a in &d.approvals {
        s.push_str(&format!(
            "  approval {} on {}: {}\n",
            a.id,
            cell(&a.phase_key, 64),
            a.action.map_or("pending", |x| x.as_str())
        ));
    }
    s
}

async fn budget(
    pool: &PgPool,
    id: RunId,
    decision: &BudgetDecision,
    output: Output,
) -> Result<(), CliError> {
    let who = crate::submit::whoami();
    let out = phasefleet::budget::decide(pool, &Scope::Fleet, id, decision, Some(&who)).await?;
    print_one(output, &out, |o| match o {
        BudgetOutcome::Raised { resumed: true } => "raised; the run resumes".to_owned(),
        BudgetOutcome::Raised { resumed: false } => "raised".to_owned(),
        BudgetOutcome::Aborted => "aborted".to_owned(),
    })?;
    Ok(())
}

async fn artifact(pool: &PgPool, id: RunId, phase: &str, output: Output) -> Result<(), CliError> {
    let mut conn = pool.acquire().await?;
    let (meta, content) = phasefleet::views::phase_artifact(&mut conn, id, phase)
        .await?
        .ok_or_else(|| {
            CliError::new(
                NOT_FOUND,
                format!("run {id} has no artifact for phase {phase:?}"),
            )
        })?;
    let both = serde_json::json!({ "artifact": meta, "content": content });
    print_one(output, &both, |_| {
        let state = if meta.valid { "valid" } else { "invalid" };
        let mut s = format!(
            "{} — phase {}, round {}, attempt {}, {state}\n",
            meta.path.as_deref().unwrap_or("(files only)"),
            cell(&meta.phase_key, 64),
            meta.round,
            meta.attempt
        );
        s.push_str(&crate::output::terminal_text(
            content.as_deref().unwrap_or("(nothing written)"),
        ));
        s
    })?;
    Ok(())
}

async fn files(pool: &PgPool, id: RunId, output: Output) -> Result<(), CliError> {
    let mut conn = pool.acquire().await?;
    let rows = phasefleet::store::files::run_files_list(&mut conn, id).await?;
    print_rows(
        output,
        &rows,
        &["ORIGIN", "PATH", "BYTES", "KIND", "SHA256"],
        |f| {
            vec![
                if f.origin.is_empty() {
                    "input".into()
                } else {
                    cell(&f.origin, 64)
                },
                cell(&f.path, 200),
                f.size.to_string(),
                if f.is_binary { "binary" } else { "text" }.into(),
                f.sha256.chars().take(16).collect(),
            ]
        },
    )?;
    Ok(())
}

async fn file(
    pool: &PgPool,
    id: RunId,
    path: &str,
    origin: Option<&str>,
    out: Option<&std::path::Path>,
) -> Result<(), CliError> {
    let mut conn = pool.acquire().await?;
    let (_, bytes) = phasefleet::store::files::run_files_content(&mut conn, id, path, origin)
        .await?
        .ok_or_else(|| CliError::new(NOT_FOUND, format!("run {id} has no file {path:?}")))?;
    match out {
        Some(file) => std::fs::write(file, &bytes)
            .map_err(|e| CliError::new(FAILURE, format!("cannot write {}: {e}", file.display())))?,
        None => crate::output::emit_bytes(&bytes)?,
    }
    Ok(())
}

/// Print events as they arrive until the run ends; `on_event` sees each one (the demo
/// approves from there). Returns the final state.
pub async fn watch(
    pool: &PgPool,
    id: RunId,
    mut on_event: impl FnMut(&phasefleet::events::Event),
) -> Result<RunState, CliError> {
    let mut after = 0;
    loop {
        let mut conn = pool.acquire().await?;
        let run = runs::runs_get(&mut conn, id)
            .await?
            .ok_or_else(|| CliError::new(NOT_FOUND, format!("run {id} not found")))?;
        let events = phasefleet::store::events::events_list(&mut conn, id, after, 500).await?;
        drop(conn);
        for e in &events {
            after = e.seq;
            let phase = e
                .phase_key
                .as_deref()
                .map(|p| format!(" [{p}]"))
                .unwrap_or_default();
            let data = if e.data.as_object().is_some_and(|o| !o.is_empty()) {
                format!(" {}", e.data)
            } else {
                String::new()
            };
            eprintln!(
                "{:>4} {} {}{phase}{data}",
                e.seq,
                e.created_at.format("%H:%M:%S%.3f"),
                e.kind
            );
            on_event(e);
        }
        if run.state.is_terminal() && events.is_empty() {
            return Ok(run.state);
        }
        if events.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
