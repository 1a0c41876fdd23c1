//! `phasefleet admin …`: operate the queue and the fleet through PostgreSQL.

use crate::exit::{CliError, FAILURE, USAGE};
use crate::output::{Output, cell, print_one, print_rows};
use clap::Subcommand;
use phasefleet::operator::{self, Operator, OperatorAction, Via};
use phasefleet::queue::{self, JobState};
use phasefleet::{JobId, RunId, WorkerId};
use sqlx::PgPool;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum Admin {
    /// Stop workers from claiming; they finish in-flight work and report `drained`.
    Drain {
        /// A worker id (repeatable); see `admin workers`.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        worker: Vec<WorkerId>,
        #[arg(long)]
        all: bool,
        /// Wait until every drained worker has no job in flight.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 1).
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Let drained workers claim again.
    Undrain {
        /// A worker id (repeatable).
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        worker: Vec<WorkerId>,
        #[arg(long)]
        all: bool,
    },
    /// Move jobs back to ready: one job, every dead job of a queue, or stuck jobs.
    Requeue {
        /// One job by id (dead, cancelled or ready; a running job is refused).
        #[arg(long, group = "what")]
        job: Option<i64>,
        /// Re-open a failed run at the phase that failed (a new round of attempts).
        #[arg(long, group = "what")]
        run: Option<RunId>,
        /// Every dead-lettered job of this queue.
        #[arg(long, group = "what")]
        dead: Option<String>,
        /// Running jobs whose lease expired (their worker is gone).
        #[arg(long, group = "what")]
        stuck: bool,
        /// Show what would move, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List jobs.
    Jobs {
        #[arg(long)]
        state: Option<JobState>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long)]
        run: Option<RunId>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Show one job with its payload and last error.
    Job { id: i64 },
    /// List workers: state, heartbeat age, in-flight jobs.
    Workers {
        /// Include stopped workers.
        #[arg(long)]
        all: bool,
    },
    /// Queue depth by state, throughput, oldest ready job.
    Stats,
    /// Check the invariants (every run ends or waits on a human, no phase completed
    /// twice, dense event sequences, no running job without a live lease, reports…);
    /// exits 1 when one is broken.
    Check {
        /// Only these runs (repeatable); default all.
        #[arg(long)]
        run: Vec<RunId>,
        /// Seconds an expired lease may wait for its rescue.
        #[arg(long, default_value_t = 30.0)]
        lease_grace_secs: f64,
    },
    /// Pause claiming on a queue (`*` for the whole fleet).
    Pause {
        queue: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused queue.
    Resume { queue: String },
    /// Cancel a job (a running one is interrupted by its worker).
    Cancel { id: i64 },
    /// Delete finished jobs older than a duration (e.g. 7d, 12h, 30m).
    Prune {
        #[arg(long, value_parser = parse_duration)]
        older_than: Duration,
        /// Delete dead-lettered jobs too.
        #[arg(long)]
        include_dead: bool,
        /// Also delete runs that ended before then, with their events, artifacts,
        /// approvals, ledger and report (the history's retention).
        #[arg(long)]
        runs: bool,
    },
}

/// Parse `90s`, `30m`, `12h`, `7d` (or `1h 30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("expected a duration like 30m, 12h or 7d, got {s:?}: {e}"))
}

/// Who the CLI acts as in the audit: `cli:<user>@<host>`.
fn operator_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("cli:{}@{host}", crate::submit::whoami())
}

/// Take `action`, recorded in the audit as this CLI user's.
async fn perform(pool: &PgPool, action: &OperatorAction) -> Result<operator::Outcome, CliError> {
    let actor = operator_name();
    let who = Operator {
        actor: &actor,
        via: Via::Cli,
    };
    Ok(operator::perform(pool, who, action).await?)
}

/// Record an action taken without [`perform`] in the audit.
async fn record(pool: &PgPool, action: &str, target: &str, result: Result<&str, &str>) {
    let actor = operator_name();
    let who = Operator {
        actor: &actor,
        via: Via::Cli,
    };
    if let Err(e) = operator::record(pool, who, action, Some(target), result).await {
        eprintln!("warning: the action was not recorded in the audit: {e}");
    }
}

