//! `phasefleet`: the command line for users and operators.

mod admin;
mod exit;
mod output;

use clap::{Parser, Subcommand};
use exit::CliError;
use output::Output;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "phasefleet",
    version,
    about = "Durable runner for multi-phase LLM-agent workflows"
)]
struct Cli {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Output format for listings.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply database migrations.
    Migrate,
    /// Operate the queue and the fleet.
    #[command(subcommand)]
    Admin(admin::Admin),
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {:#}", e.error);
            ExitCode::from(e.code)
        }
    }
}

async fn connect(url: Option<&str>) -> Result<sqlx::PgPool, CliError> {
    let url = url
        .ok_or_else(|| CliError::new(2, "no database: pass --database-url or set DATABASE_URL"))?;
    Ok(phasefleet::db::connect(url, 4).await?)
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Migrate => {
            let pool = connect(cli.database_url.as_deref()).await?;
            phasefleet::db::migrate(&pool).await?;
            eprintln!("migrations applied");
        }
        Command::Admin(cmd) => {
            let pool = connect(cli.database_url.as_deref()).await?;
            admin::run(&pool, cmd, cli.output).await?;
        }
    }
    Ok(())
}
