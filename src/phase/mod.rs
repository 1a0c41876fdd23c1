//! Flows 2-4, the phase job: check the run is still active, build the envelope, run the
//! agent under the phase timeout, validate the artifact, then in ONE transaction store
//! it, park on an approval / enqueue the next phase / schedule a repair / fail the run,
//! and complete the job (fenced by its lease).

mod envelope;
mod job;

pub use envelope::Envelope;
pub use job::{PHASE_JOB_KIND, PhaseJob, enqueue_first_attempt};

/// Histogram buckets (seconds) for phase attempt durations: from a synthetic phase to a
/// long model conversation. Every process exporting metrics uses these.
pub const DURATION_BUCKETS_SECS: &[f64] = &[0.05, 0.25, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0];

use crate::advance::{self, AdvanceError};
use crate::agent::{Agent, AgentError, AgentRequest};
use crate::events;
use crate::ids::{ApprovalId, RunId, WorkerId};
use crate::queue::{self, ClaimedJob, Completed, QueueError};
use crate::runs::{self, PhaseState, RunState};
use crate::submit::RunInputs;
use crate::validate::{Issue, SchemaRegistry, Validation};
use crate::workflow::{Persona, Phase, WorkflowTemplate, sha256_hex};
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// Retry this delivery later (provider hiccup, database blip).
    #[error("{0}")]
    Retry(String),
    /// The job can never succeed (corrupt payload, missing definition).
    #[error("{0}")]
    Permanent(String),
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<AdvanceError> for PhaseError {
    fn from(e: AdvanceError) -> Self {
        match e {
            AdvanceError::Queue(q) => Self::Queue(q),
            AdvanceError::Db(d) => Self::Db(d),
        }
    }
}

/// Runs phase jobs. Cheap to clone; shared by every in-flight job of a worker.
pub struct Engine<A> {
    pool: PgPool,
    schemas: SchemaRegistry,
    agent: Arc<A>,
    queue: String,
}

impl<A> Clone for Engine<A> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            schemas: self.schemas.clone(),
            agent: self.agent.clone(),
            queue: self.queue.clone(),
        }
    }
}

/// What the worker learned at the start of an attempt.
struct Attempt {
    phase: Phase,
    persona: Persona,
    inputs: RunInputs,
    prior: Vec<(String, String, String)>,
    repair_issues: Option<Vec<Issue>>,
    revise_comment: Option<String>,
}

/// How an attempt ended before validation.
enum Produced {
    Artifact(String),
    Missing(String),
}