/// Drain or undrain every worker (`all`) or each named one.
async fn ask_workers(
    pool: &PgPool,
    all: bool,
    workers: &[WorkerId],
    drain: bool,
) -> Result<Vec<WorkerId>, CliError> {
    let action = |worker| {
        if drain {
            OperatorAction::DrainWorkers { worker }
        } else {
            OperatorAction::UndrainWorkers { worker }
        }
    };
    if all {
        return Ok(perform(pool, &action(None)).await?.workers);
    }
    let mut ids = Vec::new();
    for w in workers {
        ids.extend(perform(pool, &action(Some(*w))).await?.workers);
    }
    Ok(ids)
}

pub async fn run(pool: &PgPool, cmd: Admin, output: Output) -> Result<(), CliError> {
    match cmd {
        Admin::Drain {
            worker,
            all,
            wait,
            timeout_secs,
        } => drain(pool, &worker, all, wait.then_some(timeout_secs), output).await,
        Admin::Undrain { worker, all } => {
            let ids = ask_workers(pool, all, &worker, false).await?;
            Ok(print_rows(output, &ids, &["worker"], |id| {
                vec![id.to_string()]
            })?)
        }
        Admin::Requeue {
            job: None,
            run: Some(run),
            dry_run,
            ..
        } => reopen_run(pool, run, dry_run, output).await,
        Admin::Requeue {
            job,
            dead,
            stuck,
            dry_run,
            ..
        } => requeue(pool, job, dead, stuck, dry_run, output).await,
        Admin::Jobs {
            state,
            queue: q,
            run,
            limit,
        } => jobs(pool, state, q, run, limit, output).await,
        Admin::Job { id } => {
            let row = queue::get(&mut *pool.acquire().await?, JobId(id)).await?;
            Ok(print_one(output, &row, |j| {
                serde_json::to_string_pretty(j).unwrap_or_default()
            })?)
        }
        Admin::Workers { all } => workers(pool, all, output).await,
        Admin::Check {
            run,
            lease_grace_secs,
        } => check(pool, &run, lease_grace_secs, output).await,
        Admin::Stats => stats(pool, output).await,
        Admin::Pause { queue: q, reason } => {
            let done = perform(pool, &OperatorAction::PauseQueue { queue: q, reason }).await?;
            eprintln!("{}", done.result);
            Ok(())
        }
        Admin::Resume { queue: q } => {
            let done = perform(pool, &OperatorAction::ResumeQueue { queue: q }).await?;
            eprintln!("{}", done.result);
            Ok(())
        }
        Admin::Cancel { id } => cancel(pool, id, output).await,
        Admin::Prune {
            older_than,
            include_dead,
            runs,
        } => prune(pool, older_than, include_dead, runs, output).await,
    }
}

