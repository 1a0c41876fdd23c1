//! Throughput on a database with a long history against an empty one, and after the
//! retention settings (`phasefleet admin prune --older-than 7d --runs`) have run.
//!
//! Three measurements per state, on one private PostgreSQL:
//! - queue: 20 000 no-op jobs through the worker runtime (2 workers x 32 slots);
//! - engine: 200 synthetic three-phase runs end to end (submit, phases, artifacts,
//!   events, reports; no gate), runs per second;
//! - event append: 20 000 appends to fresh runs' event logs, per second.
//!
//! `cargo run --release -p phasefleet-bench --bin history-bench -- --history-jobs 2000000`

use anyhow::bail;
use clap::Parser;
use phasefleet::agent::synthetic::SyntheticAgent;
use phasefleet::local_pg::LocalPg;
use phasefleet::phase::Engine;
use phasefleet::submit::SubmitRequest;
use phasefleet::validate::SchemaRegistry;
use phasefleet::workflow::Definition;
use phasefleet::workflow::{Persona, WorkflowTemplate};
use phasefleet_bench::{bench_request, load, runtime, stop_and_rate};
use phasefleet_worker::{EngineHandler, Worker, WorkerConfig};
use sqlx::PgPool;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// Finished jobs in the history. Completed jobs leave the table as they complete,
    /// so only the dead-lettered and cancelled share of them (`--kept-percent`) is
    /// written.
    #[arg(long, default_value_t = 2_000_000)]
    history_jobs: i64,
    /// Percent of the finished jobs that stay in the table (half dead, half cancelled).
    #[arg(long, default_value_t = 2)]
    kept_percent: i64,
    /// Ended runs in the history, each with `--events-per-run` events.
    #[arg(long, default_value_t = 20_000)]
    history_runs: i64,
    #[arg(long, default_value_t = 100)]
    events_per_run: i64,
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    #[arg(long, default_value_t = 200)]
    runs: usize,
}

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

struct Fixture {
    schemas: SchemaRegistry,
    config: phasefleet::config::Config,
    template: WorkflowTemplate,
    personas: Vec<Persona>,
}

impl Fixture {
    fn load() -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(repo("examples/spec-review-verify.yaml"))?
            .replace("gates: [human_review]", "");
        Ok(Self {
            schemas: SchemaRegistry::load_dir(&repo("schemas"))?,
            config: phasefleet::config::Config::from_toml("[teams.default]\nqueues = [\"*\"]")?,
            template: WorkflowTemplate::from_str_named("history.yaml", &text)?,
            personas: ["synthetic-author", "synthetic-reviewer"]
                .iter()
                .map(|n| Persona::load(&repo(&format!("examples/personas/{n}.yaml"))))
                .collect::<Result<_, _>>()?,
        })
    }

    fn request(&self, queue: &str) -> SubmitRequest {
        bench_request(&self.template, &self.personas, queue)
    }
}

