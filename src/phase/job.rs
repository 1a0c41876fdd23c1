//! The payload of a phase job: which attempt of which round of which phase.

use crate::ids::RunId;
use crate::queue::NewJob;
use serde::{Deserialize, Serialize};

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
