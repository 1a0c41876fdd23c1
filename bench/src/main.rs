//! Queue throughput and latency, next to pgbench running the same SQL on the same
//! server in the same run. Prints a Markdown table (see bench/README.md).
//!
//! `cargo run --release -p phasefleet-bench --bin queue-bench -- --jobs 20000`

use anyhow::bail;
use clap::Parser;
use phasefleet::WorkerId;
use phasefleet::local_pg::LocalPg;
use phasefleet::queue::{self, NewJob};
use phasefleet_bench::{load, pgbench, runtime};
use phasefleet_worker::{Builtins, Worker, WorkerConfig};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// Jobs per throughput scenario.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Concurrent claimers (connections) in the direct scenarios and in pgbench.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Batch size of the batched scenario.
    #[arg(long, default_value_t = 50)]
    batch: i64,
    /// Jobs for the enqueue-to-start latency scenario.
    #[arg(long, default_value_t = 2_000)]
    latency_jobs: usize,
}

async fn direct(pool: &PgPool, clients: usize, batch: i64, n: usize) -> anyhow::Result<f64> {
    load(pool, n).await?;
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let pool = pool.clone();
        set.spawn(async move {
            let me = WorkerId::new();
            let mut conn = pool.acquire().await?;
            let mut done = 0usize;
            loop {
                let jobs =
                    queue::claim(&mut conn, me, "bench", batch, Duration::from_secs(30)).await?;
                if jobs.is_empty() {
                    return anyhow::Ok(done);
                }
                if batch == 1 {
                    for j in &jobs {
                        let _c = queue::complete(&mut conn, &j.lease(), me).await?;
                    }
                } else {
                    let leases: Vec<_> = jobs.iter().map(|j| j.lease()).collect();
                    queue::complete_many(&mut conn, &leases, me).await?;
                }
                done += jobs.len();
            }
        });
    }
    let mut total = 0;
    while let Some(r) = set.join_next().await {
        total += r??;
    }
    let secs = start.elapsed().as_secs_f64();
    if total != n {
        bail!("completed {total} of {n}");
    }
    Ok(total as f64 / secs)
}

async fn latency(pool: &PgPool, n: usize) -> anyhow::Result<(f64, f64, f64)> {
    sqlx::query("DELETE FROM jobs WHERE queue = 'bench'")
        .execute(pool)
        .await?;
    let stop = CancellationToken::new();
    // Poll only every 5s: wake-ups come from LISTEN/NOTIFY.
    let cfg = WorkerConfig {
        queue: "bench".into(),
        concurrency: 16,
        poll_interval: Duration::from_secs(5),
        ..WorkerConfig::default()
    };
    let worker = tokio::spawn(Worker::new(pool.clone(), cfg, Builtins).run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut conn = pool.acquire().await?;
    for i in 0..n {
        queue::enqueue(
            &mut conn,
            &NewJob::new("noop", serde_json::json!({ "i": i })).queue("bench"),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    loop {
        let (left,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM jobs WHERE queue = 'bench' AND state <> 'completed'",
        )
        .fetch_one(pool)
        .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    worker.await??;
    let (p50, p99, max): (f64, f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
           FROM (SELECT EXTRACT(EPOCH FROM started_at - created_at)::float8 * 1000 AS ms FROM jobs WHERE queue = 'bench') t",
    )
    .fetch_one(pool)
    .await?;
    Ok((p50, p99, max))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!(
        "phasefleet-bench-pg-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let pg = LocalPg::start(
        &dir,
        &[("shared_buffers", "256MB"), ("max_connections", "200")],
    )
    .await?;
    let pool = phasefleet::db::pool_options(u32::try_from(args.clients * 2 + 40)?)
        .connect(&pg.url())
        .await?;
    phasefleet::db::migrate(&pool).await?;
    let n = args.jobs;
    eprintln!("warming up");
    direct(&pool, args.clients, 1, 2_000).await?;

    let per_job = direct(&pool, args.clients, 1, n).await?;
    eprintln!("queue API, 1 per claim: {per_job:.0} jobs/s");
    load(&pool, n).await?;
    let pg_per_job = pgbench(&pg, args.clients, n)?;
    eprintln!("pgbench: {pg_per_job:.0} tps");
    let batched = direct(&pool, args.clients, args.batch, n).await?;
    eprintln!("queue API, batched: {batched:.0} jobs/s");
    let rt = runtime(&pool, 2, n).await?;
    eprintln!("worker runtime: {rt:.0} jobs/s");
    let (p50, p99, max) = latency(&pool, args.latency_jobs).await?;

    println!("| scenario | jobs | clients | jobs/s |\n|---|---|---|---|");
    println!(
        "| pgbench: same claim + complete SQL, 1 job per transaction | {n} | {} | {pg_per_job:.0} |",
        args.clients
    );
    println!(
        "| phasefleet queue API: claim 1 + complete 1 | {n} | {} | {per_job:.0} |",
        args.clients
    );
    println!(
        "| phasefleet queue API: claim {} + complete_many | {n} | {} | {batched:.0} |",
        args.batch, args.clients
    );
    println!(
        "| phasefleet worker runtime: 2 workers x 32 slots, noop handler | {n} | 2 | {rt:.0} |"
    );
    println!();
    println!(
        "| enqueue-to-start latency (idle worker, LISTEN/NOTIFY wake-up, {} jobs, 1 every ~2 ms) | p50 {p50:.2} ms | p99 {p99:.2} ms | max {max:.2} ms |",
        args.latency_jobs
    );
    println!("|---|---|---|---|");
    pool.close().await;
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
