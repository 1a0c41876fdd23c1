//! Picks the backend a persona names: the offline synthetic one or an OpenAI-compatible
//! provider from the operator's configuration. The synthetic backend is only used when
//! a persona asks for it.

use super::llm::LlmAgent;
use super::openai::RetryPolicy;
use super::providers::Providers;
use super::synthetic::SyntheticAgent;
use super::{Agent, AgentError, AgentOutcome, AgentRequest};
use crate::config::Config;
use crate::workflow::Backend;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct BackendRouter {
    pub synthetic: SyntheticAgent,
    pub llm: LlmAgent,
}

impl BackendRouter {
    /// The production router: the providers of `config` (keys from the variables they
    /// name), limits from `PHASEFLEET_MODEL_LIMITS` (through Redis when `REDIS_URL` is
    /// set), a per-call timeout from `PHASEFLEET_LLM_CALL_TIMEOUT_SECS` (default 300).
    ///
    /// # Errors
    /// A message when the limits or the timeout do not parse, or a client cannot be built.
    pub async fn from_config(config: &Config) -> Result<Self, String> {
        let limiter = super::limits::Limiter::from_env().await?;
        let secs = match std::env::var("PHASEFLEET_LLM_CALL_TIMEOUT_SECS") {
            Ok(v) => v
                .parse::<u64>()
                .map_err(|e| format!("PHASEFLEET_LLM_CALL_TIMEOUT_SECS: {e}"))?,
            Err(_) => 300,
        };
        let providers = Providers::from_config(
            config,
            std::time::Duration::from_secs(secs),
            RetryPolicy::default(),
        )?;
        Ok(Self {
            synthetic: SyntheticAgent,
            llm: LlmAgent::new(providers, limiter),
        })
    }
}

impl Agent for BackendRouter {
    fn capabilities(&self) -> Vec<String> {
        self.llm
            .providers()
            .names()
            .map(super::provider_capability)
            .collect()
    }

    async fn run(
        &self,
        req: AgentRequest,
        cancel: CancellationToken,
    ) -> Result<AgentOutcome, AgentError> {
        match req.persona.backend {
            // Boxed: the router's future is a pointer, whichever backend runs.
            Backend::Synthetic => Box::pin(self.synthetic.run(req, cancel)).await,
            Backend::Openai => Box::pin(self.llm.run(req, cancel)).await,
        }
    }
}
