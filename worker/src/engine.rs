//! The production handler: phase jobs go to the engine, built-in diagnostic kinds to
//! [`Builtins`]. Housekeeping fails runs whose phase job was dead-lettered.

use crate::builtin::Builtins;
use crate::handler::{JobContext, JobError, JobHandler};
use phasefleet::ApprovalId;
use phasefleet::agent::Agent;
use phasefleet::approval::{self, ApprovalError};
use phasefleet::phase::{Engine, PHASE_JOB_KIND, PhaseError};
use phasefleet::queue::Completed;
use phasefleet::store::StoreError;
use phasefleet::webhooks::{self, WebhookError, Webhooks};

pub struct EngineHandler<A> {
    engine: Engine<A>,
    webhooks: Webhooks,
}

impl<A: Agent> EngineHandler<A> {
    pub fn new(engine: Engine<A>) -> Self {
        Self {
            engine,
            webhooks: Webhooks::default(),
        }
    }

    /// Deliver notifications to these webhooks (none by default: a notification this
    /// worker claims is then retried, for a worker that has them).
    #[must_use]
    pub fn with_webhooks(mut self, webhooks: Webhooks) -> Self {
        self.webhooks = webhooks;
        self
    }
}

impl From<PhaseError> for JobError {
    fn from(e: PhaseError) -> Self {
        match e {
            PhaseError::Retry(m) => JobError::retry(m),
            PhaseError::Permanent(m) => JobError::Permanent(m),
            PhaseError::Interrupted => JobError::Interrupted,
            PhaseError::Queue(q) => JobError::Queue(q),
            PhaseError::Db(d) | PhaseError::Store(StoreError::Db(d)) => JobError::Db(d),
            PhaseError::Store(e @ StoreError::Stale(_)) => JobError::retry(e.to_string()),
            PhaseError::Store(e @ (StoreError::Transition(_) | StoreError::Corrupt(_))) => {
                JobError::Permanent(e.to_string())
            }
        }
    }
}

fn webhook_error(e: WebhookError) -> JobError {
    match e {
        WebhookError::Queue(q) => JobError::Queue(q),
        WebhookError::Db(d) => JobError::Db(d),
        WebhookError::BadJob(m) => JobError::Permanent(m),
        e @ (WebhookError::Rejected { .. }
        | WebhookError::Unreachable { .. }
        | WebhookError::Secret(_)) => JobError::retry(e.to_string()),
    }
}

/// An approval's deadline job: apply `on_timeout` if nobody decided in time.
async fn apply_deadline(ctx: &JobContext) -> Result<Completed, JobError> {
    let id: ApprovalId = serde_json::from_value(ctx.job.payload["approval_id"].clone())
        .map_err(|e| JobError::Permanent(format!("not an approval deadline job: {e}")))?;
    match approval::apply_deadline(&ctx.pool, &ctx.job.lease(), id).await {
        Ok((outcome, completed)) => {
            tracing::info!(approval_id = %id, ?outcome, "approval deadline");
            Ok(completed)
        }
        Err(ApprovalError::Queue(q)) => Err(JobError::Queue(q)),
        Err(ApprovalError::Db(d) | ApprovalError::Store(StoreError::Db(d))) => Err(JobError::Db(d)),
        Err(e) => Err(JobError::retry(e.to_string())),
    }
}

impl<A: Agent> JobHandler for EngineHandler<A> {
    fn capabilities(&self) -> Vec<String> {
        self.engine.capabilities()
    }

    async fn handle(&self, ctx: JobContext) -> Result<Completed, JobError> {
        // Both paths boxed: a phase waiting on its model holds only its own state.
        match ctx.job.kind.as_str() {
            PHASE_JOB_KIND => {
                let may_go_on = || ctx.may_go_on.now();
                let phase =
                    self.engine
                        .run_phase_job_going_on(&ctx.job, ctx.cancel.clone(), &may_go_on);
                Ok(Box::pin(phase).await?)
            }
            approval::DEADLINE_JOB_KIND => Box::pin(apply_deadline(&ctx)).await,
            webhooks::NOTIFICATION_JOB_KIND => {
                let fanned = webhooks::fan_out(&ctx.pool, &self.webhooks, &ctx.job);
                match Box::pin(fanned).await.map_err(webhook_error)? {
                    Some(completed) => Ok(completed),
                    // Nothing to deliver: completed with the worker's next batch.
                    None => Ok(ctx.complete_batched().await?),
                }
            }
            webhooks::DELIVERY_JOB_KIND => {
                let delivered = webhooks::deliver(&ctx.pool, &self.webhooks, &ctx.job);
                Box::pin(delivered).await.map_err(webhook_error)?;
                Ok(ctx.complete_batched().await?)
            }
            _ => Box::pin(Builtins.handle(ctx)).await,
        }
    }

    async fn maintain(&self) {
        match phasefleet::phase::fail_orphaned_runs(self.engine.pool()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(runs = n, "failed runs whose phase job was dead-lettered"),
            Err(e) => tracing::debug!(error = %e, "orphaned-run check failed"),
        }
    }
}
