//! `phasefleet-api`: the HTTP API process.

use anyhow::Context;
use clap::Parser;
use phasefleet_api::auth::Tokens;

#[derive(Debug, Parser)]
#[command(version, about = "Serve the phasefleet HTTP API and web UI")]
struct Args {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[arg(long, env = "PHASEFLEET_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Redis for live-event fan-out across API replicas (optional).
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Bearer tokens: `[TEAM/]ROLE:TOKEN` or `[TEAM/]ROLE:sha256:HEX`, comma-separated;
    /// roles read, submit, approve, admin (an admin token without a team is fleet-wide).
    #[arg(long, env = "PHASEFLEET_API_TOKENS", hide_env_values = true)]
    tokens: Option<String>,
    /// Token a Prometheus scraper must send to `/metrics` (optional).
    #[arg(long, env = "PHASEFLEET_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// Serve without authentication (every caller is admin). Only for a trusted network.
    #[arg(long, conflicts_with = "tokens")]
    no_auth: bool,
    /// Apply migrations before serving.
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
    let tokens = match (&args.tokens, args.no_auth) {
        (Some(spec), _) => Tokens::parse(spec)?,
        (None, true) => Tokens::disabled(),
        (None, false) => anyhow::bail!(
            "no API tokens: set PHASEFLEET_API_TOKENS (e.g. admin:<32 random chars>) or pass --no-auth on a trusted network"
        ),
    };
    let signals = phasefleet_worker::shutdown::install()?;
    let shutdown = signals.graceful.clone();
    let pool = phasefleet::db::connect_with_retry(
        &args.database_url,
        16,
        phasefleet::db::Ping::BeforeEachUse,
        &shutdown,
    )
    .await?;
    if args.migrate {
        phasefleet::db::migrate(&pool).await?;
    }
    let schemas = phasefleet::validate::SchemaRegistry::from_env()?;
    let config = phasefleet::config::Config::from_env()?;
    phasefleet::webhooks::set_announcing(&config);
    let limits = phasefleet_api::server::Limits::from_env().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, auth = tokens.enabled(), redis = args.redis_url.is_some(), "api listening");
    let state = phasefleet_api::AppState::new(
        pool,
        schemas,
        config,
        tokens,
        args.redis_url,
        shutdown.clone(),
    )
    .with_metrics_token(args.metrics_token.as_deref());
    phasefleet_api::serve(listener, state, limits, shutdown).await?;
    Ok(())
}
