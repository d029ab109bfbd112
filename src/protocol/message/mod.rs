//! Requests and responses of protocol v1, and the checks that turn a frame body into a [`Request`].
//!
//! Every message is a MessagePack map with string keys. The request struct ([`RawRequest`]) is shared by the
//! daemon (decoding) and the clients (encoding), so both sides agree on field names by construction.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{MAX_DEPTH, PROTOCOL_VERSION};

/// Error codes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid MessagePack, not a map, or a field has the wrong type or value.
    InvalidRequest,
    /// `v` is not 1.
    UnsupportedVersion,
    /// `op` is not known.
    UnknownOp,
    /// The frame's length is over `max_frame_bytes`; the connection is closed.
    FrameTooLarge,
    /// More than `max_inputs` inputs.
    TooManyInputs,
    /// An input is over the model's max tokens and `truncate` is false.
    InputTooLong,
    /// The queue for the request's class is full, or the thermal state refuses its class.
    Overloaded,
    /// The reply was not ready within `deadline_ms`.
    DeadlineExceeded,
    /// The daemon is stopping.
    ShuttingDown,
    /// The peer's uid/gid is not allowed; the connection is closed.
    PermissionDenied,
    /// No inference device can serve (still starting, or every device failed).
    Unavailable,
    /// `model` names a model this daemon does not serve (the message lists the ones it does).
    UnknownModel,
    /// The daemon failed while serving the request (e.g. an inference device failed mid-batch).
    Internal,
    /// A code this client does not know (a newer daemon).
    #[serde(other)]
    Unknown,
}

/// Priority classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Served first, never deferred.
    Realtime,
    /// The default.
    #[default]
    Normal,
    /// Served when nothing else waits.
    Bulk,
}

/// How an `embed` reply carries its vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// One `bin` of count × dim little-endian f32, row-major.
    #[default]
    F32,
    /// An array of arrays of float32.
    Array,
}

/// Every field a request may carry. Clients fill it; the daemon checks it with [`decode_request`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawRequest {
    /// Protocol version; absent means 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v: Option<u64>,
    /// Chosen by the client, echoed in the reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// "embed", "health", "info" or "status".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// embed: the texts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    /// embed: L2-normalize (default: the model's setting).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// embed: cut over-long inputs (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    /// embed: keep the first N dimensions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u64>,
    /// embed: priority class (default normal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// embed: answer `deadline_exceeded` if not done this many ms after receipt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// embed: "f32" (default) or "array".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
    /// embed: one of the model's prompts (`info.prompts`) to put before every input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_name: Option<String>,
    /// embed: a literal prefix to put before every input (exclusive with `prompt_name`; "" means no prompt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// embed: the model to use, by name (default: the daemon's first model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// embed: false bypasses the embedding cache (no lookup, nothing stored); default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// rerank: the query the documents are scored against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// rerank: the candidates to score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub documents: Option<Vec<String>>,
    /// rerank: another name for `documents` (TEI's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub texts: Option<Vec<String>>,
    /// rerank: answer only the N best (default: all, best first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_n: Option<u64>,
    /// rerank: the logits instead of the model's activation of them (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_scores: Option<bool>,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The client's id.
    pub id: u64,
    /// What is asked.
    pub op: Op,
}

/// The operations of protocol v1.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Embed texts.
    Embed(EmbedRequest),
    /// Is the daemon ready?
    Health,
    /// Model and limits.
    Info,
    /// Operator's view: devices, queues, counters, latency.
    Status,
    /// Score documents against a query with a cross-encoder.
    Rerank(RerankRequest),
}

/// A checked `rerank` request.
#[derive(Debug, Clone, PartialEq)]
pub struct RerankRequest {
    /// The query.
    pub query: String,
    /// The candidates (1..=max_inputs).
    pub documents: Vec<String>,
    /// Answer only the N best.
    pub top_n: Option<usize>,
    /// The logits instead of their activation.
    pub raw_scores: bool,
    /// Cut over-long pairs (longest first); false answers `input_too_long` instead.
    pub truncate: bool,
    /// Priority class.
    pub priority: Priority,
    /// Deadline after receipt, in ms.
    pub deadline_ms: Option<u64>,
    /// The model asked for by name (None: the daemon's first reranker).
    pub model: Option<String>,
    /// Whether the cache may answer (and store) the pairs' logits.
    pub cache: bool,
}

