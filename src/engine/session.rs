//! The ONNX Runtime session: loading the library once, building a session on the configured execution provider,
//! checking the graph's inputs and outputs, and running padded batches.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ndarray::Array2;
use ort::environment::Environment;
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType};

use super::ep;
use super::model::{model_error, ModelInfo};
use super::pooling;
use super::tokenizer::{Encoded, TextTokenizer};
use super::trt_cache::{self, BuildHost, CacheKey, CachePlan, TrtCache};
use super::{check_dimensions, finish_vector, EmbedOptions, EmbedOutput, Embedder, EngineError, SharedTokenizer};
use crate::config::{DeviceConfig, EpKind, OrtConfig};

/// The ONNX Runtime library `make setup` places, as an absolute path into this checkout.
pub const SETUP_ORT_LIBRARY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/onnxruntime/libonnxruntime.so.1.32.0");

/// A model session on one device.
pub struct OrtEngine {
    session: Session,
    model: ModelInfo,
    tokenizer: SharedTokenizer,
    active_ep: EpKind,
    precision: String,
    /// A TensorRT engine built into a staging directory, to move into place once the device is warm.
    pending_cache: Option<(PathBuf, PathBuf)>,
    /// The options every run goes with; their terminate flag stops a run from another thread.
    run_options: Arc<RunOptions>,
    /// With ORT's CPU arena: the options of a run larger than `arena_ceiling`, which give its arena memory back
    /// once it ends.
    shrink_options: Option<Arc<RunOptions>>,
    /// Padded tokens (rows × longest row) up to which a run's arena memory is kept for the next one.
    arena_ceiling: usize,
    feeds: Feeds,
    output: Output,
}

/// The graph inputs this engine feeds, worked out once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Feeds {
    /// input_ids (and the other id inputs) as int32 rather than int64.
    int32: bool,
    token_type_ids: bool,
    /// Positions 0..seq for every row, as transformers uses when it is given none (also under left padding).
    position_ids: bool,
}

/// Which graph output holds the embeddings, and in which element type.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Output {
    name: String,
    /// `[batch, hidden]`, already pooled (and headed) by the graph; else `[batch, seq, hidden]` token states.
    pooled: bool,
    element: TensorElementType,
}

/// The process's one ONNX Runtime environment and the library it came from.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// The library to load: `ort.library_path`, else `ORT_DYLIB_PATH`, else the one `make setup` placed.
pub fn ort_library_path(config: &OrtConfig) -> PathBuf {
    if let Some(path) = &config.library_path {
        return path.clone();
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(SETUP_ORT_LIBRARY),
    }
}

/// Loads ONNX Runtime from `path` and creates the process's environment, once.
///
/// ONNX Runtime allows one environment per process and keeps the first library it loaded, so a later call with
/// another path is an error rather than a silent reuse.
pub fn environment(path: &Path) -> Result<Environment, EngineError> {
    environment_with(path, None)
}

/// The process's ONNX Runtime environment with one intra-op thread pool shared by every session (`threads`, 0 =
/// ORT's default; `spin`): for one CPU device holding several models, so that the idle sessions' threads do not
/// spin against the running one while the running one keeps spinning threads (measured on 2 cores: per-session
/// pools that spin took a third of the device in a two-model load; pools that sleep cost realtime requests
/// ~25 ms at the median under load). Sessions built in it use the shared pool.
pub fn environment_with_shared_pool(path: &Path, threads: usize, spin: bool) -> Result<Environment, EngineError> {
    environment_with(path, Some((threads, spin)))
}

fn environment_with(path: &Path, shared_pool: Option<(usize, bool)>) -> Result<Environment, EngineError> {
    let fail = |message: String| EngineError::OrtLibrary {
        path: path.to_owned(),
        message,
    };
    if !path.is_file() {
        return Err(fail(
            "no such file (run `make setup`, or set ort.library_path / ORT_DYLIB_PATH)".into(),
        ));
    }
    let mut slot = ENVIRONMENT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((loaded, env)) = slot.as_ref() {
        if loaded == path {
            return Ok(env.clone());
        }
        return Err(EngineError::OrtLibrary {
            path: path.to_owned(),
            message: format!("this process already loaded ONNX Runtime from {}", loaded.display()),
        });
    }
    let mut builder = ort::init_from(path).map_err(|e| fail(e.to_string()))?.with_name("akidb");
    if let Some((threads, spin)) = shared_pool {
        let mut options = ort::environment::GlobalThreadPoolOptions::default();
        if threads > 0 {
            options = options.with_intra_threads(threads).map_err(|e| fail(e.to_string()))?;
        }
        options = options.with_spin_control(spin).map_err(|e| fail(e.to_string()))?;
        builder = builder.with_global_thread_pool(options);
    }
    let env = builder.build().map_err(|e| fail(e.to_string()))?;
    *slot = Some((path.to_owned(), env.clone()));
    Ok(env)
}

