//! `phasefleet dev`: API and workers in one process, on a private PostgreSQL unless
//! DATABASE_URL is set.

use crate::exit::CliError;
use crate::local;
use phasefleet::validate::SchemaRegistry;
use tokio::task::JoinSet;

pub async fn run(database_url: Option<&str>, listen: &str, workers: usize) -> Result<(), CliError> {
    let signals = phasefleet_worker::shutdown::install()?;
    let db = local::open(database_url, 32).await?;
    let schemas = SchemaRegistry::from_env()?;
    let agent = phasefleet::agent::router::BackendRouter::from_env()
        .await
        .map_err(|e| CliError::new(2, e))?;
    let mut set = JoinSet::new();
    crate::stack::spawn_workers(
        &mut set,
        &agent,
        &db.pool,
        &schemas,
        "default",
        workers,
        &signals.graceful,
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::new(1, format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "phasefleet dev: API at http://{addr} (health: /healthz); {workers} worker(s); database {}",
        phasefleet::db::redact(&db.url)
    );
    eprintln!("Ctrl-C to stop");
    phasefleet_api::serve(
        listener,
        phasefleet_api::AppState {
            pool: db.pool.clone(),
        },
        signals.graceful.clone(),
    )
    .await?;
    while set.join_next().await.is_some() {}
    Ok(())
}
