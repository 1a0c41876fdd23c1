//! LISTEN/NOTIFY wake-ups. A trigger on `jobs` notifies [`JOBS_CHANNEL`] with the queue
//! name whenever a job becomes ready; workers treat it as a hint and still poll, so a
//! lost notification (listener reconnecting, server restart) only costs latency.

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const JOBS_CHANNEL: &str = "phasefleet_jobs";

/// Forward notifications for `queue` on `channel` to `wake` until `cancel` fires.
/// Reconnects with backoff on any error; never returns early.
pub async fn forward(
    pool: PgPool,
    channel: &'static str,
    queue: String,
    wake: Arc<Notify>,
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
        if let Err(err) = listener.listen(channel).await {
            tracing::debug!(error = %err, "LISTEN failed");
            continue;
        }
        delay = Duration::from_millis(100);
        // Wake once after (re)connecting: anything sent while we were away was missed.
        wake.notify_one();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                msg = listener.try_recv() => match msg {
                    Ok(Some(n)) => {
                        if n.payload() == queue || n.payload() == "*" {
                            wake.notify_one();
                        }
                    }
                    Ok(None) => {
                        // connection lost; try_recv reconnects on the next call
                        wake.notify_one();
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "listener error, reconnecting");
                        break;
                    }
                }
            }
        }
    }
}