/// Runs per second for `n` runs submitted at once and worked by 2 workers x 16 slots.
async fn engine(pool: &PgPool, fx: &Fixture, n: usize, label: &str) -> anyhow::Result<f64> {
    let queue = format!("engine-{}", label.replace(' ', "-"));
    let start = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(
            phasefleet::submit::submit(pool, &fx.schemas, &fx.config, fx.request(&queue))
                .await?
                .run_id()
                .0,
        );
    }
    let stop = CancellationToken::new();
    let mut handles = Vec::new();
    for _ in 0..2 {
        let cfg = WorkerConfig {
            queue: queue.clone(),
            concurrency: 16,
            poll_interval: Duration::from_millis(50),
            ..WorkerConfig::default()
        };
        let engine = Engine::new(pool.clone(), fx.schemas.clone(), SyntheticAgent);
        handles.push(tokio::spawn(
            Worker::new(pool.clone(), cfg, EngineHandler::new(engine)).run(stop.clone()),
        ));
    }
    loop {
        let (done, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FILTER (WHERE state IN ('failed', 'aborted', 'cancelled'))
               FROM runs WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_one(pool)
        .await?;
        if failed > 0 {
            bail!("{failed} runs did not complete");
        }
        if done == i64::try_from(n)? {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_and_rate(&stop, handles, n, start).await
}

/// Event appends per second: 20 events into each of `n / 20` fresh runs, one
/// transaction per append (as the engine does).
async fn appends(pool: &PgPool, fx: &Fixture, n: usize) -> anyhow::Result<f64> {
    let mut runs = Vec::new();
    for _ in 0..n / 20 {
        runs.push(
            phasefleet::submit::submit(pool, &fx.schemas, &fx.config, fx.request("appends"))
                .await?
                .run_id(),
        );
    }
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for chunk in runs.chunks(runs.len().div_ceil(8).max(1)) {
        let (pool, chunk) = (pool.clone(), chunk.to_vec());
        set.spawn(async move {
            for run in chunk {
                for i in 0..20 {
                    let mut tx = pool.begin().await?;
                    phasefleet::store::runs::runs_lock(&mut tx, run).await?;
                    let event = phasefleet::events::NewEvent {
                        kind: "bench",
                        phase: None,
                        key: format!("bench:{i}"),
                        data: serde_json::json!({}),
                    };
                    phasefleet::store::events::events_append(&mut tx, run, &[event]).await?;
                    tx.commit().await?;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let secs = start.elapsed().as_secs_f64();
    // Those runs stay queued otherwise; end them so they do not count as active.
    sqlx::query("UPDATE runs SET state = 'cancelled', finished_at = now() WHERE id = ANY($1)")
        .bind(runs.iter().map(|r| r.0).collect::<Vec<_>>())
        .execute(pool)
        .await?;
    sqlx::query("UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE queue = 'appends' AND state = 'ready'")
        .execute(pool)
        .await?;
    Ok((runs.len() * 20) as f64 / secs)
}

/// Bulk history, 30 days old: the finished jobs that stay (dead and cancelled), ended
/// runs with events and reports.
async fn populate(pool: &PgPool, args: &Args) -> anyhow::Result<()> {
    let (template_hash,): (String,) = sqlx::query_as("SELECT hash FROM templates LIMIT 1")
        .fetch_one(pool)
        .await?;
    sqlx::query(
        "INSERT INTO jobs (queue, kind, payload, state, attempts, created_at, finished_at, last_error)
         SELECT 'history', 'phase', jsonb_build_object('i', g),
                CASE WHEN g % 2 = 0 THEN 'dead'::job_state ELSE 'cancelled'::job_state END, 1,
                now() - interval '30 days', now() - interval '30 days', 'a typical error message'
           FROM generate_series(1, $1) g",
    )
    .bind(args.history_jobs * args.kept_percent / 100)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO runs (id, template_hash, state, created_at, started_at, finished_at, next_event_seq, queue)
         SELECT gen_random_uuid(), $1, 'completed', now() - interval '30 days', now() - interval '30 days',
                now() - interval '30 days', $3 + 1, 'history'
           FROM generate_series(1, $2)",
    )
    .bind(&template_hash)
    .bind(args.history_runs)
    .bind(args.events_per_run)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO run_events (run_id, seq, kind, idempotency_key, data, created_at)
         SELECT r.id, s, 'history', 'history:' || s, '{\"filler\": \"a typical event payload of some length\"}'::jsonb,
                now() - interval '30 days'
           FROM runs r, generate_series(1, $1) s WHERE r.queue = 'history'",
    )
    .bind(args.events_per_run)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO reports (run_id, final_state, json, markdown)
         SELECT id, 'completed', '{}'::jsonb, '# history' FROM runs WHERE queue = 'history'",
    )
    .execute(pool)
    .await?;
    settle(pool).await
}

/// VACUUM ANALYZE the big tables and CHECKPOINT, so the bulk writes' background I/O
/// does not land inside the next measurement.
async fn settle(pool: &PgPool) -> anyhow::Result<()> {
    for t in ["jobs", "runs", "run_events", "reports"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {t}")))
            .execute(pool)
            .await?;
    }
    sqlx::query("CHECKPOINT").execute(pool).await?;
    Ok(())
}

async fn sizes(pool: &PgPool) -> anyhow::Result<String> {
    let (jobs, events, runs, bytes): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM run_events), (SELECT count(*) FROM runs),
                pg_database_size(current_database())",
    )
    .fetch_one(pool)
    .await?;
    Ok(format!(
        "{jobs} jobs, {events} events, {runs} runs, {} MiB",
        bytes / 1024 / 1024
    ))
}

/// How many times autovacuum has processed `jobs` (it scans every index of the table,
/// so on a big table it competes with the measurement it lands in).
async fn jobs_autovacuums(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'jobs'",
    )
    .fetch_one(pool)
    .await?)
}

async fn measure(pool: &PgPool, fx: &Fixture, args: &Args, label: &str) -> anyhow::Result<String> {
    let what = sizes(pool).await?;
    load(pool, args.jobs).await?;
    let vacuums_before = jobs_autovacuums(pool).await?;
    let q = runtime(pool, 2, 32, args.jobs).await?;
    let vacuums = jobs_autovacuums(pool).await? - vacuums_before;
    let e = engine(pool, fx, args.runs, label).await?;
    let a = appends(pool, fx, args.jobs).await?;
    eprintln!(
        "{label}: queue {q:.0} jobs/s ({vacuums} autovacuum(s) of jobs during it), engine {e:.1} runs/s, appends {a:.0}/s"
    );
    Ok(format!("| {label} | {what} | {q:.0} | {e:.1} | {a:.0} |"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fx = Fixture::load()?;
    let dir = std::env::temp_dir().join(format!(
        "phasefleet-history-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let pg = LocalPg::start(
        &dir,
        &[("shared_buffers", "256MB"), ("max_connections", "200")],
    )
    .await?;
    let pool = phasefleet::db::pool_options(80).connect(&pg.url()).await?;
    phasefleet::db::migrate(&pool).await?;
    // Warm up (and store the template, which the history rows reference).
    engine(&pool, &fx, 20, "warmup").await?;
    settle(&pool).await?;

    let mut rows = vec![measure(&pool, &fx, &args, "empty").await?];
    eprintln!("populating the history");
    let t = Instant::now();
    populate(&pool, &args).await?;
    eprintln!("history written in {:.0} s", t.elapsed().as_secs_f64());
    rows.push(measure(&pool, &fx, &args, "with history").await?);

    eprintln!("retention: prune jobs and runs older than 7 days");
    let t = Instant::now();
    let mut conn = pool.acquire().await?;
    while phasefleet::queue::prune(&mut conn, Duration::from_secs(7 * 86_400), true, 50_000).await?
        > 0
    {}
    while phasefleet::store::runs::runs_prune_ended(
        &mut conn,
        Duration::from_secs(7 * 86_400),
        2_000,
    )
    .await?
        > 0
    {}
    drop(conn);
    settle(&pool).await?;
    let prune_secs = t.elapsed().as_secs_f64();
    rows.push(measure(&pool, &fx, &args, "after retention").await?);

    println!("| database | contents at start | queue jobs/s | engine runs/s | event appends/s |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!("\nretention pass (prune + VACUUM ANALYZE + CHECKPOINT): {prune_secs:.0} s");
    pool.close().await;
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
