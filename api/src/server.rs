//! Serving HTTP/1.1 with bounds no client can lift: at most `max_connections` open
//! connections (the next ones are closed as they arrive), request headers complete
//! within `header_read_timeout` or the connection is closed (slowloris), bodies arrive
//! within `body_timeout`. On shutdown, open connections finish their current request
//! (live event streams end with the shutdown token) for at most ten seconds.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What a client cannot exceed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// Defaults, overridden by `PHASEFLEET_MAX_CONNECTIONS`, `PHASEFLEET_HEADER_TIMEOUT_MS`
    /// and `PHASEFLEET_BODY_TIMEOUT_MS`.
    ///
    /// # Errors
    /// A message naming the variable that does not parse.
    pub fn from_env() -> Result<Self, String> {
        let read = |name: &str| -> Result<Option<u64>, String> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|e| format!("{name}: {e}")),
                Err(_) => Ok(None),
            }
        };
        let d = Self::default();
        Ok(Self {
            max_connections: read("PHASEFLEET_MAX_CONNECTIONS")?.map_or(d.max_connections, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
            header_read_timeout: read("PHASEFLEET_HEADER_TIMEOUT_MS")?
                .map_or(d.header_read_timeout, Duration::from_millis),
            body_timeout: read("PHASEFLEET_BODY_TIMEOUT_MS")?
                .map_or(d.body_timeout, Duration::from_millis),
        })
    }
}

/// Accept connections on `listener` and serve `app` on each until `shutdown` fires.
///
/// # Errors
/// Never in practice; accept errors (out of file descriptors) are logged and waited out.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("phasefleet_api_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open ten seconds after shutdown; closing them");
        }
    }
    Ok(())
}
