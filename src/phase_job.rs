//! The payload of a phase job (which attempt of which round of which phase) and its
//! enqueueing. Below the flow modules: submit, advance, approval, retry and the phase
//! job itself all enqueue attempts through here.

use crate::ids::RunId;
use crate::queue::{self, NewJob, QueueError};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

pub const PHASE_JOB_KIND: &str = "phase";

/// Deliveries of one phase attempt before its job is dead-lettered (each lost worker
/// or transient failure spends one).
pub const PHASE_JOB_MAX_DELIVERIES: i32 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseJob {
    pub run_id: RunId,
    pub phase: String,
    /// 1, plus one per "revise" decision or operator retry.
    pub round: i32,
    /// 1, plus one per repair within the round.
    pub attempt: i32,
    /// The capability a worker needs to run it (`provider:NAME`), from the phase's row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<String>,
    /// How many times the run was parked for budget before this job: an attempt resumed
    /// after a top-up is a new job.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resume: i32,
    /// The run's W3C trace context: the attempt's span continues the run's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl PhaseJob {
    /// Attempt 1 of `round` of `phase`, whose jobs require `requires`.
    #[must_use]
    pub fn first_attempt(run_id: RunId, phase: &str, round: i32, requires: Option<&str>) -> Self {
        Self {
            run_id,
            phase: phase.to_owned(),
            round,
            attempt: 1,
            requires: requires.map(str::to_owned),
            resume: 0,
            traceparent: None,
        }
    }

    /// The same job carrying the run's trace context.
    #[must_use]
    pub fn traced(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    /// The repair attempt after this one.
    #[must_use]
    pub fn next_attempt(&self) -> Self {
        Self {
            attempt: self.attempt + 1,
            ..self.clone()
        }
    }

    /// The queue job, keyed so the same attempt is never enqueued twice.
    #[must_use]
    pub fn to_job(&self, queue: &str) -> NewJob {
        NewJob::new(
            PHASE_JOB_KIND,
            serde_json::to_value(self).unwrap_or_default(),
        )
        .queue(queue)
        .run_id(self.run_id)
        .unique_key(format!(
            "phase:{}:{}:r{}:a{}{}",
            self.run_id,
            self.phase,
            self.round,
            self.attempt,
            if self.resume > 0 {
                format!(":b{}", self.resume)
            } else {
                String::new()
            }
        ))
        .requires(self.requires.clone())
        .max_attempts(PHASE_JOB_MAX_DELIVERIES)
    }

    /// Enqueue this attempt on `queue_name`, inside the caller's transaction.
    ///
    /// # Errors
    /// [`QueueError`] from the enqueue.
    pub async fn enqueue(
        &self,
        conn: &mut PgConnection,
        queue_name: &str,
    ) -> Result<(), QueueError> {
        queue::enqueue(conn, &self.to_job(queue_name)).await?;
        Ok(())
    }
}
