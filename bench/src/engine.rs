//! The engine's cost per phase. Starts a private PostgreSQL (fsync on) with
//! pg_stat_statements and measures the pgbench floor (the queue's claim + complete, one
//! job per transaction). Starts the worker processes and warms them up on runs of
//! their own (connections made, statements prepared and planned, as in a fleet that
//! has been up for a while), holds the queue while N runs of the example workflow with
//! its gate removed are submitted, then lets the workers drain them. Prints phases/s,
//! SQL statements, commits, WAL bytes and CPU time (server and workers) per phase,
//! counted from the queue's release to the last completion (claims, phases, heartbeats,
//! housekeeping; not the submits), and the floor measured again after the runs.
//!
//! `cargo build --release -p phasefleet-worker && cargo run --release -p phasefleet-bench --bin engine-bench -- --runs 400`

use anyhow::Context;
use clap::Parser;
use phasefleet::local_pg::LocalPg;
use phasefleet::validate::SchemaRegistry;
use phasefleet::workflow::{Definition, Persona, WorkflowTemplate};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 400)]
    runs: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Slots per worker.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// PostgreSQL connections per worker process (the worker's default when unset:
    /// one per slot plus four).
    #[arg(long)]
    db_connections: Option<u32>,
    /// Runs the workers complete before the measured ones (not measured).
    #[arg(long, default_value_t = 300)]
    warmup_runs: usize,
    /// Jobs for the pgbench floor.
    #[arg(long, default_value_t = 10_000)]
    floor_jobs: usize,
    /// Print the statements with the most calls.
    #[arg(long, default_value_t = 12)]
    top: i64,
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

/// What the database did, read from its statistics.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Counters {
    statements: i64,
    lsn: String,
    wal_bytes: f64,
}

/// Statements exclude this tool's own (marked `engine-bench`) and the statistics reads.
async fn counters(pool: &PgPool) -> anyhow::Result<Counters> {
    Ok(sqlx::query_as::<_, Counters>(
        "SELECT /* engine-bench */
                (SELECT COALESCE(sum(calls), 0)::bigint FROM pg_stat_statements
                  WHERE query NOT LIKE '%engine-bench%' AND query NOT ILIKE '%pg_stat%') AS statements,
                pg_current_wal_lsn()::text AS lsn,
                pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8 AS wal_bytes",
    )
    .fetch_one(pool)
    .await?)
}

