//! Shared daemon state: lifecycle phase, per-device figures, counters and latency windows.
//!
//! Written by the actors and the server, read by `health` and `status` without asking any actor, so that a busy
//! or restarting actor never delays an operator's question. Everything is atomics or short critical sections.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::ModelInfo;
use crate::protocol::message::{
    CacheStats, Counters, DeviceStatus, ModelServeStatus, ModelStatus, Percentiles, RealtimeStatus, SensorStatus, SessionStatus,
    StatusBody, ThermalStatus, Throughput,
};
use crate::protocol::{ErrorCode, Priority};

/// How long latency samples and throughput are kept for `status`.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Most samples kept per class in the window.
const MAX_SAMPLES: usize = 100_000;

/// The daemon's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Warming up: not ready for embeddings yet.
    Starting = 0,
    /// Every device serves.
    Ready = 1,
    /// Some device failed; the others serve (or none, and embed answers `unavailable`).
    Degraded = 2,
    /// Shutting down.
    Stopping = 3,
}

/// State of one inference device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum DeviceState {
    Starting = 0,
    Ready = 1,
    Busy = 2,
    Restarting = 3,
    Failed = 4,
}

/// Figures of one inference device.
#[derive(Debug)]
pub(crate) struct DeviceShared {
    pub index: usize,
    pub kind: String,
    pub ep: Mutex<String>,
    pub precision: Mutex<Option<String>>,
    /// Stops the session run in progress (set by the inference actor; used on a stuck batch).
    pub stopper: Mutex<Option<crate::engine::RunStopper>>,
    /// Per model, how long one short input alone takes on this device once warm (µs; 0 until measured or when
    /// the device does not hold the model).
    pub smallest_batch_us: Vec<AtomicU64>,
    /// The sessions it holds: model index, the resident memory its build and warm-up added (bytes), precision.
    pub sessions: Mutex<Vec<(usize, u64, String)>>,
    /// When the batch now running would be declared stuck (None while idle): the batcher's judgement of working
    /// vs hung, which the systemd watchdog follows too.
    pub stuck_deadline: Mutex<Option<Instant>>,
    pub state: AtomicU8,
    pub restarts: AtomicU64,
    pub batches: AtomicU64,
    pub inputs: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    pub sensors: Mutex<Option<SensorStatus>>,
}

/// Everything `status` reports.
#[derive(Debug)]
pub(crate) struct DaemonState {
    started: Instant,
    phase: AtomicU8,
    /// The served models, the default one first (the same descriptions the actors hold).
    pub models: Vec<Arc<ModelInfo>>,
    /// Per model, the indexes of the devices that hold a session of it.
    pub model_devices: Vec<Vec<usize>>,
    pub devices: Vec<DeviceShared>,
    pub queued: [AtomicU64; 3],
    /// Per model, queued inputs per class.
    pub queued_by_model: Vec<[AtomicU64; 3]>,
    /// Per class, the batcher's estimate (µs) of how long an input queued now would wait before it starts; 0
    /// while there is no estimate. Requests whose deadline falls before that are answered without being queued.
    pub backlog_us: [AtomicU64; 3],
    requests: AtomicU64,
    inputs: AtomicU64,
    tokens: AtomicU64,
    pub batches: AtomicU64,
    batch_inputs: AtomicU64,
    padded_tokens: AtomicU64,
    real_tokens: AtomicU64,
    pub connections: AtomicU64,
    pub in_flight: AtomicU64,
    /// Inputs computed for a caller that no longer waited (its deadline passed while the batch ran): wasted work.
    pub late_inputs: AtomicU64,
    errors: Mutex<BTreeMap<ErrorCode, u64>>,
    pub thermal: Mutex<ThermalStatus>,
    windows: Mutex<[VecDeque<Sample>; 3]>,
    /// `batcher.realtime_max_wait_ms`, to say in `status` whether the devices can hold it.
    pub realtime_bound_ms: AtomicU64,
    /// Set when a graceful stop runs out of time: no batch runs any more (see `WorkStopper`).
    pub work_cut: AtomicBool,
    /// The embedding cache, consulted where requests enter the actors.
    pub cache: Arc<crate::cache::EmbedCache>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    latency_us: u64,
    inputs: u32,
    model: u32,
}

// === impl DaemonState ===

