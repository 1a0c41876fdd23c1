//! Steps 2 and 3 of a phase job: run the agent on the envelope and the attempt's
//! workspace under the phase timeout (a cancel interrupts it; nothing it started goes
//! on afterwards), then validate what the workspace holds (off the async threads when
//! it is large).
//! Whatever way the agent ended (finished, timed out, interrupted, failed), the
//! workspace as it stands is validated: a valid artifact is never thrown away.

use super::start::Started;
use super::{Envelope, PhaseError};
use crate::agent::{
    Agent, AgentError, AgentRequest, ArtifactCheck, Ledger, SharedWorkspace, Workspace,
};
use crate::phase_job::PhaseJob;
use crate::queue::Lease;
use crate::store::files::{Blob, SeedFile};
use crate::validate::{Issue, SchemaRegistry, Validation};
use crate::workflow::Phase;
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
    /// The files the attempt wrote besides its artifact, digested, stored when it is
    /// accepted.
    pub written: Vec<(String, Blob)>,
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
    started: &mut Started,
    lease: Lease,
    cancel: &CancellationToken,
) -> Result<Attempted, PhaseError> {
    // 1. Seed the workspace and write the envelope.
    let seed = std::mem::take(&mut started.files);
    let started = &*started;
    let artifact = expected_artifact(schemas, started)?;
    let (workspace, files) = seeded_workspace(seed).await?;
    let workspace = SharedWorkspace::new(workspace);
    let envelope = envelope(p, started, artifact.as_ref(), &files);
    // 2. Run the agent under the phase timeout.
    let request = AgentRequest {
        run_id: p.run_id,
        phase_key: p.phase.clone(),
        attempt: p.attempt,
        round: p.round,
        persona: (*started.persona).clone(),
        envelope,
        artifact,
        extra: started.inputs.extra.clone(),
        ledger: Ledger::new(pool.clone(), p.run_id, &p.phase, p.attempt).under_lease(lease),
        workspace: workspace.clone(),
    };
    let ended = run_under_timeout(agent, request, started.phase.timeout, cancel).await;
    let ended = match ended {
        AgentExit::Failed { error, retry } => AgentExit::Failed {
            error: format!("phase {} agent failed: {error}", p.phase),
            retry,
        },
        // Refused because the run stopped running: another branch may have parked it
        // for budget, and then this attempt waits in the park too.
        AgentExit::RunEnded => Box::pin(ended_or_parked(pool, p)).await,
        other => other,
    };
    // 3. Take the workspace back.
    let workspace = taken_back(workspace).await?;
    Ok(Attempted { ended, workspace })
}

/// The workspace with the attempt's files in it, and its listing. Seeding copies up to
/// the inputs' bound: off the async threads when it is large.
async fn seeded_workspace(seed: Vec<SeedFile>) -> Result<(Workspace, Vec<String>), PhaseError> {
    let seed_bytes = seed
        .iter()
        .map(|f| f.content.as_ref().map_or(0, Vec::len))
        .sum();
    off_the_async_threads_if_large(seed_bytes, move || {
        let ws = seed_workspace(seed)?;
        let files = ws.listing("");
        Ok::<_, PhaseError>((ws, files))
    })
    .await
    .map_err(|e| PhaseError::Retry(format!("seeding the workspace failed: {e}")))?
}

/// The attempt's envelope: what the agent is told about its phase.
fn envelope(
    p: &PhaseJob,
    started: &Started,
    artifact: Option<&ArtifactCheck>,
    files: &[String],
) -> String {
    Envelope {
        run_id: p.run_id.to_string(),
        phase: &started.phase,
        round: p.round,
        attempt: p.attempt,
        inputs: &started.inputs,
        prior: &started.prior,
        artifact,
        artifact_via: started.persona.artifact_via,
        previous: started.previous.as_ref(),
        revise_comment: started.revise_comment.as_deref(),
        files,
        item: started
            .item
            .as_ref()
            .map(|i| (i.name.as_str(), i.index, i.over.as_str(), &i.element)),
    }
    .render()
}

/// The workspace, back from the agent. A tool thread that overran its deadline may
/// still hold the lock: then wait off the async threads (tools are bounded, so this
/// ends). Nothing uses it after this.
async fn taken_back(workspace: SharedWorkspace) -> Result<Workspace, PhaseError> {
    match workspace.try_take() {
        Some(taken) => Ok(taken),
        None => tokio::task::spawn_blocking(move || std::mem::take(&mut *workspace.lock()))
            .await
            .map_err(|e| PhaseError::Retry(format!("reading the workspace failed: {e}"))),
    }
}

