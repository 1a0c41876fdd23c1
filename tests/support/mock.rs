//! The scripted OpenAI-compatible mock on a free loopback port (real HTTP).
#![allow(dead_code, clippy::unwrap_used)]

use phasefleet::agent::limits::Limiter;
use phasefleet::agent::llm::LlmAgent;
use phasefleet::agent::openai::RetryPolicy;
use phasefleet::agent::providers::Providers;
use phasefleet::agent::router::BackendRouter;
use phasefleet::queue::Backoff;
use phasefleet::workflow::{Backend, Definition, Persona};
use phasefleet_mockllm::Stats;
use std::sync::Arc;
use std::time::Duration;

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

impl Mock {
    /// The production router against this mock: it is provider `mock`, as configured
    /// (fast retries, so tests of retrying stay short).
    pub fn agent(&self) -> BackendRouter {
        self.agent_with(|_| {})
    }

    /// [`Mock::agent`] with the provider's configuration changed by `edit`.
    pub fn agent_with(
        &self,
        edit: impl FnOnce(&mut phasefleet::config::ProviderConfig),
    ) -> BackendRouter {
        let mut config = super::engine::config_with_mock(&self.base_url);
        if let Some(mock) = config.providers.get_mut("mock") {
            edit(mock);
        }
        let retry = RetryPolicy {
            max_attempts: 4,
            backoff: Backoff {
                base: Duration::from_millis(50),
                max: Duration::from_millis(400),
            },
            max_retry_after: Duration::from_secs(2),
        };
        BackendRouter {
            synthetic: Default::default(),
            llm: LlmAgent::new(
                Providers::from_config(&config, Duration::from_secs(10), retry).unwrap(),
                Limiter::default(),
            ),
        }
    }
}

/// A persona named `llm` playing `model` on the mock provider.
pub fn persona(model: &str) -> Persona {
    Persona {
        name: "llm".into(),
        version: "1".into(),
        backend: Backend::Openai,
        model: model.into(),
        system_prompt: "You write JSON artifacts with the write_file tool.".into(),
        provider: Some("mock".into()),
        base_url: None,
        api_key_env: None,
        temperature: Some(0.2),
        top_p: None,
        max_tokens: Some(2000),
        max_turns: 6,
        repair_temperature: None,
        seed: None,
        artifact_via: Default::default(),
    }
}

/// A persona `name` playing `model` on the mock provider, read from YAML as a user's
/// would be (several turns allowed).
pub fn named_persona(name: &str, model: &str) -> Persona {
    Persona::from_str_named(
        &format!("{name}.yaml"),
        &format!(
            "name: {name}\nversion: '1'\nbackend: openai\nprovider: mock\nmodel: {model}\nsystem_prompt: Write the artifact with write_file, then stop.\nmax_turns: 6\n"
        ),
    )
    .unwrap()
}