/// A checked `embed` request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    /// The texts (1..=max_inputs).
    pub inputs: Vec<String>,
    /// L2-normalize (None: the model's default).
    pub normalize: Option<bool>,
    /// Cut over-long inputs.
    pub truncate: bool,
    /// Keep the first N dimensions.
    pub dimensions: Option<usize>,
    /// Priority class.
    pub priority: Priority,
    /// Deadline after receipt, in ms.
    pub deadline_ms: Option<u64>,
    /// Reply encoding.
    pub encoding: Encoding,
    /// The model prompt to apply, by name (checked against the model by the daemon).
    pub prompt_name: Option<String>,
    /// A literal prompt (exclusive with `prompt_name`; checked by the daemon, which names the known prompts).
    pub prompt: Option<String>,
    /// The model asked for by name (checked by the daemon, which names the models it serves).
    pub model: Option<String>,
    /// Whether the embedding cache may answer (and store) this request.
    pub cache: bool,
}

/// A request that cannot be served as sent; becomes an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The request's id, or 0 when it could not be read.
    pub id: u64,
    /// The code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

/// `error` in an error reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// Fields every response has; clients read this first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version.
    pub v: u64,
    /// The request's id.
    pub id: u64,
    /// Whether the request succeeded.
    pub ok: bool,
    /// Present when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// Vectors in an `embed` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Embeddings {
    /// count × dim little-endian f32.
    F32(serde_bytes::ByteBuf),
    /// One array per input.
    Array(Vec<Vec<f32>>),
}

/// `timing_us` of an `embed` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Timing {
    /// From receipt to the start of the batch that finished the request.
    pub queue: u64,
    /// Time inside the model for the request's batches.
    pub inference: u64,
    /// From receipt to reply.
    pub total: u64,
}

/// Reply to `embed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedReply {
    /// Protocol version.
    pub v: u64,
    /// The request's id.
    pub id: u64,
    /// Always true.
    pub ok: bool,
    /// Model name.
    pub model: String,
    /// Dimension of each vector (after `dimensions`).
    pub dim: u64,
    /// Number of vectors.
    pub count: u64,
    /// The vectors.
    pub embeddings: Embeddings,
    /// Total tokens after truncation.
    pub tokens: u64,
    /// Indices of inputs that were truncated.
    pub truncated: Vec<u64>,
    /// Where the time went.
    pub timing_us: Timing,
}

/// One scored document of a `rerank` reply.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RerankResult {
    /// The document's index in the request.
    pub index: u64,
    /// Its score: the model's activation of the logit (sigmoid for most rerankers), or the logit itself with
    /// `raw_scores`.
    pub score: f32,
}

/// Reply to `rerank`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankReply {
    /// Protocol version.
    pub v: u64,
    /// The request's id.
    pub id: u64,
    /// Always true.
    pub ok: bool,
    /// Model name.
    pub model: String,
    /// The documents, best first (ties in request order), at most `top_n`.
    pub results: Vec<RerankResult>,
    /// Total tokens of the pairs after truncation.
    pub tokens: u64,
    /// Indices of documents whose pair was truncated.
    pub truncated: Vec<u64>,
    /// Where the time went.
    pub timing_us: Timing,
}

/// Reply to `health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReply {
    /// Protocol version.
    pub v: u64,
    /// The request's id.
    pub id: u64,
    /// Always true.
    pub ok: bool,
    /// "starting" | "ready" | "degraded" | "stopping".
    pub status: String,
}

/// Reply to `info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InfoReply {
    /// Protocol version.
    pub v: u64,
    /// The request's id.
    pub id: u64,
    /// Always true.
    pub ok: bool,
    /// Model name.
    pub model: String,
    /// Embedding dimension.
    pub dim: u64,
    /// Truncation length in tokens.
    pub max_tokens: u64,
    /// "mean" | "cls" | "last_token".
    pub pooling: String,
    /// Whether vectors are normalized by default.
    pub normalize: bool,
    /// Most inputs per request.
    pub max_inputs: u64,
    /// Largest frame body.
    pub max_frame_bytes: u64,
    /// Token budget of a batch.
    pub max_batch_tokens: u64,
    /// Protocol version.
    pub protocol: u64,
    /// Daemon version.
    pub version: String,
    /// The model's named prompts (`prompt_name` values) and their text.
    #[serde(default)]
    pub prompts: BTreeMap<String, String>,
    /// The prompt applied when a request names none and gives no `prompt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_prompt_name: Option<String>,
    /// Every model served, the default (described by the fields above) first. Absent from daemons older than
    /// several models.
    #[serde(default)]
    pub models: Vec<ModelDescription>,
}

