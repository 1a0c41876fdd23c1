//! LISTEN/NOTIFY. A trigger on `jobs` notifies [`JOBS_CHANNEL`] with the queue name
//! whenever a job becomes ready; a cancel notifies [`CANCEL_CHANNEL`] with the run (or
//! `job:<id>`) so the worker holding it stops at once. Both are hints: workers still
//! poll and read cancel requests on every heartbeat, so a lost notification (listener
//! reconnecting, server restart) only costs latency.

use crate::ids::{JobId, RunId};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const JOBS_CHANNEL: &str = "phasefleet_jobs";
pub const CANCEL_CHANNEL: &str = "phasefleet_cancel";

/// What a worker hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A job is ready on the worker's queue (or the listener reconnected: look again).
    JobReady,
    /// Stop the running job of this run.
    CancelRun(RunId),
    /// Stop this running job.
    CancelJob(JobId),
}

/// Tell workers, at commit, to stop running job `id`.
///
/// # Errors
/// Database errors.
pub async fn cancel_job(conn: &mut PgConnection, id: JobId) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CANCEL_CHANNEL)
        .bind(format!("job:{id}"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn parse(channel: &str, payload: &str, queue: &str) -> Option<Notice> {
    match channel {
        JOBS_CHANNEL if payload == queue || payload == "*" => Some(Notice::JobReady),
        CANCEL_CHANNEL => match payload.strip_prefix("job:") {
            Some(id) => id.parse().ok().map(|id| Notice::CancelJob(JobId(id))),
            None => payload.parse().ok().map(Notice::CancelRun),
        },
        _ => None,
    }
}

/// Hand the notices for `queue` to `on_notice` until `cancel` fires. Reconnects with
/// backoff on any error; never returns early.
pub async fn forward(
    pool: PgPool,
    queue: String,
    on_notice: impl Fn(Notice) + Send,
    cancel: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(err) => {
                tracing::debug!(error = %err, "listener connect failed");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(err) = listener.listen_all([JOBS_CHANNEL, CANCEL_CHANNEL]).await {
            tracing::debug!(error = %err, "LISTEN failed");
            continue;
        }
        delay = Duration::from_millis(100);
        // Look once after (re)connecting: anything sent while we were away was missed.
        on_notice(Notice::JobReady);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                msg = listener.try_recv() => match msg {
                    Ok(Some(n)) => {
                        if let Some(notice) = parse(n.channel(), n.payload(), &queue) {
                            on_notice(notice);
                        }
                    }
                    // Connection lost; try_recv reconnects on the next call.
                    Ok(None) => on_notice(Notice::JobReady),
                    Err(err) => {
                        tracing::debug!(error = %err, "listener error, reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse_per_channel() {
        let run = RunId::new();
        assert_eq!(parse(JOBS_CHANNEL, "q", "q"), Some(Notice::JobReady));
        assert_eq!(parse(JOBS_CHANNEL, "other", "q"), None);
        assert_eq!(
            parse(CANCEL_CHANNEL, &run.to_string(), "q"),
            Some(Notice::CancelRun(run))
        );
        assert_eq!(
            parse(CANCEL_CHANNEL, "job:42", "q"),
            Some(Notice::CancelJob(JobId(42)))
        );
        assert_eq!(parse(CANCEL_CHANNEL, "junk", "q"), None);
    }
}
