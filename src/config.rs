//! Daemon configuration: the TOML file's structure, its defaults, and `validate()`.
//!
//! Every key has a default (`DEFAULT_*` constants below, mirrored in `config/akidb.toml`), so an empty file is
//! a valid configuration. [`Config::validate`] reports every problem at once instead of stopping at the first.
//! This module only describes and checks settings; it opens no sockets and loads no models.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default model directory, relative to the working directory (`make setup` fills it).
pub const DEFAULT_MODEL_DIR: &str = "models/all-MiniLM-L6-v2";
/// Default socket file mode.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// Default maximum number of simultaneous client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default maximum frame body size (16 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;
/// Default maximum number of inputs in one `embed` request.
pub const DEFAULT_MAX_INPUTS: usize = 256;
/// Default time a client may take to finish sending a frame it has started.
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 10_000;
/// Default time a connection may stay silent between requests before it is closed (0 = never).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 300_000;
/// Default bound on replies computed but not yet written to one connection.
pub const DEFAULT_MAX_PENDING_REPLIES: usize = 1024;
/// Default grace period for a graceful stop.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
/// Default token budget of one batch (padded tokens: batch size × longest input).
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 512;
/// A model whose weights (ONNX file and external data) are at least this large gets ORT's CPU memory arena unless
/// `cpu_arena` says otherwise.
pub const LARGE_MODEL_BYTES: u64 = 512 * 1024 * 1024;
/// Default maximum number of inputs in one batch.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 32;
/// Default time the batcher waits for a batch to fill while a device is idle.
pub const DEFAULT_MAX_WAIT_US: u64 = 0;
/// Default bound on how long a realtime request may wait behind running work.
pub const DEFAULT_REALTIME_MAX_WAIT_MS: u64 = 20;
/// Default queue capacities (inputs) per priority class.
pub const DEFAULT_QUEUE_REALTIME: usize = 1024;
/// See [`DEFAULT_QUEUE_REALTIME`].
pub const DEFAULT_QUEUE_NORMAL: usize = 4096;
/// See [`DEFAULT_QUEUE_REALTIME`].
pub const DEFAULT_QUEUE_BULK: usize = 16384;
/// Default sequence lengths run at warm-up (each clamped to the model's max tokens).
pub const DEFAULT_WARMUP_SEQ_LENGTHS: [usize; 3] = [16, 128, 256];
/// Default time after the last realtime request during which batches stay sized for realtime latency.
pub const DEFAULT_REALTIME_HORIZON_MS: u64 = 10_000;
/// Default cap on padded / real tokens when grouping by length.
pub const DEFAULT_MAX_PADDING_RATIO: f64 = 1.5;
/// Default number of batches prepared ahead for each device.
pub const DEFAULT_PREFETCH: usize = 1;
/// Default restart limit for an inference actor (restarts within [`DEFAULT_RESTART_WINDOW_S`]).
pub const DEFAULT_MAX_RESTARTS: u32 = 5;
/// See [`DEFAULT_MAX_RESTARTS`].
pub const DEFAULT_RESTART_WINDOW_S: u64 = 60;
/// Default time a batch may run before its inference actor is considered stuck.
pub const DEFAULT_STUCK_TIMEOUT_MS: u64 = 30_000;
/// Default sensor sampling period.
pub const DEFAULT_MONITOR_INTERVAL_MS: u64 = 1000;
/// Default soft temperature limit, °C.
pub const DEFAULT_SOFT_C: f64 = 80.0;
/// Default hard temperature limit, °C.
pub const DEFAULT_HARD_C: f64 = 90.0;
/// Default hysteresis, °C.
pub const DEFAULT_HYSTERESIS_C: f64 = 5.0;
/// Default byte budget of the embedding cache: 32 MiB, about 20,000 vectors of 384 floats or 7,000 of 1024.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 32 * 1024 * 1024;
/// Default largest HTTP request body (bytes).
pub const DEFAULT_HTTP_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Default `http.max_inputs`: OpenAI's own limit per embeddings request.
pub const DEFAULT_HTTP_MAX_INPUTS: usize = 2048;
/// Default TensorRT builder optimisation level.
pub const DEFAULT_TRT_BUILDER_OPT_LEVEL: u8 = 3;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Socket and connection limits.
    pub server: ServerConfig,
    /// Which model to serve, and overrides of what its directory says (one model; see `models`).
    pub model: ModelConfig,
    /// `[[models]]`: several models in one daemon, each with the keys of `[model]` and a name; the first is the
    /// default model. When given, `[model]` must be left out.
    pub models: Vec<ModelConfig>,
    /// Where the ONNX Runtime library is.
    pub ort: OrtConfig,
    /// One entry per inference device; empty means one CPU device.
    pub devices: Vec<DeviceConfig>,
    /// How requests are grouped into batches.
    pub batcher: BatcherConfig,
    /// Sensors and the thermal policy.
    pub monitor: MonitorConfig,
    /// The OpenAI-compatible HTTP surface (off unless `listen` is set).
    pub http: HttpConfig,
    /// The embedding cache.
    pub cache: CacheConfig,
}

