//! `mock-llm`: serve the scripted OpenAI-compatible API (see the library docs) over
//! HTTP/1.1 and cleartext HTTP/2 (h2c with prior knowledge).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Scripted OpenAI-compatible Chat Completions server for tests and benchmarks")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9999")]
    listen: String,
    /// Concurrent HTTP/2 streams allowed on one connection (a benchmark may hold
    /// thousands of calls on one).
    #[arg(long, default_value_t = 100_000)]
    http2_max_streams: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    eprintln!("mock-llm on http://{}/v1", listener.local_addr()?);
    let app = phasefleet_mockllm::router(Default::default());
    phasefleet_mockllm::serve(listener, app, args.http2_max_streams).await;
    Ok(())
}
