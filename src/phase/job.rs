//! The payload of a phase job: which attempt of which round of which phase.

use crate::ids::RunId;
use crate::queue::{self, NewJob, QueueError};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

pub const PHASE_JOB_KIND: &str = "phase";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseJob {
    pub run_id: RunId,
    pub phase: String,
    /// 1, plus one per "revise" decision.
    pub round: i32,
    /// 1, plus one per repair within the round.
    pub attempt: u32,
}

impl PhaseJob {
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
            "phase:{}:{}:r{}:a{}",
            self.run_id, self.phase, self.round, self.attempt
        ))
        .max_attempts(5)
    }
}

/// Enqueue attempt 1 of `round` of `phase` (a run's first phase, the next phase, a
/// revision or an operator's retry), inside the caller's transaction.
///
/// # Errors
/// [`QueueError`] from the enqueue.
pub async fn enqueue_first_attempt(
    conn: &mut PgConnection,
    run_id: RunId,
    phase: &str,
    round: i32,
    queue_name: &str,
) -> Result<(), QueueError> {
    let job = PhaseJob {
        run_id,
        phase: phase.to_owned(),
        round,
        attempt: 1,
    };
    queue::enqueue(conn, &job.to_job(queue_name)).await?;
    Ok(())
}
