//! Steps 2 and 3 of a phase job: run the agent on the envelope and the attempt's
//! workspace under the phase timeout (a cancel interrupts it; nothing it started goes
//! on afterwards), then validate what the workspace holds, off the async threads.
//! Whatever way the agent ended (finished, timed out, interrupted, failed), the
//! workspace as it stands is validated: a valid artifact is never thrown away.

use super::start::Started;
use super::{Envelope, PhaseError};
use crate::agent::{
    Agent, AgentError, AgentRequest, ArtifactCheck, Ledger, SharedWorkspace, Workspace,
};
use crate::phase_job::PhaseJob;
use crate::validate::{Issue, SchemaRegistry, Validation};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How the agent's part of the attempt ended.
pub(super) enum AgentExit {
    /// The agent returned.
    Finished,
    /// The phase timeout fired.
    TimedOut,
    /// The run ended under the agent (a cancel the worker had not heard of yet).
    RunEnded,
    /// The worker's token fired (shutdown, cancel, lost lease).
    Interrupted,
    /// The run's budget ran out before the next model call.
    OutOfBudget(String),
    /// The agent cannot go on; `retry` when a later delivery may succeed.
    Failed { error: String, retry: bool },
}

/// What the attempt left: how it ended and the files it wrote.
pub(super) struct Attempted {
    pub ended: AgentExit,
    pub workspace: Workspace,
}

/// What was validated: the artifact's content (when there was one) and the result.
pub(super) struct Validated {
    pub content: Option<String>,
    pub validation: Validation,
    /// The files the attempt wrote besides its artifact (path, content), stored when
    /// it is accepted.
    pub written: Vec<(String, String)>,
}

/// Run the agent for attempt `p` under the phase timeout.
///
/// # Errors
/// [`PhaseError::Permanent`] when the phase's schema is unknown or a seeded file does
/// not fit the workspace.
pub(super) async fn run_agent<A: Agent>(
    agent: &A,
    schemas: &SchemaRegistry,
    pool: &PgPool,
    p: &PhaseJob,
    started: &Started,
    cancel: &CancellationToken,
) -> Result<Attempted, PhaseError> {
    let phase = &started.phase;
    let artifact = expected_artifact(schemas, started)?;
    let workspace = SharedWorkspace::new(seed_workspace(started)?);
    let files: Vec<String> = {
        let ws = workspace.lock();
        ws.paths()
            .map(|path| {
                if ws.is_binary(path) {
                    format!("{path} (binary)")
                } else {
                    path.to_owned()
                }
            })
            .collect()
    };
    let envelope = Envelope {
        run_id: p.run_id.to_string(),
        phase,
        round: p.round,
        attempt: p.attempt,
        inputs: &started.inputs,
        prior: &started.prior,
        artifact: artifact.as_ref(),
        artifact_via: started.persona.artifact_via,
        previous: started.previous.as_ref(),
        revise_comment: started.revise_comment.as_deref(),
        files: &files,
    }
    .render();
    let request = AgentRequest {
        run_id: p.run_id,
        phase_key: p.phase.clone(),
        attempt: p.attempt,
        round: p.round,
        persona: started.persona.clone(),
        envelope,
        artifact,
        extra: started.inputs.extra.clone(),
        ledger: Ledger::new(pool.clone(), p.run_id, &p.phase, p.attempt),
        workspace: workspace.clone(),
    };
    let ended = run_under_timeout(agent, request, phase.timeout, cancel).await;
    let ended = match ended {
        AgentExit::Failed { error, retry } => AgentExit::Failed {
            error: format!("phase {} agent failed: {error}", p.phase),
            retry,
        },
        other => other,
    };
    // A tool thread that overran its deadline may still hold the lock: wait off the
    // async threads (tools are bounded, so this ends).
    let workspace = tokio::task::spawn_blocking(move || workspace.lock().clone())
        .await
        .map_err(|e| PhaseError::Retry(format!("reading the workspace failed: {e}")))?;
    Ok(Attempted { ended, workspace })
}

fn expected_artifact(
    schemas: &SchemaRegistry,
    started: &Started,
) -> Result<Option<ArtifactCheck>, PhaseError> {
    started
        .phase
        .expected_artifact
        .as_ref()
        .map(|a| ArtifactCheck::new(schemas, &a.path, &a.schema))
        .transpose()
        .map_err(|e| PhaseError::Permanent(e.to_string()))
}