/// `info.models[]`: one served model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ModelDescription {
    /// The name requests give in `model`.
    pub name: String,
    /// "embed" (an embedding model: `embed` requests) or "rerank" (a cross-encoder: `rerank` requests).
    #[serde(default = "embed_task")]
    pub task: String,
    /// Embedding dimension.
    pub dim: u64,
    /// Truncation length in tokens.
    pub max_tokens: u64,
    /// "mean" | "cls" | "last_token".
    pub pooling: String,
    /// Whether vectors are normalized by default.
    pub normalize: bool,
    /// Named prompts and their text.
    #[serde(default)]
    pub prompts: BTreeMap<String, String>,
    /// The prompt applied when a request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_prompt_name: Option<String>,
}

fn embed_task() -> String {
    "embed".to_owned()
}

/// Reply to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Protocol version.
    pub v: u64,
    /// The request's id.
    pub id: u64,
    /// Always true.
    pub ok: bool,
    /// The status itself.
    #[serde(flatten)]
    pub body: StatusBody,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StatusBody {
    /// Same as `health`.
    pub status: String,
    /// Daemon version.
    pub version: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Model name, dimension, max tokens, pooling.
    pub model: ModelStatus,
    /// One entry per inference device.
    pub devices: Vec<DeviceStatus>,
    /// Queued inputs per class.
    pub queues: BTreeMap<String, u64>,
    /// Counters since start.
    pub counters: Counters,
    /// Latency percentiles (ms) per class over the recent window.
    pub latency_ms: BTreeMap<String, Percentiles>,
    /// Mean inputs per batch since start.
    pub mean_batch_size: f64,
    /// Padded tokens / real tokens since start (1.0 = no padding).
    pub padding_ratio: f64,
    /// Recent throughput.
    pub throughput: Throughput,
    /// The embedding cache (absent from daemons older than it).
    #[serde(default)]
    pub cache: CacheStats,
    /// Whether `batcher.realtime_max_wait_ms` can hold on this model and these devices.
    #[serde(default)]
    pub realtime: RealtimeStatus,
    /// Thermal policy state.
    #[serde(default)]
    pub thermal: ThermalStatus,
    /// Per served model, the default first: its queues, latency, throughput, cache and devices. Absent from
    /// daemons older than several models.
    #[serde(default)]
    pub models: Vec<ModelServeStatus>,
}

/// `status.models[]`: how one model is being served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ModelServeStatus {
    /// Name.
    pub name: String,
    /// Dimension.
    pub dim: u64,
    /// Truncation length.
    pub max_tokens: u64,
    /// Pooling mode.
    pub pooling: String,
    /// Indexes of the devices that hold a session of it.
    pub devices: Vec<u64>,
    /// Its queued inputs per class.
    pub queues: BTreeMap<String, u64>,
    /// Its latency percentiles (ms) per class over the recent window (embed requests served).
    pub latency_ms: BTreeMap<String, Percentiles>,
    /// Its recent throughput.
    pub throughput: Throughput,
    /// Its share of the embedding cache.
    pub cache: ModelCacheStats,
    /// One short input alone on its fastest device, once warm (ms; absent until measured).
    pub smallest_batch_ms: Option<f64>,
}

/// `status.realtime`: what realtime latency this model and device allow.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct RealtimeStatus {
    /// `batcher.realtime_max_wait_ms`: the configured bound on a realtime request's wait behind running work.
    pub bound_ms: u64,
    /// One short input alone on the fastest device, once warm (absent until measured).
    pub smallest_batch_ms: Option<f64>,
    /// False when that run alone takes longer than the bound: the bound cannot hold on this model and device.
    pub achievable: bool,
    /// The realtime latency to expect at worst: the bound's worth of running work (at least one smallest
    /// batch) plus the request's own run.
    pub achievable_ms: Option<f64>,
}

