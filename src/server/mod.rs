//! The Unix socket server: binding, the accept loop with its connection limit, and peer credential checks.
//!
//! Each connection runs in [`connection`]; the optional OpenAI-compatible HTTP surface, a second transport onto
//! the same requests, lives in [`http`]; signals and the graceful stop live in [`shutdown`]. The server turns
//! frames into requests and requests into calls on the actors' [`DaemonHandle`]; it never sees ONNX Runtime.

pub(crate) mod connection;
pub(crate) mod http;
pub(crate) mod rerank;
pub(crate) mod shutdown;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::traits::StreamCommon as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actors::DaemonHandle;
use crate::config::ServerConfig;
use crate::protocol::message::{encode, ErrorReply};
use crate::protocol::{write_frame, ErrorCode, FrameLimits};

/// Errors binding the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another daemon answers on the socket path.
    #[error("another akidbd is already running on {0}")]
    AlreadyRunning(PathBuf),
    /// The HTTP address could not be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    HttpBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// A bound socket, ready to serve.
pub(crate) struct Bound {
    listener: Listener,
    path: Option<PathBuf>,
}

/// Binds `path`: refuses if a live daemon answers there, replaces a stale socket file, sets the file mode.
pub(crate) fn bind(path: &Path, mode: u32) -> Result<Bound, ServeError> {
    let bind_error = |source: io::Error| ServeError::Bind {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::AlreadyRunning(path.to_owned()));
        }
        tracing::info!(path = %path.display(), "replacing a stale socket file");
        std::fs::remove_file(path).map_err(bind_error)?;
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(bind_error)?;
    }
    let name = path.to_fs_name::<GenericFilePath>().map_err(bind_error)?;
    let listener = ListenerOptions::new().name(name).create_tokio().map_err(bind_error)?;
    // The umask applies at bind time; set the configured mode explicitly.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_error)?;
    Ok(Bound {
        listener,
        path: Some(path.to_owned()),
    })
}

/// Serves a listening socket handed over by systemd (socket activation). The socket file belongs to systemd: it
/// is neither replaced nor removed here.
pub(crate) fn bind_activated(fd: std::os::fd::OwnedFd) -> Result<Bound, ServeError> {
    let uds = interprocess::os::unix::uds_local_socket::tokio::Listener::try_from(fd).map_err(|source| ServeError::Bind {
        path: PathBuf::from("<socket from systemd>"),
        source,
    })?;
    Ok(Bound {
        listener: Listener::from(uds),
        path: None,
    })
}

/// Limits and allow-lists every connection follows.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionPolicy {
    pub limits: FrameLimits,
    pub max_inputs: usize,
    pub max_pending_replies: usize,
    pub max_batch_tokens: usize,
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
}

impl ConnectionPolicy {
    pub fn from_config(config: &ServerConfig, max_batch_tokens: usize) -> ConnectionPolicy {
        ConnectionPolicy {
            limits: FrameLimits {
                max_frame_bytes: config.max_frame_bytes,
                read_timeout: Duration::from_millis(config.read_timeout_ms),
                idle_timeout: (config.idle_timeout_ms > 0).then(|| Duration::from_millis(config.idle_timeout_ms)),
            },
            max_inputs: config.max_inputs,
            max_pending_replies: config.max_pending_replies,
            max_batch_tokens,
            allowed_uids: config.allowed_uids.clone(),
            allowed_gids: config.allowed_gids.clone(),
        }
    }

    /// Whether a peer may talk to the daemon (root always may; empty lists allow everyone).
    fn admits(&self, uid: Option<u32>, gid: Option<u32>) -> bool {
        if uid == Some(0) || (self.allowed_uids.is_empty() && self.allowed_gids.is_empty()) {
            return true;
        }
        uid.is_some_and(|u| self.allowed_uids.contains(&u)) || gid.is_some_and(|g| self.allowed_gids.contains(&g))
    }
}

/// How long a connection beyond `max_connections` waits for a free slot before it is closed.
const SLOT_WAIT: Duration = Duration::from_secs(1);

