//! Wiring: configuration in, a serving daemon out. Loads the model and ONNX Runtime, binds the socket, starts the
//! actors, reports readiness, and runs the graceful stop when `shutdown` resolves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::actors::{self, DaemonState, Phase, SupervisorArgs};
use crate::config::Config;
use crate::engine::{self, EngineError, ModelInfo, TextTokenizer};
use crate::server::{self, ConnectionPolicy};
use crate::systemd;

/// Why the daemon could not run; each maps to an exit code in `main`.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The model directory is missing or inconsistent.
    #[error("{0}")]
    Model(EngineError),
    /// ONNX Runtime could not be loaded.
    #[error("{0}")]
    Runtime(EngineError),
    /// The socket could not be bound, or another daemon owns it.
    #[error("{0}")]
    Socket(#[from] server::ServeError),
    /// A device could not be started or warmed up.
    #[error("{0}")]
    Device(String),
}

/// Runs the daemon until `shutdown` resolves (with the name of what asked for it), then stops gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = &'static str>) -> Result<(), DaemonError> {
    let model = ModelInfo::load(&config.model).map_err(DaemonError::Model)?;
    let library = engine::ort_library_path(&config.ort);
    let env = engine::environment(&library).map_err(DaemonError::Runtime)?;
    let tokenizer = Arc::new(TextTokenizer::load(&model).map_err(DaemonError::Model)?);
    let socket = config.socket_path();
    let bound = server::bind(&socket, config.server.socket_mode)?;
    let devices = config.effective_devices();
    let kinds: Vec<String> = devices.iter().map(|d| d.ep.to_string()).collect();
    let state = Arc::new(DaemonState::new(model.clone(), &kinds));
    tracing::info!(socket = %socket.display(), model = %model.name, dim = model.dim, devices = ?kinds, ort = %engine::ort_version(), "akidbd starting");
    systemd::status(&format!("warming up {} device(s)", devices.len()));

    let started = actors::start(SupervisorArgs {
        config: config.clone(),
        env,
        model,
        tokenizer,
        state: state.clone(),
    })
    .await;
    let stop = CancellationToken::new();
    let policy = ConnectionPolicy::from_config(&config.server, config.batcher.max_batch_tokens);
    let server_config = config.server.clone();
    let server_task = tokio::spawn({
        let (handle, stop) = (started.handle.clone(), stop.clone());
        async move { server::serve(bound, handle, &server_config, policy, stop).await }
    });

    tokio::pin!(shutdown);
    let reason = tokio::select! {
        ready = started.wait_ready() => {
            if let Err(message) = ready {
                stop.cancel();
                let _ = server_task.await;
                started.stop(Duration::from_secs(2)).await;
                return Err(DaemonError::Device(message));
            }
            let status = format!("ready: {} device(s), model {}", kinds.len(), state.model.name);
            tracing::info!("{status}");
            systemd::ready(&status);
            shutdown.await
        }
        reason = &mut shutdown => reason,
    };

    tracing::info!(reason, "stopping");
    state.set_phase(Phase::Stopping);
    systemd::stopping();
    stop.cancel();
    let _ = server_task.await;
    started.stop(Duration::from_millis(config.server.shutdown_grace_ms.max(1000))).await;
    tracing::info!("stopped");
    Ok(())
}
