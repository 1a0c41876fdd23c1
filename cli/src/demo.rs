//! `phasefleet demo`: the example workflow end to end — a private PostgreSQL unless
//! DATABASE_URL is set, in-process workers, the offline synthetic backend, and an
//! automatic approver standing in for the human at the gate.

use crate::exit::{CliError, FAILURE};
use crate::local;
use crate::submit::{SubmitArgs, build_request};
use clap::Args;
use phasefleet::approval::{self, Action};
use phasefleet::state::RunState;
use std::path::PathBuf;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "examples/spec-review-verify.yaml")]
    template: PathBuf,
    /// Persona files (default: every file in examples/personas).
    #[arg(long = "persona")]
    personas: Vec<PathBuf>,
    #[arg(long, default_value = "examples/requirements.md")]
    requirements: PathBuf,
    /// How many runs to submit at once.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// In-process workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Leave approvals to a human (`phasefleet approvals decide`).
    #[arg(long)]
    no_auto_approve: bool,
    /// Synthetic backend directives as JSON, e.g. '{"synthetic":{"invalid_attempts":1}}'
    /// to watch a repair.
    #[arg(long, default_value = "{}")]
    extra: String,
    /// Play a role with another persona: ROLE=PERSONA (repeatable), e.g.
    /// author=llamacpp-author with --persona examples/personas-llm/llamacpp-author.yaml.
    #[arg(long = "bind", value_parser = crate::submit::parse_binding)]
    bindings: Vec<(String, String)>,
    /// Give the agent the files under this directory.
    #[arg(long, value_name = "DIR", conflicts_with = "repo")]
    input_dir: Option<PathBuf>,
    /// Give the agent the tracked files of a git repository: PATH or PATH@REF.
    #[arg(long, value_name = "PATH[@REF]")]
    repo: Option<String>,
    /// Leave out input files matching this glob (repeatable).
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
}

pub async fn run(database_url: Option<&str>, args: DemoArgs) -> Result<(), CliError> {
    // 1. A database (private when none is given) and workers on it.
    // The workers' connections, and a few for the submits and the progress display.
    let db = local::open(
        database_url,
        crate::stack::connections_for(args.workers).saturating_add(4),
    )
    .await?;
    let parts = crate::stack::Parts::from_env().await?;
    let stop = CancellationToken::new();
    let since = phasefleet::db::now(&db.pool).await?;
    let mut workers = JoinSet::new();
    crate::stack::spawn_workers(&mut workers, &parts, &db.pool, QUEUE, args.workers, &stop);
    // Submit checks that a live worker serves each provider: let ours register first.
    wait_for_workers(&db.pool, QUEUE, since, args.workers).await?;
    // 2. The request, read once for all runs (blocking I/O: the template, personas and
    //    input files).
    let submit_args = submit_args(&args)?;
    let req = tokio::task::block_in_place(|| build_request(&submit_args, "demo"))?;
    // 3. Submit the runs, with their approvals decided as they appear, in one side
    //    task started before the first submit, so a gate never waits for the other
    //    runs' submits or for the runs watched before its own.
    let approver_pool = if args.no_auto_approve {
        None
    } else {
        Some(phasefleet::db::connect(&db.url, APPROVER_CONNECTIONS).await?)
    };
    let (submitted_runs, runs_to_approve) = tokio::sync::watch::channel(Vec::new());
    // In a JoinSet: whichever way this function returns, the approver stops with it.
    let mut approver = JoinSet::new();
    approver.spawn(auto_approver(approver_pool, runs_to_approve));
    for _ in 0..args.runs.max(1) {
        let submitted =
            phasefleet::submit::submit(&db.pool, &parts.schemas, &parts.config, req.clone())
                .await?;
        let id = submitted.run_id();
        eprintln!("submitted run {id}");
        submitted_runs.send_modify(|runs| runs.push(id));
    }
    let ids = submitted_runs.borrow().clone();
    // 4. Watch each run to its end and print its report.
    let outcomes = watch_runs(&db.pool, &ids).await;
    approver.abort_all();
    stop.cancel();
    while workers.join_next().await.is_some() {}
    let outcomes = outcomes?;
    let completed = outcomes
        .iter()
        .filter(|s| **s == RunState::Completed)
        .count();
    eprintln!(
        "{completed}/{} run(s) completed; database: {}",
        outcomes.len(),
        phasefleet::db::redact(&db.url)
    );
    if completed == outcomes.len() {
        Ok(())
    } else {
        Err(CliError::new(FAILURE, "not every run completed"))
    }
}