impl DaemonState {
    /// `model_devices`: per model, the devices that hold it.
    pub fn new(
        models: Vec<Arc<ModelInfo>>,
        model_devices: Vec<Vec<usize>>,
        device_kinds: &[String],
        cache: Arc<crate::cache::EmbedCache>,
    ) -> DaemonState {
        let devices = device_kinds
            .iter()
            .enumerate()
            .map(|(index, kind)| DeviceShared {
                index,
                kind: kind.clone(),
                ep: Mutex::new(String::new()),
                precision: Mutex::new(None),
                stopper: Mutex::new(None),
                stuck_deadline: Mutex::new(None),
                smallest_batch_us: models.iter().map(|_| AtomicU64::new(0)).collect(),
                sessions: Mutex::new(Vec::new()),
                state: AtomicU8::new(DeviceState::Starting as u8),
                restarts: AtomicU64::new(0),
                batches: AtomicU64::new(0),
                inputs: AtomicU64::new(0),
                last_error: Mutex::new(None),
                sensors: Mutex::new(None),
            })
            .collect();
        DaemonState {
            work_cut: AtomicBool::new(false),
            realtime_bound_ms: AtomicU64::new(0),
            cache,
            started: Instant::now(),
            phase: AtomicU8::new(Phase::Starting as u8),
            queued_by_model: models.iter().map(|_| Default::default()).collect(),
            models,
            model_devices,
            devices,
            queued: Default::default(),
            backlog_us: Default::default(),
            requests: AtomicU64::new(0),
            inputs: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_inputs: AtomicU64::new(0),
            padded_tokens: AtomicU64::new(0),
            real_tokens: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            late_inputs: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            thermal: Mutex::new(ThermalStatus {
                state: "normal".into(),
                ..ThermalStatus::default()
            }),
            windows: Mutex::new(Default::default()),
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            2 => Phase::Degraded,
            _ => Phase::Stopping,
        }
    }

