//! The scripted OpenAI-compatible mock on a free loopback port (real HTTP).
#![allow(dead_code, clippy::unwrap_used)]

use phasefleet_mockllm::Stats;
use std::sync::Arc;

pub struct Mock {
    /// `http://127.0.0.1:<port>/v1`, as a provider's base URL.
    pub base_url: String,
    pub stats: Arc<Stats>,
}

impl Mock {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self {
            base_url: format!("http://{addr}/v1"),
            stats: phasefleet_mockllm::spawn(listener),
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}
