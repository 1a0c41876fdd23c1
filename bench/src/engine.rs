//! The engine's cost per phase. Starts a private PostgreSQL (fsync on) with
//! pg_stat_statements, measures the pgbench floor (the queue's claim + complete, one
//! job per transaction), then submits N runs of the example workflow with its gate
//! removed and drains them with worker processes. Prints phases/s, SQL statements,
//! commits and WAL bytes per phase (everything from the first submit to the last
//! completion: submits, claims, phases, heartbeats, housekeeping), next to the floor.
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

    phasefleet_bench::load(&pool, args.floor_jobs).await?;
    let floor = phasefleet_bench::pgbench(&pg, 8, args.floor_jobs)?;
    eprintln!("pgbench floor: {floor:.0} claim+complete transactions/s");

    sqlx::query("SELECT /* engine-bench */ pg_stat_statements_reset()")
        .execute(&pool)
        .await?;
    let before = counters(&pool).await?;
    submit_all(&pool, args.runs).await?;
    let started = Instant::now();
    let mut workers = spawn_workers(&args, &pg.url())?;
    wait_done(&pool, args.runs).await?;
    let secs = started.elapsed().as_secs_f64();
    let after = counters(&pool).await?;
    for w in &mut workers {
        let _ = w.kill().await;
    }
    let phases = (args.runs * 3) as f64;
    let statements = (after.statements - before.statements) as f64;
    let commits = wal_commits(&pg, &pool, &before.lsn, &after.lsn).await?;
    let wal = after.wal_bytes - before.wal_bytes;
    let rate = phases / secs;
    println!(
        "| runs | phases | workers x slots | phases/s | statements/phase | commits/phase | WAL/phase | pgbench floor | phases/s of floor |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {phases} | {} x {} | {rate:.0} | {:.1} | {:.2} | {:.1} KB | {floor:.0} tx/s | {:.0}% |",
        args.runs,
        args.workers,
        args.concurrency,
        statements / phases,
        commits / phases,
        wal / phases / 1000.0,
        100.0 * rate / floor
    );
    let top: Vec<(i64, f64, String)> = sqlx::query_as(
        r"SELECT /* engine-bench */ calls, total_exec_time, left(regexp_replace(query, '\s+', ' ', 'g'), 100)
            FROM pg_stat_statements
           WHERE query NOT LIKE '%engine-bench%' AND query NOT ILIKE '%pg_stat%'
           ORDER BY total_exec_time DESC LIMIT $1",
    )
    .bind(args.top)
    .fetch_all(&pool)
    .await?;
    println!("\n| calls/phase | ms/phase | statement |\n|---|---|---|");
    for (calls, ms, q) in top {
        println!(
            "| {:.2} | {:.3} | `{}` |",
            calls as f64 / phases,
            ms / phases,
            q.replace('|', "\\|")
        );
    }
    pool.close().await;
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
