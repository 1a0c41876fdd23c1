//! The phase job, in four steps, each in its own module: [`start`] (lock the run, skip
//! stale deliveries, mark the attempt started, read what it starts from), [`attempt`]
//! (run the agent under the phase timeout), validate the artifact, and [`record`] (in
//! ONE transaction: store it, then park on an approval, accept the phase, schedule a
//! repair or fail the run, and complete the job under its lease), whose transactions
//! [`recorder`] runs, several attempts to one when they end at the same moment.

mod attempt;
mod definitions;
mod envelope;
mod record;
mod recorder;
mod start;

pub use crate::phase_job::{PHASE_JOB_KIND, PhaseJob};
pub use envelope::Envelope;

/// Histogram buckets (seconds) for phase attempt durations: from a synthetic phase to a
/// long model conversation. Every process exporting metrics uses these.
pub const DURATION_BUCKETS_SECS: &[f64] = &[0.05, 0.25, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0];

use crate::advance::{self, LockedRun};
use crate::agent::Agent;
use crate::events::StreamWakeUps;
use crate::queue::{self, ClaimedJob, Completed, QueueError};
use crate::state::RunState;
use crate::store::{StoreError, ledger, runs};
use crate::validate::SchemaRegistry;
use attempt::AgentExit;
use sqlx::PgPool;
use std::ops::ControlFlow;
use std::sync::Arc;
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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

crate::from_advance_error!(PhaseError);

/// What a worker offers when an attempt is recorded: to go on with the next attempt of
/// the run that it can serve (`capabilities`), while `now` says it may.
struct GoOn<'a> {
    capabilities: &'a [String],
    now: &'a (dyn Fn() -> bool + Sync),
}

/// Runs phase jobs. Cheap to clone; shared by every in-flight job of a worker.
pub struct Engine<A> {
    pool: PgPool,
    schemas: SchemaRegistry,
    agent: Arc<A>,
    shared: Shared,
}

/// What every phase of a worker process shares besides the pool.
#[derive(Clone)]
pub(super) struct Shared {
    /// Live streams hear of a phase's events after its commit.
    pub wake_ups: StreamWakeUps,
    /// Templates and personas, parsed once per process.
    pub definitions: definitions::Definitions,
    /// Records attempts, several to a transaction when they come at once.
    recorder: recorder::Recorder,
}