/// `[cache]`: vectors of recent inputs, answered without inference.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Byte budget (keys, vectors, bookkeeping); 0 turns the cache off.
    pub max_bytes: u64,
}

/// `[http]`: OpenAI-compatible embeddings, health and Prometheus metrics over HTTP/1.1. Off by default; requests
/// go through the same batcher, limits and priorities as the socket's (connection count, `read_timeout_ms` and
/// `max_inputs` come from `[server]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, e.g. `"127.0.0.1:8080"`; unset: no HTTP.
    pub listen: Option<String>,
    /// When set, `/v1/*` and `/metrics` need `Authorization: Bearer <api_key>`.
    pub api_key: Option<String>,
    /// Allow an address other than loopback (the HTTP surface has no TLS: put it behind a proxy that has).
    pub allow_remote: bool,
    /// Largest request body, in bytes; a larger one is answered 413.
    pub max_body_bytes: usize,
    /// Most inputs in one `POST /v1/embeddings` (OpenAI's own limit, 2048, by default: OpenAI clients send up to
    /// that many, e.g. LangChain 1000); the socket's limit is `server.max_inputs`.
    pub max_inputs: usize,
}

/// `[monitor]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// Sampling period in milliseconds.
    pub interval_ms: u64,
    /// Where sysfs is mounted (tests point this at a fake tree).
    pub sysfs_root: PathBuf,
    /// Thermal zone types read for GPU devices when NVML gives no temperature, in order of preference.
    pub gpu_zones: Vec<String>,
    /// Thermal zone types read for CPU devices, in order of preference.
    pub cpu_zones: Vec<String>,
    /// Soft limit, °C: smaller batches, bulk deferred.
    pub soft_c: f64,
    /// Hard limit, °C: bulk and normal refused, realtime served.
    pub hard_c: f64,
    /// Degrees below a limit before its state is left.
    pub hysteresis_c: f64,
    /// Power above which the state is at least soft, watts (unset: no cap).
    pub power_cap_w: Option<f64>,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Socket path; empty means [`default_socket_path`].
    pub socket: Option<PathBuf>,
    /// File mode of the socket, e.g. `"0660"` (octal string) or 432.
    #[serde(with = "octal_mode")]
    pub socket_mode: u32,
    /// Maximum simultaneous connections; the next one is closed at once.
    pub max_connections: usize,
    /// Maximum frame body size in bytes.
    pub max_frame_bytes: u32,
    /// Maximum inputs in one `embed` request.
    pub max_inputs: usize,
    /// A frame that has started must arrive whole within this many milliseconds.
    pub read_timeout_ms: u64,
    /// A connection silent for this long between frames is closed (0 = never).
    pub idle_timeout_ms: u64,
    /// Replies computed but not yet written, per connection; past it the connection stops reading.
    pub max_pending_replies: usize,
    /// If non-empty, only these peer uids may connect (root always may).
    pub allowed_uids: Vec<u32>,
    /// If non-empty, only peers whose egid is listed may connect (root always may).
    pub allowed_gids: Vec<u32>,
    /// Grace period for a graceful stop, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Threads that serve connections and tokenize (inference runs on threads of its own); 0 = one per 4 cores,
    /// at least one.
    pub io_threads: usize,
}

/// `[model]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The sentence-transformers model directory.
    pub dir: PathBuf,
    /// Name reported to clients; default: the directory's name.
    pub name: Option<String>,
    /// The ONNX file inside `dir` (e.g. `onnx/model_fp16.onnx`); default: `model.onnx`, else `onnx/model.onnx`.
    pub file: Option<PathBuf>,
    /// Override of `sentence_bert_config.json` `max_seq_length` (also lifts the cap on huge directory values).
    pub max_seq_length: Option<usize>,
    /// Override of `1_Pooling/config.json`: "mean", "cls" or "last_token".
    pub pooling: Option<String>,
    /// Override of whether `modules.json` has a Normalize step.
    pub normalize: Option<bool>,
    /// Override of `config.json` `hidden_size`.
    pub dimension: Option<usize>,
    /// Indexes into `[[devices]]` of the devices that hold a session of this model; default: all.
    pub devices: Option<Vec<usize>>,
}

/// How token vectors become one sentence vector. The vocabulary of `model.pooling` and of the engine's model
/// description (`1_Pooling/config.json`), defined here so that the configuration needs nothing of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the attention mask.
    Mean,
    /// The first token ([CLS]).
    Cls,
    /// The last real token; implies left padding (Qwen3-Embedding and other decoder models).
    LastToken,
}