/// The ONNX Runtime library this process loaded, if it loaded one.
fn loaded_library() -> Option<PathBuf> {
    ENVIRONMENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .as_ref()
        .map(|(path, _)| path.clone())
}

/// The ONNX Runtime version of the loaded library: from its build string when that names a release, else from the
/// library's file name (`libonnxruntime.so.1.32.0`), else the whole build string (which carries the commit id).
pub fn ort_version() -> String {
    let resolved = loaded_library().and_then(|path| path.canonicalize().ok()).unwrap_or_default();
    ep::ort_version(ort::info(), &resolved)
}

// === impl OrtEngine ===

impl OrtEngine {
    /// Builds a session for `model` on `device`, following the device's execution-provider policy, and checks
    /// the graph against the model directory with one probe run. Everything wrong with the model itself (inputs it
    /// cannot be fed, outputs it cannot read, a probe that fails) is an [`EngineError::Model`].
    pub fn load(env: &Environment, model: ModelInfo, tokenizer: SharedTokenizer, device: &DeviceConfig) -> Result<OrtEngine, EngineError> {
        let (
            Built {
                session,
                pending_cache,
                arena,
            },
            active_ep,
        ) = build_session(env, &model, device)?;
        let feeds = feeds(&session, &model.onnx_path)?;
        let output = output(&session, &model)?;
        let precision = precision(&model, active_ep, device);
        let inference = |e: ort::Error| EngineError::Inference(e.to_string());
        let run_options = Arc::new(RunOptions::new().map_err(inference)?);
        let shrink_options = if arena {
            let mut options = RunOptions::new().map_err(inference)?;
            options.set("memory.enable_memory_arena_shrinkage", "cpu:0").map_err(inference)?;
            Some(Arc::new(options))
        } else {
            None
        };
        let mut engine = OrtEngine {
            run_options,
            shrink_options,
            arena_ceiling: crate::config::DEFAULT_MAX_BATCH_TOKENS,
            session,
            model,
            tokenizer,
            active_ep,
            precision,
            pending_cache,
            feeds,
            output,
        };
        engine.probe()?;
        Ok(engine)
    }

    /// Moves a TensorRT engine built at load into the cache under its key, now that every warm-up shape has run
    /// (a power loss before this leaves only a staging directory, removed at the next start).
    pub fn commit_engine_cache(&mut self) {
        if let Some((staging, dir)) = self.pending_cache.take() {
            match trt_cache::commit(&staging, &dir) {
                Ok(()) => tracing::info!(cache = %dir.display(), "TensorRT engines cached"),
                Err(reason) => tracing::warn!(%reason, "TensorRT engines not cached"),
            }
        }
    }

    /// Keeps the CPU arena's memory after runs of up to `tokens` padded tokens (the batch token budget); a larger
    /// run (one input longer than the budget) gives what it took back when it ends. No effect without the arena.
    pub fn keep_arena_for(&mut self, tokens: usize) {
        self.arena_ceiling = tokens.max(1);
    }

    /// Whether this engine's CPU session keeps ORT's memory arena.
    pub fn has_arena(&self) -> bool {
        self.shrink_options.is_some()
    }

    /// The tokenizer this engine's inputs must come from.
    pub fn tokenizer(&self) -> &SharedTokenizer {
        &self.tokenizer
    }

    /// Tokenizes, runs and pools a batch of texts in one go (the in-process path used by tests and benchmarks),
    /// with the model's default prompt, if it has one.
    pub fn embed<S: AsRef<str>>(&mut self, texts: &[S], options: &EmbedOptions) -> Result<EmbedOutput, EngineError> {
        self.embed_prompted(texts, (None, None), options)
    }