/// Ask workers to drain; with `wait_secs`, wait until they report drained.
async fn drain(
    pool: &PgPool,
    worker: &[WorkerId],
    all: bool,
    wait_secs: Option<u64>,
    output: Output,
) -> Result<(), CliError> {
    let ids = ask_workers(pool, all, worker, true).await?;
    eprintln!("drain requested for {} worker(s)", ids.len());
    if let Some(timeout_secs) = wait_secs {
        let end = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
        loop {
            let workers = phasefleet_worker::list_workers(pool, false).await?;
            let pending = workers
                .iter()
                .filter(|w| ids.contains(&w.id) && w.state != "drained")
                .count();
            if pending == 0 {
                eprintln!("all drained");
                break;
            }
            if tokio::time::Instant::now() > end {
                return Err(CliError::new(
                    FAILURE,
                    format!("{pending} worker(s) still draining after {timeout_secs}s"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(print_rows(output, &ids, &["worker"], |id| {
        vec![id.to_string()]
    })?)
}

/// Re-open a failed run at its failed phase.
async fn reopen_run(
    pool: &PgPool,
    run: RunId,
    dry_run: bool,
    output: Output,
) -> Result<(), CliError> {
    let by = crate::submit::whoami();
    let out = phasefleet::retry::retry_failed_run(pool, run, Some(&by), dry_run).await;
    if !dry_run {
        let result = match &out {
            Ok(r) => Ok(format!(
                "re-opened at phase {} (retry {})",
                r.phase, r.retries
            )),
            Err(e) => Err(e.to_string()),
        };
        let text = match &result {
            Ok(t) => Ok(t.as_str()),
            Err(t) => Err(t.as_str()),
        };
        record(pool, "reopen_run", &run.to_string(), text).await;
    }
    let out = out?;
    if dry_run {
        eprintln!("dry run: nothing changed");
    }
    Ok(print_one(output, &out, |r| {
        format!(
            "run {} re-opened at phase {} (round {}, retry {})",
            r.run_id, r.phase, r.round, r.retries
        )
    })?)
}

/// Requeue one job, a queue's dead jobs, or stuck jobs.
async fn requeue(
    pool: &PgPool,
    job: Option<i64>,
    dead: Option<String>,
    stuck: bool,
    dry_run: bool,
    output: Output,
) -> Result<(), CliError> {
    let mut conn = pool.acquire().await?;
    let ids: Vec<JobId> = match (job, dead, stuck, dry_run) {
        (Some(id), _, _, true) => vec![queue::get(&mut conn, JobId(id)).await?.id],
        (Some(id), _, _, false) => {
            perform(pool, &OperatorAction::RequeueJob { job: JobId(id) })
                .await?
                .jobs
        }
        (None, Some(q), _, true) => queue::requeue_dead(&mut conn, &q, true).await?,
        (None, Some(q), _, false) => {
            perform(pool, &OperatorAction::RequeueDead { queue: q })
                .await?
                .jobs
        }
        (None, None, true, true) => {
            queue::list(&mut conn, Some(JobState::Running), None, None, 10_000)
                .await?
                .into_iter()
                .filter(|j| j.lease_expires_at.is_some_and(|e| e < chrono::Utc::now()))
                .map(|j| j.id)
                .collect()
        }
        (None, None, true, false) => perform(pool, &OperatorAction::RescueStuck).await?.jobs,
        (None, None, false, _) => {
            return Err(CliError::new(
                USAGE,
                "say what to requeue: --job ID, --run RUN, --dead QUEUE or --stuck",
            ));
        }
    };
    if dry_run {
        eprintln!("dry run: {} job(s) would be requeued", ids.len());
    }
    Ok(print_rows(output, &ids, &["job"], |id| {
        vec![id.to_string()]
    })?)
}

async fn jobs(
    pool: &PgPool,
    state: Option<JobState>,
    q: Option<String>,
    run: Option<RunId>,
    limit: i64,
    output: Output,
) -> Result<(), CliError> {
    let rows = queue::list(&mut *pool.acquire().await?, state, q.as_deref(), run, limit).await?;
    let header = [
        "ID",
        "QUEUE",
        "KIND",
        "STATE",
        "ATTEMPTS",
        "RUN",
        "LAST ERROR",
    ];
    Ok(print_rows(output, &rows, &header, |j| {
        vec![
            j.id.to_string(),
            j.queue.clone(),
            j.kind.clone(),
            j.state.as_str().to_owned(),
            format!("{}/{}", j.attempts, j.max_attempts),
            j.run_id.map(|r| r.to_string()).unwrap_or_default(),
            cell(j.last_error.as_deref().unwrap_or_default(), 60),
        ]
    })?)
}

async fn workers(pool: &PgPool, all: bool, output: Output) -> Result<(), CliError> {
    let rows = phasefleet_worker::list_workers(pool, all).await?;
    let header = ["ID", "NAME", "STATE", "IN FLIGHT", "HEARTBEAT AGE", "DRAIN"];
    Ok(print_rows(output, &rows, &header, |w| {
        vec![
            w.id.to_string(),
            w.name.clone(),
            w.state.clone(),
            format!("{}/{}", w.in_flight, w.concurrency),
            format!("{:.1}s", w.heartbeat_age_secs),
            w.drain_requested.to_string(),
        ]
    })?)
}

/// Check the invariants; exit 1 when one is broken.
async fn check(
    pool: &PgPool,
    run: &[RunId],
    lease_grace_secs: f64,
    output: Output,
) -> Result<(), CliError> {
    let runs = (!run.is_empty()).then_some(run);
    let violations =
        phasefleet::store::invariants::check(&mut *pool.acquire().await?, runs, lease_grace_secs)
            .await?;
    print_rows(output, &violations, &["INVARIANT", "VIOLATION"], |v| {
        vec![v.invariant.to_owned(), v.detail.clone()]
    })?;
    if !violations.is_empty() {
        return Err(CliError::new(
            FAILURE,
            format!("{} invariant violation(s)", violations.len()),
        ));
    }
    eprintln!("all invariants hold");
    Ok(())
}

async fn stats(pool: &PgPool, output: Output) -> Result<(), CliError> {
    let s = queue::stats(&mut *pool.acquire().await?).await?;
    Ok(print_one(output, &s, |s| {
        let mut out = String::new();
        for c in &s.by_state {
            out.push_str(&format!(
                "{:<20} {:<10} {}\n",
                c.queue,
                c.state.as_str(),
                c.count
            ));
        }
        out.push_str(&format!(
            "ready now: {}\noldest ready: {}\ncompleted in the last minute: {}\nrunning with expired lease: {}",
            s.ready_now,
            s.oldest_ready_age_secs.map_or("-".into(), |a| format!("{a:.1}s")),
            s.completed_last_minute,
            s.running_with_expired_lease
        ));
        out
    })?)
}

async fn cancel(pool: &PgPool, id: i64, output: Output) -> Result<(), CliError> {
    let outcome = perform(pool, &OperatorAction::CancelJob { job: JobId(id) }).await?;
    Ok(print_one(output, &outcome, |o| o.result.clone())?)
}

/// Delete finished jobs (and, with `runs`, ended runs) older than `older_than`, in
/// small batches.
async fn prune(
    pool: &PgPool,
    older_than: Duration,
    include_dead: bool,
    runs: bool,
    output: Output,
) -> Result<(), CliError> {
    let mut conn = pool.acquire().await?;
    let mut jobs_deleted = 0;
    loop {
        let n = queue::prune(&mut conn, older_than, include_dead, 5_000).await?;
        jobs_deleted += n;
        if n == 0 {
            break;
        }
    }
    let (mut runs_deleted, mut blobs_deleted) = (0, 0);
    if runs {
        loop {
            let n = phasefleet::store::runs::runs_prune_ended(&mut conn, older_than, 500).await?;
            runs_deleted += n;
            if n == 0 {
                break;
            }
        }
        // File content no remaining run refers to, and uploads older than the cutoff
        // that no run used.
        blobs_deleted = phasefleet::store::files::file_blobs_prune(&mut conn, older_than).await?;
        // The audit and the webhook delivery log keep the same history.
        phasefleet::store::operator_actions::operator_actions_prune(&mut conn, older_than).await?;
        phasefleet::store::webhook_deliveries::webhook_deliveries_prune(&mut conn, older_than)
            .await?;
    }
    let said = format!(
        "deleted {jobs_deleted} job(s), {runs_deleted} run(s) and {blobs_deleted} stored file(s)"
    );
    record(
        pool,
        "prune",
        &format!("older than {}", humantime::format_duration(older_than)),
        Ok(&said),
    )
    .await;
    Ok(print_one(
        output,
        &serde_json::json!({ "deleted": jobs_deleted, "runs_deleted": runs_deleted, "files_deleted": blobs_deleted }),
        |_| {
            format!(
                "deleted {jobs_deleted} job(s), {runs_deleted} run(s) and {blobs_deleted} stored file(s)"
            )
        },
    )?)
}