/// `[ort]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OrtConfig {
    /// Path to `libonnxruntime.so`; else `ORT_DYLIB_PATH`; else, when a device asks for tensorrt or cuda, the first
    /// library found with that provider beside it (`engine::runtime`, README "Running on Jetson"); else the
    /// library `make setup` placed.
    pub library_path: Option<PathBuf>,
}

/// The execution providers akidbd knows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum EpKind {
    /// NVIDIA TensorRT (desktop GPUs, Jetson).
    Tensorrt,
    /// NVIDIA CUDA.
    Cuda,
    /// Apple CoreML.
    Coreml,
    /// ONNX Runtime's CPU provider.
    Cpu,
}

/// `[[devices]]`: one inference actor with one ORT session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    /// The execution provider asked for.
    pub ep: EpKind,
    /// GPU index for cuda/tensorrt.
    pub device_id: u32,
    /// ORT intra-op threads (0 = ORT's default: one per core).
    pub intra_threads: usize,
    /// CPU provider: keep ORT's memory arena. Unset: on for a model whose weights are at least
    /// [`LARGE_MODEL_BYTES`], off for a smaller one (`engine::ep::cpu_arena` has the measurements behind the rule).
    pub cpu_arena: Option<bool>,
    /// Let ORT's intra-op threads spin while waiting for work (ORT's default; unset = true). Off, they sleep: the
    /// cores stay free for the daemon's I/O and for the other processes of the machine. With one CPU device holding
    /// several models, its sessions share one pool of threads that spin as this says (see `daemon`).
    pub spin: Option<bool>,
    /// Set by the daemon, not by configuration: this device's sessions use the ONNX Runtime environment's shared
    /// thread pool, so their own thread settings are not applied.
    #[serde(skip)]
    pub shared_pool: bool,
    /// Providers to try, in order, when `ep` does not register. Empty: startup fails instead.
    pub fallback: Vec<EpKind>,
    /// Make session creation fail if any node would run on the CPU (GPU providers only).
    pub disable_cpu_fallback: bool,
    /// TensorRT settings (used when `ep` or a fallback is tensorrt).
    pub tensorrt: TensorrtConfig,
}

/// `[devices.tensorrt]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TensorrtConfig {
    /// Build fp16 engines.
    pub fp16: bool,
    /// Build int8 engines.
    pub int8: bool,
    /// Refused with an explanation: ONNX Runtime's TensorRT provider has no FP8 build flag; FP8 comes from a
    /// pre-quantized Q/DQ model (`model.file`), which TensorRT runs in FP8 with `fp16` on.
    pub fp8: bool,
    /// Engine cache root; a sub-directory keyed by model hash, ORT version, GPU and profile is used.
    /// Empty: `$CACHE_DIRECTORY/tensorrt` under systemd, else `target/tensorrt-cache`.
    pub engine_cache_dir: Option<PathBuf>,
    /// Keep a TensorRT timing cache beside the engines.
    pub timing_cache: bool,
    /// TensorRT builder optimisation level (0-5).
    pub builder_optimization_level: u8,
    /// Optimisation profile: smallest, typical and largest batch size.
    pub profile_batch: [usize; 3],
    /// Optimisation profile: smallest, typical and largest sequence length (0 = the model's max tokens).
    pub profile_seq: [usize; 3],
}

/// `[batcher]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatcherConfig {
    /// Upper bound on padded tokens (batch size × longest) in one batch.
    pub max_batch_tokens: usize,
    /// Upper bound on inputs in one batch.
    pub max_batch_size: usize,
    /// How long to wait for more requests before running a partial batch, in microseconds.
    pub max_wait_us: u64,
    /// A realtime request should not wait behind running work longer than this.
    pub realtime_max_wait_ms: u64,
    /// For this long after a realtime request, normal and bulk batches are kept short enough for
    /// `realtime_max_wait_ms` and nothing is prepared ahead; without realtime traffic batches use the full budget.
    pub realtime_horizon_ms: u64,
    /// Group inputs of similar length into a batch (false: plain FIFO, for comparison).
    pub group_by_length: bool,
    /// With grouping, an input joins a batch only if padded / real tokens stays at or under this.
    pub max_padding_ratio: f64,
    /// Queue capacities, in inputs, per priority class.
    pub queue_capacity: QueueCapacity,
    /// Sequence lengths run at warm-up.
    pub warmup_seq_lengths: Vec<usize>,
    /// CPU devices: warm the first shape before READY and the others after READY, while idle (READY comes
    /// seconds sooner; a larger shape's first run is slower by what its warm-up would have cost). False: every
    /// shape before READY. GPU devices always warm every shape before READY (engines and kernels).
    pub warmup_after_ready: bool,
    /// Batches prepared ahead per device.
    pub prefetch: usize,
    /// Inference actor restarts allowed within `restart_window_s` before the device is given up.
    pub max_restarts: u32,
    /// See `max_restarts`.
    pub restart_window_s: u64,
    /// A batch running longer than this marks its inference actor stuck.
    pub stuck_timeout_ms: u64,
}