    /// [`OrtEngine::embed`] with a request's `prompt_name` or literal `prompt` (see [`ModelInfo::resolve_prompt`]).
    pub fn embed_prompted<S: AsRef<str>>(
        &mut self,
        texts: &[S],
        prompt: (Option<&str>, Option<&str>),
        options: &EmbedOptions,
    ) -> Result<EmbedOutput, EngineError> {
        check_dimensions(options, &self.model)?;
        let prompt = self.model.resolve_prompt(prompt.0, prompt.1)?;
        let encoded = self.tokenizer.encode_all(texts, prompt, options.truncate)?;
        let refs: Vec<&Encoded> = encoded.iter().collect();
        let pooled = if refs.is_empty() { Vec::new() } else { self.run(&refs)? };
        Ok(EmbedOutput {
            embeddings: pooled.into_iter().map(|v| finish_vector(v, options, &self.model)).collect(),
            tokens: encoded.iter().map(|e| e.ids.len()).collect(),
            truncated: encoded.iter().enumerate().filter(|(_, e)| e.truncated).map(|(i, _)| i).collect(),
        })
    }

    /// Runs a short input to check that the graph runs and gives vectors of the configured dimension.
    fn probe(&mut self) -> Result<(), EngineError> {
        let probe = self.tokenizer.encode("probe", true)?;
        let out = self
            .run(&[&probe])
            .map_err(|e| model_error(&self.model.onnx_path, &format!("the probe run failed: {e}")))?;
        let got = out.first().map(Vec::len).unwrap_or(0);
        if got != self.model.dim {
            let file = self.model.dir.join("config.json");
            return Err(model_error(
                &file,
                &format!(
                    "says dimension {} but {} gives {got}",
                    self.model.dim,
                    self.model.onnx_path.display()
                ),
            ));
        }
        Ok(())
    }

    fn inputs(&self, batch: &[&Encoded]) -> Result<Vec<(Cow<'static, str>, SessionInputValue<'static>)>, EngineError> {
        let n_rows = batch.len();
        let seq = batch.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
        let left = self.model.pooling.pads_left();
        let pad_id = self.tokenizer.pad_id();
        let mut ids = Array2::<i64>::from_elem((n_rows, seq), pad_id);
        let mut mask = Array2::<i64>::zeros((n_rows, seq));
        let mut types = Array2::<i64>::zeros((n_rows, seq));
        for (row, encoded) in batch.iter().enumerate() {
            let len = encoded.ids.len();
            let start = if left { seq - len } else { 0 };
            for (pos, (&id, &type_id)) in encoded.ids.iter().zip(&encoded.type_ids).enumerate() {
                ids[[row, start + pos]] = id;
                types[[row, start + pos]] = type_id;
                mask[[row, start + pos]] = 1;
            }
        }
        let int32 = self.feeds.int32;
        let tensor = |array: Array2<i64>| -> Result<SessionInputValue<'static>, EngineError> {
            let fail = |e: ort::Error| EngineError::Inference(e.to_string());
            Ok(if int32 {
                Tensor::from_array(array.mapv(|x| x as i32)).map_err(fail)?.into()
            } else {
                Tensor::from_array(array).map_err(fail)?.into()
            })
        };
        let mut inputs = vec![
            (Cow::Borrowed("input_ids"), tensor(ids)?),
            (Cow::Borrowed("attention_mask"), tensor(mask)?),
        ];
        if self.feeds.token_type_ids {
            inputs.push((Cow::Borrowed("token_type_ids"), tensor(types)?));
        }
        if self.feeds.position_ids {
            let positions = Array2::from_shape_fn((n_rows, seq), |(_, pos)| pos as i64);
            inputs.push((Cow::Borrowed("position_ids"), tensor(positions)?));
        }
        Ok(inputs)
    }
}

/// The precision a session computes in: on TensorRT, what its builder flags (and an FP8 Q/DQ graph) make it;
/// elsewhere, the graph's quantization in words when it has one (e.g. "int4 weights, block 32, int8 compute"),
/// else the element type most of its weights are stored in.
fn precision(model: &ModelInfo, ep: EpKind, device: &DeviceConfig) -> String {
    let weights = model.weights_precision.unwrap_or("fp32");
    match ep {
        EpKind::Tensorrt if device.tensorrt.int8 => "int8".into(),
        EpKind::Tensorrt if weights == "fp8" => "fp8".into(),
        EpKind::Tensorrt if device.tensorrt.fp16 => "fp16".into(),
        _ => model.quantization.clone().unwrap_or_else(|| weights.into()),
    }
}