impl<A> Clone for Engine<A> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            schemas: self.schemas.clone(),
            agent: self.agent.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<A: Agent> Engine<A> {
    pub fn new(pool: PgPool, schemas: SchemaRegistry, agent: A) -> Self {
        let wake_ups = StreamWakeUps::new(pool.clone());
        let definitions = definitions::Definitions::default();
        let recorder = recorder::Recorder::new(
            recorder::Context {
                pool: pool.clone(),
                definitions: definitions.clone(),
                wake_ups: wake_ups.clone(),
            },
            recorder::RECORDERS,
        );
        Self {
            shared: Shared {
                wake_ups,
                definitions,
                recorder,
            },
            pool,
            schemas,
            agent: Arc::new(agent),
        }
    }

    /// Record attempts in at most `recorders` transactions at the same time (at least
    /// one; 4 unless set): attempts that come while every one is busy wait and then
    /// share the next transaction (`phase/recorder.rs`).
    #[must_use]
    pub fn with_recorders(mut self, recorders: usize) -> Self {
        let context = self.shared.recorder.context().clone();
        self.shared.recorder = recorder::Recorder::new(context, recorders);
        self
    }

    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// What the agent can serve (see [`Agent::capabilities`]).
    #[must_use]
    pub fn capabilities(&self) -> Vec<String> {
        self.agent.capabilities()
    }

    /// Run one delivery of a phase job.
    ///
    /// # Errors
    /// [`PhaseError`]; the worker turns it into a retry, a dead letter or a hand-back.
    pub async fn run_phase_job(
        &self,
        job: &ClaimedJob,
        cancel: CancellationToken,
    ) -> Result<Completed, PhaseError> {
        self.run_phase_job_going_on(job, cancel, &|| false).await
    }

    /// Run one delivery of a phase job and, while `may_go_on` says so (the worker is not
    /// draining or stopping), go on with the next attempt of the same run that its
    /// outcome makes due and this worker can run: the job is handed over to it, under
    /// the same lease, in the transaction that records the outcome (one transaction per
    /// phase instead of a completion, an enqueue, a claim and a start).
    ///
    /// # Errors
    /// [`PhaseError`]; the worker turns it into a retry, a dead letter or a hand-back.
    pub async fn run_phase_job_going_on(
        &self,
        job: &ClaimedJob,
        cancel: CancellationToken,
        may_go_on: &(dyn Fn() -> bool + Sync),
    ) -> Result<Completed, PhaseError> {
        let mut job = job.clone();
        let mut p: PhaseJob = serde_json::from_value(job.payload.clone())
            .map_err(|e| PhaseError::Permanent(format!("phase job payload does not parse: {e}")))?;
        let mut started = None;
        let capabilities = self.capabilities();
        let go_on = GoOn {
            capabilities: &capabilities,
            now: may_go_on,
        };
        loop {
            match self
                .run_delivery(&job, &p, started.take(), &cancel, &go_on)
                .await?
            {
                record::Recorded::Completed(done) => return Ok(done),
                record::Recorded::HandedOver(next) => {
                    let (next, next_started) = *next;
                    job.payload = serde_json::to_value(&next).unwrap_or_default();
                    job.attempts = 1;
                    job.rescues = 0;
                    p = next;
                    started = Some(Box::new(next_started));
                }
            }
        }
    }

    /// One attempt in its span, timed.
    async fn run_delivery(
        &self,
        job: &ClaimedJob,
        p: &PhaseJob,
        started: Option<Box<start::Started>>,
        cancel: &CancellationToken,
        go_on: &GoOn<'_>,
    ) -> Result<record::Recorded, PhaseError> {
        let span = tracing::info_span!("phase", run_id = %p.run_id, phase = %p.phase, job_id = %job.id, round = p.round, attempt = p.attempt);
        if let Some(parent) = &p.traceparent {
            crate::telemetry::continue_trace(&span, parent);
        }
        let clock = std::time::Instant::now();
        let attempt = self.run_attempt(job, p, started, cancel.clone(), go_on);
        let result = attempt.instrument(span).await;
        let outcome = if result.is_ok() { "done" } else { "error" };
        // Labelled by the template's phase: a fan-out's items share its series.
        let phase = p.phase.split('[').next().unwrap_or_default().to_owned();
        metrics::histogram!("phasefleet_phase_attempt_duration_seconds", "phase" => phase, "outcome" => outcome)
            .record(clock.elapsed().as_secs_f64());
        result
    }

    async fn run_attempt(
        &self,
        job: &ClaimedJob,
        p: &PhaseJob,
        started: Option<Box<start::Started>>,
        cancel: CancellationToken,
        go_on: &GoOn<'_>,
    ) -> Result<record::Recorded, PhaseError> {
        use record::Recorded;
        // 1. Start the attempt (unless it was started when the job was handed over to
        //    it), or find that there is nothing to do.
        let mut started = match started {
            Some(started) => started,
            None => match self.start_attempt(job, p).await? {
                ControlFlow::Continue(started) => started,
                ControlFlow::Break(completed) => return Ok(Recorded::Completed(completed)),
            },
        };
        // 2. Run the agent under the phase timeout; a cancel interrupts it.
        let attempted = attempt::run_agent(
            &*self.agent,
            &self.schemas,
            &self.pool,
            p,
            &mut started,
            job.lease(),
            &cancel,
        )
        .await?;
        if matches!(attempted.ended, AgentExit::RunEnded) {
            return Box::pin(self.complete_only(job))
                .await
                .map(Recorded::Completed);
        }
        // 3. Validate what the workspace holds, however the agent ended (CPU work, off
        //    the async threads): a valid artifact is kept even after a timeout or a
        //    failed call.
        let (validated, ended) = attempt::validate(&self.schemas, &started, attempted).await?;
        if !validated.validation.valid
            && let Some(done) = Box::pin(self.not_recorded(job, p, ended)).await
        {
            return done.map(Recorded::Completed);
        }
        // 4. Record the outcome and complete the job (or hand it over), atomically;
        //    whether the worker may go on is asked now, not when the attempt began.
        let go_on = ((go_on.now)() && !cancel.is_cancelled()).then_some(go_on.capabilities);
        let attempt = record::ToRecord {
            job: job.clone(),
            p: p.clone(),
            started,
            outcome: validated,
            go_on: go_on.map(<[String]>::to_vec),
        };
        self.shared.recorder.record(attempt).await
    }

    /// Step 1 of [`Self::run_attempt`]: start the attempt, or complete a job with
    /// nothing to do (its run ended, its attempt already recorded) or park its run for
    /// budget. The database steps are boxed: a phase waiting on the model then holds
    /// only the agent's state, not space for the largest transaction's future too.
    async fn start_attempt(
        &self,
        job: &ClaimedJob,
        p: &PhaseJob,
    ) -> Result<ControlFlow<Completed, Box<start::Started>>, PhaseError> {
        match Box::pin(start::start(&self.pool, &self.shared, p)).await? {
            start::Start::Ready(started) => Ok(ControlFlow::Continue(started)),
            start::Start::Nothing => {
                tracing::info!(
                    "nothing to do for this delivery (run ended or attempt already recorded)"
                );
                Box::pin(self.complete_only(job))
                    .await
                    .map(ControlFlow::Break)
            }
            start::Start::OutOfBudget(reason) => {
                let parked = self.park_for_budget(job, p, &reason, Attempted::No);
                Box::pin(parked).await.map(ControlFlow::Break)
            }
        }
    }

    /// An attempt without a valid artifact that ended other than by finishing or
    /// timing out is not recorded: hand it back, retry it, park the run for budget or
    /// fail the run. `None`: record it (a repair, or the run's failure).
    async fn not_recorded(
        &self,
        job: &ClaimedJob,
        p: &PhaseJob,
        ended: AgentExit,
    ) -> Option<Result<Completed, PhaseError>> {
        Some(match ended {
            AgentExit::Interrupted => Err(PhaseError::Interrupted),
            AgentExit::OutOfBudget(reason) => {
                self.park_for_budget(job, p, &reason, Attempted::Yes).await
            }
            AgentExit::Failed { error, retry } if retry && job.attempts < job.max_attempts => {
                Err(PhaseError::Retry(error))
            }
            AgentExit::Failed { error, retry } => {
                let error = if retry {
                    self.out_of_deliveries(job, p, &error).await
                } else {
                    error
                };
                self.fail_run(job, p, &error).await
            }
            AgentExit::Finished | AgentExit::TimedOut | AgentExit::RunEnded => return None,
        })
    }

    /// The final error of a phase whose every delivery failed: with the delivery count
    /// and the HTTP attempts its ledger holds (each delivery retries its calls too).
    async fn out_of_deliveries(&self, job: &ClaimedJob, p: &PhaseJob, error: &str) -> String {
        let calls = match self.pool.acquire().await {
            Ok(mut conn) => ledger::llm_calls_count(&mut conn, p.run_id, &p.phase, p.attempt)
                .await
                .ok(),
            Err(_) => None,
        };
        let calls = calls.map_or_else(String::new, |n| format!("; {n} HTTP attempts in all"));
        format!(
            "{error} (delivery {} of {}{calls})",
            job.attempts, job.max_attempts
        )
    }

    /// Complete the job and change nothing else (its run ended, or the attempt was
    /// recorded by an earlier delivery).
    async fn complete_only(&self, job: &ClaimedJob) -> Result<Completed, PhaseError> {
        let mut tx = self.pool.begin().await?;
        let done = queue::complete(&mut tx, &job.lease()).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Park the run until an approver raises its budget, and complete the job (the
    /// attempt is enqueued again on a top-up).
    async fn park_for_budget(
        &self,
        job: &ClaimedJob,
        p: &PhaseJob,
        reason: &str,
        attempted: Attempted,
    ) -> Result<Completed, PhaseError> {
        let mut tx = self.pool.begin().await?;
        let current = runs::runs_lock_with_phases(&mut tx, p.run_id).await?;
        if attempted == Attempted::Yes {
            record::deliver_again_if_start_lost(current.as_ref(), p)?;
        }
        // An approver raised the budget since this attempt saw it spent: start again.
        if let Some((run, _)) = &current
            && matches!(run.state, RunState::Queued | RunState::Running)
            && crate::budget::Spend::from(run).exhausted().is_none()
        {
            return Err(PhaseError::Retry(
                "the budget was raised meanwhile; the attempt starts again".into(),
            ));
        }
        if let Some((run, phases)) = current
            && matches!(
                run.state,
                RunState::Queued | RunState::Running | RunState::AwaitingBudget
            )
        {
            let mut locked = LockedRun::new(run, phases);
            crate::budget::park(&mut tx, &mut locked, p, reason).await?;
            locked.flush_events(&mut tx).await?;
        }
        let done = queue::complete(&mut tx, &job.lease()).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// End the run as failed because its agent cannot go on, and complete the job.
    async fn fail_run(
        &self,
        job: &ClaimedJob,
        p: &PhaseJob,
        error: &str,
    ) -> Result<Completed, PhaseError> {
        let mut tx = self.pool.begin().await?;
        let current = runs::runs_lock_with_phases(&mut tx, p.run_id).await?;
        record::deliver_again_if_start_lost(current.as_ref(), p)?;
        if let Some((run, phases)) = current
            && !run.state.is_terminal()
        {
            let mut locked = LockedRun::new(run, phases);
            advance::fail_phase_and_run(&mut tx, &mut locked, p, error).await?;
            locked.flush_events(&mut tx).await?;
        }
        let done = queue::complete(&mut tx, &job.lease()).await?;
        tx.commit().await?;
        Ok(done)
    }
}

/// Whether a budget park comes after the attempt ran (its start is in the database) or
/// from the start itself (nothing started yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempted {
    Yes,
    No,
}

/// Fail runs whose phase job was dead-lettered (out of queue retries, or a job that
/// kept killing workers) and that have no other live job: otherwise they would stay
/// `running` forever with no lease. Returns how many runs were failed.
///
/// # Errors
/// Database errors.
pub async fn fail_orphaned_runs(pool: &PgPool) -> Result<usize, PhaseError> {
    let orphans = runs::runs_find_orphaned(&mut *pool.acquire().await?).await?;
    let mut failed = 0;
    for (run_id, last_error) in orphans {
        let mut tx = pool.begin().await?;
        let Some((run, phases)) = runs::runs_lock_with_phases(&mut tx, run_id).await? else {
            continue;
        };
        if !matches!(run.state, RunState::Queued | RunState::Running)
            || runs::runs_has_live_job(&mut tx, run_id).await?
        {
            continue;
        }
        let error = format!(
            "phase job dead-lettered: {}",
            last_error.unwrap_or_else(|| "no error recorded".into())
        );
        let mut locked = LockedRun::new(run, phases);
        advance::end_run(&mut tx, &mut locked, RunState::Failed, Some(&error)).await?;
        locked.flush_events(&mut tx).await?;
        tx.commit().await?;
        failed += 1;
    }
    Ok(failed)
}