/// `[batcher.queue_capacity]`: the most inputs queued per class, for each model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueCapacity {
    /// Realtime class.
    pub realtime: usize,
    /// Normal class.
    pub normal: usize,
    /// Bulk class.
    pub bulk: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            interval_ms: DEFAULT_MONITOR_INTERVAL_MS,
            sysfs_root: PathBuf::from("/sys"),
            gpu_zones: ["gpu-thermal", "GPU-therm", "gpu", "tj-thermal", "Tdiode_tegra"]
                .map(String::from)
                .to_vec(),
            cpu_zones: ["x86_pkg_temp", "cpu-thermal", "CPU-therm", "cpu", "soc_thermal", "acpitz"]
                .map(String::from)
                .to_vec(),
            soft_c: DEFAULT_SOFT_C,
            hard_c: DEFAULT_HARD_C,
            hysteresis_c: DEFAULT_HYSTERESIS_C,
            power_cap_w: None,
        }
    }
}

/// Every problem [`Config::validate`] found.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<String>);

/// Errors loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this structure.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The values do not make sense together.
    #[error("invalid configuration:\n{0}")]
    Invalid(ConfigErrors),
}

// === impl Config ===

impl Config {
    /// Reads and parses a TOML file (without validating it).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The devices to run: the configured ones, or one CPU device.
    pub fn effective_devices(&self) -> Vec<DeviceConfig> {
        if self.devices.is_empty() {
            vec![DeviceConfig::default()]
        } else {
            self.devices.clone()
        }
    }

    /// The models to serve, the default one first: `[[models]]`, else the one `[model]`.
    pub fn effective_models(&self) -> Vec<ModelConfig> {
        if self.models.is_empty() {
            vec![self.model.clone()]
        } else {
            self.models.clone()
        }
    }

    /// Serves only the model in `dir` (what `--model DIR` asks for), with the other settings of the default
    /// model (as `--model` always did for `[model]`).
    pub fn serve_only(&mut self, dir: PathBuf) {
        let first = self.effective_models().swap_remove(0);
        self.models.clear();
        self.model = ModelConfig {
            dir,
            devices: None,
            ..first
        };
    }

    /// The socket path to listen on.
    pub fn socket_path(&self) -> PathBuf {
        self.server.socket.clone().unwrap_or_else(default_socket_path)
    }

    /// Checks every value and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, message: String| {
            if !ok {
                errors.push(message);
            }
        };
        self.server.validate(&mut check);
        self.validate_models(&mut check);
        for (idx, device) in self.devices.iter().enumerate() {
            device.validate(idx, &mut check);
        }
        self.batcher.validate(&self.devices, self.server.max_inputs, &mut check);
        self.http.validate(&mut check);
        self.monitor.validate(&mut check);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// `[model]` or `[[models]]`: each model's own keys, unique names, and every device holding some model.
    fn validate_models(&self, check: &mut impl FnMut(bool, String)) {
        if !self.models.is_empty() && self.model != ModelConfig::default() {
            check(
                false,
                "[model] and [[models]] are exclusive: with several models, describe each in [[models]]".into(),
            );
        }
        let n_devices = self.effective_devices().len();
        let prefix = |i: usize| {
            if self.models.is_empty() {
                "model".to_owned()
            } else {
                format!("models[{i}]")
            }
        };
        let mut names: Vec<String> = Vec::new();
        let mut served = vec![false; n_devices];
        for (i, model) in self.effective_models().iter().enumerate() {
            model.validate(&prefix(i), n_devices, check);
            let name = model.display_name();
            check(
                !names.contains(&name),
                format!(
                    "{}: the name {name:?} is used twice (set `name` to tell the models apart)",
                    prefix(i)
                ),
            );
            names.push(name);
            match &model.devices {
                Some(list) => list.iter().filter(|&&d| d < n_devices).for_each(|&d| served[d] = true),
                None => served.iter_mut().for_each(|s| *s = true),
            }
        }
        for (index, served) in served.iter().enumerate() {
            check(
                *served,
                format!("devices[{index}] holds no model: list it in some model's `devices`"),
            );
        }
    }
}

// === impl BatcherConfig ===