/// `status.cache`: the embedding cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CacheStats {
    /// Whether it is on (`cache.max_bytes` > 0).
    pub enabled: bool,
    /// Its byte budget.
    pub max_bytes: u64,
    /// Bytes in use (keys, vectors and bookkeeping).
    pub bytes: u64,
    /// Vectors held.
    pub entries: u64,
    /// Inputs answered from the cache.
    pub hits: u64,
    /// Inputs looked up and not found (computed).
    pub misses: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Hits, misses, entries, bytes and evictions per model name.
    pub per_model: BTreeMap<String, ModelCacheStats>,
}

/// `status.cache.per_model.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct ModelCacheStats {
    /// Inputs answered from the cache.
    pub hits: u64,
    /// Inputs computed.
    pub misses: u64,
    /// Vectors of this model held.
    #[serde(default)]
    pub entries: u64,
    /// Bytes they take.
    #[serde(default)]
    pub bytes: u64,
    /// Its entries evicted to make room (for any model's).
    #[serde(default)]
    pub evictions: u64,
}

/// `status.model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ModelStatus {
    /// Name.
    pub name: String,
    /// Dimension.
    pub dim: u64,
    /// Truncation length.
    pub max_tokens: u64,
    /// Pooling mode.
    pub pooling: String,
}

/// `status.devices[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DeviceStatus {
    /// Index in the config's device list.
    pub index: u64,
    /// The provider asked for.
    pub kind: String,
    /// The provider really in use ("" until the session is built).
    pub ep: String,
    /// The precision the device computes in: "fp32", "fp16", "bf16", "int8" or "fp8" (from the provider's
    /// settings and the graph's weights; absent until the session is built); with several models, their
    /// precisions joined by ",".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// "starting" | "ready" | "busy" | "restarting" | "failed".
    pub state: String,
    /// Restarts since start.
    pub restarts: u64,
    /// Batches run.
    pub batches: u64,
    /// Inputs embedded.
    pub inputs: u64,
    /// Last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The monitor's latest reading (absent before the first sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensors: Option<SensorStatus>,
    /// One ONNX Runtime session per model the device holds (absent from daemons older than several models).
    #[serde(default)]
    pub sessions: Vec<SessionStatus>,
}

/// `status.devices[].sessions[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SessionStatus {
    /// The model's name.
    pub model: String,
    /// Memory the session took: the process's resident memory added while it was built and warmed up (bytes;
    /// on a GPU this is host memory, the device memory is in `sensors.memory_used_mib`).
    pub memory_bytes: u64,
    /// The precision this session computes in (see `precision` of the device).
    #[serde(default)]
    pub precision: String,
}

/// `status.devices[].sensors`: each figure absent when unknown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SensorStatus {
    /// °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
    /// Watts drawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_w: Option<f64>,
    /// Enforced power limit, watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_limit_w: Option<f64>,
    /// Percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_pct: Option<f64>,
    /// MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_clock_mhz: Option<f64>,
    /// MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_clock_mhz: Option<f64>,
    /// MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_mib: Option<f64>,
    /// Active throttle reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<String>,
    /// Performance state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perf_state: Option<String>,
    /// "nvml", "sysfs" or "nvml+sysfs".
    pub source: String,
    /// Why figures are unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

/// `status.thermal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ThermalStatus {
    /// "normal" | "soft" | "hard".
    pub state: String,
    /// The hottest device reading, °C, if any is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hottest_c: Option<f64>,
    /// Soft limit.
    pub soft_c: f64,
    /// Hard limit.
    pub hard_c: f64,
    /// State changes since start.
    pub transitions: u64,
}

/// `status.counters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Counters {
    /// Requests answered (all ops).
    pub requests: u64,
    /// Inputs embedded.
    pub inputs: u64,
    /// Tokens embedded (after truncation).
    pub tokens: u64,
    /// Batches run.
    pub batches: u64,
    /// Error replies by code.
    pub errors: BTreeMap<String, u64>,
    /// Connections accepted.
    pub connections: u64,
    /// Requests read and not yet answered.
    #[serde(default)]
    pub in_flight: u64,
    /// Inputs computed after their caller stopped waiting (deadline passed during the batch): wasted work.
    #[serde(default)]
    pub late_inputs: u64,
}

