//! Wiring: configuration in, a serving daemon out. Loads the model and ONNX Runtime, binds the socket, starts the
//! actors, reports readiness, and runs the graceful stop when `shutdown` resolves.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ort::environment::Environment;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::actors::{self, DaemonState, Phase, ServedModel, Started, SupervisorArgs};
use crate::config::{Config, EpKind};
use crate::engine::{self, EngineError, ModelInfo, TextTokenizer};
use crate::server::{self, Bound, ConnectionPolicy};
use crate::systemd;

/// Why the daemon could not run; each maps to an exit code in `main`.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The model directory is missing or inconsistent.
    #[error("{0}")]
    Model(EngineError),
    /// The model's graph cannot be served (found while building its session on a device).
    #[error("{0}")]
    ModelGraph(String),
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
///
/// The daemon's life in its steps: load the models, choose the runtime environment, bind the listeners, start the
/// actors, serve (warming up, then ready) until stopped, stop.
pub async fn run(config: Config, shutdown: impl Future<Output = &'static str>) -> Result<(), DaemonError> {
    let models = load_models(&config)?;
    let (config, env) = runtime_environment(config, models.len())?;
    let listeners = bind_listeners(&config).await?;
    let state = daemon_state(&config, &models);
    let started = actors::start(SupervisorArgs {
        config: config.clone(),
        env,
        models: models.into(),
        state: state.clone(),
    })
    .await;
    let serving = Serving::start(&config, listeners, &started);

    tokio::pin!(shutdown);
    let reason = match warm_up(&started, &mut shutdown).await {
        WarmUp::Failed(error) => {
            serving.abandon(started).await;
            return Err(error);
        }
        WarmUp::Interrupted(reason) => reason,
        WarmUp::Ready => {
            announce_ready(&state);
            serve_until_stopped(&started, &state, shutdown).await
        }
    };
    stop(&config, reason, &state, serving, started).await;
    Ok(())
}

/// Reads every served model's directory and tokenizer, warning about limits the directory asks for.
fn load_models(config: &Config) -> Result<Vec<ServedModel>, DaemonError> {
    let mut models = Vec::new();
    for model_config in config.effective_models() {
        let model = ModelInfo::load(&model_config).map_err(DaemonError::Model)?;
        if let Some(said) = model.max_tokens_uncapped {
            tracing::warn!(
                model = %model.name,
                directory_says = said,
                serving = model.max_tokens,
                "the model directory's max_seq_length is capped (set model.max_seq_length to serve longer inputs)"
            );
        }
        if let Some(warning) = model.long_input_warning() {
            tracing::warn!(model = %model.name, "{warning}");
        }
        let tokenizer = Arc::new(TextTokenizer::load(&model).map_err(DaemonError::Model)?);
        models.push(ServedModel {
            info: Arc::new(model),
            tokenizer,
        });
    }
    Ok(models)
}

/// Loads ONNX Runtime and creates its one environment. One CPU device holding several models gets one thread pool
/// shared by its sessions (each session's own pool would spin against the running session while idle; see
/// `engine::environment_with_shared_pool`); the returned config says so on that device.
fn runtime_environment(mut config: Config, n_models: usize) -> Result<(Config, Environment), DaemonError> {
    let library = engine::ort_library_path(&config.ort);
    let shared_pool = match config.effective_devices().as_slice() {
        [device] if device.ep == EpKind::Cpu && n_models > 1 => Some((device.intra_threads, device.spin.unwrap_or(true))),
        _ => None,
    };
    let env = match shared_pool {
        Some((threads, spin)) => {
            let mut device = config.effective_devices().remove(0);
            device.shared_pool = true;
            config.devices = vec![device];
            engine::environment_with_shared_pool(&library, threads, spin)
        }
        None => engine::environment(&library),
    }
    .map_err(DaemonError::Runtime)?;
    Ok((config, env))
}

/// The bound listeners: the Unix socket (bound here, or passed by systemd) and the HTTP port when configured.
struct Listeners {
    socket: Bound,
    http: Option<TcpListener>,
}

