//! The one tracing setup every binary uses: log lines to stderr, filtered by
//! `RUST_LOG` (default given by the binary). Spans carry `run_id`, `phase` and `job_id`
//! where the work has them.

/// Install the global subscriber. Calling it twice keeps the first.
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}