/// The attempt's workspace: the run's input files and earlier phases' outputs.
fn seed_workspace(started: &Started) -> Result<Workspace, PhaseError> {
    let mut ws = Workspace::default();
    for f in &started.files {
        let seeded = match std::str::from_utf8(&f.content) {
            Ok(text) if !f.is_binary => ws.seed_text(&f.path, text.to_owned()),
            _ => ws.seed_binary(&f.path, f.content.len()),
        };
        seeded.map_err(|e| PhaseError::Permanent(format!("input file {}: {e}", f.path)))?;
    }
    Ok(ws)
}

async fn run_under_timeout<A: Agent>(
    agent: &A,
    request: AgentRequest,
    timeout_secs: u64,
    cancel: &CancellationToken,
) -> AgentExit {
    let agent_cancel = cancel.child_token();
    let run = agent.run(request, agent_cancel.clone());
    tokio::pin!(run);
    let outcome = tokio::select! {
        r = &mut run => Some(r),
        () = tokio::time::sleep(Duration::from_secs(timeout_secs)) => {
            // Interrupt the in-flight call and let the agent record it in the ledger
            // (bounded: an agent that ignores its token is dropped).
            agent_cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut run).await;
            None
        }
    };
    // Whatever happened, nothing the agent started may go on.
    agent_cancel.cancel();
    match outcome {
        None => AgentExit::TimedOut,
        Some(Ok(o)) => {
            tracing::info!(turns = o.turns, accepted = o.accepted, "agent finished");
            AgentExit::Finished
        }
        Some(Err(AgentError::Cancelled)) if cancel.is_cancelled() => AgentExit::Interrupted,
        Some(Err(AgentError::Cancelled)) => AgentExit::RunEnded,
        Some(Err(AgentError::Transient(m))) => AgentExit::Failed {
            error: m,
            retry: true,
        },
        Some(Err(AgentError::Budget(m))) => {
            AgentExit::OutOfBudget(format!("budget exhausted: {m}"))
        }
        Some(Err(AgentError::Fatal(m))) => AgentExit::Failed {
            error: m,
            retry: false,
        },
    }
}

/// Validate what the workspace holds against the phase's schema, on a blocking thread.
/// A phase without an expected artifact is valid when the agent finished.
///
/// # Errors
/// [`PhaseError::Permanent`] when the schema is unknown.
pub(super) async fn validate(
    schemas: &SchemaRegistry,
    started: &Started,
    attempted: &Attempted,
) -> Result<Validated, PhaseError> {
    // The files the attempt wrote besides its artifact (stored in `artifacts` already).
    let artifact_path = started
        .phase
        .expected_artifact
        .as_ref()
        .map(|a| a.path.as_str());
    let written: Vec<(String, String)> = attempted
        .workspace
        .written()
        .filter(|(p, _)| Some(*p) != artifact_path)
        .map(|(p, c)| (p.to_owned(), c.to_owned()))
        .collect();
    let timeout = started.phase.timeout;
    let Some(expected) = &started.phase.expected_artifact else {
        // A files-only phase is done when the agent finished having written something.
        let issues = match (&attempted.ended, written.is_empty()) {
            (AgentExit::Finished, false) => vec![],
            (AgentExit::Finished, true) => {
                vec![Issue::whole("the agent finished without writing any file")]
            }
            _ => vec![Issue::whole(format!(
                "phase timed out after {timeout}s before the agent finished"
            ))],
        };
        return Ok(Validated {
            content: None,
            validation: Validation {
                valid: issues.is_empty(),
                issues,
            },
            written,
        });
    };
    let Some(content) = attempted.workspace.get(&expected.path).map(str::to_owned) else {
        let message = if matches!(attempted.ended, AgentExit::TimedOut) {
            format!(
                "phase timed out after {timeout}s without writing {}",
                expected.path
            )
        } else {
            format!("the agent finished without writing {}", expected.path)
        };
        return Ok(Validated {
            content: None,
            validation: Validation {
                valid: false,
                issues: vec![Issue::whole(message)],
            },
            written,
        });
    };
    let (schemas, id) = (schemas.clone(), expected.schema.clone());
    let timed_out = matches!(attempted.ended, AgentExit::TimedOut);
    tokio::task::spawn_blocking(move || {
        let mut validation = schemas
            .validate(&id, &content)
            .map_err(|e| PhaseError::Permanent(e.to_string()))?;
        if timed_out && !validation.valid {
            validation.issues.insert(
                0,
                Issue::whole(format!(
                    "phase timed out after {timeout}s; the artifact as written does not validate"
                )),
            );
        }
        Ok(Validated {
            content: Some(content),
            validation,
            written,
        })
    })
    .await
    .map_err(|e| PhaseError::Retry(format!("validation task failed: {e}")))?
}