/// Binds the listeners before anything is started, so that a taken socket or port fails the start at once.
async fn bind_listeners(config: &Config) -> Result<Listeners, DaemonError> {
    let socket = match systemd::activated_socket() {
        Ok(Some(fd)) => {
            tracing::info!("serving the socket systemd passed (socket activation)");
            server::bind_activated(fd)?
        }
        Ok(None) => server::bind(&config.socket_path(), config.server.socket_mode)?,
        Err(source) => {
            return Err(DaemonError::Socket(server::ServeError::Bind {
                path: "<LISTEN_FDS>".into(),
                source,
            }))
        }
    };
    let http = match config.http.listen_addr() {
        Some(addr) => Some(
            server::http::bind(addr)
                .await
                .map_err(|source| DaemonError::Socket(server::ServeError::HttpBind { addr, source }))?,
        ),
        None => None,
    };
    Ok(Listeners { socket, http })
}

/// The state every layer reads: the served models, which devices serve each, the cache, the realtime bound.
fn daemon_state(config: &Config, models: &[ServedModel]) -> Arc<DaemonState> {
    let devices = config.effective_devices();
    let kinds: Vec<String> = devices.iter().map(|d| d.ep.to_string()).collect();
    let infos: Vec<Arc<ModelInfo>> = models.iter().map(|m| m.info.clone()).collect();
    let names: Vec<String> = infos.iter().map(|m| m.name.clone()).collect();
    let largest_dim = infos.iter().map(|m| m.dim).max().unwrap_or(0);
    let cache = Arc::new(crate::cache::EmbedCache::new(config.cache.max_bytes, largest_dim, names.clone()));
    let model_devices: Vec<Vec<usize>> = config
        .effective_models()
        .iter()
        .map(|m| m.devices.clone().unwrap_or_else(|| (0..devices.len()).collect()))
        .collect();
    let state = Arc::new(DaemonState::new(infos, model_devices, &kinds, cache));
    state
        .realtime_bound_ms
        .store(config.batcher.realtime_max_wait_ms, Ordering::Relaxed);
    tracing::info!(
        socket = %config.socket_path().display(), models = ?names, devices = ?kinds, ort = %engine::ort_version(),
        "akidbd starting"
    );
    systemd::status(&format!("warming up {} device(s)", devices.len()));
    state
}

/// The listeners' tasks, serving from the start (requests wait for the warm-up), and the token that stops them.
struct Serving {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Serving {
    fn start(config: &Config, listeners: Listeners, started: &Started) -> Serving {
        let stop = CancellationToken::new();
        let policy = ConnectionPolicy::from_config(&config.server, config.batcher.max_batch_tokens);
        let server_config = config.server.clone();
        let http_task = listeners.http.map(|listener| {
            let (handle, stop) = (started.handle.clone(), stop.clone());
            let (http, server) = (config.http.clone(), config.server.clone());
            tracing::info!(addr = ?config.http.listen, "serving HTTP (OpenAI-compatible /v1/embeddings, /health, /metrics)");
            tokio::spawn(async move { server::http::serve(listener, handle, &http, &server, stop).await })
        });
        let (handle, task_stop) = (started.handle.clone(), stop.clone());
        let task = tokio::spawn(async move {
            server::serve(listeners.socket, handle, &server_config, policy, task_stop).await;
            if let Some(http_task) = http_task {
                let _ = http_task.await;
            }
        });
        Serving { stop, task }
    }