impl BatcherConfig {
    /// The batcher's own keys, and what they must agree with: TensorRT's batch profile on each device and the
    /// largest request the server accepts.
    fn validate(&self, devices: &[DeviceConfig], max_inputs: usize, check: &mut impl FnMut(bool, String)) {
        check(self.max_batch_size > 0, "batcher.max_batch_size must be at least 1".into());
        check(self.max_batch_tokens > 0, "batcher.max_batch_tokens must be at least 1".into());
        for (idx, device) in devices.iter().enumerate() {
            let profile_max = device.tensorrt.profile_batch[2];
            if device.ep_chain().contains(&EpKind::Tensorrt) {
                check(
                    profile_max >= self.max_batch_size,
                    format!(
                        "devices[{idx}].tensorrt.profile_batch allows batches of up to {profile_max}, below \
                         batcher.max_batch_size ({}): larger batches would fail on TensorRT",
                        self.max_batch_size
                    ),
                );
            }
        }
        check(
            self.max_padding_ratio >= 1.0,
            "batcher.max_padding_ratio must be at least 1.0".into(),
        );
        check(
            self.realtime_max_wait_ms > 0,
            "batcher.realtime_max_wait_ms must be at least 1".into(),
        );
        let caps = &self.queue_capacity;
        check(
            caps.realtime > 0 && caps.normal > 0 && caps.bulk > 0,
            "batcher.queue_capacity: every class needs room for at least 1 input".into(),
        );
        for class_cap in [caps.realtime, caps.normal, caps.bulk] {
            check(
                class_cap >= max_inputs,
                format!("batcher.queue_capacity ({class_cap}) is smaller than server.max_inputs ({max_inputs}): a full-size request could never be queued"),
            );
        }
        check(
            self.warmup_seq_lengths.iter().all(|&n| n > 0),
            "batcher.warmup_seq_lengths must be positive".into(),
        );
        check(self.restart_window_s > 0, "batcher.restart_window_s must be at least 1".into());
        check(self.stuck_timeout_ms > 0, "batcher.stuck_timeout_ms must be at least 1".into());
    }
}

// === impl MonitorConfig ===

impl MonitorConfig {
    fn validate(&self, check: &mut impl FnMut(bool, String)) {
        check(self.interval_ms >= 10, "monitor.interval_ms must be at least 10".into());
        check(self.soft_c < self.hard_c, "monitor.soft_c must be below monitor.hard_c".into());
        check(self.hysteresis_c >= 0.0, "monitor.hysteresis_c must not be negative".into());
        check(
            self.power_cap_w.is_none_or(|w| w > 0.0),
            "monitor.power_cap_w must be positive".into(),
        );
    }
}

/// The socket path when none is configured: `$XDG_RUNTIME_DIR/akidb/embed.sock`, else `/tmp/akidb-$UID/embed.sock`.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("akidb").join("embed.sock"),
        _ => PathBuf::from(format!("/tmp/akidb-{}", current_uid())).join("embed.sock"),
    }
}

/// The uid this process runs as (the owner of `/proc/self`), without `unsafe`.
pub fn current_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (idx, error) in self.0.iter().enumerate() {
            if idx > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {error}")?;
        }
        Ok(())
    }
}

// === impl HttpConfig ===

impl HttpConfig {
    /// The address to listen on, parsed (`None` when HTTP is off or the address is not valid).
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.as_deref().and_then(|text| text.parse().ok())
    }

    fn validate(&self, check: &mut impl FnMut(bool, String)) {
        let Some(listen) = &self.listen else { return };
        match listen.parse::<std::net::SocketAddr>() {
            Err(_) => check(false, format!("http.listen {listen:?} is not an address like \"127.0.0.1:8080\"")),
            Ok(addr) => check(
                addr.ip().is_loopback() || self.allow_remote,
                format!(
                    "http.listen {listen} is not a loopback address: the HTTP surface has no TLS; set \
                     http.allow_remote = true to serve it beyond this machine anyway"
                ),
            ),
        }
        check(
            self.api_key.as_deref() != Some(""),
            "http.api_key must not be empty (leave it unset for no key)".into(),
        );
        check(self.max_body_bytes >= 1024, "http.max_body_bytes must be at least 1024".into());
        check(self.max_inputs >= 1, "http.max_inputs must be at least 1".into());
    }
}

// === impl Pooling ===

impl Pooling {
    /// Parses a config value: "mean", "cls" or "last_token" (also "lasttoken").
    pub fn parse(text: &str) -> Option<Pooling> {
        match text.to_ascii_lowercase().as_str() {
            "mean" => Some(Pooling::Mean),
            "cls" => Some(Pooling::Cls),
            "last_token" | "lasttoken" | "last" => Some(Pooling::LastToken),
            _ => None,
        }
    }

    /// The name used in config files and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::LastToken => "last_token",
        }
    }

    /// Whether inputs are padded on the left (so the last real token sits at the end of every row).
    pub fn pads_left(self) -> bool {
        self == Pooling::LastToken
    }
}

// === impl DeviceConfig ===

