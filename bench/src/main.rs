//! Queue throughput and latency, next to pgbench running the same SQL on the same
//! server in the same run. Prints a Markdown table (see bench/README.md).
//!
//! `cargo run --release -p phasefleet-bench --bin queue-bench -- --jobs 20000`

use anyhow::{Context, bail};
use clap::Parser;
use phasefleet::WorkerId;
use phasefleet::local_pg::LocalPg;
use phasefleet::queue::{self, NewJob};
use phasefleet_bench::{load, pgbench, runtime, start_workers, stop_workers, wait_until_drained};
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
    /// Jobs for the idle enqueue-to-start latency scenario.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    latency_jobs: u32,
    /// Jobs per second enqueued in the latency-under-load scenario (one batch every
    /// 10 ms, so rounded up to a multiple of 100).
    #[arg(long, default_value_t = 2_500, value_parser = clap::value_parser!(u32).range(100..))]
    load_rate: u32,
    /// How long the latency-under-load scenario enqueues, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    load_seconds: u64,
    /// Also run bench/peers/run (graphile-worker, pgqueuer) on the same server.
    #[arg(long)]
    peers: bool,
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
                        let _c = queue::complete(&mut conn, &j.lease()).await?;
                    }
                } else {
                    let leases: Vec<_> = jobs.iter().map(|j| j.lease()).collect();
                    let _done = queue::complete_many(&mut conn, &leases).await?;
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

/// Record every `bench` job's timestamps as it leaves the table (a completed job is
/// deleted as it completes), so latency is read in the database, on one clock. Only
/// the latency scenarios install it; it starts empty.
async fn record_completions(pool: &PgPool) -> anyhow::Result<()> {
    for statement in [
        "CREATE TABLE IF NOT EXISTS bench_done (created_at timestamptz, started_at timestamptz, finished_at timestamptz)",
        "TRUNCATE bench_done",
        "CREATE OR REPLACE FUNCTION bench_done() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO bench_done VALUES (OLD.created_at, OLD.started_at, now());
             RETURN NULL;
         END $$",
        "CREATE OR REPLACE TRIGGER bench_done AFTER DELETE ON jobs
             FOR EACH ROW WHEN (OLD.queue = 'bench' AND OLD.state = 'running') EXECUTE FUNCTION bench_done()",
    ] {
        sqlx::query(statement).execute(pool).await?;
    }
    Ok(())
}

/// Enqueue-to-start latency, measured in the database (`started_at - created_at`, one
/// clock, from what [`record_completions`] kept): p50, p99, max in ms, and the jobs
/// measured.
async fn latency_in_db(pool: &PgPool) -> anyhow::Result<Latency> {
    let (p50, p99, max, jobs): (f64, f64, f64, i64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms), count(*)
           FROM (SELECT EXTRACT(EPOCH FROM started_at - created_at)::float8 * 1000 AS ms FROM bench_done) t",
    )
    .fetch_one(pool)
    .await?;
    let (rate,): (f64,) = sqlx::query_as(
        "SELECT count(*) / EXTRACT(EPOCH FROM max(finished_at) - min(created_at))::float8 FROM bench_done",
    )
    .fetch_one(pool)
    .await?;
    sqlx::query("DROP TRIGGER bench_done ON jobs")
        .execute(pool)
        .await?;
    Ok(Latency {
        p50,
        p99,
        max,
        jobs,
        rate,
    })
}

#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
    jobs: i64,
    /// Jobs completed per second from the first enqueue to the last completion.
    rate: f64,
}

/// Latency on an idle worker: `n` jobs enqueued one at a time, 2 ms apart after each
/// commit.
async fn idle_latency(pool: &PgPool, n: u32) -> anyhow::Result<Latency> {
    sqlx::query("DELETE FROM jobs WHERE queue = 'bench'")
        .execute(pool)
        .await?;
    record_completions(pool).await?;
    let stop = CancellationToken::new();
    // Poll only every 5s: wake-ups come from LISTEN/NOTIFY.
    let workers = start_workers(pool, 1, 16, Duration::from_secs(5), &stop);
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
    wait_until_drained(pool).await?;
    stop_workers(&stop, workers).await?;
    latency_in_db(pool).await
}

