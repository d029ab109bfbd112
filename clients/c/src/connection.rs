//! One blocking connection: the crate's async [`Client`] driven by a current-thread tokio runtime, behind a mutex.
//!
//! This is the only place that talks to the daemon; it adds no protocol of its own. It owns reconnection (a call
//! that finds the connection broken reconnects once and retries), the per-call timeout, and keeping SIGPIPE away
//! from the host process. It knows nothing of C types.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use akidb::client::{Client, ClientError};
use tokio::runtime::Runtime;

use crate::status::{AkidbStatus, Failure};

/// The default time a call may take, connecting included (as the Python client's `timeout=60`).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection that callers on several threads share; calls are serialized on it.
pub(crate) struct Connection {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    runtime: Runtime,
    /// None after a broken connection, until the next call reconnects.
    client: Option<Client>,
    /// None: no limit.
    timeout: Option<Duration>,
}

/// Blocks SIGPIPE on the calling thread while it is alive, and swallows a SIGPIPE raised meanwhile.
///
/// Writing to a socket whose daemon has died raises SIGPIPE, whose default action kills the process. Rust
/// programs ignore it from `main`, but a C or C++ host usually does not; the current-thread runtime does its I/O on
/// the calling thread, so blocking the signal there for the duration of a call is enough (the write then fails
/// with EPIPE, which the client reports).
struct SigpipeGuard {
    old_mask: libc::sigset_t,
    was_pending: bool,
}

// === impl Connection ===

impl Connection {
    /// Connects to `path` (eagerly, so that a wrong path is reported at once).
    pub(crate) fn open(path: PathBuf) -> Result<Connection, Failure> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::new(AkidbStatus::AKIDB_IO, format!("cannot start the client's runtime: {e}")))?;
        let mut state = State {
            runtime,
            client: None,
            timeout: Some(DEFAULT_TIMEOUT),
        };
        state.connect(&path)?;
        Ok(Connection {
            path,
            state: Mutex::new(state),
        })
    }

    /// Sets the time limit of each call (None: none).
    pub(crate) fn set_timeout(&self, timeout: Option<Duration>) {
        self.lock().timeout = timeout;
    }

    /// Runs `call` on the connection, reconnecting first if an earlier call broke it. If the connection turns
    /// out to be broken (closed, or a write or read fails) and it was not made by this call, reconnects once and
    /// retries: every op is idempotent, and this is what makes a daemon restart invisible to the caller.
    pub(crate) fn call<T>(&self, mut call: impl AsyncFnMut(&mut Client) -> Result<T, ClientError>) -> Result<T, Failure> {
        let _sigpipe = SigpipeGuard::new();
        let mut state = self.lock();
        let fresh = state.client.is_none();
        if fresh {
            state.connect(&self.path)?;
        }
        match state.run(&mut call) {
            Err(failure) if failure.is_broken_pipe() && !fresh => {
                state.connect(&self.path)?;
                state.run(&mut call)
            }
            other => other,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held can only have left `client` mid-call: drop it, the next call reconnects.
        self.state.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            state.client = None;
            state
        })
    }
}

// === impl State ===

impl State {
    fn connect(&mut self, path: &std::path::Path) -> Result<(), Failure> {
        self.client = None;
        let timeout = self.timeout;
        let client = self.runtime.block_on(with_timeout(timeout, Client::connect(path)))?;
        self.client = Some(client);
        Ok(())
    }

    /// Runs one call on the current client; drops the client when the failure leaves it unusable.
    fn run<T>(&mut self, call: &mut impl AsyncFnMut(&mut Client) -> Result<T, ClientError>) -> Result<T, Failure> {
        let timeout = self.timeout;
        let client = self.client.as_mut().expect("connected by the caller");
        let result = self.runtime.block_on(with_timeout(timeout, call(client)));
        if let Err(failure) = &result {
            if failure.breaks_connection() {
                self.client = None;
            }
        }
        result
    }
}

async fn with_timeout<T>(timeout: Option<Duration>, future: impl Future<Output = Result<T, ClientError>>) -> Result<T, Failure> {
    match timeout {
        None => Ok(future.await?),
        Some(limit) => match tokio::time::timeout(limit, future).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(Failure::new(
                AkidbStatus::AKIDB_TIMEOUT,
                format!("no reply within {} ms", limit.as_millis()),
            )),
        },
    }
}

// === impl SigpipeGuard ===

impl SigpipeGuard {
    fn new() -> SigpipeGuard {
        // SAFETY: the sigset_t values are plain data initialised by sigemptyset/sigaddset before use, and
        // pthread_sigmask/sigpending only read and write them; they affect only the calling thread.
        unsafe {
            let mut pipe: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut pipe);
            libc::sigaddset(&mut pipe, libc::SIGPIPE);
            let mut pending: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut pending);
            let was_pending = libc::sigismember(&pending, libc::SIGPIPE) == 1;
            let mut old_mask: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, &mut old_mask);
            SigpipeGuard { old_mask, was_pending }
        }
    }
}

impl Drop for SigpipeGuard {
    fn drop(&mut self) {
        // SAFETY: as in `new`; sigtimedwait with a zero timeout only dequeues a SIGPIPE this thread raised while
        // it was blocked (never one that was pending before), so unblocking does not deliver it.
        unsafe {
            let mut pipe: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut pipe);
            libc::sigaddset(&mut pipe, libc::SIGPIPE);
            if !self.was_pending {
                let mut pending: libc::sigset_t = std::mem::zeroed();
                libc::sigpending(&mut pending);
                if libc::sigismember(&pending, libc::SIGPIPE) == 1 {
                    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                    libc::sigtimedwait(&pipe, std::ptr::null_mut(), &zero);
                }
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut());
        }
    }
}
