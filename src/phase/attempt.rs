//! Steps 2 and 3 of a phase job: run the agent on the envelope under the phase
//! timeout (a cancel interrupts it; nothing it started goes on afterwards), then
//! validate what it wrote, off the async threads.

use super::start::Started;
use super::{Envelope, PhaseError};
use crate::agent::{Agent, AgentError, AgentRequest, Ledger};
use crate::phase_job::PhaseJob;
use crate::validate::{Issue, SchemaRegistry, Validation};
use crate::workflow::Phase;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How an attempt ended before validation.
pub(super) enum Finish {
    /// The agent finished (or timed out) with this file, or without it.
    Produced(Produced),
    /// The run ended under the agent (a cancel the worker had not heard of yet).
    RunEnded,
    /// The agent cannot go on; `retry` when a later delivery may succeed.
    AgentFailed { error: String, retry: bool },
}

pub(super) enum Produced {
    Artifact(String),
    Missing(String),
}

/// What was validated: the content (when there was a file) and the result.
pub(super) struct Validated {
    pub content: Option<String>,
    pub validation: Validation,
}

/// Run the agent for attempt `p` under the phase timeout.
///
/// # Errors
/// [`PhaseError::Permanent`] when the phase's schema is unknown.
pub(super) async fn run_agent<A: Agent>(
    agent: &A,
    schemas: &SchemaRegistry,
    pool: &PgPool,
    p: &PhaseJob,
    started: &Started,
    cancel: &CancellationToken,
) -> Result<Finish, PhaseError> {
    let phase = &started.phase;
    let schema = schemas
        .schema(&phase.expected_artifact.schema)
        .map_err(|e| PhaseError::Permanent(e.to_string()))?
        .clone();
    let envelope = Envelope {
        run_id: p.run_id.to_string(),
        phase,
        round: p.round,
        attempt: p.attempt,
        inputs: &started.inputs,
        prior: &started.prior,
        schema: &schema,
        repair_issues: started.repair_issues.as_deref(),
        revise_comment: started.revise_comment.as_deref(),
    }
    .render();
    let request = AgentRequest {
        run_id: p.run_id,
        phase_key: p.phase.clone(),
        attempt: p.attempt,
        round: p.round,
        persona: started.persona.clone(),
        envelope,
        expected_path: phase.expected_artifact.path.clone(),
        schema,
        extra: started.inputs.extra.clone(),
        ledger: Ledger::new(pool.clone(), p.run_id, &p.phase, p.attempt),
    };
    let timeout = Duration::from_secs(phase.timeout);
    let agent_cancel = cancel.child_token();
    let run = agent.run(request, agent_cancel.clone());
    tokio::pin!(run);
    let outcome = tokio::select! {
        r = &mut run => Some(r),
        () = tokio::time::sleep(timeout) => {
            // Interrupt the in-flight call and let the agent record it in the ledger
            // (bounded: an agent that ignores its token is dropped).
            agent_cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut run).await;
            None
        }
    };
    // Whatever happened, nothing the agent started may go on.
    agent_cancel.cancel();
    Ok(match outcome {
        None => Finish::Produced(Produced::Missing(format!(
            "phase timed out after {}s without a valid artifact",
            phase.timeout
        ))),
        Some(Ok(o)) => {
            let path = &phase.expected_artifact.path;
            Finish::Produced(match o.workspace.get(path) {
                Some(c) => Produced::Artifact(c.to_owned()),
                None => Produced::Missing(format!("the agent finished without writing {path}")),
            })
        }
        Some(Err(AgentError::Cancelled)) => Finish::RunEnded,
        Some(Err(AgentError::Transient(m))) => Finish::AgentFailed {
            error: format!("phase {} agent failed: {m}", p.phase),
            retry: true,
        },
        Some(Err(AgentError::Budget(m))) => Finish::AgentFailed {
            error: format!("budget exhausted: {m}"),
            retry: false,
        },
        Some(Err(AgentError::Fatal(m))) => Finish::AgentFailed {
            error: format!("phase {} agent failed: {m}", p.phase),
            retry: false,
        },
    })
}

/// Validate what the attempt produced against the phase's schema, on a blocking thread.
///
/// # Errors
/// [`PhaseError::Permanent`] when the schema is unknown.
pub(super) async fn validate(
    schemas: &SchemaRegistry,
    phase: &Phase,
    produced: Produced,
) -> Result<Validated, PhaseError> {
    match produced {
        Produced::Missing(message) => Ok(Validated {
            content: None,
            validation: Validation {
                valid: false,
                issues: vec![Issue {
                    path: String::new(),
                    message,
                }],
            },
        }),
        Produced::Artifact(content) => {
            let (schemas, id) = (schemas.clone(), phase.expected_artifact.schema.clone());
            tokio::task::spawn_blocking(move || {
                let validation = schemas
                    .validate(&id, &content)
                    .map_err(|e| PhaseError::Permanent(e.to_string()))?;
                Ok(Validated {
                    content: Some(content),
                    validation,
                })
            })
            .await
            .map_err(|e| PhaseError::Retry(format!("validation task failed: {e}")))?
        }
    }
}
