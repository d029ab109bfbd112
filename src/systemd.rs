//! systemd integration: READY, STATUS, EXTEND_TIMEOUT_USEC, WATCHDOG and STOPPING notifications, and socket
//! activation (LISTEN_FDS). Every call is a no-op outside systemd (no NOTIFY_SOCKET, no LISTEN_PID).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the daemon is ready (every inference device is warm).
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the status line `systemctl status` shows.
pub(crate) fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Asks systemd for more start-up time (TensorRT engine builds can take minutes).
pub(crate) fn extend_start_timeout(by: Duration, status: &str) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec), NotifyState::Status(status)]);
}

/// Keeps the watchdog fed.
pub(crate) fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The watchdog period systemd asked for (WATCHDOG_USEC), if any.
pub(crate) fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Tells systemd the daemon is stopping.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The listening socket systemd passed (socket activation: LISTEN_FDS with LISTEN_PID = this process), if any.
/// Only the first one is used; call once.
#[allow(unsafe_code)]
pub(crate) fn activated_socket() -> io::Result<Option<OwnedFd>> {
    let mut fds = sd_notify::listen_fds()?;
    let Some(fd) = fds.next() else { return Ok(None) };
    // SAFETY: `listen_fds` checked that LISTEN_PID is this process, so systemd opened `fd` (3) for us and nothing
    // else in the process owns it; this is the only place that takes it, once, at start-up.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "could not notify systemd");
    }
}