impl DeviceConfig {
    fn validate(&self, idx: usize, check: &mut impl FnMut(bool, String)) {
        let name = format!("devices[{idx}]");
        check(
            !self.fallback.contains(&self.ep),
            format!("{name}.fallback repeats the device's own ep {}", self.ep),
        );
        let mut seen = Vec::new();
        for ep in &self.fallback {
            check(!seen.contains(ep), format!("{name}.fallback lists {ep} twice"));
            seen.push(*ep);
        }
        check(
            !(self.disable_cpu_fallback && self.ep == EpKind::Cpu),
            format!("{name}.disable_cpu_fallback makes no sense with ep = \"cpu\""),
        );
        let trt = &self.tensorrt;
        check(
            !trt.fp8,
            format!(
                "{name}.tensorrt.fp8: ONNX Runtime's TensorRT provider has no FP8 switch. Quantize the model to FP8 \
                 ahead of time (a Q/DQ ONNX model, e.g. with NVIDIA ModelOpt), select it with model.file and keep \
                 fp16 = true: TensorRT then runs the quantized layers in FP8"
            ),
        );
        check(
            trt.builder_optimization_level <= 5,
            format!("{name}.tensorrt.builder_optimization_level must be 0..=5"),
        );
        let [min_b, opt_b, max_b] = trt.profile_batch;
        check(
            min_b >= 1 && min_b <= opt_b && opt_b <= max_b,
            format!("{name}.tensorrt.profile_batch must be 1 <= min <= opt <= max"),
        );
        let [min_s, opt_s, max_s] = trt.profile_seq;
        if max_s != 0 {
            check(
                min_s >= 1 && min_s <= opt_s && opt_s <= max_s,
                format!("{name}.tensorrt.profile_seq must be 1 <= min <= opt <= max"),
            );
        }
    }

    /// The providers to try in order: the asked one, then the fallbacks.
    pub fn ep_chain(&self) -> Vec<EpKind> {
        std::iter::once(self.ep).chain(self.fallback.iter().copied()).collect()
    }
}

// === impl ServerConfig ===

impl ServerConfig {
    fn validate(&self, check: &mut impl FnMut(bool, String)) {
        check(
            self.socket_mode <= 0o777,
            format!("server.socket_mode {:o} is not a file mode", self.socket_mode),
        );
        check(self.max_connections > 0, "server.max_connections must be at least 1".into());
        check(self.max_frame_bytes >= 64, "server.max_frame_bytes must be at least 64".into());
        check(self.max_inputs > 0, "server.max_inputs must be at least 1".into());
        check(self.read_timeout_ms > 0, "server.read_timeout_ms must be at least 1".into());
        check(self.max_pending_replies > 0, "server.max_pending_replies must be at least 1".into());
        if let Some(socket) = &self.socket {
            check(!socket.as_os_str().is_empty(), "server.socket must not be empty".into());
            check(
                socket.as_os_str().len() < 108,
                format!(
                    "server.socket {} is longer than a Unix socket path may be (107 bytes)",
                    socket.display()
                ),
            );
        }
    }

    /// The number of I/O threads to start: `io_threads`, or one per 4 cores (at least one) when it is 0.
    pub fn io_threads(&self) -> usize {
        match self.io_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() / 4).max(1),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: None,
            socket_mode: DEFAULT_SOCKET_MODE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_inputs: DEFAULT_MAX_INPUTS,
            read_timeout_ms: DEFAULT_READ_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            max_pending_replies: DEFAULT_MAX_PENDING_REPLIES,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            io_threads: 0,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            api_key: None,
            allow_remote: false,
            max_body_bytes: DEFAULT_HTTP_MAX_BODY_BYTES,
            max_inputs: DEFAULT_HTTP_MAX_INPUTS,
        }
    }
}

impl ModelConfig {
    /// The name clients use: `name`, else the directory's name.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.dir
                .canonicalize()
                .unwrap_or_else(|_| self.dir.clone())
                .file_name()
                .map_or_else(|| "model".to_owned(), |n| n.to_string_lossy().into_owned())
        })
    }

    fn validate(&self, prefix: &str, n_devices: usize, check: &mut impl FnMut(bool, String)) {
        check(!self.dir.as_os_str().is_empty(), format!("{prefix}.dir must not be empty"));
        check(
            self.name.as_ref().is_none_or(|n| !n.is_empty()),
            format!("{prefix}.name must not be empty"),
        );
        if let Some(pooling) = &self.pooling {
            check(
                Pooling::parse(pooling).is_some(),
                format!("{prefix}.pooling {pooling:?} is not one of \"mean\", \"cls\", \"last_token\""),
            );
        }
        check(
            self.max_seq_length != Some(0),
            format!("{prefix}.max_seq_length must be at least 1"),
        );
        if let Some(file) = &self.file {
            check(
                file.is_relative() && !file.components().any(|c| c == std::path::Component::ParentDir),
                format!("{prefix}.file {} must be a path inside {prefix}.dir", file.display()),
            );
        }
        check(self.dimension != Some(0), format!("{prefix}.dimension must be at least 1"));
        if let Some(devices) = &self.devices {
            check(
                !devices.is_empty(),
                format!("{prefix}.devices must list at least one device (or be left out: all)"),
            );
            for &d in devices {
                check(
                    d < n_devices,
                    format!("{prefix}.devices: there is no device {d} ({n_devices} configured, counted from 0)"),
                );
            }
            let mut sorted = devices.clone();
            sorted.sort_unstable();
            sorted.dedup();
            check(sorted.len() == devices.len(), format!("{prefix}.devices lists a device twice"));
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            dir: PathBuf::from(DEFAULT_MODEL_DIR),
            name: None,
            file: None,
            max_seq_length: None,
            pooling: None,
            normalize: None,
            dimension: None,
            devices: None,
        }
    }
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            ep: EpKind::Cpu,
            device_id: 0,
            intra_threads: 0,
            cpu_arena: None,
            spin: None,
            shared_pool: false,
            fallback: Vec::new(),
            disable_cpu_fallback: false,
            tensorrt: TensorrtConfig::default(),
        }
    }
}

