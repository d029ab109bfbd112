//! The ONNX Runtime session: loading the library once, building a session on the configured execution provider,
//! checking the graph's inputs and outputs, and running padded batches.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ndarray::Array2;
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;

use super::ep::{self, ProfileInputs, TrtCache};
use super::model::{model_error, ModelInfo};
use super::pooling;
use super::tokenizer::{Encoded, TextTokenizer};
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
    has_type_ids: bool,
    output: OutputKind,
}

/// Which graph output holds the embeddings.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OutputKind {
    /// `[batch, seq, hidden]` token states, pooled here.
    TokenStates(String),
    /// `[batch, hidden]`, already pooled by the graph.
    Pooled(String),
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
    let builder = ort::init_from(path).map_err(|e| fail(e.to_string()))?;
    let env = builder.with_name("akidb").build().map_err(|e| fail(e.to_string()))?;
    *slot = Some((path.to_owned(), env.clone()));
    Ok(env)
}

/// The ONNX Runtime version of the loaded library: from its build string when that names a release, else from the
/// library's file name (`libonnxruntime.so.1.32.0`), else the whole build string (which carries the commit id).
pub fn ort_version() -> String {
    let library = ENVIRONMENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .as_ref()
        .map(|(path, _)| path.clone());
    let resolved = library.and_then(|path| path.canonicalize().ok()).unwrap_or_default();
    ep::ort_version(ort::info(), &resolved)
}

// === impl OrtEngine ===

impl OrtEngine {
    /// Builds a session for `model` on `device`, following the device's execution-provider policy, and checks
    /// the graph against the model directory with one probe run.
    pub fn load(env: &Environment, model: ModelInfo, tokenizer: SharedTokenizer, device: &DeviceConfig) -> Result<OrtEngine, EngineError> {
        let (session, active_ep) = build_session(env, &model, device)?;
        let onnx = model.onnx_path.clone();
        let input_names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for name in &input_names {
            if !["input_ids", "attention_mask", "token_type_ids"].contains(name) {
                return Err(model_error(&onnx, &format!("unsupported graph input {name:?}")));
            }
        }
        for required in ["input_ids", "attention_mask"] {
            if !input_names.contains(&required) {
                return Err(model_error(&onnx, &format!("graph has no {required} input")));
            }
        }
        let has_type_ids = input_names.contains(&"token_type_ids");
        let output_names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let output = if output_names.contains(&"last_hidden_state") {
            OutputKind::TokenStates("last_hidden_state".into())
        } else if output_names.contains(&"token_embeddings") {
            OutputKind::TokenStates("token_embeddings".into())
        } else if output_names.contains(&"sentence_embedding") {
            OutputKind::Pooled("sentence_embedding".into())
        } else {
            return Err(model_error(
                &onnx,
                &format!("no last_hidden_state or sentence_embedding output (outputs: {output_names:?})"),
            ));
        };
        let mut engine = OrtEngine {
            session,
            model,
            tokenizer,
            active_ep,
            has_type_ids,
            output,
        };
        engine.probe()?;
        Ok(engine)
    }

    /// The tokenizer this engine's inputs must come from.
    pub fn tokenizer(&self) -> &SharedTokenizer {
        &self.tokenizer
    }

    /// Tokenizes, runs and pools a batch of texts in one go (the in-process path used by tests and benchmarks).
    pub fn embed<S: AsRef<str>>(&mut self, texts: &[S], options: &EmbedOptions) -> Result<EmbedOutput, EngineError> {
        check_dimensions(options, &self.model)?;
        let encoded = self.tokenizer.encode_all(texts, options.truncate)?;
        let refs: Vec<&Encoded> = encoded.iter().collect();
        let pooled = if refs.is_empty() { Vec::new() } else { self.run(&refs)? };
        Ok(EmbedOutput {
            embeddings: pooled.into_iter().map(|v| finish_vector(v, options, &self.model)).collect(),
            tokens: encoded.iter().map(|e| e.ids.len()).collect(),
            truncated: encoded.iter().enumerate().filter(|(_, e)| e.truncated).map(|(i, _)| i).collect(),
        })
    }

    /// Runs a two-token input to check that the graph gives vectors of the configured dimension.
    fn probe(&mut self) -> Result<(), EngineError> {
        let probe = self.tokenizer.encode("probe", true)?;
        let out = self.run(&[&probe])?;
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
        let tensor = |array: Array2<i64>| -> Result<SessionInputValue<'static>, EngineError> {
            Ok(Tensor::from_array(array).map_err(|e| EngineError::Inference(e.to_string()))?.into())
        };
        let mut inputs = vec![
            (Cow::Borrowed("input_ids"), tensor(ids)?),
            (Cow::Borrowed("attention_mask"), tensor(mask)?),
        ];
        if self.has_type_ids {
            inputs.push((Cow::Borrowed("token_type_ids"), tensor(types)?));
        }
        Ok(inputs)
    }
}

