//! The production handler: phase jobs go to the engine, built-in diagnostic kinds to
//! [`Builtins`]. Housekeeping fails runs whose phase job was dead-lettered.

use crate::builtin::Builtins;
use crate::handler::{JobContext, JobError, JobHandler};
use phasefleet::agent::Agent;
use phasefleet::phase::{Engine, PHASE_JOB_KIND, PhaseError};
use phasefleet::queue::Completed;
use phasefleet::store::StoreError;

pub struct EngineHandler<A> {
    engine: Engine<A>,
}

impl<A: Agent> EngineHandler<A> {
    pub fn new(engine: Engine<A>) -> Self {
        Self { engine }
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

impl<A: Agent> JobHandler for EngineHandler<A> {
    fn capabilities(&self) -> Vec<String> {
        self.engine.capabilities()
    }

    async fn handle(&self, ctx: JobContext) -> Result<Completed, JobError> {
        // Both paths boxed: a phase waiting on its model holds only its own state.
        if ctx.job.kind == PHASE_JOB_KIND {
            let phase = self.engine.run_phase_job(&ctx.job, ctx.cancel.clone());
            Ok(Box::pin(phase).await?)
        } else {
            Box::pin(Builtins.handle(ctx)).await
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