/// Checks the graph's inputs and decides how to feed them.
fn feeds(session: &Session, onnx: &Path) -> Result<Feeds, EngineError> {
    let mut feeds = Feeds {
        int32: false,
        token_type_ids: false,
        position_ids: false,
    };
    let mut names = Vec::new();
    for input in session.inputs() {
        let name = input.name();
        match name {
            "input_ids" | "attention_mask" => {}
            "token_type_ids" => feeds.token_type_ids = true,
            "position_ids" => feeds.position_ids = true,
            past if past.starts_with("past_key_values") || past.starts_with("past.") => {
                return Err(model_error(
                    onnx,
                    &format!(
                        "is an export with a KV cache (input {past:?}); akidbd needs one without: export with \
                         `optimum-cli export onnx --task feature-extraction` (not `feature-extraction-with-past`), \
                         or with torch.onnx.export on the model's forward without past_key_values"
                    ),
                ))
            }
            other => {
                return Err(model_error(
                    onnx,
                    &format!(
                        "unsupported graph input {other:?} (akidbd feeds input_ids, attention_mask, token_type_ids \
                         and position_ids)"
                    ),
                ))
            }
        }
        if name == "input_ids" {
            match input.dtype().tensor_type() {
                Some(TensorElementType::Int64) => {}
                Some(TensorElementType::Int32) => feeds.int32 = true,
                other => {
                    return Err(model_error(
                        onnx,
                        &format!("input_ids has element type {other:?}; akidbd feeds int64 or int32"),
                    ))
                }
            }
        }
        names.push(name);
    }
    for required in ["input_ids", "attention_mask"] {
        if !names.contains(&required) {
            return Err(model_error(onnx, &format!("graph has no {required} input (inputs: {names:?})")));
        }
    }
    Ok(feeds)
}

/// Chooses the output from what modules.json describes: with modules after pooling (Dense, ...) only the graph's
/// `sentence_embedding` carries them; else token states, pooled here, are preferred.
fn output(session: &Session, model: &ModelInfo) -> Result<Output, EngineError> {
    let onnx = &model.onnx_path;
    let outputs: Vec<(&str, Option<TensorElementType>)> = session.outputs().iter().map(|o| (o.name(), o.dtype().tensor_type())).collect();
    let find = |name: &str| outputs.iter().find(|(n, _)| *n == name);
    let names: Vec<&str> = outputs.iter().map(|(n, _)| *n).collect();
    let chosen = if model.is_reranker() {
        let Some(found) = find("logits") else {
            return Err(model_error(
                onnx,
                &format!(
                    "config.json describes a cross-encoder (sequence classification), but the graph has no logits \
                     output (outputs: {names:?}); export the sequence-classification model"
                ),
            ));
        };
        (found, true)
    } else if !model.head_modules.is_empty() {
        let Some(found) = find("sentence_embedding") else {
            return Err(model_error(
                onnx,
                &format!(
                    "modules.json applies {} after pooling, which only a graph with a sentence_embedding output can \
                     do, and this graph has none (outputs: {names:?}); export the whole sentence-transformers \
                     pipeline, or serve a model without these modules",
                    model.head_modules.join(", ")
                ),
            ));
        };
        (found, true)
    } else if let Some(found) = find("last_hidden_state").or_else(|| find("token_embeddings")) {
        (found, false)
    } else if let Some(found) = find("sentence_embedding") {
        (found, true)
    } else {
        return Err(model_error(
            onnx,
            &format!("no last_hidden_state, token_embeddings or sentence_embedding output (outputs: {names:?})"),
        ));
    };
    let ((name, element), pooled) = chosen;
    let element = match element {
        Some(t @ (TensorElementType::Float32 | TensorElementType::Float16 | TensorElementType::Bfloat16)) => *t,
        other => {
            return Err(model_error(
                onnx,
                &format!("output {name} has element type {other:?}; akidbd reads float32, float16 and bfloat16"),
            ))
        }
    };
    Ok(Output {
        name: (*name).to_owned(),
        pooled,
        element,
    })
}

