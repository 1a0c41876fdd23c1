//! `phasefleet admin …`: operate the queue and the fleet through PostgreSQL.

use crate::exit::CliError;
use crate::output::{Output, print_one, print_rows};
use clap::Subcommand;
use phasefleet::queue::{self, JobState};
use phasefleet::retry::RetryError;
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

/// Parse `90s`, `30m`, `12h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 30m, 12h or 7d, got {s:?}"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {s:?}: use s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

/// Apply a drain/undrain to every worker (`all`) or to each named one.
async fn for_each_target<F, Fut, E>(
    all: bool,
    workers: &[WorkerId],
    mut f: F,
) -> Result<Vec<WorkerId>, CliError>
where
    F: FnMut(Option<WorkerId>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<WorkerId>, E>>,
    CliError: From<E>,
{
    if all {
        return Ok(f(None).await?);
    }
    let mut ids = Vec::new();
    for w in workers {
        let got = f(Some(*w)).await?;
        if got.is_empty() {
            return Err(CliError::new(
                crate::exit::NOT_FOUND,
                format!("no live worker {w}"),
            ));
        }
        ids.extend(got);
    }
    Ok(ids)
}

pub async fn run(pool: &PgPool, cmd: Admin, output: Output) -> Result<(), CliError> {
    let mut conn = pool.acquire().await?;
    match cmd {
        Admin::Drain {
            worker,
            all,
            wait,
            timeout_secs,
        } => {
            let ids = for_each_target(all, &worker, |t| phasefleet_worker::drain(pool, t)).await?;
            if ids.is_empty() {
                return Err(CliError::new(
                    crate::exit::NOT_FOUND,
                    "no live worker matched",
                ));
            }
            eprintln!("drain requested for {} worker(s)", ids.len());
            if wait {
                let end = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
                loop {
                    let workers = phasefleet_worker::list_workers(pool, false).await?;
                    let pending: Vec<_> = workers
                        .iter()
                        .filter(|w| ids.contains(&w.id) && w.state != "drained")
                        .collect();
                    if pending.is_empty() {
                        eprintln!("all drained");
                        break;
                    }
                    if tokio::time::Instant::now() > end {
                        return Err(CliError::new(
                            crate::exit::FAILURE,
                            format!(
                                "{} worker(s) still draining after {timeout_secs}s",
                                pending.len()
                            ),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            print_rows(output, &ids, &["worker"], |id| vec![id.to_string()])?;
        }
        Admin::Undrain { worker, all } => {
            let ids =
                for_each_target(all, &worker, |t| phasefleet_worker::undrain(pool, t)).await?;
            print_rows(output, &ids, &["worker"], |id| vec![id.to_string()])?;
        }
        Admin::Requeue {
            job,
            run: Some(run),
            dry_run,
            ..
        } if job.is_none() => {
            let by = crate::submit::whoami();
            let out = phasefleet::retry::retry_failed_run(pool, run, Some(&by), dry_run)
                .await
                .map_err(|e| match e {
                    RetryError::NotFound(_) => CliError::new(crate::exit::NOT_FOUND, e.to_string()),
                    RetryError::NotFailed { .. } | RetryError::NothingToRetry(_) => {
                        CliError::new(crate::exit::CONFLICT, e.to_string())
                    }
                    other => CliError::new(crate::exit::FAILURE, other.to_string()),
                })?;
            if dry_run {
                eprintln!("dry run: nothing changed");
            }
            print_one(output, &out, |r| {
                format!(
                    "run {} re-opened at phase {} (round {}, retry {})",
                    r.run_id, r.phase, r.round, r.retries
                )
            })?;
        }
        Admin::Requeue {
            job,
            dead,
            stuck,
            dry_run,
            ..
        } => {
            let ids: Vec<JobId> = if let Some(id) = job {
                let row = queue::get(&mut conn, JobId(id)).await?;
                if !dry_run {
                    queue::requeue(&mut conn, JobId(id)).await?;
                }
                vec![row.id]
            } else if let Some(q) = dead {
                queue::requeue_dead(&mut conn, &q, dry_run).await?
            } else if stuck {
                if dry_run {
                    queue::list(&mut conn, Some(JobState::Running), None, None, 10_000)
                        .await?
                        .into_iter()
                        .filter(|j| j.lease_expires_at.is_some_and(|e| e < chrono::Utc::now()))
                        .map(|j| j.id)
                        .collect()
                } else {
                    queue::rescue_expired(&mut conn, 10_000)
                        .await?
                        .into_iter()
                        .map(|r| r.id)
                        .collect()
                }
            } else {
                return Err(CliError::new(
                    2,
                    "say what to requeue: --job ID, --run RUN, --dead QUEUE or --stuck",
                ));
            };
            if dry_run {
                eprintln!("dry run: {} job(s) would be requeued", ids.len());
            }
            print_rows(output, &ids, &["job"], |id| vec![id.to_string()])?;
        }
        Admin::Jobs {
            state,
            queue: q,
            run,
            limit,
        } => {
            let rows = queue::list(&mut conn, state, q.as_deref(), run, limit).await?;
            print_rows(
                output,
                &rows,
                &[
                    "ID",
                    "QUEUE",
                    "KIND",
                    "STATE",
                    "ATTEMPTS",
                    "RUN",
                    "LAST ERROR",
                ],
                |j| {
                    vec![
                        j.id.to_string(),
                        j.queue.clone(),
                        j.kind.clone(),
                        j.state.as_str().to_owned(),
                        format!("{}/{}", j.attempts, j.max_attempts),
                        j.run_id.map(|r| r.to_string()).unwrap_or_default(),
                        j.last_error
                            .clone()
                            .unwrap_or_default()
                            .chars()
                            .take(60)
                            .collect(),
                    ]
                },
            )?;
        }
        Admin::Job { id } => {
            let row = queue::get(&mut conn, JobId(id)).await?;
            print_one(output, &row, |j| {
                serde_json::to_string_pretty(j).unwrap_or_default()
            })?;
        }
        Admin::Workers { all } => {
            let rows = phasefleet_worker::list_workers(pool, all).await?;
            print_rows(
                output,
                &rows,
                &["ID", "NAME", "STATE", "IN FLIGHT", "HEARTBEAT AGE", "DRAIN"],
                |w| {
                    vec![
                        w.id.to_string(),
                        w.name.clone(),
                        w.state.clone(),
                        format!("{}/{}", w.in_flight, w.concurrency),
                        format!("{:.1}s", w.heartbeat_age_secs),
                        w.drain_requested.to_string(),
                    ]
                },
            )?;
        }
        Admin::Check {
            run,
            lease_grace_secs,
        } => {
            let runs = (!run.is_empty()).then_some(run.as_slice());
            let violations =
                phasefleet::invariants::check(&mut conn, runs, lease_grace_secs).await?;
            print_rows(output, &violations, &["INVARIANT", "VIOLATION"], |v| {
                vec![v.invariant.to_owned(), v.detail.clone()]
            })?;
            if !violations.is_empty() {
                return Err(CliError::new(
                    crate::exit::FAILURE,
                    format!("{} invariant violation(s)", violations.len()),
                ));
            }
            eprintln!("all invariants hold");
        }
        Admin::Stats => {
            let s = queue::stats(&mut conn).await?;
            print_one(output, &s, |s| {
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
            })?;
        }
        Admin::Pause { queue: q, reason } => {
            queue::pause(&mut conn, &q, reason.as_deref()).await?;
            eprintln!("paused {q}");
        }
        Admin::Resume { queue: q } => {
            if !queue::resume(&mut conn, &q).await? {
                eprintln!("{q} was not paused");
            }
        }
        Admin::Cancel { id } => {
            let outcome = queue::cancel(&mut conn, JobId(id)).await?;
            print_one(output, &outcome, |o| match o {
                queue::CancelOutcome::Cancelled => "cancelled".to_owned(),
                queue::CancelOutcome::Requested => {
                    "cancel requested; its worker stops it now".to_owned()
                }
                queue::CancelOutcome::AlreadyFinished(s) => {
                    format!("already finished ({})", s.as_str())
                }
            })?;
        }
        Admin::Prune {
            older_than,
            include_dead,
            runs,
        } => {
            let mut total = 0;
            loop {
                let n = queue::prune(&mut conn, older_than, include_dead, 5_000).await?;
                total += n;
                if n == 0 {
                    break;
                }
            }
            let mut runs_deleted = 0;
            if runs {
                loop {
                    let n = phasefleet::runs::prune_ended(&mut conn, older_than, 500).await?;
                    runs_deleted += n;
                    if n == 0 {
                        break;
                    }
                }
            }
            print_one(
                output,
                &serde_json::json!({ "deleted": total, "runs_deleted": runs_deleted }),
                |_| format!("deleted {total} job(s) and {runs_deleted} run(s)"),
            )?;
        }
    }
    Ok(())
}
