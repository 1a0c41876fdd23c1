//! Workers (and the API) inside this process, for `demo` and `dev`.

use phasefleet::agent::router::BackendRouter;
use phasefleet::phase::Engine;
use phasefleet::validate::SchemaRegistry;
use phasefleet::webhooks::Webhooks;
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

/// What every in-process worker runs with (and the API or submits beside them), read
/// from the environment once.
pub struct Parts {
    pub schemas: SchemaRegistry,
    pub config: phasefleet::config::Config,
    pub agent: BackendRouter,
    pub webhooks: Webhooks,
}

impl Parts {
    /// Schemas, configuration, the model providers it names and its webhooks.
    ///
    /// # Errors
    /// A schema or configuration that does not load, a provider that cannot be set up
    /// (exit 2), a webhook whose secret variable is unset.
    pub async fn from_env() -> Result<Self, crate::exit::CliError> {
        let schemas = SchemaRegistry::from_env()?;
        let config = phasefleet::config::Config::from_env()?;
        let agent = BackendRouter::from_config(&config)
            .await
            .map_err(|e| crate::exit::CliError::new(crate::exit::USAGE, e))?;
        let webhooks = webhooks(&config)?;
        Ok(Self {
            schemas,
            config,
            agent,
            webhooks,
        })
    }
}

/// Start `n` workers on `queue`; they stop when `stop` fires.
pub fn spawn_workers(
    set: &mut JoinSet<Result<(), phasefleet_worker::WorkerError>>,
    parts: &Parts,
    pool: &PgPool,
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
        let engine = Engine::new(pool.clone(), parts.schemas.clone(), parts.agent.clone());
        let handler = EngineHandler::new(engine).with_webhooks(parts.webhooks.clone());
        let worker = Worker::new(pool.clone(), cfg, handler);
        set.spawn(worker.run(stop.clone()));
    }
}

/// The configuration's webhooks for in-process workers (and whether this process
/// announces notifications at all).
///
/// # Errors
/// A webhook whose secret variable is unset.
fn webhooks(config: &phasefleet::config::Config) -> Result<Webhooks, crate::exit::CliError> {
    phasefleet::webhooks::set_announcing(config);
    Webhooks::from_config(config)
        .map_err(|e| crate::exit::CliError::new(crate::exit::USAGE, e.to_string()))
}