/// Serves connections until `stop` is cancelled, then stops accepting and waits for open connections to finish
/// their in-flight requests; connections still open when `grace` runs out are cancelled.
pub(crate) async fn serve(bound: Bound, handle: DaemonHandle, config: &ServerConfig, policy: ConnectionPolicy, stop: CancellationToken) {
    let policy = Arc::new(policy);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let tracker = TaskTracker::new();
    let close_all = CancellationToken::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = bound.listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let slot = match admit(&slots, &stop, &handle, "socket", config.max_connections).await {
            Admission::Admitted(slot) => slot,
            Admission::Refused => continue,
            Admission::Stopping => break,
        };
        let (handle, policy, close, stopping) = (handle.clone(), policy.clone(), close_all.child_token(), stop.clone());
        tracker.spawn(async move {
            admit_and_serve(stream, handle, policy, close, stopping).await;
            drop(slot);
        });
    }
    // Stop accepting: the listener goes (and with it the socket file) before in-flight work drains.
    drop(bound);
    tracker.close();
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            grace_ms = config.shutdown_grace_ms,
            "grace period over; closing the remaining connections"
        );
        close_all.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    }
}

/// What [`admit`] decided for a new connection.
pub(crate) enum Admission {
    /// Serve it, holding this slot until it ends.
    Admitted(tokio::sync::OwnedSemaphorePermit),
    /// Over the connection limit: close it.
    Refused,
    /// The stop began meanwhile.
    Stopping,
}

/// A slot for a new connection of either transport. At the limit it waits a moment before refusing: peers that
/// just hung up free their slots as soon as their tasks see the end of file (a burst of short connections would
/// otherwise refuse the next client). Admitted connections are counted in `status`.
pub(crate) async fn admit(
    slots: &Arc<Semaphore>,
    stop: &CancellationToken,
    handle: &DaemonHandle,
    transport: &str,
    max: usize,
) -> Admission {
    let slot = tokio::select! {
        _ = stop.cancelled() => return Admission::Stopping,
        slot = tokio::time::timeout(SLOT_WAIT, slots.clone().acquire_owned()) => slot,
    };
    let Ok(Ok(slot)) = slot else {
        tracing::warn!(transport, max, "connection limit reached; closing a new connection");
        return Admission::Refused;
    };
    handle.state.connections.fetch_add(1, Ordering::Relaxed);
    Admission::Admitted(slot)
}

async fn admit_and_serve(
    stream: Stream,
    handle: DaemonHandle,
    policy: Arc<ConnectionPolicy>,
    close: CancellationToken,
    stopping: CancellationToken,
) {
    let creds = stream.peer_creds().ok();
    let uid = creds.as_ref().and_then(|c| c.euid());
    let gid = creds.as_ref().and_then(|c| c.egid());
    if !policy.admits(uid, gid) {
        tracing::warn!(?uid, ?gid, "peer not in allowed_uids/allowed_gids; refusing");
        let reply = ErrorReply::new(
            0,
            ErrorCode::PermissionDenied,
            format!("uid {uid:?} gid {gid:?} may not use this daemon"),
        );
        // Counted before the reply goes out, so that a client that saw the refusal finds it in `status`.
        handle
            .state
            .record_reply(None, Duration::ZERO, 0, 0, Some(ErrorCode::PermissionDenied));
        let mut stream = stream;
        let _ = tokio::time::timeout(Duration::from_secs(1), write_frame(&mut stream, &encode(&reply))).await;
        // Let the client finish sending its first request before closing, so that it reads the refusal instead of
        // failing its write with a broken pipe.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let mut sink = [0u8; 4096];
            let mut total = 0usize;
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                total += n;
                if n == 0 || total > 64 * 1024 {
                    break;
                }
            }
        })
        .await;
        return;
    }
    connection::run(stream, handle, policy, close, stopping).await;
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists() {
        let mut policy = ConnectionPolicy::from_config(&ServerConfig::default(), 1);
        assert!(policy.admits(Some(1000), Some(1000)), "empty lists admit everyone");
        policy.allowed_uids = vec![1000];
        assert!(policy.admits(Some(1000), Some(5)));
        assert!(!policy.admits(Some(1001), Some(5)));
        assert!(policy.admits(Some(0), Some(0)), "root is always admitted");
        policy.allowed_gids = vec![5];
        assert!(policy.admits(Some(1001), Some(5)));
        assert!(!policy.admits(None, None));
    }
}
