//! `phasefleet-api`: the HTTP API process.

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(version, about = "Serve the phasefleet HTTP API")]
struct Args {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "PHASEFLEET_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let args = Args::parse();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let pool = phasefleet::db::connect_with_retry(&args.database_url, 16, &shutdown).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "api listening");
    let s = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    phasefleet_api::serve(listener, phasefleet_api::AppState { pool }, shutdown).await?;
    Ok(())
}