impl Embedder for OrtEngine {
    fn model(&self) -> &ModelInfo {
        &self.model
    }

    fn active_ep(&self) -> EpKind {
        self.active_ep
    }

    fn run(&mut self, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>, EngineError> {
        let inputs = self.inputs(batch)?;
        let pooling = self.model.pooling;
        let left = pooling.pads_left();
        let output = self.output.clone();
        let outputs = self.session.run(inputs).map_err(|e| EngineError::Inference(e.to_string()))?;
        let (name, pooled) = match &output {
            OutputKind::TokenStates(name) => (name, false),
            OutputKind::Pooled(name) => (name, true),
        };
        let value = outputs
            .get(name)
            .ok_or_else(|| EngineError::Inference(format!("output {name} missing")))?;
        let (shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        let rows = batch.len();
        if pooled {
            let [n, dim] = dims[..] else {
                return Err(EngineError::Inference(format!("{name} has shape {dims:?}, expected [batch, dim]")));
            };
            if n != rows {
                return Err(EngineError::Inference(format!("{name} has {n} rows for {rows} inputs")));
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
fn build_session(env: &Environment, model: &ModelInfo, device: &DeviceConfig) -> Result<(Session, EpKind), EngineError> {
    let chain = device.ep_chain();
    let mut failures = Vec::new();
    for (position, kind) in chain.iter().copied().enumerate() {
        match try_build(env, model, device, kind) {
            Ok(session) => {
                if position > 0 {
                    tracing::warn!(asked = %device.ep, using = %kind, failures = %failures.join("; "), "execution provider fell back");
                }
                return Ok((session, kind));
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

fn try_build(env: &Environment, model: &ModelInfo, device: &DeviceConfig, kind: EpKind) -> Result<Session, BuildError> {
    let provider = |e: ort::Error<ort::session::builder::SessionBuilder>| BuildError::Provider(e.to_string());
    let mut builder = Session::builder(env).map_err(|e| BuildError::Provider(e.to_string()))?;
    if device.intra_threads > 0 {
        builder = builder.with_intra_threads(device.intra_threads).map_err(provider)?;
    }
    builder = builder.with_intra_op_spinning(device.spin).map_err(provider)?;
    let trt_cache = if kind == EpKind::Tensorrt {
        Some(prepare_trt_cache(model, device).map_err(BuildError::Provider)?)
    } else {
        None
    };
    builder = builder
        .with_execution_providers([ep::dispatch(kind, device, trt_cache.as_ref())])
        .map_err(provider)?;
    if device.disable_cpu_fallback && kind != EpKind::Cpu {
        builder = builder.with_disable_cpu_fallback().map_err(provider)?;
    }
    builder.commit_from_file(&model.onnx_path).map_err(|e| {
        // With only the CPU provider left, a failure to build is the model's fault; a GPU provider may also fail
        // here (its library or device missing), and then the next provider is worth trying.
        if kind == EpKind::Cpu {
            BuildError::Model(format!("ONNX Runtime cannot load it: {e}"))
        } else {
            BuildError::Provider(e.to_string())
        }
    })
}

fn prepare_trt_cache(model: &ModelInfo, device: &DeviceConfig) -> Result<TrtCache, String> {
    let root = device.tensorrt.engine_cache_dir.clone().unwrap_or_else(ep::default_trt_cache_root);
    let model_sha = ep::file_sha256(&model.onnx_path).map_err(|e| format!("cannot hash {}: {e}", model.onnx_path.display()))?;
    let names: Vec<String> = ["input_ids", "attention_mask", "token_type_ids"].map(String::from).to_vec();
    let inputs = ProfileInputs {
        names: &names,
        max_tokens: model.max_tokens,
    };
    let cache = ep::trt_cache(
        &root,
        &model_sha,
        &ort_version(),
        &ep::gpu_name(device.device_id),
        &device.tensorrt,
        &inputs,
    );
    std::fs::create_dir_all(&cache.dir).map_err(|e| format!("cannot create TensorRT cache {}: {e}", cache.dir.display()))?;
    Ok(cache)
}

/// Loads model, tokenizer and session in one call (tests, benchmarks, `akidbd` at start).
pub fn load_engine(env: &Environment, model: &ModelInfo, device: &DeviceConfig) -> Result<OrtEngine, EngineError> {
    let tokenizer = Arc::new(TextTokenizer::load(model)?);
    OrtEngine::load(env, model.clone(), tokenizer, device)
}