/// A float output as f32: borrowed when it already is, converted otherwise.
fn extract_f32<'a>(value: &'a ort::value::DynValue, element: TensorElementType) -> Result<(Vec<usize>, Cow<'a, [f32]>), EngineError> {
    let fail = |e: ort::Error| EngineError::Inference(e.to_string());
    let dims = |shape: &ort::value::Shape| shape.iter().map(|&d| d.max(0) as usize).collect::<Vec<usize>>();
    Ok(match element {
        TensorElementType::Float16 => {
            let (shape, data) = value.try_extract_tensor::<half::f16>().map_err(fail)?;
            (dims(shape), Cow::Owned(data.iter().map(|x| x.to_f32()).collect()))
        }
        TensorElementType::Bfloat16 => {
            let (shape, data) = value.try_extract_tensor::<half::bf16>().map_err(fail)?;
            (dims(shape), Cow::Owned(data.iter().map(|x| x.to_f32()).collect()))
        }
        _ => {
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(fail)?;
            (dims(shape), Cow::Borrowed(data))
        }
    })
}

impl Embedder for OrtEngine {
    fn model(&self) -> &ModelInfo {
        &self.model
    }

    fn active_ep(&self) -> EpKind {
        self.active_ep
    }

    fn precision(&self) -> &str {
        &self.precision
    }

    fn run_stopper(&self) -> Option<crate::engine::RunStopper> {
        let options = std::iter::once(&self.run_options).chain(&self.shrink_options).cloned().collect();
        Some(crate::engine::RunStopper(options))
    }

