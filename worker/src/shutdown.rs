//! SIGTERM/SIGINT handling: the first signal starts a graceful shutdown, the second
//! skips the rest of the grace period.

use tokio_util::sync::CancellationToken;

/// Tokens fired by signals: `graceful` on the first SIGTERM/SIGINT, `force` on the
/// second. The listening task ends when `force` fires.
#[derive(Debug, Clone)]
pub struct Signals {
    pub graceful: CancellationToken,
    pub force: CancellationToken,
}

/// Install the handlers.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn install() -> std::io::Result<Signals> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let signals = Signals {
        graceful: CancellationToken::new(),
        force: CancellationToken::new(),
    };
    let s = signals.clone();
    tokio::spawn(async move {
        for token in [&s.graceful, &s.force] {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!(force = token == &s.force, "shutdown signal received");
            token.cancel();
        }
    });
    Ok(signals)
}
