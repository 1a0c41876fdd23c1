//! Worker settings.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Shown in `admin workers`; the worker's identity is a fresh id per process, so
    /// a restarted worker with the same name strands nothing.
    pub name: String,
    pub queue: String,
    /// Jobs in flight at once.
    pub concurrency: usize,
    /// Most jobs one claim statement takes. With many free slots the worker claims
    /// again at once, so a claim is written while the previous jobs' completions are:
    /// the two statements overlap instead of waiting on each other.
    pub claim_batch: usize,
    /// Lease length; heartbeats extend it every `lease / 3`.
    pub lease: Duration,
    /// Fallback poll when no notification arrives.
    pub poll_interval: Duration,
    /// How often this worker looks for expired leases to rescue.
    pub rescue_interval: Duration,
    /// On shutdown, how long in-flight jobs may run before they are interrupted and
    /// handed back.
    pub shutdown_grace: Duration,
    pub backoff: phasefleet::queue::Backoff,
    /// Most completions written in one statement by
    /// [`JobContext::complete_batched`](crate::JobContext::complete_batched).
    pub completion_batch: usize,
    /// How long a completion batch that is not full waits for more; zero writes
    /// whatever queued while the previous batch was being written.
    pub completion_delay: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            name: default_name(),
            queue: phasefleet::queue::DEFAULT_QUEUE.to_owned(),
            concurrency: 16,
            claim_batch: 250,
            lease: Duration::from_secs(15),
            poll_interval: Duration::from_secs(1),
            rescue_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(25),
            backoff: phasefleet::queue::Backoff::default(),
            completion_batch: 500,
            completion_delay: Duration::ZERO,
        }
    }
}

/// `host:pid`, the default worker name.
#[must_use]
pub fn default_name() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

#[must_use]
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