/// Why the run refused the agent: it ended, or it waits for budget (a parallel
/// branch spent it).
async fn ended_or_parked(pool: &PgPool, p: &PhaseJob) -> AgentExit {
    let run = match pool.acquire().await {
        Ok(mut conn) => crate::store::runs::runs_get(&mut conn, p.run_id)
            .await
            .ok()
            .flatten(),
        Err(_) => None,
    };
    match run {
        Some(r) if r.state == crate::state::RunState::AwaitingBudget => AgentExit::OutOfBudget(
            r.error
                .unwrap_or_else(|| "the run waits for budget".to_owned()),
        ),
        _ => AgentExit::RunEnded,
    }
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
fn seed_workspace(seed: Vec<SeedFile>) -> Result<Workspace, PhaseError> {
    let mut ws = Workspace::default();
    for f in seed {
        let size = usize::try_from(f.size).unwrap_or(0);
        let seeded = match f.content.map(String::from_utf8) {
            Some(Ok(text)) => ws.seed_text(&f.path, text),
            _ => ws.seed_binary(&f.path, size),
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
    // Boxed: moved once onto the heap instead of copied into every caller's future.
    let mut run = Box::pin(agent.run(request, agent_cancel.clone()));
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

/// Validate what the workspace holds against the phase's schema, and digest the files
/// the attempt wrote (on a blocking thread when they are large). A phase without an
/// expected artifact is valid when the agent finished having written a file. Gives
/// back how the agent ended.
///
/// # Errors
/// [`PhaseError::Permanent`] when the schema is unknown.
pub(super) async fn validate(
    schemas: &SchemaRegistry,
    started: &Started,
    attempted: Attempted,
) -> Result<(Validated, AgentExit), PhaseError> {
    let (schemas, phase) = (schemas.clone(), started.phase.clone());
    let written_bytes = attempted.workspace.written().map(|(_, c)| c.len()).sum();
    off_the_async_threads_if_large(written_bytes, move || {
        let validated = validate_now(&schemas, &phase, &attempted)?;
        Ok((validated, attempted.ended))
    })
    .await
    .map_err(|e| PhaseError::Retry(format!("validation task failed: {e}")))?
}

/// Work on fewer bytes than this runs on the async thread: a hop to a blocking thread
/// (two thread wake-ups) costs more than validating or copying a few kilobytes.
const INLINE_BYTES: usize = 64 * 1024;

/// Run `work` on a blocking thread when it handles `bytes` of at least
/// [`INLINE_BYTES`], on this thread otherwise.
async fn off_the_async_threads_if_large<T: Send + 'static>(
    bytes: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if bytes < INLINE_BYTES {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work).await
}

fn validate_now(
    schemas: &SchemaRegistry,
    phase: &Phase,
    attempted: &Attempted,
) -> Result<Validated, PhaseError> {
    let ws = &attempted.workspace;
    let artifact_path = phase.expected_artifact.as_ref().map(|a| a.path.as_str());
    // The files the attempt wrote besides its artifact (stored in `artifacts` already).
    let written: Vec<(String, Blob)> = ws
        .written()
        .filter(|(p, _)| Some(*p) != artifact_path)
        .map(|(p, c)| (p.to_owned(), Blob::new(c.as_bytes().to_vec())))
        .collect();
    let Some(expected) = &phase.expected_artifact else {
        return Ok(Validated {
            content: None,
            validation: files_only(&attempted.ended, phase.timeout, written.is_empty()),
            written,
        });
    };
    let timed_out = matches!(attempted.ended, AgentExit::TimedOut);
    let timeout = phase.timeout;
    // Only what this attempt wrote counts: a seeded file at the path is not its work.
    let content = ws
        .get(&expected.path)
        .filter(|_| ws.was_written(&expected.path));
    let Some(content) = content else {
        let message = if timed_out {
            format!(
                "phase timed out after {timeout}s without writing {}",
                expected.path
            )
        } else {
            format!("the agent finished without writing {}", expected.path)
        };
        return Ok(Validated {
            content: None,
            validation: invalid(message),
            written,
        });
    };
    let mut validation = schemas
        .validate(&expected.schema, content)
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
        content: Some(content.to_owned()),
        validation,
        written,
    })
}

fn invalid(message: String) -> Validation {
    Validation {
        valid: false,
        issues: vec![Issue::whole(message)],
    }
}

/// A phase whose output is files, not an artifact: valid when the agent finished having
/// written at least one.
fn files_only(ended: &AgentExit, timeout: u64, wrote_nothing: bool) -> Validation {
    match (ended, wrote_nothing) {
        (AgentExit::Finished, false) => Validation {
            valid: true,
            issues: vec![],
        },
        (AgentExit::Finished, true) => {
            invalid("the agent finished without writing any file".into())
        }
        _ => invalid(format!(
            "phase timed out after {timeout}s before the agent finished"
        )),
    }
}
