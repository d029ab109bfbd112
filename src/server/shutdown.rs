//! Signals: SIGTERM (from systemd) and SIGINT both start a graceful stop.

use tokio::signal::unix::{signal, SignalKind};

/// Resolves at the first SIGTERM or SIGINT.
pub(crate) async fn signal_received() -> &'static str {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail in a tokio runtime");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler cannot fail in a tokio runtime");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