/// Latency percentiles in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Percentiles {
    /// Requests in the window.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// `status.throughput`, over the recent window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Throughput {
    /// Window length in seconds.
    pub window_s: f64,
    /// embed requests per second.
    pub requests_per_s: f64,
    /// Inputs per second.
    pub inputs_per_s: f64,
}

/// Error reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Protocol version.
    pub v: u64,
    /// The request's id (0 when it could not be read).
    pub id: u64,
    /// Always false.
    pub ok: bool,
    /// What went wrong.
    pub error: ErrorBody,
}

// === impl ErrorCode ===

impl ErrorCode {
    /// Every code a daemon sends.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownOp,
        ErrorCode::FrameTooLarge,
        ErrorCode::TooManyInputs,
        ErrorCode::InputTooLong,
        ErrorCode::Overloaded,
        ErrorCode::DeadlineExceeded,
        ErrorCode::ShuttingDown,
        ErrorCode::PermissionDenied,
        ErrorCode::Unavailable,
        ErrorCode::UnknownModel,
        ErrorCode::Internal,
    ];

    /// The code as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::TooManyInputs => "too_many_inputs",
            ErrorCode::InputTooLong => "input_too_long",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Priority {
    /// All classes, highest first.
    pub const ALL: [Priority; 3] = [Priority::Realtime, Priority::Normal, Priority::Bulk];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Realtime => "realtime",
            Priority::Normal => "normal",
            Priority::Bulk => "bulk",
        }
    }

    /// Index 0..3, highest first.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

impl RequestError {
    fn new(id: u64, code: ErrorCode, message: impl Into<String>) -> RequestError {
        RequestError {
            id,
            code,
            message: message.into(),
        }
    }

    /// The error reply for this error.
    pub fn reply(&self) -> ErrorReply {
        ErrorReply::new(self.id, self.code, self.message.clone())
    }
}

impl ErrorReply {
    /// Builds an error reply.
    pub fn new(id: u64, code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            v: PROTOCOL_VERSION,
            id,
            ok: false,
            error: ErrorBody {
                code,
                message: message.into(),
            },
        }
    }
}

// === decoding ===

/// Only the id, to answer a request whose other fields are wrong.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

fn deserialize<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut rest = body;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    de.set_max_depth(MAX_DEPTH);
    let value = T::deserialize(&mut de)?;
    if !rest.is_empty() {
        return Err(rmp_serde::decode::Error::Syntax("trailing bytes after the body's map".into()));
    }
    Ok(value)
}

/// Checks a frame body and turns it into a [`Request`].
///
/// The body must be one MessagePack map. When it cannot be read, the error carries the request's id if that much
/// could be read, else 0.
pub fn decode_request(body: &[u8], max_inputs: usize) -> Result<Request, RequestError> {
    let is_map = matches!(body.first(), Some(0x80..=0x8f | 0xde | 0xdf));
    if !is_map {
        return Err(RequestError::new(0, ErrorCode::InvalidRequest, "the body is not a MessagePack map"));
    }
    let raw: RawRequest = deserialize(body).map_err(|e| {
        let id = deserialize::<IdOnly>(body).ok().and_then(|r| r.id).unwrap_or(0);
        RequestError::new(id, ErrorCode::InvalidRequest, format!("cannot decode request: {e}"))
    })?;
    check_request(raw, max_inputs)
}

fn check_request(raw: RawRequest, max_inputs: usize) -> Result<Request, RequestError> {
    let Some(id) = raw.id else {
        return Err(RequestError::new(0, ErrorCode::InvalidRequest, "missing id"));
    };
    let version = raw.v.unwrap_or(PROTOCOL_VERSION);
    if version != PROTOCOL_VERSION {
        return Err(RequestError::new(
            id,
            ErrorCode::UnsupportedVersion,
            format!("protocol version {version} is not supported (this daemon speaks 1)"),
        ));
    }
    let Some(op) = raw.op.as_deref() else {
        return Err(RequestError::new(id, ErrorCode::InvalidRequest, "missing op"));
    };
    let op = match op {
        "embed" => Op::Embed(check_embed(id, raw.clone(), max_inputs)?),
        "health" => Op::Health,
        "info" => Op::Info,
        "status" => Op::Status,
        "rerank" => Op::Rerank(check_rerank(id, raw, max_inputs)?),
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(RequestError::new(
                id,
                ErrorCode::UnknownOp,
                format!("unknown op {shown:?} (known: embed, rerank, health, info, status)"),
            ));
        }
    };
    Ok(Request { id, op })
}