    fn run(&mut self, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>, EngineError> {
        let inputs = self.inputs(batch)?;
        let pooling = self.model.pooling;
        let left = pooling.pads_left();
        let Output { name, pooled, element } = self.output.clone();
        let padded = batch.len() * batch.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let options = match &self.shrink_options {
            Some(shrink) if padded > self.arena_ceiling => shrink,
            _ => &self.run_options,
        };
        // A stop asked for after the previous run ended must not cancel this one.
        let _ = options.unterminate();
        let outputs = self
            .session
            .run_with_options(inputs, &**options)
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        let value = outputs
            .get(&name)
            .ok_or_else(|| EngineError::Inference(format!("output {name} missing")))?;
        let (dims, data) = extract_f32(value, element)?;
        let rows = batch.len();
        if pooled {
            let [n, dim] = dims[..] else {
                return Err(EngineError::Inference(format!("{name} has shape {dims:?}, expected [batch, dim]")));
            };
            if n != rows || dim == 0 {
                return Err(EngineError::Inference(format!("{name} has shape {dims:?} for {rows} inputs")));
            }
            return Ok(data.chunks_exact(dim).map(<[f32]>::to_vec).collect());
        }
        let [n, seq, dim] = dims[..] else {
            return Err(EngineError::Inference(format!(
                "{name} has shape {dims:?}, expected [batch, seq, hidden]"
            )));
        };
        if n != rows {
            return Err(EngineError::Inference(format!("{name} has {n} rows for {rows} inputs")));
        }
        Ok(batch
            .iter()
            .enumerate()
            .map(|(row, encoded)| {
                let hidden = &data[row * seq * dim..(row + 1) * seq * dim];
                pooling::pool_row(hidden, seq, dim, encoded.ids.len().max(1), pooling, left)
            })
            .collect())
    }
}

/// Tries the device's providers in order and returns the first session that builds, with its provider.
fn build_session(env: &Environment, model: &ModelInfo, device: &DeviceConfig) -> Result<(Built, EpKind), EngineError> {
    let chain = device.ep_chain();
    let mut failures = Vec::new();
    for (position, kind) in chain.iter().copied().enumerate() {
        match try_build(env, model, device, kind) {
            Ok(built) => {
                if position > 0 {
                    tracing::warn!(asked = %device.ep, using = %kind, failures = %failures.join("; "), "execution provider fell back");
                }
                return Ok((built, kind));
            }
            Err(BuildError::Model(message)) => return Err(model_error(&model.onnx_path, &message)),
            Err(BuildError::Provider(message)) => {
                tracing::warn!(ep = %kind, error = %message, "execution provider did not register");
                failures.push(format!("{kind}: {message}"));
            }
        }
    }
    let policy = if device.fallback.is_empty() {
        "; no fallback is configured for this device (devices.fallback)"
    } else {
        ""
    };
    Err(EngineError::NoExecutionProvider {
        tried: format!("{}{policy}", failures.join("; ")),
    })
}

enum BuildError {
    /// The provider could not be used; the next one may be.
    Provider(String),
    /// The model itself cannot be loaded, whatever the provider.
    Model(String),
}

/// A session that built, and the engine-cache directory still to be moved into place once it is warm.
struct Built {
    session: Session,
    pending_cache: Option<(PathBuf, PathBuf)>,
    /// Built with ORT's CPU memory arena (a CPU session, see `ep::cpu_arena`).
    arena: bool,
}

fn try_build(env: &Environment, model: &ModelInfo, device: &DeviceConfig, kind: EpKind) -> Result<Built, BuildError> {
    if kind != EpKind::Tensorrt {
        let arena = kind == EpKind::Cpu && ep::cpu_arena(device, model.weight_bytes());
        let session = build_with(env, model, device, kind, None, arena)?;
        return Ok(Built {
            session,
            pending_cache: None,
            arena,
        });
    }
    let cache = prepare_trt_cache(model, device).map_err(BuildError::Provider)?;
    // At most two tries: a cached engine that cannot be loaded is moved aside and built anew, once.
    for attempt in 0..2 {
        let plan = trt_cache::plan(&cache.dir);
        let dir = match &plan {
            CachePlan::Use(dir) => Some(dir.as_path()),
            CachePlan::Build { staging, .. } => Some(staging.as_path()),
            CachePlan::NoCache(reason) => {
                tracing::warn!(%reason, "TensorRT engines will not be cached (built at every start)");
                None
            }
        };
        match build_with(env, model, device, kind, Some((&cache, dir)), false) {
            Ok(session) => {
                let pending_cache = match plan {
                    CachePlan::Build { staging, dir } => Some((staging, dir)),
                    _ => None,
                };
                return Ok(Built {
                    session,
                    pending_cache,
                    arena: false,
                });
            }
            Err(err) => match plan {
                CachePlan::Build { staging, .. } => {
                    trt_cache::abandon(&staging);
                    return Err(err);
                }
                CachePlan::Use(dir) if attempt == 0 && matches!(err, BuildError::Provider(_)) && provider_registers(env, device) => {
                    match trt_cache::quarantine(&dir) {
                        Ok(aside) => tracing::warn!(
                            cache = %dir.display(), moved_to = %aside.display(), error = %error_text(&err),
                            "a cached TensorRT engine could not be loaded; moved aside, building it again"
                        ),
                        Err(reason) => {
                            tracing::warn!(%reason, "a cached TensorRT engine could not be loaded nor moved aside");
                            return Err(err);
                        }
                    }
                }
                _ => return Err(err),
            },
        }
    }
    Err(BuildError::Provider(
        "the TensorRT engine could not be built after its cache was reset".into(),
    ))
}

fn error_text(err: &BuildError) -> &str {
    match err {
        BuildError::Provider(message) | BuildError::Model(message) => message,
    }
}

/// Whether the TensorRT provider itself registers (so that a failure to build lies with the cached engine).
fn provider_registers(env: &Environment, device: &DeviceConfig) -> bool {
    Session::builder(env)
        .ok()
        .map(|builder| {
            builder
                .with_execution_providers([ep::dispatch(EpKind::Tensorrt, device, None, false)])
                .is_ok()
        })
        .unwrap_or(false)
}

fn build_with(
    env: &Environment,
    model: &ModelInfo,
    device: &DeviceConfig,
    kind: EpKind,
    trt: Option<(&TrtCache, Option<&Path>)>,
    arena: bool,
) -> Result<Session, BuildError> {
    let provider = |e: ort::Error<ort::session::builder::SessionBuilder>| BuildError::Provider(e.to_string());
    let mut builder = Session::builder(env).map_err(|e| BuildError::Provider(e.to_string()))?;
    // With the environment's shared pool (see `environment_with_shared_pool`) the session's own thread settings
    // do not apply.
    if !device.shared_pool {
        if device.intra_threads > 0 {
            builder = builder.with_intra_threads(device.intra_threads).map_err(provider)?;
        }
        builder = builder.with_intra_op_spinning(device.spin.unwrap_or(true)).map_err(provider)?;
    }
    builder = builder
        .with_execution_providers([ep::dispatch(kind, device, trt, arena)])
        .map_err(provider)?;
    if device.disable_cpu_fallback && kind != EpKind::Cpu {
        builder = builder.with_disable_cpu_fallback().map_err(provider)?;
    }
    builder.commit_from_file(&model.onnx_path).map_err(|e| {
        // An operator the library lacks fails on every provider. Otherwise, with only the CPU provider left, a
        // failure to build is the model's fault; a GPU provider may also fail here (its library or device
        // missing), and then the next provider is worth trying.
        let message = e.to_string();
        if let Some(missing) = missing_operator(&message) {
            BuildError::Model(missing)
        } else if kind == EpKind::Cpu {
            BuildError::Model(format!("ONNX Runtime cannot load it: {message}"))
        } else {
            BuildError::Provider(message)
        }
    })
}

/// ONNX Runtime's refusal of an operator it does not implement, said plainly: which operator, in which domain and
/// opset, and which library was asked. None for any other failure.
fn missing_operator(message: &str) -> Option<String> {
    let between = |start: &str, end: &str| -> Option<String> {
        let from = message.find(start)? + start.len();
        let to = from + message[from..].find(end)?;
        Some(message[from..to].to_owned())
    };
    // "Fatal error: com.microsoft:MatMulNBits(-1) is not a registered function/op" (an operator this build
    // does not know), "No Op registered for X with domain_version of N" (an ONNX operator newer than the build),
    // "Could not find an implementation for X(N) node with name 'y'" (known, but no kernel in this build).
    let operator = between("Fatal error: ", " is not a registered function/op")
        .or_else(|| {
            let op = between("No Op registered for ", " with domain_version of ")?;
            let version: String = message[message.find("domain_version of ")? + 18..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            Some(format!("{op} (opset {version})"))
        })
        .or_else(|| between("Could not find an implementation for ", " node with name"))?;
    Some(format!(
        "needs the operator {operator}, which the loaded ONNX Runtime {} does not implement; point ort.library_path \
         at an ONNX Runtime that has it (a newer release, or a build with its contrib operators), or choose a file \
         without it (model.file) [ONNX Runtime said: {message}]",
        crate::engine::ort_version()
    ))
}

/// The cache directory and profile of this model on this device (see `trt_cache` for what keys it).
fn prepare_trt_cache(model: &ModelInfo, device: &DeviceConfig) -> Result<TrtCache, String> {
    let root = device.tensorrt.engine_cache_dir.clone().unwrap_or_else(ep::default_trt_cache_root);
    // The graph and every external data file: new weights beside an unchanged graph need a new engine.
    let mut weights = String::new();
    for file in std::iter::once(&model.onnx_path).chain(&model.external_data) {
        weights.push_str(&ep::file_sha256(file).map_err(|e| format!("cannot hash {}: {e}", file.display()))?);
    }
    let weights_sha = ep::sha256_hex(weights.as_bytes());
    // The profile names exactly the graph's inputs (a name the graph lacks fails the TensorRT build).
    let inputs: Vec<String> = if model.graph_inputs.is_empty() {
        ["input_ids", "attention_mask"].map(String::from).to_vec()
    } else {
        model.graph_inputs.clone()
    };
    let host = BuildHost::probe(device.device_id, loaded_library().as_deref());
    tracing::info!(?host, "TensorRT engine cache key");
    let key = CacheKey {
        weights_sha: &weights_sha,
        ort: &ort_version(),
        host: &host,
        trt: &device.tensorrt,
        inputs: &inputs,
        max_tokens: model.max_tokens,
    };
    Ok(key.cache(&root))
}

/// Loads model, tokenizer and session in one call (tests, benchmarks, `akidbd` at start).
pub fn load_engine(env: &Environment, model: &ModelInfo, device: &DeviceConfig) -> Result<OrtEngine, EngineError> {
    let tokenizer = Arc::new(TextTokenizer::load(model)?);
    OrtEngine::load(env, model.clone(), tokenizer, device)
}
