//! `mock-llm`: serve the scripted OpenAI-compatible API (see the library docs).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Scripted OpenAI-compatible Chat Completions server for tests and benchmarks")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9999")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    eprintln!("mock-llm on http://{}/v1", listener.local_addr()?);
    axum::serve(listener, phasefleet_mockllm::router(Default::default())).await?;
    Ok(())
}
