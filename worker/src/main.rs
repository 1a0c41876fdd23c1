//! `phasefleet-worker`: one worker process. Configure with flags or env vars.

use anyhow::Context;
use clap::Parser;
use phasefleet::agent::router::BackendRouter;
use phasefleet::phase::Engine;
use phasefleet::validate::SchemaRegistry;
use phasefleet_worker::{EngineHandler, Worker, WorkerConfig, shutdown};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Run a phasefleet worker: claims phase jobs and runs them"
)]
struct Args {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Queue to claim from.
    #[arg(long, env = "PHASEFLEET_QUEUE", default_value = "default")]
    queue: String,
    /// Jobs in flight at once.
    #[arg(long, env = "PHASEFLEET_CONCURRENCY", default_value_t = 16)]
    concurrency: usize,
    /// PostgreSQL connections this process keeps at most (default: one per job in
    /// flight plus four for claims, heartbeats, lease renewals and completions). A job
    /// holds one only while it reads or writes, not while its model thinks; fewer
    /// than slots is fine, at least 4.
    #[arg(long, env = "PHASEFLEET_DB_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(4..))]
    db_connections: Option<u32>,
    /// Lease length in milliseconds (heartbeat every third of it).
    #[arg(long, env = "PHASEFLEET_LEASE_MS", default_value_t = 15_000)]
    lease_ms: u64,
    /// Grace period for in-flight jobs on shutdown, in milliseconds.
    #[arg(long, env = "PHASEFLEET_SHUTDOWN_GRACE_MS", default_value_t = 25_000)]
    shutdown_grace_ms: u64,
    /// Fallback poll interval in milliseconds.
    #[arg(long, env = "PHASEFLEET_POLL_MS", default_value_t = 1_000)]
    poll_ms: u64,
    /// Worker name shown by `phasefleet admin workers` (default host:pid).
    #[arg(long, env = "PHASEFLEET_WORKER_NAME")]
    name: Option<String>,
    /// Serve this process's Prometheus metrics (claims, completions, failures, phase
    /// durations, LLM calls, tokens and cost) on this address, e.g. 0.0.0.0:9100.
    #[arg(long, env = "PHASEFLEET_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Apply migrations before starting.
    #[arg(long)]
    migrate: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = phasefleet::telemetry::init("info,sqlx=warn");
    let result = serve().await;
    telemetry.shutdown();
    result
}

async fn serve() -> anyhow::Result<()> {
    let args = Args::parse();
    let signals = shutdown::install().context("installing signal handlers")?;
    if let Some(addr) = args.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(phasefleet::phase::DURATION_BUCKETS_SECS)?
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("serving metrics on {addr}"))?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    let schemas = SchemaRegistry::from_env().context("loading schemas")?;
    let pool = phasefleet::db::connect_with_retry(
        &args.database_url,
        args.db_connections
            .unwrap_or_else(|| u32::try_from(args.concurrency + 4).unwrap_or(64)),
        phasefleet::db::Ping::AfterIdle,
        &signals.graceful,
    )
    .await?;
    if args.migrate {
        phasefleet::db::migrate(&pool).await?;
    }
    let mut cfg = WorkerConfig {
        queue: args.queue.clone(),
        concurrency: args.concurrency,
        lease: Duration::from_millis(args.lease_ms),
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
        poll_interval: Duration::from_millis(args.poll_ms),
        ..WorkerConfig::default()
    };
    if let Some(name) = args.name {
        cfg.name = name;
    }
    let config = phasefleet::config::Config::from_env()?;
    let agent = BackendRouter::from_config(&config)
        .await
        .map_err(anyhow::Error::msg)?;
    let webhooks = phasefleet::webhooks::Webhooks::from_config(&config)?;
    phasefleet::webhooks::set_announcing(&config);
    let engine = Engine::new(pool.clone(), schemas, agent);
    Worker::new(
        pool,
        cfg,
        EngineHandler::new(engine).with_webhooks(webhooks),
    )
    .with_force(signals.force.clone())
    .run(signals.graceful)
    .await?;
    Ok(())
}