fn check_embed(id: u64, raw: RawRequest, max_inputs: usize) -> Result<EmbedRequest, RequestError> {
    let inputs = raw
        .inputs
        .ok_or_else(|| RequestError::new(id, ErrorCode::InvalidRequest, "embed needs inputs"))?;
    if inputs.is_empty() {
        return Err(RequestError::new(id, ErrorCode::InvalidRequest, "inputs is empty"));
    }
    if inputs.len() > max_inputs {
        return Err(RequestError::new(
            id,
            ErrorCode::TooManyInputs,
            format!("{} inputs, at most {max_inputs} per request", inputs.len()),
        ));
    }
    let dimensions = match raw.dimensions {
        Some(0) => return Err(RequestError::new(id, ErrorCode::InvalidRequest, "dimensions must be at least 1")),
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    };
    Ok(EmbedRequest {
        inputs,
        normalize: raw.normalize,
        truncate: raw.truncate.unwrap_or(true),
        dimensions,
        priority: raw.priority.unwrap_or_default(),
        deadline_ms: raw.deadline_ms,
        encoding: raw.encoding.unwrap_or_default(),
        prompt_name: raw.prompt_name,
        prompt: raw.prompt,
        model: raw.model,
        cache: raw.cache.unwrap_or(true),
    })
}

fn check_rerank(id: u64, raw: RawRequest, max_inputs: usize) -> Result<RerankRequest, RequestError> {
    let invalid = |message: &str| RequestError::new(id, ErrorCode::InvalidRequest, message);
    let query = raw.query.ok_or_else(|| invalid("rerank needs a query"))?;
    let documents = match (raw.documents, raw.texts) {
        (Some(_), Some(_)) => return Err(invalid("documents and texts are the same field: send one")),
        (Some(list), None) | (None, Some(list)) => list,
        (None, None) => return Err(invalid("rerank needs documents (or texts)")),
    };
    if documents.is_empty() {
        return Err(invalid("documents is empty"));
    }
    if documents.len() > max_inputs {
        return Err(RequestError::new(
            id,
            ErrorCode::TooManyInputs,
            format!("{} documents, at most {max_inputs} per request", documents.len()),
        ));
    }
    if raw.inputs.is_some() || raw.prompt.is_some() || raw.prompt_name.is_some() || raw.dimensions.is_some() {
        return Err(invalid("rerank takes no inputs, prompt, prompt_name or dimensions"));
    }
    let top_n = match raw.top_n {
        Some(0) => return Err(invalid("top_n must be at least 1")),
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    };
    Ok(RerankRequest {
        query,
        documents,
        top_n,
        raw_scores: raw.raw_scores.unwrap_or(false),
        truncate: raw.truncate.unwrap_or(true),
        priority: raw.priority.unwrap_or_default(),
        deadline_ms: raw.deadline_ms,
        model: raw.model,
        cache: raw.cache.unwrap_or(true),
    })
}

/// Encodes any response as a MessagePack map with string keys.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(message).expect("responses are plain structs that always serialize")
}

/// Packs vectors as count × dim little-endian f32.
pub fn pack_f32(vectors: &[Vec<f32>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(vectors.iter().map(|v| v.len() * 4).sum());
    for vector in vectors {
        for x in vector {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

/// Unpacks count × dim little-endian f32.
pub fn unpack_f32(bytes: &[u8], dim: usize) -> Option<Vec<Vec<f32>>> {
    if dim == 0 || bytes.len() % (dim * 4) != 0 {
        return None;
    }
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some(floats.chunks_exact(dim).map(<[f32]>::to_vec).collect())
}

#[cfg(test)]
mod tests;
