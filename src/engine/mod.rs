//! The embedding engine: texts in, sentence-transformers vectors out, synchronously.
//!
//! A model directory is read by [`model`], texts are tokenized by [`tokenizer`], batches are run through an ONNX
//! Runtime session by [`session`] on the execution provider [`ep`] chose, and the hidden states are pooled and
//! normalized by [`pooling`]. [`runtime`] finds the ONNX Runtime libraries of a machine and asks one
//! what it was built with (the one FFI module outside ort).
//!
//! Architecture invariant: this module knows nothing of tokio, kameo, sockets or the wire protocol. Everything here
//! is plain blocking code; the actors decide on which thread it runs.

pub(crate) mod ep;
pub(crate) mod model;
pub(crate) mod onnx_file;
pub mod pooling;
pub mod runtime;
pub(crate) mod session;
pub(crate) mod tokenizer;
pub(crate) mod trt_cache;

use std::path::PathBuf;
use std::sync::Arc;

pub use crate::config::EpKind;
pub use model::{Activation, Attention, ModelInfo, Pooling, Task, MAX_TOKENS_CAP};
pub use session::{environment, environment_with_shared_pool, load_engine, ort_library_path, ort_version, OrtEngine, SETUP_ORT_LIBRARY};
pub use tokenizer::{Encoded, TextTokenizer};

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The ONNX Runtime library could not be found or loaded.
    #[error("cannot load the ONNX Runtime library {path}: {message}")]
    OrtLibrary {
        /// The path tried.
        path: PathBuf,
        /// Why it failed.
        message: String,
    },
    /// A file of the model directory is missing, unreadable or inconsistent.
    #[error("model directory: {file}: {message}")]
    Model {
        /// The file at fault.
        file: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// None of the configured execution providers could be used.
    #[error("no execution provider could be registered ({tried})")]
    NoExecutionProvider {
        /// Each provider tried and why it failed.
        tried: String,
    },
    /// The tokenizer failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An input is longer than the model's max tokens and truncation was not allowed.
    #[error("input {index} has more than {max_tokens} tokens and truncate is false")]
    InputTooLong {
        /// Index of the input within its request.
        index: usize,
        /// The model's limit.
        max_tokens: usize,
    },
    /// `dimensions` asked for more than the model has.
    #[error("dimensions {asked} is not in 1..={dim}")]
    BadDimensions {
        /// What was asked.
        asked: usize,
        /// The model's dimension.
        dim: usize,
    },
    /// A request's `prompt_name` / `prompt` cannot be applied (the message names the model's prompts).
    #[error("{0}")]
    BadPrompt(String),
    /// ONNX Runtime failed while running a batch.
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Per-request options of [`OrtEngine::embed`] and of the daemon's `embed` op.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedOptions {
    /// Cut inputs at the model's max tokens (true) or fail on them (false).
    pub truncate: bool,
    /// L2-normalize; `None` means what the model directory says.
    pub normalize: Option<bool>,
    /// Keep only the first N dimensions (Matryoshka); `None` keeps all.
    pub dimensions: Option<usize>,
}

/// What [`OrtEngine::embed`] returns for a batch of texts.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedOutput {
    /// One vector per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens per input after truncation (special tokens included).
    pub tokens: Vec<usize>,
    /// Indices of inputs that were truncated.
    pub truncated: Vec<usize>,
}

/// A model session that runs padded batches of tokenized inputs.
///
/// The real implementation is [`OrtEngine`]; tests put fakes behind it to show what a real session cannot (a
/// panic in the middle of a batch).
pub trait Embedder: Send {
    /// What the model is.
    fn model(&self) -> &ModelInfo;
    /// The execution provider the session really runs on.
    fn active_ep(&self) -> EpKind;
    /// The precision it computes in ("fp32", "fp16", "bf16", "int8", "fp8").
    fn precision(&self) -> &str {
        "fp32"
    }
    /// A handle that stops the run in progress from another thread (None: runs cannot be stopped).
    fn run_stopper(&self) -> Option<RunStopper> {
        None
    }
    /// Runs one batch and returns each input's pooled vector (full dimension, not normalized), in input order.
    fn run(&mut self, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>, EngineError>;
}

/// Stops an engine's session run in progress, from any thread: ONNX Runtime's terminate flag, checked between
/// kernels, makes the run return an error. The next run clears it.
#[derive(Clone)]
pub struct RunStopper(pub(crate) Vec<Arc<ort::session::RunOptions>>);

impl RunStopper {
    /// Asks the run in progress (if any) to stop.
    pub fn stop(&self) {
        for options in &self.0 {
            if let Err(err) = options.terminate() {
                tracing::warn!(error = %err, "could not stop a session run");
            }
        }
    }
}

impl std::fmt::Debug for RunStopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunStopper")
    }
}

/// Shared, cheaply clonable handle to a tokenizer.
pub type SharedTokenizer = Arc<TextTokenizer>;

/// Applies a request's `dimensions` and `normalize` to a pooled vector.
pub fn finish_vector(mut vector: Vec<f32>, options: &EmbedOptions, model: &ModelInfo) -> Vec<f32> {
    if let Some(dims) = options.dimensions {
        vector.truncate(dims);
    }
    if options.normalize.unwrap_or(model.normalize) {
        pooling::l2_normalize(&mut vector);
    }
    vector
}

// === impl Activation ===

impl Activation {
    /// The score of a logit.
    pub fn apply(self, logit: f32) -> f32 {
        match self {
            Activation::Sigmoid => 1.0 / (1.0 + (-logit).exp()),
            Activation::Identity => logit,
            Activation::Tanh => logit.tanh(),
        }
    }

    /// The name status and info report.
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Sigmoid => "sigmoid",
            Activation::Identity => "identity",
            Activation::Tanh => "tanh",
        }
    }
}

/// Checks `dimensions` against the model.
pub fn check_dimensions(options: &EmbedOptions, model: &ModelInfo) -> Result<(), EngineError> {
    match options.dimensions {
        Some(asked) if asked == 0 || asked > model.dim => Err(EngineError::BadDimensions { asked, dim: model.dim }),
        _ => Ok(()),
    }
}