impl<A: Agent> Engine<A> {
    pub fn new(pool: PgPool, schemas: SchemaRegistry, agent: A, queue: impl Into<String>) -> Self {
        Self {
            pool,
            schemas,
            agent: Arc::new(agent),
            queue: queue.into(),
        }
    }

    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Run one delivery of a phase job.
    ///
    /// # Errors
    /// [`PhaseError`]; the worker turns it into a retry, a dead letter or a hand-back.
    pub async fn run_phase_job(
        &self,
        job: &ClaimedJob,
        worker: WorkerId,
        cancel: CancellationToken,
    ) -> Result<Completed, PhaseError> {
        let p: PhaseJob = serde_json::from_value(job.payload.clone())
            .map_err(|e| PhaseError::Permanent(format!("phase job payload does not parse: {e}")))?;
        let span = tracing::info_span!("phase", run_id = %p.run_id, phase = %p.phase, job_id = %job.id, round = p.round, attempt = p.attempt);
        let started = std::time::Instant::now();
        let result = self
            .run_attempt(job, worker, &p, cancel)
            .instrument(span)
            .await;
        let outcome = if result.is_ok() { "done" } else { "error" };
        metrics::histogram!("phasefleet_phase_attempt_duration_seconds", "phase" => p.phase.clone(), "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn run_attempt(
        &self,
        job: &ClaimedJob,
        worker: WorkerId,
        p: &PhaseJob,
        cancel: CancellationToken,
    ) -> Result<Completed, PhaseError> {
        let lease = job.lease();
        // 1. Start the attempt, or find that there is nothing to do.
        let mut tx = self.pool.begin().await?;
        let Some(attempt) = self.start(&mut tx, p).await? else {
            let done = queue::complete(&mut tx, &lease, worker).await?;
            tx.commit().await?;
            tracing::info!(
                "nothing to do for this delivery (run ended or attempt already recorded)"
            );
            return Ok(done);
        };
        tx.commit().await?;

        // 2. Run the agent under the phase timeout; a cancel interrupts it.
        let schema = self
            .schemas
            .schema(&attempt.phase.expected_artifact.schema)
            .map_err(|e| PhaseError::Permanent(e.to_string()))?
            .clone();
        let envelope = Envelope {
            run_id: p.run_id.to_string(),
            phase: &attempt.phase,
            round: p.round,
            attempt: p.attempt,
            inputs: &attempt.inputs,
            prior: &attempt.prior,
            schema: &schema,
            repair_issues: attempt.repair_issues.as_deref(),
            revise_comment: attempt.revise_comment.as_deref(),
        }
        .render();
        let request = AgentRequest {
            run_id: p.run_id,
            phase_key: p.phase.clone(),
            attempt: p.attempt,
            round: p.round,
            persona: attempt.persona.clone(),
            envelope,
            expected_path: attempt.phase.expected_artifact.path.clone(),
            schema,
            extra: attempt.inputs.extra.clone(),
            ledger: crate::agent::Ledger::new(self.pool.clone(), p.run_id, &p.phase, p.attempt),
        };
        let timeout = Duration::from_secs(attempt.phase.timeout);
        let agent_cancel = cancel.child_token();
        let run = self.agent.run(request, agent_cancel.clone());
        tokio::pin!(run);
        let outcome = tokio::select! {
            r = &mut run => Some(r),
            () = tokio::time::sleep(timeout) => {
                // Interrupt the in-flight call and let the agent record it in the
                // ledger (bounded: an agent that ignores its token is dropped).
                agent_cancel.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut run).await;
                None
            }
        };
        // Whatever happened, nothing the agent started may go on (invariant 5).
        agent_cancel.cancel();
        if cancel.is_cancelled() {
            return Err(PhaseError::Interrupted);
        }
        let produced = match outcome {
            None => Produced::Missing(format!(
                "phase timed out after {}s without a valid artifact",
                attempt.phase.timeout
            )),
            Some(Ok(o)) => {
                let path = &attempt.phase.expected_artifact.path;
                match o.workspace.get(path) {
                    Some(c) => Produced::Artifact(c.to_owned()),
                    None => Produced::Missing(format!("the agent finished without writing {path}")),
                }
            }
            // The run ended (a cancel this worker has not heard of yet): nothing to record.
            Some(Err(AgentError::Cancelled)) => return self.complete_only(job, worker).await,
            Some(Err(AgentError::Transient(m))) if job.attempts < job.max_attempts => {
                return Err(PhaseError::Retry(m));
            }
            Some(Err(AgentError::Budget(m))) => {
                return self
                    .fail_run(job, worker, p, &format!("budget exhausted: {m}"))
                    .await;
            }
            Some(Err(AgentError::Transient(m) | AgentError::Fatal(m))) => {
                return self
                    .fail_run(
                        job,
                        worker,
                        p,
                        &format!("phase {} agent failed: {m}", p.phase),
                    )
                    .await;
            }
        };

        // 3. Validate.
        let (content, validation) = match produced {
            Produced::Artifact(c) => {
                let v = self
                    .schemas
                    .validate(&attempt.phase.expected_artifact.schema, &c)
                    .map_err(|e| PhaseError::Permanent(e.to_string()))?;
                (Some(c), v)
            }
            Produced::Missing(msg) => (
                None,
                Validation {
                    valid: false,
                    issues: vec![Issue {
                        path: String::new(),
                        message: msg,
                    }],
                },
            ),
        };

        // 4. Record the outcome and complete the job, atomically.
        let mut tx = self.pool.begin().await?;
        let done = self
            .record(&mut tx, job, worker, p, &attempt, content, &validation)
            .await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Lock the run, skip stale deliveries, mark the attempt started and gather what the
    /// agent needs. `None` means there is nothing to do.
    async fn start(
        &self,
        conn: &mut PgConnection,
        p: &PhaseJob,
    ) -> Result<Option<Attempt>, PhaseError> {
        let Some(run) = runs::lock(conn, p.run_id).await? else {
            return Ok(None);
        };
        if !matches!(run.state, RunState::Queued | RunState::Running) {
            return Ok(None);
        }
        let Some(phase_row) = runs::phase(conn, p.run_id, &p.phase).await? else {
            return Err(PhaseError::Permanent(format!(
                "run {} has no phase {:?}",
                p.run_id, p.phase
            )));
        };
        let attempt = i32::try_from(p.attempt).unwrap_or(i32::MAX);
        if phase_row.state.is_terminal()
            || phase_row.state == PhaseState::AwaitingApproval
            || phase_row.round != p.round
            || phase_row.attempts > attempt
            || self.artifact_exists(conn, p).await?
        {
            return Ok(None);
        }
        if let Some(limit) = run.budget_usd.filter(|l| run.spent_usd >= *l) {
            advance::end_run(
                conn,
                p.run_id,
                RunState::Failed,
                Some(&format!(
                    "budget exhausted: spent ${:.4} of ${limit:.4}",
                    run.spent_usd
                )),
            )
            .await?;
            return Ok(None);
        }
        if let Some(limit) = run.budget_tokens.filter(|l| run.spent_tokens >= *l) {
            advance::end_run(
                conn,
                p.run_id,
                RunState::Failed,
                Some(&format!(
                    "budget exhausted: spent {} of {limit} tokens",
                    run.spent_tokens
                )),
            )
            .await?;
            return Ok(None);
        }
        if run.state == RunState::Queued {
            runs::set_state(conn, p.run_id, RunState::Running, None).await?;
            events::append(
                conn,
                p.run_id,
                "run.started",
                None,
                "run.started",
                serde_json::json!({}),
            )
            .await?;
        }
        sqlx::query("UPDATE run_phases SET state = 'running', attempts = $3, started_at = COALESCE(started_at, now()) WHERE run_id = $1 AND phase_key = $2")
            .bind(p.run_id)
            .bind(&p.phase)
            .bind(attempt)
            .execute(&mut *conn)
            .await?;
        events::append(
            conn,
            p.run_id,
            "phase.started",
            Some(&p.phase),
            &format!("phase:{}:r{}:a{}:started", p.phase, p.round, p.attempt),
            serde_json::json!({ "round": p.round, "attempt": p.attempt }),
        )
        .await?;

        let (body,): (serde_json::Value,) =
            sqlx::query_as("SELECT body FROM templates WHERE hash = $1")
                .bind(&run.template_hash)
                .fetch_one(&mut *conn)
                .await?;
        let template: WorkflowTemplate = serde_json::from_value(body)
            .map_err(|e| PhaseError::Permanent(format!("stored template does not parse: {e}")))?;
        let phase = template
            .phase(&p.phase)
            .map(|(_, ph)| ph.clone())
            .ok_or_else(|| PhaseError::Permanent(format!("template has no phase {:?}", p.phase)))?;
        let (persona_body,): (serde_json::Value,) = sqlx::query_as(
            "SELECT p.body FROM run_bindings b JOIN personas p ON p.hash = b.persona_hash WHERE b.run_id = $1 AND b.role = $2",
        )
        .bind(p.run_id)
        .bind(&phase.role)
        .fetch_one(&mut *conn)
        .await?;
        let persona: Persona = serde_json::from_value(persona_body)
            .map_err(|e| PhaseError::Permanent(format!("stored persona does not parse: {e}")))?;
        let (requirements, objective, extra): (String, serde_json::Value, serde_json::Value) =
            sqlx::query_as(
                "SELECT requirements, objective, extra FROM run_inputs WHERE run_id = $1",
            )
            .bind(p.run_id)
            .fetch_one(&mut *conn)
            .await?;
        let prior: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT DISTINCT ON (a.phase_key) a.phase_key, a.path, COALESCE(a.content, '')
               FROM artifacts a JOIN run_phases ph ON ph.run_id = a.run_id AND ph.phase_key = a.phase_key
              WHERE a.run_id = $1 AND a.valid AND ph.state = 'completed'
              ORDER BY a.phase_key, a.round DESC, a.attempt DESC",
        )
        .bind(p.run_id)
        .fetch_all(&mut *conn)
        .await?;
        let repair_issues = if p.attempt > 1 {
            let prev: Option<(serde_json::Value,)> = sqlx::query_as(
                "SELECT validation_errors FROM artifacts WHERE run_id = $1 AND phase_key = $2 AND round = $3 AND attempt = $4",
            )
            .bind(p.run_id)
            .bind(&p.phase)
            .bind(p.round)
            .bind(attempt - 1)
            .fetch_optional(&mut *conn)
            .await?;
            prev.and_then(|(v,)| serde_json::from_value(v).ok())
        } else {
            None
        };
        Ok(Some(Attempt {
            phase,
            persona,
            inputs: RunInputs {
                requirements,
                objective,
                extra,
            },
            prior,
            repair_issues,
            revise_comment: phase_row.revise_comment,
        }))
    }