/// The queue the demo's runs and workers use.
const QUEUE: &str = "default";

/// The submit command the demo's runs are made by: the example personas unless
/// `--persona` names others.
fn submit_args(args: &DemoArgs) -> Result<SubmitArgs, CliError> {
    let personas = if args.personas.is_empty() {
        example_personas()?
    } else {
        args.personas.clone()
    };
    Ok(SubmitArgs {
        template: args.template.clone(),
        personas,
        requirements: Some(args.requirements.clone()),
        objective: r#"{"deliverable": "a reviewed specification with a verification plan"}"#.into(),
        extra: args.extra.clone(),
        bindings: args.bindings.clone(),
        budget_usd: None,
        budget_tokens: None,
        idempotency_key: None,
        queue: QUEUE.into(),
        team: phasefleet::teams::DEFAULT_TEAM.into(),
        input_dir: args.input_dir.clone(),
        repo: args.repo.clone(),
        excludes: args.excludes.clone(),
        allow_unserved: false,
    })
}

/// The files of `examples/personas`, in name order.
fn example_personas() -> Result<Vec<PathBuf>, CliError> {
    let dir = std::fs::read_dir("examples/personas").map_err(|e| {
        CliError::new(
            crate::exit::USAGE,
            format!("examples/personas: {e} (run from the repository root or pass --persona)"),
        )
    })?;
    let mut personas: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
    personas.sort();
    Ok(personas)
}

/// Watch each run to its end, printing its events and then its report; the states
/// they ended in.
async fn watch_runs(
    pool: &sqlx::PgPool,
    ids: &[phasefleet::RunId],
) -> Result<Vec<RunState>, CliError> {
    let mut outcomes = Vec::new();
    for id in ids {
        eprintln!("\n== run {id} ==");
        let state = crate::runs::watch(pool, *id, |_| {}).await?;
        let mut conn = pool.acquire().await?;
        if let Some((_, md)) = phasefleet::report::get(&mut conn, *id).await? {
            crate::output::emit(&md)?;
        }
        outcomes.push(state);
    }
    Ok(outcomes)
}

async fn wait_for_workers(
    pool: &sqlx::PgPool,
    queue: &str,
    since: chrono::DateTime<chrono::Utc>,
    n: usize,
) -> Result<(), CliError> {
    if n == 0 {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let mut conn = pool.acquire().await?;
        let live = phasefleet::queue::workers::workers_count_started_since(&mut conn, queue, since)
            .await?;
        if usize::try_from(live).unwrap_or(0) >= n {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CliError::new(
                FAILURE,
                "the demo's workers did not start within 15 s",
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Connections of the demo approver's own pool: how many decisions run at once.
const APPROVER_CONNECTIONS: u32 = 8;

/// Decide every pending approval of the runs in `runs` (which grows as the demo
/// submits) as it appears, on `pool` (the approver's own, so phases holding the
/// workers' connections never delay a decision), each request found in its own task.
async fn auto_approver(
    pool: Option<sqlx::PgPool>,
    runs: tokio::sync::watch::Receiver<Vec<phasefleet::RunId>>,
) {
    let Some(pool) = pool else {
        eprintln!("approvals are yours: phasefleet approvals list / decide");
        return;
    };
    let mut reported = false;
    // Until the demo drops its end of the channel.
    while runs.has_changed().is_ok() {
        let ids = runs.borrow().clone();
        let pending = async {
            let mut conn = pool.acquire().await?;
            approval::pending_for_runs(&mut conn, &ids).await
        }
        .await;
        match pending {
            Ok(requests) => {
                reported = false;
                let mut deciding = JoinSet::new();
                for request in requests {
                    deciding.spawn(approve(pool.clone(), request));
                }
                while deciding.join_next().await.is_some() {}
            }
            // Said once per outage, not every poll.
            Err(e) if !std::mem::replace(&mut reported, true) => {
                eprintln!("     demo approver: {e}");
            }
            Err(_) => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn approve(pool: sqlx::PgPool, request: approval::ApprovalRow) {
    eprintln!(
        "     demo approver: approving {} (gates {})",
        request.phase_key,
        request.gates.join(",")
    );
    if let Err(e) = approval::decide(
        &pool,
        &phasefleet::teams::Scope::Fleet,
        request.id,
        Action::Approve,
        Some("approved by the demo"),
        Some("demo-approver"),
    )
    .await
    {
        eprintln!("     demo approver: {e}");
    }
}
