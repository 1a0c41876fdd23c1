//! Shared pieces of the benchmarks: loading no-op jobs and draining them with the worker
//! runtime.

use anyhow::{Context, bail};
use phasefleet::local_pg::LocalPg;
use phasefleet::submit::{Budget, RunInputs, SubmitRequest};
use phasefleet::workflow::{Persona, WorkflowTemplate};
use phasefleet_worker::{Builtins, Worker, WorkerConfig};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A run of `template` on `queue` with empty inputs, submitted by `bench`.
#[must_use]
pub fn bench_request(
    template: &WorkflowTemplate,
    personas: &[Persona],
    queue: &str,
) -> SubmitRequest {
    SubmitRequest {
        template: template.clone(),
        personas: personas.to_vec(),
        inputs: RunInputs {
            requirements: "# bench".into(),
            objective: serde_json::json!({}),
            extra: serde_json::json!({}),
        },
        files: Vec::new(),
        bindings: Default::default(),
        budget: Budget::default(),
        idempotency_key: None,
        submitted_by: Some("bench".into()),
        queue: queue.into(),
        team: phasefleet::teams::DEFAULT_TEAM.into(),
        may_define_provider_personas: true,
        allow_unserved: true,
        traceparent: None,
    }
}

/// Stop in-process workers and return the rate of `n` items since `start`.
///
/// # Errors
/// A worker that failed.
pub async fn stop_and_rate(
    stop: &CancellationToken,
    handles: Vec<JoinHandle<Result<(), phasefleet_worker::WorkerError>>>,
    n: usize,
    start: Instant,
) -> anyhow::Result<f64> {
    let secs = start.elapsed().as_secs_f64();
    stop_workers(stop, handles).await?;
    Ok(n as f64 / secs)
}

/// Stop in-process workers and wait for them.
///
/// # Errors
/// A worker that failed.
pub async fn stop_workers(
    stop: &CancellationToken,
    handles: Vec<JoinHandle<Result<(), phasefleet_worker::WorkerError>>>,
) -> anyhow::Result<()> {
    stop.cancel();
    for h in handles {
        h.await??;
    }
    Ok(())
}

/// Replace the `bench` queue's jobs with `n` ready no-op jobs (bulk insert: the setup
/// is not what is measured).
///
/// # Errors
/// Database errors.
pub async fn load(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM jobs WHERE queue = 'bench'")
        .execute(pool)
        .await?;
    // Bulk insert: the setup is not what is measured.
    sqlx::query(
        "INSERT INTO jobs (queue, kind, payload) SELECT 'bench', 'noop', jsonb_build_object('i', g) FROM generate_series(1, $1) g",
    )
    .bind(i64::try_from(n)?)
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE jobs").execute(pool).await?;
    Ok(())
}

/// Start `workers` in-process workers of `slots` slots on queue `bench` running the
/// built-in kinds (whose completions are batched).
#[must_use]
pub fn start_workers(
    pool: &PgPool,
    workers: usize,
    slots: usize,
    poll_interval: Duration,
    stop: &CancellationToken,
) -> Vec<JoinHandle<Result<(), phasefleet_worker::WorkerError>>> {
    (0..workers)
        .map(|_| {
            let cfg = WorkerConfig {
                queue: "bench".into(),
                concurrency: slots,
                poll_interval,
                ..WorkerConfig::default()
            };
            tokio::spawn(Worker::new(pool.clone(), cfg, Builtins).run(stop.clone()))
        })
        .collect()
}

/// Drain `n` loaded jobs with `workers` in-process workers of `slots` slots; jobs/s.
///
/// # Errors
/// Database or worker errors.
pub async fn runtime(pool: &PgPool, workers: usize, slots: usize, n: usize) -> anyhow::Result<f64> {
    load(pool, n).await?;
    let stop = CancellationToken::new();
    let start = Instant::now();
    let handles = start_workers(pool, workers, slots, Duration::from_millis(50), &stop);
    wait_until_drained(pool).await?;
    stop_and_rate(&stop, handles, n, start).await
}

/// Wait until queue `bench` has no ready or running job, looking every 20 ms (with
/// EXISTS, one per state so each reads its partial index: the poll must not cost the
/// server a scan of what is left).
///
/// # Errors
/// Database errors.
pub async fn wait_until_drained(pool: &PgPool) -> anyhow::Result<()> {
    loop {
        let left: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE queue = 'bench' AND state = 'ready')
                 OR EXISTS (SELECT 1 FROM jobs WHERE queue = 'bench' AND state = 'running')",
        )
        .fetch_one(pool)
        .await?;
        if !left {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The queue's claim of one ready job of queue `bench`, as the worker issues it.
pub const CLAIM_ONE: &str = "WITH next AS (
    SELECT id FROM jobs
    WHERE state = 'ready' AND queue = 'bench' AND run_at <= now()
      AND NOT EXISTS (SELECT 1 FROM queue_pauses p WHERE p.queue IN ('bench', '*'))
    ORDER BY priority DESC, run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
  UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, lease_token = j.lease_token + 1,
      lease_owner = '00000000-0000-0000-0000-000000000001', lease_expires_at = now() + interval '30 seconds',
      started_at = now()
  FROM next WHERE j.id = next.id RETURNING j.id, j.lease_token";

/// pgbench running the queue's claim statement and fenced completion, one job per
/// transaction, on the jobs [`load`]ed into queue `bench`: the floor any client can
/// reach with this SQL. Returns transactions (= jobs) per second.
///
/// # Errors
/// When pgbench is missing or fails.
pub fn pgbench(pg: &LocalPg, clients: usize, n: usize) -> anyhow::Result<f64> {
    let script = std::env::temp_dir().join(format!(
        "phasefleet-bench-{}.sql",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(
        &script,
        format!(
            "{}\n\\gset\nDELETE FROM jobs WHERE id = :id AND lease_token = :lease_token AND state = 'running';\n",
            CLAIM_ONE.replace('\n', " ")
        ),
    )?;
    let per_client = n / clients;
    let out = std::process::Command::new("pgbench")
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
        ])
        .args(["-t", &per_client.to_string(), "-f"])
        .arg(&script)
        .arg("postgres")
        .output()
        .context("running pgbench (install postgresql-contrib / postgresql client)")?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .context("no tps line in pgbench output")?;
    Ok(tps)
}
