//! One blocking connection: the crate's async [`Client`] driven by a current-thread tokio runtime, behind a mutex.
//!
//! This is the only place that talks to the daemon; it adds no protocol of its own. It owns reconnection (a call
//! that finds the connection broken reconnects once and retries) and the per-call timeout. It knows nothing of C
//! types.
//!
//! SIGPIPE needs nothing here: the socket writes go out with `MSG_NOSIGNAL` (Rust's standard library, under mio
//! and tokio), so writing to a dead daemon fails with EPIPE instead of killing a C host that has not ignored the
//! signal (tests/it/cclient.rs's restart test runs such a host).

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use akidb::client::{Client, ClientError};
use tokio::runtime::Runtime;
use tokio::time::Instant;

use crate::status::{AkidbStatus, Failure};

/// The default time a call may take, connecting included (as the Python client's `timeout=60`).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection that callers on several threads share; calls are serialized on it.
pub(crate) struct Connection {
    path: PathBuf,
    state: Mutex<State>,
}

/// When a call must be done, and the limit it came from (for the message).
type Deadline = (Instant, Duration);

struct State {
    runtime: Runtime,
    /// None after a broken connection, until the next call reconnects.
    client: Option<Client>,
    /// None: no limit.
    timeout: Option<Duration>,
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
        let deadline = state.timeout.map(|limit| (Instant::now() + limit, limit));
        state.connect(&path, deadline)?;
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
        let mut state = self.lock();
        // One deadline for the whole call, reconnecting and retrying included.
        let deadline = state.timeout.map(|limit| (Instant::now() + limit, limit));
        let fresh = state.client.is_none();
        if fresh {
            state.connect(&self.path, deadline)?;
        }
        match state.run(&mut call, deadline) {
            Err(failure) if failure.is_broken_pipe() && !fresh => {
                state.connect(&self.path, deadline)?;
                state.run(&mut call, deadline)
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
    fn connect(&mut self, path: &std::path::Path, deadline: Option<Deadline>) -> Result<(), Failure> {
        self.client = None;
        let client = self.runtime.block_on(before(deadline, Client::connect(path)))?;
        self.client = Some(client);
        Ok(())
    }

    /// Runs one call on the current client; drops the client when the failure leaves it unusable.
    fn run<T>(
        &mut self,
        call: &mut impl AsyncFnMut(&mut Client) -> Result<T, ClientError>,
        deadline: Option<Deadline>,
    ) -> Result<T, Failure> {
        let client = self.client.as_mut().expect("connected by the caller");
        let result = self.runtime.block_on(before(deadline, call(client)));
        if let Err(failure) = &result {
            if failure.breaks_connection() {
                self.client = None;
            }
        }
        result
    }
}

/// Runs `future` until the deadline, if any.
async fn before<T>(deadline: Option<Deadline>, future: impl Future<Output = Result<T, ClientError>>) -> Result<T, Failure> {
    match deadline {
        None => Ok(future.await?),
        Some((at, limit)) => match tokio::time::timeout_at(at, future).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(Failure::new(
                AkidbStatus::AKIDB_TIMEOUT,
                format!("no reply within {} ms", limit.as_millis()),
            )),
        },
    }
}
