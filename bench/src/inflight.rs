//! How many phases one worker process holds in flight against a model that takes 1 s
//! per call, and the memory each in-flight phase costs. The mock LLM runs in its own
//! process (`mock-llm`), so this process's RSS is the worker's alone.
//!
//! `cargo build --release -p phasefleet-mockllm -p phasefleet-bench`, then one level per
//! process (RSS never shrinks back): `target/release/inflight-bench --slots 500`

use anyhow::Context;
use clap::Parser;
use phasefleet::agent::router::BackendRouter;
use phasefleet::local_pg::LocalPg;
use phasefleet::phase::Engine;
use phasefleet::validate::SchemaRegistry;
use phasefleet::workflow::Definition;
use phasefleet::workflow::{Persona, WorkflowTemplate};
use phasefleet_worker::{EngineHandler, Worker, WorkerConfig};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// Worker concurrency levels to try (one run per in-flight slot each).
    #[arg(long, value_delimiter = ',', default_value = "200")]
    slots: Vec<usize>,
    /// Mock latency per model call, ms.
    #[arg(long, default_value_t = 1000)]
    latency_ms: u64,
    /// Call the mock over HTTP/2 (the provider's `http2 = true`): every call on one
    /// connection instead of one connection per call in flight.
    #[arg(long)]
    http2: bool,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

const TEMPLATE: &str = "
name: inflight-bench
version: '1'
roles: { author: { persona: mock } }
phases:
  - key: spec
    role: author
    instructions: Write the spec.
    expected_artifact: { path: spec.json, schema: spec.v1 }
    max_attempts: 1
    timeout: 120
";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let mut mock = tokio::process::Command::new(exe_dir.join("mock-llm"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .kill_on_drop(true)
        .spawn()
        .context("starting mock-llm (build it: cargo build --release -p phasefleet-mockllm)")?;
    let dir = std::env::temp_dir().join(format!(
        "phasefleet-inflight-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let pg = LocalPg::start(&dir, &[("max_connections", "300"), ("fsync", "off")]).await?;
    // The worker's pool: 60 connections for up to 10 000 phases, which queue for one
    // only while their SQL runs (the acquire timeout allows for a long queue when all
    // phases start at once); the benchmark reads through its own.
    let pool = phasefleet::db::pool_options(60)
        .acquire_timeout(Duration::from_secs(600))
        .connect(&pg.url())
        .await?;
    let observer = phasefleet::db::pool_options(2).connect(&pg.url()).await?;
    phasefleet::db::migrate(&pool).await?;
    let schemas = SchemaRegistry::load_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas"),
    )?;
    let template = WorkflowTemplate::from_str_named("bench.yaml", TEMPLATE)?;
    let persona = Persona::from_str_named(
        "mock.yaml",
        &format!(
            "name: mock\nversion: '1'\nbackend: openai\nprovider: mock\nmodel: mock/slow-{}\nsystem_prompt: write it\n",
            args.latency_ms
        ),
    )?;
    let config = phasefleet::config::Config::from_toml(&format!(
        "[providers.mock]\nbase_url = \"http://127.0.0.1:{port}/v1\"\nallow_insecure_loopback = true\nhttp2 = {}\nmodels.\"*\" = {{ free = true }}\n[teams.default]\nqueues = [\"*\"]\n",
        args.http2
    ))?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!(
        "| in-flight slots | HTTP | model call | phases | wall time | phases/s | peak in flight | RSS idle | RSS peak | per in-flight phase |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &slots in &args.slots {
        let queue = format!("inflight-{slots}");
        // Submit everything first, so the worker can fill every slot at once.
        for _ in 0..slots {
            let req =
                phasefleet_bench::bench_request(&template, std::slice::from_ref(&persona), &queue);
            phasefleet::submit::submit(&pool, &schemas, &config, req).await?;
        }
        let agent = BackendRouter::from_config(&config)
            .await
            .map_err(anyhow::Error::msg)?;
        let engine = Engine::new(pool.clone(), schemas.clone(), agent);
        let cfg = WorkerConfig {
            queue: queue.clone(),
            concurrency: slots,
            lease: Duration::from_secs(30),
            ..WorkerConfig::default()
        };
        let stop = CancellationToken::new();
        let idle = rss_kib();
        let started = Instant::now();
        let worker = tokio::spawn(
            Worker::new(pool.clone(), cfg, EngineHandler::new(engine)).run(stop.clone()),
        );
        let (mut peak_rss, mut peak_inflight) = (idle, 0i64);
        loop {
            let (running, done): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'running'),
                        (SELECT count(*) FROM runs WHERE queue = $1
                          AND state IN ('completed', 'failed', 'aborted', 'cancelled'))",
            )
            .bind(&queue)
            .fetch_one(&observer)
            .await?;
            peak_inflight = peak_inflight.max(running);
            peak_rss = peak_rss.max(rss_kib());
            if done >= i64::try_from(slots)? {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let (completed,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM runs WHERE queue = $1 AND state = 'completed'")
                .bind(&queue)
                .fetch_one(&observer)
                .await?;
        stop.cancel();
        worker.await??;
        let per = (peak_rss.saturating_sub(idle)) as f64 / peak_inflight.max(1) as f64;
        println!(
            "| {slots} | {} | {} s | {completed}/{slots} | {secs:.1} s | {:.1} | {peak_inflight} | {:.1} MiB | {:.1} MiB | {per:.0} KiB |",
            if args.http2 { "HTTP/2" } else { "HTTP/1.1" },
            args.latency_ms as f64 / 1000.0,
            completed as f64 / secs,
            idle as f64 / 1024.0,
            peak_rss as f64 / 1024.0
        );
    }
    let _ = mock.kill().await;
    pool.close().await;
    observer.close().await;
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
