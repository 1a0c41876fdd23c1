//! Built-in diagnostic job kinds, used by smoke tests and benchmarks:
//! `noop` completes at once; `sleep` waits `payload.ms` milliseconds (interruptible;
//! `payload.ms_by_attempt`, a list, sets it per delivery, so a test can make only the
//! first delivery slow);
//! `fail` returns a retryable error every time (to exercise backoff and dead-letter), or
//! only until `payload.until_unix_ms` (so a dead-lettered job can later succeed).

use crate::handler::{JobContext, JobError, JobHandler};
use phasefleet::queue::Completed;
use std::time::Duration;

/// Handles the built-in kinds; unknown kinds are dead-lettered with a clear error.
#[derive(Debug, Clone, Copy, Default)]
pub struct Builtins;

impl Builtins {
    /// True when `kind` is one of the built-in kinds.
    #[must_use]
    pub fn handles(kind: &str) -> bool {
        matches!(kind, "noop" | "sleep" | "fail")
    }
}

impl JobHandler for Builtins {
    async fn handle(&self, ctx: JobContext) -> Result<Completed, JobError> {
        match ctx.job.kind.as_str() {
            "noop" => {}
            "sleep" => {
                let p = &ctx.job.payload;
                let nth = usize::try_from(ctx.job.attempts.saturating_sub(1)).unwrap_or(0);
                let ms = p
                    .get("ms_by_attempt")
                    .and_then(|v| v.get(nth))
                    .or_else(|| p.get("ms"))
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(100);
                tokio::select! {
                    () = ctx.cancel.cancelled() => return Err(JobError::Interrupted),
                    () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                }
            }
            "fail" => {
                let until = ctx
                    .job
                    .payload
                    .get("until_unix_ms")
                    .and_then(serde_json::Value::as_i64);
                if until.is_none_or(|u| chrono::Utc::now().timestamp_millis() < u) {
                    return Err(JobError::retry(
                        "job kind `fail` fails (until its `until_unix_ms`)",
                    ));
                }
            }
            other => {
                return Err(JobError::Permanent(format!(
                    "no handler for job kind {other:?} on this worker"
                )));
            }
        }
        // No effects to share a transaction with: complete in the worker's batch.
        Ok(ctx.complete_batched().await?)
    }
}