/// Latency under load: producers enqueue `rate` jobs/s (a batch every 10 ms, one
/// statement each, notified by the queue's trigger) for `seconds`, while 2 workers x
/// 32 slots complete them.
async fn loaded_latency(pool: &PgPool, rate: u32, seconds: u64) -> anyhow::Result<Latency> {
    sqlx::query("DELETE FROM jobs WHERE queue = 'bench'")
        .execute(pool)
        .await?;
    sqlx::query("VACUUM ANALYZE jobs").execute(pool).await?;
    record_completions(pool).await?;
    let stop = CancellationToken::new();
    let workers = start_workers(pool, 2, 32, Duration::from_secs(5), &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_tick = i64::from(rate.div_ceil(100));
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..seconds * 100 {
        ticks.tick().await;
        sqlx::query(
            "INSERT INTO jobs (queue, kind, payload) SELECT 'bench', 'noop', '{}'::jsonb FROM generate_series(1, $1)",
        )
        .bind(per_tick)
        .execute(pool)
        .await?;
    }
    wait_until_drained(pool).await?;
    stop_workers(&stop, workers).await?;
    latency_in_db(pool).await
}

/// `bench/peers/run` on the same server: one `peer|name|configuration|jobs|jobs/s` line
/// per configuration.
fn peers(pg: &LocalPg, jobs: usize) -> anyhow::Result<Vec<String>> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/run");
    let out = std::process::Command::new(&script)
        .arg(pg.url())
        .arg(jobs.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("peer|"))
        .map(|l| match l.split('|').collect::<Vec<_>>()[..] {
            [name, configuration, jobs, rate] => {
                Ok(format!("| {name}: {configuration} | {jobs} | 2 | {rate} |"))
            }
            _ => Err(anyhow::anyhow!("unexpected line from bench/peers/run: {l}")),
        })
        .collect()
}

struct Results {
    n: usize,
    clients: usize,
    batch: i64,
    pgbench: f64,
    per_job: f64,
    batched: f64,
    runtime_32: f64,
    runtime_500: f64,
    peers: Vec<String>,
    idle: Latency,
    loaded: Latency,
    latency_jobs: u32,
}

fn print_tables(r: &Results) {
    let Results { n, clients, .. } = r;
    println!("| scenario | jobs | clients | jobs/s |\n|---|---|---|---|");
    println!(
        "| pgbench: same claim + complete SQL, 1 job per transaction | {n} | {clients} | {:.0} |",
        r.pgbench
    );
    println!(
        "| phasefleet queue API: claim 1 + complete 1 | {n} | {clients} | {:.0} |",
        r.per_job
    );
    println!(
        "| phasefleet queue API: claim {} + complete_many | {n} | {clients} | {:.0} |",
        r.batch, r.batched
    );
    println!(
        "| phasefleet worker runtime: 2 workers x 32 slots, noop handler, batched completion | {n} | 2 | {:.0} |",
        r.runtime_32
    );
    println!(
        "| phasefleet worker runtime: 2 workers x 500 slots, noop handler, batched completion | {n} | 2 | {:.0} |",
        r.runtime_500
    );
    for line in &r.peers {
        println!("{line}");
    }
    println!();
    println!("| enqueue-to-start latency | jobs | completed jobs/s | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    let row = |what: &str, l: &Latency| {
        println!(
            "| {what} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
            l.jobs, l.rate, l.p50, l.p99, l.max
        );
    };
    row(
        &format!(
            "idle worker, LISTEN/NOTIFY wake-up, {} jobs enqueued one at a time, 2 ms after each commit",
            r.latency_jobs
        ),
        &r.idle,
    );
    row(
        "under load: 2 workers x 32 slots, a batch enqueued every 10 ms",
        &r.loaded,
    );
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
    let pgbench = pgbench(&pg, args.clients, n)?;
    eprintln!("pgbench: {pgbench:.0} tps");
    let batched = direct(&pool, args.clients, args.batch, n).await?;
    eprintln!("queue API, batched: {batched:.0} jobs/s");
    let runtime_32 = runtime(&pool, 2, 32, n).await?;
    eprintln!("worker runtime, 32 slots: {runtime_32:.0} jobs/s");
    let runtime_500 = runtime(&pool, 2, 500, n).await?;
    eprintln!("worker runtime, 500 slots: {runtime_500:.0} jobs/s");
    let peers = if args.peers {
        // Minutes of a child process: off the async threads.
        tokio::task::block_in_place(|| peers(&pg, n))?
    } else {
        Vec::new()
    };
    let idle = idle_latency(&pool, args.latency_jobs).await?;
    let loaded = loaded_latency(&pool, args.load_rate, args.load_seconds).await?;
    print_tables(&Results {
        n,
        clients: args.clients,
        batch: args.batch,
        pgbench,
        per_job,
        batched,
        runtime_32,
        runtime_500,
        peers,
        idle,
        loaded,
        latency_jobs: args.latency_jobs,
    });
    pool.close().await;
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