    async fn artifact_exists(
        &self,
        conn: &mut PgConnection,
        p: &PhaseJob,
    ) -> Result<bool, sqlx::Error> {
        let (exists,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM artifacts WHERE run_id = $1 AND phase_key = $2 AND round = $3 AND attempt = $4)",
        )
        .bind(p.run_id)
        .bind(&p.phase)
        .bind(p.round)
        .bind(i32::try_from(p.attempt).unwrap_or(i32::MAX))
        .fetch_one(&mut *conn)
        .await?;
        Ok(exists)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; the attempt's whole context"
    )]
    async fn record(
        &self,
        conn: &mut PgConnection,
        job: &ClaimedJob,
        worker: WorkerId,
        p: &PhaseJob,
        attempt: &Attempt,
        content: Option<String>,
        validation: &Validation,
    ) -> Result<Completed, PhaseError> {
        let lease = job.lease();
        let Some(run) = runs::lock(conn, p.run_id).await? else {
            return Ok(queue::complete(conn, &lease, worker).await?);
        };
        let phase_row = runs::phase(conn, p.run_id, &p.phase).await?;
        let current = phase_row.as_ref().is_some_and(|ph| {
            ph.state == PhaseState::Running
                && ph.round == p.round
                && ph.attempts == i32::try_from(p.attempt).unwrap_or(i32::MAX)
        });
        if !matches!(run.state, RunState::Running) || !current {
            // Cancelled meanwhile, or another delivery already finished this attempt.
            return Ok(queue::complete(conn, &lease, worker).await?);
        }
        let art = &attempt.phase.expected_artifact;
        let sha = content.as_deref().map(sha256_hex);
        let issues = serde_json::to_value(&validation.issues).unwrap_or_default();
        let inserted: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO artifacts (run_id, phase_key, round, attempt, path, schema_id, content, sha256, valid, validation_errors)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (run_id, phase_key, round, attempt) DO NOTHING RETURNING id",
        )
        .bind(p.run_id)
        .bind(&p.phase)
        .bind(p.round)
        .bind(i32::try_from(p.attempt).unwrap_or(i32::MAX))
        .bind(&art.path)
        .bind(&art.schema)
        .bind(&content)
        .bind(&sha)
        .bind(validation.valid)
        .bind(&issues)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((artifact_id,)) = inserted else {
            return Ok(queue::complete(conn, &lease, worker).await?);
        };
        let key_base = format!("phase:{}:r{}:a{}", p.phase, p.round, p.attempt);
        let kind = if validation.valid {
            "artifact.valid"
        } else {
            "artifact.invalid"
        };
        events::append(
            conn,
            p.run_id,
            kind,
            Some(&p.phase),
            &format!("{key_base}:artifact"),
            serde_json::json!({ "artifact_id": artifact_id, "path": art.path, "sha256": sha, "issues": issues }),
        )
        .await?;

        if validation.valid {
            if attempt.phase.gates.is_empty() {
                advance::phase_accepted(conn, p.run_id, &p.phase, p.round, &self.queue).await?;
            } else {
                self.park(conn, p, artifact_id, &attempt.phase).await?;
            }
        } else if p.attempt < attempt.phase.max_attempts {
            let next = PhaseJob {
                attempt: p.attempt + 1,
                ..p.clone()
            };
            queue::enqueue(conn, &next.to_job(&self.queue)).await?;
            events::append(
                conn,
                p.run_id,
                "phase.repair_scheduled",
                Some(&p.phase),
                &format!("{key_base}:repair"),
                serde_json::json!({ "next_attempt": next.attempt }),
            )
            .await?;
        } else {
            let summary: Vec<String> = validation
                .issues
                .iter()
                .take(5)
                .map(|i| {
                    format!(
                        "{} {}",
                        if i.path.is_empty() { "(root)" } else { &i.path },
                        i.message
                    )
                })
                .collect();
            let error = format!(
                "phase {} produced no valid artifact after {} attempt(s): {}",
                p.phase,
                p.attempt,
                summary.join("; ")
            );
            runs::set_phase_state(conn, p.run_id, &p.phase, PhaseState::Failed, Some(&error))
                .await?;
            events::append(
                conn,
                p.run_id,
                "phase.failed",
                Some(&p.phase),
                &format!("{key_base}:failed"),
                serde_json::json!({ "error": error }),
            )
            .await?;
            advance::end_run(conn, p.run_id, RunState::Failed, Some(&error)).await?;
        }
        Ok(queue::complete(conn, &lease, worker).await?)
    }

    /// Park the run on a human: create the approval request (idempotently, keyed by
    /// run, phase, round and artifact path) and end the job. No process waits.
    async fn park(
        &self,
        conn: &mut PgConnection,
        p: &PhaseJob,
        artifact_id: i64,
        phase: &Phase,
    ) -> Result<(), PhaseError> {
        let key = format!(
            "{}:{}:r{}:{}",
            p.run_id, p.phase, p.round, phase.expected_artifact.path
        );
        let inserted: Option<(ApprovalId,)> = sqlx::query_as(
            "INSERT INTO approval_requests (id, run_id, phase_key, round, artifact_id, gates, idempotency_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id, idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(ApprovalId::new())
        .bind(p.run_id)
        .bind(&p.phase)
        .bind(p.round)
        .bind(artifact_id)
        .bind(&phase.gates)
        .bind(&key)
        .fetch_optional(&mut *conn)
        .await?;
        runs::set_phase_state(conn, p.run_id, &p.phase, PhaseState::AwaitingApproval, None).await?;
        runs::set_state(conn, p.run_id, RunState::AwaitingApproval, None).await?;
        if let Some((id,)) = inserted {
            events::append(
                conn,
                p.run_id,
                "approval.requested",
                Some(&p.phase),
                &format!("approval:{key}"),
                serde_json::json!({ "approval_id": id, "gates": phase.gates, "round": p.round }),
            )
            .await?;
        }
        Ok(())
    }

    /// Complete the job and change nothing else (its run ended meanwhile).
    async fn complete_only(
        &self,
        job: &ClaimedJob,
        worker: WorkerId,
    ) -> Result<Completed, PhaseError> {
        let mut tx = self.pool.begin().await?;
        let done = queue::complete(&mut tx, &job.lease(), worker).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// End the run as failed because its agent cannot go on, and complete the job.
    async fn fail_run(
        &self,
        job: &ClaimedJob,
        worker: WorkerId,
        p: &PhaseJob,
        error: &str,
    ) -> Result<Completed, PhaseError> {
        let mut tx = self.pool.begin().await?;
        if let Some(run) = runs::lock(&mut tx, p.run_id).await?
            && !run.state.is_terminal()
        {
            runs::set_phase_state(&mut tx, p.run_id, &p.phase, PhaseState::Failed, Some(error))
                .await?;
            advance::end_run(&mut tx, p.run_id, RunState::Failed, Some(error)).await?;
        }
        let done = queue::complete(&mut tx, &job.lease(), worker).await?;
        tx.commit().await?;
        Ok(done)
    }
}

/// Fail runs whose phase job was dead-lettered (out of queue retries, or a job that
/// kept killing workers) and that have no other live job: otherwise they would stay
/// `running` forever with no lease. Returns how many runs were failed.
///
/// # Errors
/// Database errors.
pub async fn fail_orphaned_runs(pool: &PgPool) -> Result<usize, PhaseError> {
    let orphans: Vec<(RunId, Option<String>)> = sqlx::query_as(
        "SELECT DISTINCT ON (r.id) r.id, j.last_error FROM runs r JOIN jobs j ON j.run_id = r.id
          WHERE r.state IN ('queued', 'running') AND j.state = 'dead' AND j.kind = 'phase'
            AND NOT EXISTS (SELECT 1 FROM jobs l WHERE l.run_id = r.id AND l.state IN ('ready', 'running'))
          ORDER BY r.id, j.finished_at DESC LIMIT 100",
    )
    .fetch_all(pool)
    .await?;
    let mut failed = 0;
    for (run_id, last_error) in orphans {
        let mut tx = pool.begin().await?;
        let Some(run) = runs::lock(&mut tx, run_id).await? else {
            continue;
        };
        let live: (bool,) = sqlx::query_as("SELECT EXISTS (SELECT 1 FROM jobs WHERE run_id = $1 AND state IN ('ready', 'running'))")
            .bind(run_id)
            .fetch_one(&mut *tx)
            .await?;
        if run.state.is_terminal() || run.state == RunState::AwaitingApproval || live.0 {
            continue;
        }
        let error = format!(
            "phase job dead-lettered: {}",
            last_error.unwrap_or_else(|| "no error recorded".into())
        );
        advance::end_run(&mut tx, run_id, RunState::Failed, Some(&error)).await?;
        tx.commit().await?;
        failed += 1;
    }
    Ok(failed)
}