    /// A start that failed: close the listeners and stop the actors at once.
    async fn abandon(self, started: Started) {
        self.stop.cancel();
        let _ = self.task.await;
        started.stop(Duration::from_secs(2)).await;
    }
}

/// How the warm-up ended.
enum WarmUp {
    /// Every device is warm.
    Ready,
    /// A device failed to start; the daemon cannot serve.
    Failed(DaemonError),
    /// A stop was asked for first (the reason).
    Interrupted(&'static str),
}

/// Waits until every device is warm, or a stop is asked for; meanwhile keeps asking systemd for time, since
/// TensorRT may build engines for minutes.
async fn warm_up(started: &Started, shutdown: &mut Pin<&mut impl Future<Output = &'static str>>) -> WarmUp {
    let extender = tokio::spawn(async {
        loop {
            systemd::extend_start_timeout(Duration::from_secs(30), "warming up: building or loading engines");
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    });
    let outcome = tokio::select! {
        ready = started.wait_ready() => match ready {
            Ok(()) => WarmUp::Ready,
            Err((message, true)) => WarmUp::Failed(DaemonError::ModelGraph(message)),
            Err((message, false)) => WarmUp::Failed(DaemonError::Device(message)),
        },
        reason = shutdown.as_mut() => WarmUp::Interrupted(reason),
    };
    extender.abort();
    outcome
}

/// Marks the daemon ready and tells systemd, warning when the realtime bound cannot hold on this device.
fn announce_ready(state: &DaemonState) {
    // Trimmed before the first request can arrive: the trim holds the allocator's locks for milliseconds.
    crate::memory::release_free_memory();
    state.set_phase(Phase::Ready);
    let realtime = state.realtime_status();
    if !realtime.achievable {
        tracing::warn!(
            bound_ms = realtime.bound_ms,
            smallest_batch_ms = realtime.smallest_batch_ms,
            achievable_ms = realtime.achievable_ms,
            "batcher.realtime_max_wait_ms cannot hold on this model and device: one short input alone takes \
             longer (status.realtime says what to expect)"
        );
    }
    let status = state.status();
    let names: Vec<&str> = status.models.iter().map(|m| m.name.as_str()).collect();
    let line = format!("ready: {} device(s), model(s) {}", status.devices.len(), names.join(", "));
    tracing::info!("{line}");
    systemd::ready(&line);
}

/// Serves, feeding the watchdog, until a stop is asked for; returns its reason.
async fn serve_until_stopped(
    started: &Started,
    state: &Arc<DaemonState>,
    shutdown: Pin<&mut impl Future<Output = &'static str>>,
) -> &'static str {
    let keeper = tokio::spawn(keep_alive(started.clone_for_heartbeat(), state.clone()));
    let reason = shutdown.await;
    keeper.abort();
    reason
}

/// The graceful stop: no new connections, in-flight requests get the grace period (work that would run past it is
/// cut short before its end, a fifth of it, at least a second, at most half, so that its requests are answered
/// `shutting_down` before the connections close), then the actors stop.
async fn stop(config: &Config, reason: &'static str, state: &DaemonState, serving: Serving, started: Started) {
    tracing::info!(reason, "stopping");
    state.set_phase(Phase::Stopping);
    systemd::stopping();
    serving.stop.cancel();
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let margin = (grace / 5).max(Duration::from_secs(1)).min(grace / 2);
    let cutter = started.work_stopper();
    let cut = tokio::spawn(async move {
        tokio::time::sleep(grace - margin).await;
        cutter.stop_work().await;
    });
    let _ = serving.task.await;
    cut.abort();
    started.stop(Duration::from_millis(config.server.shutdown_grace_ms.max(1000))).await;
    tracing::info!("stopped");
}

/// While serving: feeds systemd's watchdog only while every device answers its heartbeat (so a hung device gets
/// the service restarted), and refreshes the status line.
async fn keep_alive(devices: actors::Heartbeats, state: Arc<DaemonState>) {
    let watchdog = systemd::watchdog_period();
    let tick = watchdog.map_or(Duration::from_secs(10), |period| (period / 2).min(Duration::from_secs(10)));
    let mut last_status = tokio::time::Instant::now();
    // Batches counted at the previous tick, and at the last trim.
    let (mut seen, mut trimmed_at) = (0, 0);
    loop {
        tokio::time::sleep(tick).await;
        // Idle for a whole tick after some work: give the memory the work freed back.
        let batches = state.batches.load(Ordering::Relaxed);
        if batches == seen && batches != trimmed_at && state.in_flight.load(Ordering::Relaxed) == 0 {
            // Off the I/O threads: a trim takes milliseconds, and a request may arrive meanwhile.
            tokio::task::spawn_blocking(crate::memory::release_free_memory);
            trimmed_at = batches;
        }
        seen = batches;
        if watchdog.is_some() && devices.all_alive(tick).await {
            systemd::watchdog();
        }
        if last_status.elapsed() >= Duration::from_secs(10) {
            last_status = tokio::time::Instant::now();
            let status = state.status();
            let ready = status.devices.iter().filter(|d| d.state == "ready" || d.state == "busy").count();
            systemd::status(&format!(
                "{}: {ready} device(s) serving, {:.0} req/s",
                status.status, status.throughput.requests_per_s
            ));
        }
    }
}
