//! Picks the backend a persona names: the offline synthetic one or an OpenAI-compatible
//! endpoint. The synthetic backend is only used when a persona asks for it.

use super::llm::LlmAgent;
use super::synthetic::SyntheticAgent;
use super::{Agent, AgentError, AgentOutcome, AgentRequest};
use crate::workflow::Backend;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct BackendRouter {
    pub synthetic: SyntheticAgent,
    pub llm: LlmAgent,
}

impl BackendRouter {
    /// The production router: limits from `PHASEFLEET_MODEL_LIMITS` (through Redis when
    /// `REDIS_URL` is set), a per-call timeout from `PHASEFLEET_LLM_CALL_TIMEOUT_SECS`
    /// (default 300).
    ///
    /// # Errors
    /// A message when the limits or the timeout do not parse.
    pub async fn from_env() -> Result<Self, String> {
        let limiter = super::limits::Limiter::from_env().await?;
        let secs = match std::env::var("PHASEFLEET_LLM_CALL_TIMEOUT_SECS") {
            Ok(v) => v
                .parse::<u64>()
                .map_err(|e| format!("PHASEFLEET_LLM_CALL_TIMEOUT_SECS: {e}"))?,
            Err(_) => 300,
        };
        Ok(Self {
            synthetic: SyntheticAgent,
            llm: LlmAgent::new(
                limiter,
                std::time::Duration::from_secs(secs),
                super::openai::RetryPolicy::default(),
            ),
        })
    }
}

impl Agent for BackendRouter {
    async fn run(
        &self,
        req: AgentRequest,
        cancel: CancellationToken,
    ) -> Result<AgentOutcome, AgentError> {
        match req.persona.backend {
            Backend::Synthetic => self.synthetic.run(req, cancel).await,
            Backend::Openai => self.llm.run(req, cancel).await,
        }
    }
}
