//! Workers (and the API) inside this process, for `demo` and `dev`.

use phasefleet::agent::router::BackendRouter;
use phasefleet::phase::Engine;
use phasefleet::validate::SchemaRegistry;
use phasefleet_worker::{EngineHandler, Worker, WorkerConfig};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Slots of each in-process worker.
const WORKER_SLOTS: usize = 8;

/// Database connections `workers` in-process workers may hold at once: one per slot,
/// plus each worker's notification listener and claim.
#[must_use]
pub fn connections_for(workers: usize) -> u32 {
    u32::try_from(workers.saturating_mul(WORKER_SLOTS + 2)).unwrap_or(u32::MAX)
}

/// Start `n` workers on `queue`; they stop when `stop` fires.
pub fn spawn_workers(
    set: &mut JoinSet<Result<(), phasefleet_worker::WorkerError>>,
    agent: &BackendRouter,
    pool: &PgPool,
    schemas: &SchemaRegistry,
    queue: &str,
    n: usize,
    stop: &CancellationToken,
) {
    for i in 0..n {
        let cfg = WorkerConfig {
            name: format!("{}-inproc-{i}", phasefleet_worker::default_name()),
            queue: queue.to_owned(),
            concurrency: WORKER_SLOTS,
            ..WorkerConfig::default()
        };
        let engine = Engine::new(pool.clone(), schemas.clone(), agent.clone());
        let worker = Worker::new(pool.clone(), cfg, EngineHandler::new(engine));
        set.spawn(worker.run(stop.clone()));
    }
}
