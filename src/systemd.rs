//! systemd notifications: READY, STATUS, STOPPING. Every call is a no-op outside systemd (no NOTIFY_SOCKET).

use sd_notify::NotifyState;

/// Tells systemd the daemon is ready (every inference device is warm).
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the status line `systemctl status` shows.
pub(crate) fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Tells systemd the daemon is stopping.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "could not notify systemd");
    }
}
