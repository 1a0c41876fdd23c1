//! `phasefleet dev`: API and workers in one process, on a private PostgreSQL unless
//! DATABASE_URL is set.

use crate::exit::CliError;
use crate::local;
use tokio::task::JoinSet;

pub async fn run(database_url: Option<&str>, listen: &str, workers: usize) -> Result<(), CliError> {
    let signals = phasefleet_worker::shutdown::install()?;
    // The API's 16 and the workers' own.
    let db = local::open(
        database_url,
        crate::stack::connections_for(workers).saturating_add(16),
    )
    .await?;
    let parts = crate::stack::Parts::from_env().await?;
    let mut set = JoinSet::new();
    crate::stack::spawn_workers(
        &mut set,
        &parts,
        &db.pool,
        "default",
        workers,
        &signals.graceful,
    );
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        CliError::new(
            crate::exit::FAILURE,
            format!("cannot listen on {listen}: {e}"),
        )
    })?;
    let addr = listener.local_addr()?;
    // Tokens from the environment when set; otherwise a fresh admin token for this session.
    let (tokens, ui_token) = match std::env::var("PHASEFLEET_API_TOKENS") {
        Ok(spec) => (
            phasefleet_api::auth::Tokens::parse(&spec)
                .map_err(|e| CliError::new(crate::exit::USAGE, e.to_string()))?,
            None,
        ),
        Err(_) => {
            let token = format!("dev-{}", uuid::Uuid::new_v4().simple());
            let tokens = phasefleet_api::auth::Tokens::parse(&format!("admin:{token}"))
                .map_err(|e| CliError::new(crate::exit::FAILURE, e.to_string()))?;
            (tokens, Some(token))
        }
    };
    eprintln!(
        "phasefleet dev: {workers} worker(s); database {}",
        phasefleet::db::redact(&db.url)
    );
    match &ui_token {
        Some(t) => {
            eprintln!("web UI:  http://{addr}/#token={t}");
            eprintln!("API:     curl -H 'Authorization: Bearer {t}' http://{addr}/v1/runs");
        }
        None => eprintln!("web UI:  http://{addr}/ (tokens from PHASEFLEET_API_TOKENS)"),
    }
    eprintln!("OpenAPI: http://{addr}/openapi.json   metrics: http://{addr}/metrics");
    eprintln!("Ctrl-C to stop");
    let state = phasefleet_api::AppState::new(
        db.pool.clone(),
        parts.schemas.clone(),
        parts.config,
        tokens,
        std::env::var("REDIS_URL").ok(),
        signals.graceful.clone(),
    );
    let limits = phasefleet_api::server::Limits::from_env()
        .map_err(|e| CliError::new(crate::exit::USAGE, e))?;
    phasefleet_api::serve(listener, state, limits, signals.graceful.clone()).await?;
    while set.join_next().await.is_some() {}
    Ok(())
}
