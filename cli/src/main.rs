//! `phasefleet`: the command line for users and operators.

mod admin;
mod approvals;
mod demo;
mod dev;
mod exit;
mod local;
mod output;
mod personas;
mod runs;
mod stack;
mod submit;

use clap::{CommandFactory, Parser, Subcommand};
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
    /// PostgreSQL URL. `demo` and `dev` start a private server when unset.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
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
    /// Run the example workflow end to end (private PostgreSQL, synthetic backend).
    Demo(demo::DemoArgs),
    /// API and workers in one process.
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Submit a run.
    Submit(submit::SubmitArgs),
    /// List, show, watch and cancel runs.
    #[command(subcommand)]
    Runs(runs::Runs),
    /// The approvals inbox.
    #[command(subcommand)]
    Approvals(approvals::Approvals),
    /// Register the personas teams may bind (the only way a team's run reaches a model
    /// provider).
    #[command(subcommand)]
    Personas(personas::Personas),
    /// Operate the queue and the fleet.
    #[command(subcommand)]
    Admin(admin::Admin),
    /// Print a shell completion script: `phasefleet completions bash > /etc/bash_completion.d/phasefleet`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and dev stack run workers in this process: show their per-turn progress.
    let runs_workers = matches!(cli.command, Command::Demo(_) | Command::Dev { .. });
    let telemetry = phasefleet::telemetry::init(if runs_workers {
        "warn,phasefleet::phase=info,phasefleet::agent::llm=info"
    } else {
        "warn"
    });
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = rt.block_on(run(cli));
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`phasefleet runs list | head -1`): nothing more to say.
        Err(e) if is_broken_pipe(&e.error) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {:#}", e.error);
            ExitCode::from(e.code)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn connect(url: Option<&str>) -> Result<sqlx::PgPool, CliError> {
    let url = url.ok_or_else(|| {
        CliError::new(
            crate::exit::USAGE,
            format!(
                "no database: pass --database-url or set DATABASE_URL\n\n{}",
                Cli::command().render_usage()
            ),
        )
    })?;
    Ok(phasefleet::db::connect(url, 4).await?)
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let url = cli.database_url.as_deref();
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "phasefleet",
                &mut std::io::stdout(),
            );
        }
        Command::Migrate => {
            let pool = connect(url).await?;
            phasefleet::db::migrate(&pool).await?;
            eprintln!("migrations applied");
        }
        Command::Demo(args) => demo::run(url, args).await?,
        Command::Dev { listen, workers } => dev::run(url, &listen, workers).await?,
        Command::Submit(args) => submit::run(&connect(url).await?, args, cli.output).await?,
        Command::Runs(cmd) => runs::run(&connect(url).await?, cmd, cli.output).await?,
        Command::Approvals(cmd) => approvals::run(&connect(url).await?, cmd, cli.output).await?,
        Command::Personas(cmd) => personas::run(&connect(url).await?, cmd, cli.output).await?,
        Command::Admin(cmd) => admin::run(&connect(url).await?, cmd, cli.output).await?,
    }
    Ok(())
}