/// Commit records in the WAL between two positions: the transactions that wrote
/// something (and so waited for a flush). Read-only ones write none.
async fn wal_commits(pg: &LocalPg, pool: &PgPool, from: &str, to: &str) -> anyhow::Result<f64> {
    // The last segment must be complete before pg_waldump reads to `to`.
    sqlx::query("SELECT /* engine-bench */ pg_switch_wal()")
        .execute(pool)
        .await?;
    let out = std::process::Command::new(pg.bin_dir().join("pg_waldump"))
        .args(["--stats=record", "--start", from, "--end", to, "--path"])
        .arg(pg.data_dir().join("pg_wal"))
        .output()
        .context("running pg_waldump")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.trim_start().starts_with("Transaction/COMMIT "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .with_context(|| {
            format!(
                "no commit count in pg_waldump output: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn workload() -> anyhow::Result<(WorkflowTemplate, Vec<Persona>)> {
    let text = std::fs::read_to_string(repo("examples/spec-review-verify.yaml"))?;
    let mut template = WorkflowTemplate::from_str_named("bench.yaml", &text)?;
    for p in &mut template.phases {
        p.gates.clear();
    }
    let personas = ["synthetic-author", "synthetic-reviewer"]
        .iter()
        .map(|n| Persona::load(&repo(&format!("examples/personas/{n}.yaml"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((template, personas))
}

async fn submit_all(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    let (template, personas) = workload()?;
    let schemas = SchemaRegistry::load_dir(&repo("schemas"))?;
    let config = phasefleet::config::Config::from_toml("[teams.default]\nqueues = [\"engine\"]")?;
    let mut set = tokio::task::JoinSet::new();
    for chunk in 0..8 {
        let (pool, schemas, config) = (pool.clone(), schemas.clone(), config.clone());
        let req = phasefleet_bench::bench_request(&template, &personas, "engine");
        set.spawn(async move {
            for _ in (chunk..n).step_by(8) {
                phasefleet::submit::submit(&pool, &schemas, &config, req.clone()).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

fn spawn_workers(args: &Args, url: &str) -> anyhow::Result<Vec<tokio::process::Child>> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("no target dir")?
        .join("phasefleet-worker");
    (0..args.workers)
        .map(|_| {
            tokio::process::Command::new(&bin)
                .args(["--database-url", url, "--queue", "engine"])
                .args(["--concurrency", &args.concurrency.to_string()])
                .args(args.db_connections.map(|n| format!("--db-connections={n}")))
                .env("PHASEFLEET_SCHEMAS_DIR", repo("schemas"))
                .env("RUST_LOG", "warn")
                .kill_on_drop(true)
                .spawn()
                .context("starting phasefleet-worker (cargo build --release -p phasefleet-worker)")
        })
        .collect()
}

/// Wait until every run completed.
async fn wait_done(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    loop {
        let (done,): (i64,) = sqlx::query_as(
            "SELECT /* engine-bench */ count(*) FROM runs WHERE queue = 'engine' AND state = 'completed'",
        )
        .fetch_one(pool)
        .await?;
        if done >= i64::try_from(n)? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CPU time a process used (user and system), in clock ticks; with `reaped`, also
/// that of the children it waited for (the postmaster's ended backends).
fn cpu_ticks(pid: u32, reaped: bool) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): state is field 3, utime
    // 14, stime 15, cutime 16, cstime 17.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let take = if reaped { 4 } else { 2 };
    fields.iter().take(take).sum()
}

/// The parent pid of a process, from `/proc/PID/stat` (field 4).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU ticks of the whole server: the postmaster, its running processes, and the
/// backends that ended.
fn server_cpu_ticks(pg: &LocalPg) -> anyhow::Result<u64> {
    let pid_file = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))?;
    let postmaster: u32 = pid_file
        .lines()
        .next()
        .context("empty postmaster.pid")?
        .trim()
        .parse()?;
    let mut ticks = cpu_ticks(postmaster, true);
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
        if let Some(pid) = pid.filter(|p| parent_of(*p) == Some(postmaster)) {
            ticks += cpu_ticks(pid, false);
        }
    }
    Ok(ticks)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 where it cannot be asked).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU ticks of the worker processes so far.
fn workers_cpu_ticks(workers: &[tokio::process::Child]) -> u64 {
    workers
        .iter()
        .filter_map(tokio::process::Child::id)
        .map(|pid| cpu_ticks(pid, true))
        .sum()
}

/// The pgbench floor, in claim+complete transactions per second.
async fn floor(pg: &LocalPg, pool: &PgPool, jobs: usize) -> anyhow::Result<f64> {
    phasefleet_bench::load(pool, jobs).await?;
    let tps = phasefleet_bench::pgbench(pg, 8, jobs)?;
    eprintln!("pgbench floor: {tps:.0} claim+complete transactions/s");
    Ok(tps)
}

/// Rows written in each table since the statistics were reset: inserts, updates, HOT
/// updates (no index entry written), deletes.
async fn row_writes(pool: &PgPool) -> anyhow::Result<Vec<(String, i64, i64, i64, i64)>> {
    Ok(sqlx::query_as(
        "SELECT /* engine-bench */ relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del
           FROM pg_stat_user_tables
          WHERE n_tup_ins + n_tup_upd + n_tup_del > 0
          ORDER BY n_tup_ins + n_tup_upd + n_tup_del DESC",
    )
    .fetch_all(pool)
    .await?)
}

fn print_row_writes(rows: &[(String, i64, i64, i64, i64)], phases: f64) {
    println!(
        "\n| table | inserts/phase | updates/phase | of them HOT | deletes/phase |\n|---|---|---|---|---|"
    );
    for (table, ins, upd, hot, del) in rows {
        println!(
            "| {table} | {:.2} | {:.2} | {:.0}% | {:.2} |",
            *ins as f64 / phases,
            *upd as f64 / phases,
            100.0 * *hot as f64 / (*upd).max(1) as f64,
            *del as f64 / phases
        );
    }
}

/// What the measured drain did.
struct Measured {
    secs: f64,
    server_ticks: u64,
    worker_ticks: u64,
    before: Counters,
    after: Counters,
    row_writes: Vec<(String, i64, i64, i64, i64)>,
    top: Vec<(i64, f64, f64, i64, String)>,
}

/// Hold the queue, submit the measured runs, reset the statistics, release the queue
/// and wait until the workers completed every run.
async fn drain_measured(
    args: &Args,
    pool: &PgPool,
    pg: &LocalPg,
    workers: &[tokio::process::Child],
) -> anyhow::Result<Measured> {
    let mut conn = pool.acquire().await?;
    phasefleet::queue::pause(&mut conn, "engine", Some("engine-bench")).await?;
    submit_all(pool, args.runs).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::query("SELECT /* engine-bench */ pg_stat_statements_reset(), pg_stat_reset()")
        .execute(&mut *conn)
        .await?;
    let before = counters(pool).await?;
    let server_before = server_cpu_ticks(pg)?;
    let workers_before = workers_cpu_ticks(workers);
    let started = Instant::now();
    phasefleet::queue::resume(&mut conn, "engine").await?;
    drop(conn);
    wait_done(pool, args.warmup_runs + args.runs).await?;
    let secs = started.elapsed().as_secs_f64();
    let server_ticks = server_cpu_ticks(pg)? - server_before;
    let worker_ticks = workers_cpu_ticks(workers) - workers_before;
    let after = counters(pool).await?;
    // Backends report their row counts within a second of going idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let row_writes = row_writes(pool).await?;
    let top: Vec<(i64, f64, f64, i64, String)> = sqlx::query_as(
        r"SELECT /* engine-bench */ calls, total_exec_time, total_plan_time, plans,
                 left(regexp_replace(query, '\s+', ' ', 'g'), 100)
            FROM pg_stat_statements
           WHERE query NOT LIKE '%engine-bench%' AND query NOT ILIKE '%pg_stat%'
           ORDER BY total_exec_time + total_plan_time DESC LIMIT $1",
    )
    .bind(args.top)
    .fetch_all(pool)
    .await?;
    Ok(Measured {
        secs,
        server_ticks,
        worker_ticks,
        before,
        after,
        row_writes,
        top,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!(
        "phasefleet-engine-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let pg = LocalPg::start(
        &dir,
        &[
            ("shared_preload_libraries", "pg_stat_statements"),
            ("pg_stat_statements.track", "top"),
            ("pg_stat_statements.track_planning", "on"),
            ("max_connections", "200"),
            ("shared_buffers", "256MB"),
        ],
    )
    .await?;
    let pool = phasefleet::db::pool_options(16).connect(&pg.url()).await?;
    phasefleet::db::migrate(&pool).await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await?;

    let floor_before = floor(&pg, &pool, args.floor_jobs).await?;

    // Warm the workers up (connections made, statements prepared and planned), as a
    // long-running fleet is; then hold the queue while the measured runs are submitted.
    let mut workers = spawn_workers(&args, &pg.url())?;
    submit_all(&pool, args.warmup_runs).await?;
    wait_done(&pool, args.warmup_runs).await?;
    let m = drain_measured(&args, &pool, &pg, &workers).await?;
    for w in &mut workers {
        let _ = w.kill().await;
    }
    let floor_after = floor(&pg, &pool, args.floor_jobs).await?;
    let floor = f64::midpoint(floor_before, floor_after);
    let phases = (args.runs * 3) as f64;
    let statements = (m.after.statements - m.before.statements) as f64;
    let commits = wal_commits(&pg, &pool, &m.before.lsn, &m.after.lsn).await?;
    let wal = m.after.wal_bytes - m.before.wal_bytes;
    let rate = phases / m.secs;
    let cpu_ms = |ticks: u64| ticks as f64 / ticks_per_second() * 1000.0 / phases;
    println!(
        "| runs | phases | workers x slots (connections) | phases/s | statements/phase | commits/phase | WAL/phase | server CPU/phase | workers CPU/phase | pgbench floor (before, after) | phases/s of floor |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {phases} | {} x {} ({}) | {rate:.0} | {:.1} | {:.2} | {:.1} KB | {:.2} ms | {:.2} ms | {floor:.0} tx/s ({floor_before:.0}, {floor_after:.0}) | {:.0}% |",
        args.runs,
        args.workers,
        args.concurrency,
        args.db_connections
            .map_or_else(|| format!("{}", args.concurrency + 4), |n| n.to_string()),
        statements / phases,
        commits / phases,
        wal / phases / 1000.0,
        cpu_ms(m.server_ticks),
        cpu_ms(m.worker_ticks),
        100.0 * rate / floor
    );
    println!(
        "\n| calls/phase | executing ms/phase | planning ms/phase | plans/call | statement |\n|---|---|---|---|---|"
    );
    for (calls, exec_ms, plan_ms, plans, q) in m.top {
        println!(
            "| {:.2} | {:.3} | {:.3} | {:.2} | `{}` |",
            calls as f64 / phases,
            exec_ms / phases,
            plan_ms / phases,
            plans as f64 / calls.max(1) as f64,
            q.replace('|', "\\|")
        );
    }
    print_row_writes(&m.row_writes, phases);
    pool.close().await;
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
