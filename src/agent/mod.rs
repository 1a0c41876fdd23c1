//! The agent: given a phase envelope, produce files in a private workspace. The engine
//! only sees this trait; backends (the offline `synthetic` one, OpenAI-compatible
//! providers from the operator's configuration) live behind it.

pub mod artifact;
pub mod ledger;
pub mod limits;
pub mod llm;
pub mod openai;
pub mod providers;
pub mod router;
pub mod synthetic;
pub mod tools;
pub mod workspace;

use crate::ids::RunId;
use crate::workflow::Persona;
pub use artifact::ArtifactCheck;
pub use ledger::Ledger;
use std::future::Future;
use tokio_util::sync::CancellationToken;
pub use workspace::{SharedWorkspace, Workspace};

/// One attempt of one phase, as the agent sees it.
#[derive(Debug, Clone)]
pub struct AgentRequest {
    pub run_id: RunId,
    pub phase_key: String,
    pub attempt: i32,
    /// 1, then +1 per revise decision or operator retry of the failed phase.
    pub round: i32,
    pub persona: Persona,
    /// The full user prompt (see `phase::envelope`).
    pub envelope: String,
    /// The artifact the phase expects, with its validator; `None` when the phase's
    /// output is the files it writes.
    pub artifact: Option<ArtifactCheck>,
    /// Free-form run input `extra`, which the synthetic backend reads for directives.
    pub extra: serde_json::Value,
    /// Where model and tool calls are recorded, and the budget checked.
    pub ledger: Ledger,
    /// The attempt's files (inputs and earlier phases' outputs to start with), shared
    /// with the engine: whatever the agent wrote is there even if it never returns.
    pub workspace: SharedWorkspace,
}

/// What an attempt did (its files are in the request's workspace).
#[derive(Debug, Default)]
pub struct AgentOutcome {
    pub turns: u32,
    /// The expected artifact was checked and accepted during the attempt.
    pub accepted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The model or its provider failed in a way worth retrying later.
    #[error("transient agent failure: {0}")]
    Transient(String),
    /// Will not work on retry (bad credentials, model refuses, misconfiguration).
    #[error("agent failed: {0}")]
    Fatal(String),
    /// The run's budget is spent.
    #[error("budget exhausted: {0}")]
    Budget(String),
    #[error("interrupted")]
    Cancelled,
}

/// Runs a phase attempt to completion, or until `cancel` fires.
pub trait Agent: Send + Sync + 'static {
    fn run(
        &self,
        req: AgentRequest,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<AgentOutcome, AgentError>> + Send;

    /// The capabilities a worker running this agent advertises: `provider:NAME` for
    /// each model provider it can call (its key is present). Phase jobs of a persona
    /// on a provider require that provider's capability.
    fn capabilities(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The capability a phase job needs when its persona calls `provider`.
#[must_use]
pub fn provider_capability(provider: &str) -> String {
    format!("provider:{provider}")
}