impl Default for TensorrtConfig {
    fn default() -> Self {
        TensorrtConfig {
            fp16: true,
            int8: false,
            fp8: false,
            engine_cache_dir: None,
            timing_cache: true,
            builder_optimization_level: DEFAULT_TRT_BUILDER_OPT_LEVEL,
            profile_batch: [1, 16, 64],
            profile_seq: [1, 64, 0],
        }
    }
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig {
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            max_wait_us: DEFAULT_MAX_WAIT_US,
            realtime_max_wait_ms: DEFAULT_REALTIME_MAX_WAIT_MS,
            realtime_horizon_ms: DEFAULT_REALTIME_HORIZON_MS,
            group_by_length: true,
            max_padding_ratio: DEFAULT_MAX_PADDING_RATIO,
            queue_capacity: QueueCapacity::default(),
            warmup_seq_lengths: DEFAULT_WARMUP_SEQ_LENGTHS.to_vec(),
            warmup_after_ready: true,
            prefetch: DEFAULT_PREFETCH,
            max_restarts: DEFAULT_MAX_RESTARTS,
            restart_window_s: DEFAULT_RESTART_WINDOW_S,
            stuck_timeout_ms: DEFAULT_STUCK_TIMEOUT_MS,
        }
    }
}

impl Default for QueueCapacity {
    fn default() -> Self {
        QueueCapacity {
            realtime: DEFAULT_QUEUE_REALTIME,
            normal: DEFAULT_QUEUE_NORMAL,
            bulk: DEFAULT_QUEUE_BULK,
        }
    }
}

impl EpKind {
    /// Every provider, in the order of their names.
    pub const ALL: [EpKind; 4] = [EpKind::Coreml, EpKind::Cpu, EpKind::Cuda, EpKind::Tensorrt];

    /// Parses a provider's name as [`fmt::Display`] writes it.
    pub fn parse(text: &str) -> Option<EpKind> {
        EpKind::ALL.into_iter().find(|kind| kind.to_string() == text)
    }
}

impl fmt::Display for EpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EpKind::Tensorrt => "tensorrt",
            EpKind::Cuda => "cuda",
            EpKind::Coreml => "coreml",
            EpKind::Cpu => "cpu",
        })
    }
}

/// Counts of configured settings, for `--check-config` output.
pub fn summary(config: &Config) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    out.insert("socket", config.socket_path().display().to_string());
    let models: Vec<String> = config
        .effective_models()
        .iter()
        .map(|m| format!("{} ({})", m.display_name(), m.dir.display()))
        .collect();
    out.insert("models", models.join(", "));
    let devices: Vec<String> = config.effective_devices().iter().map(|d| d.ep.to_string()).collect();
    out.insert("devices", devices.join(", "));
    out
}