    /// Moves to `phase`; once stopping, the daemon stays stopping.
    pub fn set_phase(&self, phase: Phase) {
        let _ = self.phase.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
            (current != Phase::Stopping as u8).then_some(phase as u8)
        });
    }

    /// Whether the realtime bound can hold: a realtime request waits behind at most about one bound's worth of
    /// running work, then needs its own run, which on a slow model or device may alone take longer.
    /// Said of the default model; `status.models[].smallest_batch_ms` has the others' figure.
    pub fn realtime_status(&self) -> RealtimeStatus {
        let bound_ms = self.realtime_bound_ms.load(Ordering::Relaxed);
        let smallest_batch_ms = self.smallest_batch_ms(0);
        RealtimeStatus {
            bound_ms,
            smallest_batch_ms,
            achievable: smallest_batch_ms.is_none_or(|ms| ms <= bound_ms as f64),
            achievable_ms: smallest_batch_ms.map(|ms| (2.0 * ms).max(bound_ms as f64 + ms)),
        }
    }

    /// One short input of model `model` alone on its fastest device, once warm (ms; None until measured).
    pub fn smallest_batch_ms(&self, model: usize) -> Option<f64> {
        self.devices
            .iter()
            .map(|d| d.smallest_batch_us[model].load(Ordering::Relaxed))
            .filter(|&us| us > 0)
            .min()
            .map(|us| us as f64 / 1000.0)
    }

    /// The index of the model a request names (None: the default model), or why there is none.
    pub fn model_index(&self, asked: Option<&str>) -> Result<usize, String> {
        let Some(name) = asked else { return Ok(0) };
        self.models.iter().position(|m| m.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
            format!(
                "unknown model {:?} (this daemon serves: {})",
                name.chars().take(64).collect::<String>(),
                names.join(", ")
            )
        })
    }

    /// Records one answered request (`served`: the class and model of an embed request).
    pub fn record_reply(
        &self,
        served: Option<(Priority, usize)>,
        latency: Duration,
        n_inputs: usize,
        n_tokens: usize,
        error: Option<ErrorCode>,
    ) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(code) = error {
            *lock(&self.errors).entry(code).or_default() += 1;
            return;
        }
        let Some((priority, model)) = served else { return };
        self.inputs.fetch_add(n_inputs as u64, Ordering::Relaxed);
        self.tokens.fetch_add(n_tokens as u64, Ordering::Relaxed);
        let now = Instant::now();
        let mut windows = lock(&self.windows);
        let window = &mut windows[priority.index()];
        window.push_back(Sample {
            at: now,
            latency_us: latency.as_micros() as u64,
            inputs: n_inputs as u32,
            model: model as u32,
        });
        prune(window, now);
    }

    /// Records one batch run by a device.
    pub fn record_batch(&self, n_inputs: usize, padded_tokens: usize, real_tokens: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_inputs.fetch_add(n_inputs as u64, Ordering::Relaxed);
        self.padded_tokens.fetch_add(padded_tokens as u64, Ordering::Relaxed);
        self.real_tokens.fetch_add(real_tokens as u64, Ordering::Relaxed);
    }

    /// `starting`, `ready` (every device serves), `degraded` (a device failed for good, or is being restarted or
    /// replaced: it is not counted as serving meanwhile) or `stopping`.
    pub fn health(&self) -> &'static str {
        match self.phase() {
            Phase::Starting => "starting",
            Phase::Ready
                if self
                    .devices
                    .iter()
                    .all(|d| matches!(d.state(), DeviceState::Ready | DeviceState::Busy)) =>
            {
                "ready"
            }
            Phase::Ready => "degraded",
            Phase::Degraded => "degraded",
            Phase::Stopping => "stopping",
        }
    }

    /// The `status` body.
    pub fn status(&self) -> StatusBody {
        let now = Instant::now();
        let ratio = |a: &AtomicU64, b: &AtomicU64| {
            let denominator = b.load(Ordering::Relaxed);
            if denominator == 0 {
                0.0
            } else {
                a.load(Ordering::Relaxed) as f64 / denominator as f64
            }
        };
        let (latency_ms, throughput) = self.latency_and_throughput(now, None);
        let cache = self.cache.stats();
        let models = (0..self.models.len()).map(|index| self.model_status(index, now, &cache)).collect();
        let model = &self.models[0];
        StatusBody {
            status: self.health().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: now.duration_since(self.started).as_secs_f64(),
            model: ModelStatus {
                name: model.name.clone(),
                dim: model.dim as u64,
                max_tokens: model.max_tokens as u64,
                pooling: model.pooling.as_str().to_owned(),
            },
            devices: self.devices.iter().map(|d| d.status(&self.models)).collect(),
            queues: Priority::ALL
                .iter()
                .map(|p| (p.as_str().to_owned(), self.queued[p.index()].load(Ordering::Relaxed)))
                .collect(),
            counters: Counters {
                requests: self.requests.load(Ordering::Relaxed),
                inputs: self.inputs.load(Ordering::Relaxed),
                tokens: self.tokens.load(Ordering::Relaxed),
                batches: self.batches.load(Ordering::Relaxed),
                errors: lock(&self.errors).iter().map(|(code, n)| (code.as_str().to_owned(), *n)).collect(),
                connections: self.connections.load(Ordering::Relaxed),
                in_flight: self.in_flight.load(Ordering::Relaxed),
                late_inputs: self.late_inputs.load(Ordering::Relaxed),
            },
            latency_ms,
            mean_batch_size: ratio(&self.batch_inputs, &self.batches),
            padding_ratio: ratio(&self.padded_tokens, &self.real_tokens),
            throughput,
            thermal: lock(&self.thermal).clone(),
            cache,
            realtime: self.realtime_status(),
            models,
        }
    }

    /// `status.models[index]`.
    fn model_status(&self, index: usize, now: Instant, cache: &CacheStats) -> ModelServeStatus {
        let model = &self.models[index];
        let (latency_ms, throughput) = self.latency_and_throughput(now, Some(index));
        let cache = cache.per_model.get(&model.name).copied().unwrap_or_default();
        ModelServeStatus {
            name: model.name.clone(),
            dim: model.dim as u64,
            max_tokens: model.max_tokens as u64,
            pooling: model.pooling.as_str().to_owned(),
            devices: self.model_devices[index].iter().map(|&d| d as u64).collect(),
            queues: Priority::ALL
                .iter()
                .map(|p| {
                    (
                        p.as_str().to_owned(),
                        self.queued_by_model[index][p.index()].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            latency_ms,
            throughput,
            cache,
            smallest_batch_ms: self.smallest_batch_ms(index),
        }
    }

    /// Latency percentiles per class and throughput over the window, of one model's requests or of all.
    fn latency_and_throughput(&self, now: Instant, model: Option<usize>) -> (BTreeMap<String, Percentiles>, Throughput) {
        let mut windows = lock(&self.windows);
        let mut latency = BTreeMap::new();
        let (mut requests, mut inputs) = (0u64, 0u64);
        let mut oldest = now;
        for priority in Priority::ALL {
            let window = &mut windows[priority.index()];
            prune(window, now);
            if let Some(first) = window.front() {
                oldest = oldest.min(first.at);
            }
            let samples = window.iter().filter(|s| model.is_none_or(|m| s.model as usize == m));
            let mut micros: Vec<u64> = Vec::new();
            for sample in samples {
                requests += 1;
                inputs += u64::from(sample.inputs);
                micros.push(sample.latency_us);
            }
            latency.insert(priority.as_str().to_owned(), percentiles(&mut micros));
        }
        // When a window is capped by MAX_SAMPLES it covers less than WINDOW: measure over what it covers.
        let capped = windows.iter().any(|w| w.len() >= MAX_SAMPLES);
        let covered = if capped {
            now.duration_since(oldest)
        } else {
            now.duration_since(self.started).min(WINDOW)
        };
        let span = covered.as_secs_f64().max(1e-3);
        let throughput = Throughput {
            window_s: span,
            requests_per_s: requests as f64 / span,
            inputs_per_s: inputs as f64 / span,
        };
        (latency, throughput)
    }
}

impl DeviceShared {
    pub fn set_state(&self, state: DeviceState) {
        self.state.store(state as u8, Ordering::Release);
    }

    pub fn state(&self) -> DeviceState {
        match self.state.load(Ordering::Acquire) {
            0 => DeviceState::Starting,
            1 => DeviceState::Ready,
            2 => DeviceState::Busy,
            3 => DeviceState::Restarting,
            _ => DeviceState::Failed,
        }
    }

    fn status(&self, models: &[Arc<ModelInfo>]) -> DeviceStatus {
        let state = match self.state() {
            DeviceState::Starting => "starting",
            DeviceState::Ready => "ready",
            DeviceState::Busy => "busy",
            DeviceState::Restarting => "restarting",
            DeviceState::Failed => "failed",
        };
        DeviceStatus {
            index: self.index as u64,
            kind: self.kind.clone(),
            ep: lock(&self.ep).clone(),
            precision: lock(&self.precision).clone(),
            state: state.to_owned(),
            restarts: self.restarts.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            inputs: self.inputs.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
            sensors: lock(&self.sensors).clone(),
            sessions: lock(&self.sessions)
                .iter()
                .map(|(model, memory_bytes, precision)| SessionStatus {
                    model: models[*model].name.clone(),
                    memory_bytes: *memory_bytes,
                    precision: precision.clone(),
                })
                .collect(),
        }
    }
}

fn prune(window: &mut VecDeque<Sample>, now: Instant) {
    while window.front().is_some_and(|s| now.duration_since(s.at) > WINDOW) || window.len() > MAX_SAMPLES {
        window.pop_front();
    }
}

/// Nearest-rank percentiles of latencies given in microseconds, reported in ms.
pub(crate) fn percentiles(micros: &mut [u64]) -> Percentiles {
    if micros.is_empty() {
        return Percentiles::default();
    }
    micros.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len());
        micros[rank - 1] as f64 / 1000.0
    };
    Percentiles {
        count: micros.len() as u64,
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// Locks a mutex, recovering from a panic elsewhere (the data are counters: still meaningful).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut micros: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        let p = percentiles(&mut micros);
        assert_eq!((p.count, p.p50, p.p95, p.p99, p.max), (100, 50.0, 95.0, 99.0, 100.0));
        assert_eq!(percentiles(&mut []), Percentiles::default());
    }

    #[test]
    fn a_device_being_restarted_is_not_counted_as_serving() {
        let dir = std::path::PathBuf::from("models/x");
        let model = crate::engine::ModelInfo {
            task: crate::engine::Task::Embed,
            name: "m".into(),
            dir: dir.clone(),
            onnx_path: dir.join("model.onnx"),
            external_data: Vec::new(),
            graph_inputs: Vec::new(),
            weights_precision: None,
            attention: Default::default(),
            quantization: None,
            tokenizer_path: dir.join("tokenizer.json"),
            max_tokens: 16,
            max_tokens_uncapped: None,
            pooling: crate::engine::Pooling::Mean,
            normalize: true,
            dim: 4,
            do_lower_case: false,
            prompts: Default::default(),
            default_prompt_name: None,
            head_modules: Vec::new(),
        };
        let cache = std::sync::Arc::new(crate::cache::EmbedCache::new(0, 4, vec!["m".into()]));
        let state = DaemonState::new(vec![Arc::new(model)], vec![vec![0]], &["cpu".to_owned()], cache);
        assert_eq!(state.health(), "starting");
        state.devices[0].set_state(DeviceState::Ready);
        state.set_phase(Phase::Ready);
        assert_eq!(state.health(), "ready");
        state.devices[0].set_state(DeviceState::Busy);
        assert_eq!(state.health(), "ready");
        state.devices[0].set_state(DeviceState::Restarting);
        assert_eq!(state.health(), "degraded", "the only device is being replaced");
        state.devices[0].set_state(DeviceState::Ready);
        assert_eq!(state.health(), "ready");
    }
}
