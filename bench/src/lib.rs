//! Shared pieces of the benchmarks: loading no-op jobs and draining them with the worker
//! runtime.

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
        bindings: Default::default(),
        budget: Budget::default(),
        idempotency_key: None,
        submitted_by: Some("bench".into()),
        queue: queue.into(),
        team: phasefleet::teams::DEFAULT_TEAM.into(),
        may_define_provider_personas: true,
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
    stop.cancel();
    for h in handles {
        h.await??;
    }
    Ok(n as f64 / secs)
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

/// Drain `n` loaded jobs with `workers` in-process workers of 32 slots; jobs/s.
///
/// # Errors
/// Database or worker errors.
pub async fn runtime(pool: &PgPool, workers: usize, n: usize) -> anyhow::Result<f64> {
    load(pool, n).await?;
    let stop = CancellationToken::new();
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..workers {
        let cfg = WorkerConfig {
            queue: "bench".into(),
            concurrency: 32,
            poll_interval: Duration::from_millis(50),
            ..WorkerConfig::default()
        };
        handles.push(tokio::spawn(
            Worker::new(pool.clone(), cfg, Builtins).run(stop.clone()),
        ));
    }
    loop {
        let (left,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM jobs WHERE queue = 'bench' AND state IN ('ready', 'running')",
        )
        .fetch_one(pool)
        .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_and_rate(&stop, handles, n, start).await
}