mod octal_mode {
    //! `socket_mode` accepts an octal string ("0660") or a plain integer.
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{mode:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Mode {
            Text(String),
            Number(u32),
        }
        match Mode::deserialize(deserializer)? {
            Mode::Number(n) => Ok(n),
            Mode::Text(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
                .map_err(|_| serde::de::Error::custom(format!("socket_mode {text:?} is not an octal mode like \"0660\""))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_and_valid() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config, Config::default());
        config.validate().unwrap();
    }

    #[test]
    fn several_models_are_described_and_checked_at_once() {
        let text = r#"
            [[devices]]
            ep = "cpu"
            [[devices]]
            ep = "cpu"
            [[models]]
            dir = "models/small"
            devices = [0]
            [[models]]
            name = "big"
            dir = "models/qwen"
            file = "onnx/model.onnx"
        "#;
        let config = Config::from_toml(text).unwrap();
        config.validate().unwrap();
        let models = config.effective_models();
        assert_eq!(
            models.iter().map(ModelConfig::display_name).collect::<Vec<_>>(),
            vec!["small", "big"]
        );
        assert_eq!(models[0].devices, Some(vec![0]));

        let bad = r#"
            [model]
            dir = "models/x"
            [[models]]
            dir = "models/a"
            devices = [3, 0, 0]
            [[models]]
            dir = "elsewhere/a"
            devices = []
            [[models]]
            dir = "models/b"
            pooling = "max"
        "#;
        let errors = Config::from_toml(bad).unwrap().validate().unwrap_err().0.join("\n");
        for expected in [
            "[model] and [[models]] are exclusive",
            "models[0].devices: there is no device 3",
            "models[0].devices lists a device twice",
            "models[1]: the name \"a\" is used twice",
            "models[1].devices must list at least one device",
            "models[2].pooling \"max\"",
        ] {
            assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
        }

        let idle = "[[devices]]\nep = \"cpu\"\n[[devices]]\nep = \"cpu\"\n[[models]]\ndir = \"m\"\ndevices = [1]\n";
        let errors = Config::from_toml(idle).unwrap().validate().unwrap_err().0.join("\n");
        assert!(errors.contains("devices[0] holds no model"), "{errors}");
    }

    #[test]
    fn the_model_flag_serves_one_model() {
        let mut config = Config::from_toml("[[models]]\ndir = \"a\"\nmax_seq_length = 64\n[[models]]\ndir = \"b\"\n").unwrap();
        config.serve_only(PathBuf::from("c"));
        let models = config.effective_models();
        assert_eq!(models.len(), 1);
        assert_eq!((models[0].dir.as_path(), models[0].max_seq_length), (Path::new("c"), Some(64)));
        config.validate().unwrap();
    }

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let text = include_str!("../config/akidb.toml");
        let config = Config::from_toml(text).unwrap();
        config.validate().unwrap();
        // The example documents the defaults: apart from its device list it must equal them.
        let mut without_devices = config.clone();
        without_devices.devices.clear();
        assert_eq!(without_devices, Config::default());
        assert_eq!(config.effective_devices(), vec![DeviceConfig::default()]);
    }

    #[test]
    fn fp8_is_refused_with_what_to_do_instead() {
        let text = "[[devices]]\nep = \"tensorrt\"\n[devices.tensorrt]\nfp8 = true\nprofile_batch = [1, 8, 32]\n";
        let errors = Config::from_toml(text).unwrap().validate().unwrap_err().0.join("\n");
        assert!(
            errors.contains("fp8") && errors.contains("Q/DQ") && errors.contains("model.file"),
            "{errors}"
        );
    }

    #[test]
    fn model_file_must_stay_inside_the_model_directory() {
        for file in ["/etc/model.onnx", "../model.onnx"] {
            let text = format!("[model]\nfile = {file:?}\n");
            let errors = Config::from_toml(&text).unwrap().validate().unwrap_err().0.join("\n");
            assert!(errors.contains("model.file"), "{errors}");
        }
        let ok = Config::from_toml("[model]\nfile = \"onnx/model_fp16.onnx\"\n").unwrap();
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn validate_reports_every_problem() {
        let text = r#"
            [server]
            max_connections = 0
            max_inputs = 0
            [model]
            pooling = "max"
            [[devices]]
            ep = "cuda"
            fallback = ["cuda", "cpu", "cpu"]
            [devices.tensorrt]
            profile_batch = [4, 2, 1]
            [batcher]
            max_batch_size = 0
        "#;
        let errors = Config::from_toml(text).unwrap().validate().unwrap_err().0;
        let joined = errors.join("\n");
        for needle in [
            "max_connections",
            "max_inputs",
            "pooling",
            "repeats",
            "twice",
            "profile_batch",
            "max_batch_size",
        ] {
            assert!(joined.contains(needle), "{needle} missing from:\n{joined}");
        }
        assert!(errors.len() >= 7);
    }

    #[test]
    fn a_tensorrt_profile_must_cover_the_largest_batch() {
        let text = "[batcher]\nmax_batch_size = 256\n[[devices]]\nep = \"tensorrt\"\n";
        let errors = Config::from_toml(text).unwrap().validate().unwrap_err().0;
        assert!(
            errors.iter().any(|e| e.contains("up to 64, below batcher.max_batch_size (256)")),
            "{errors:?}"
        );
        let raised = format!("{text}[devices.tensorrt]\nprofile_batch = [1, 64, 256]\n");
        Config::from_toml(&raised).unwrap().validate().unwrap();
        // The CPU device has no profile to cover.
        Config::from_toml("[batcher]\nmax_batch_size = 256\n").unwrap().validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_modes_are_errors() {
        assert!(Config::from_toml("[server]\nsokcet = \"/x\"").unwrap_err().contains("sokcet"));
        assert!(Config::from_toml("[server]\nsocket_mode = \"rw\"").is_err());
        let config = Config::from_toml("[server]\nsocket_mode = \"0600\"").unwrap();
        assert_eq!(config.server.socket_mode, 0o600);
    }

    #[test]
    fn ep_chain_lists_fallbacks_in_order() {
        let config = Config::from_toml("[[devices]]\nep = \"tensorrt\"\nfallback = [\"cuda\", \"cpu\"]").unwrap();
        assert_eq!(config.devices[0].ep_chain(), vec![EpKind::Tensorrt, EpKind::Cuda, EpKind::Cpu]);
    }
}
