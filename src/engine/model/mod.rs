//! Reads a sentence-transformers model directory the way sentence-transformers does.
//!
//! Files read: the ONNX file (`model.file`, else `model.onnx`, else `onnx/model.onnx`) and the external data files
//! its graph names, `tokenizer.json`, `config.json` (`hidden_size`), `sentence_bert_config.json` (`max_seq_length`,
//! `do_lower_case`), `config_sentence_transformers.json` (`prompts`, `default_prompt_name`),
//! `1_Pooling/config.json` (pooling mode) and `modules.json` (Normalize, and modules such as Dense that only the
//! graph's own `sentence_embedding` output can apply). `[model]` in the config file overrides any of these.
//! Anything missing or inconsistent is an [`EngineError::Model`] naming the file. What the ONNX graph itself takes
//! and gives is checked later, by the session.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use super::onnx_file::Attention;
use super::{onnx_file, EngineError};
pub use crate::config::Pooling;
use crate::config::{ModelConfig, LARGE_MODEL_BYTES};

/// A directory's `max_seq_length` above this is capped to it unless `model.max_seq_length` says otherwise: the real
/// Qwen3-Embedding directories say 32768, which would size warm-up shapes, TensorRT profiles and the cost of one
/// over-long input for a context no edge device serves in time.
pub const MAX_TOKENS_CAP: usize = 8192;

/// Inputs this long or longer make spelled-out attention costly (see [`ModelInfo::long_input_warning`]).
pub const LONG_INPUT_TOKENS: usize = 2048;

/// What a model computes, known from its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Sentence embeddings: a sentence-transformers `SentenceTransformer` directory.
    Embed,
    /// A relevance score for each (query, document) pair: a sentence-transformers `CrossEncoder` directory whose
    /// export is the sequence-classification model (`logits`, one label).
    Rerank {
        /// What `CrossEncoder.predict` applies to the logit by default.
        activation: Activation,
    },
}

/// A cross-encoder's activation on its logit (`activation_fn` in the directory; sigmoid for one label by
/// default, as sentence-transformers does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// The logit itself.
    Identity,
    /// `tanh(x)`.
    Tanh,
}

/// What the engine needs to know about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Embeddings or rerank scores.
    pub task: Task,
    /// Name reported to clients.
    pub name: String,
    /// The model directory.
    pub dir: PathBuf,
    /// The ONNX file.
    pub onnx_path: PathBuf,
    /// External data files the graph keeps its weights in (checked to exist), in the graph's order.
    pub external_data: Vec<PathBuf>,
    /// The graph's run-time inputs as the file names them (empty when the file could not be read ahead).
    pub graph_inputs: Vec<String>,
    /// The precision most of its weights are stored in ("fp32", "fp16", "bf16", "fp8", "int8"), if known.
    pub weights_precision: Option<&'static str>,
    /// How the graph computes attention (one operator per layer, or spelled out).
    pub attention: Attention,
    /// How its weights are quantized, in words (e.g. "int4 weights, block 32, int8 compute"), when they are.
    pub quantization: Option<String>,
    /// The tokenizer file.
    pub tokenizer_path: PathBuf,
    /// Truncation length in tokens, special tokens and prompt included.
    pub max_tokens: usize,
    /// What the directory said, when [`MAX_TOKENS_CAP`] lowered it.
    pub max_tokens_uncapped: Option<usize>,
    /// Pooling mode.
    pub pooling: Pooling,
    /// Whether vectors are L2-normalized by default.
    pub normalize: bool,
    /// Embedding dimension.
    pub dim: usize,
    /// Whether texts are lower-cased before tokenizing (`sentence_bert_config.json` `do_lower_case`).
    pub do_lower_case: bool,
    /// Named prompts (`config_sentence_transformers.json`), e.g. `query` → "Instruct: ...\nQuery:".
    pub prompts: BTreeMap<String, String>,
    /// The prompt applied when a request names none.
    pub default_prompt_name: Option<String>,
    /// Modules of `modules.json` after pooling that change the vector (e.g. Dense); only a graph whose
    /// `sentence_embedding` output already applies them can serve this model.
    pub head_modules: Vec<String>,
}

// === impl ModelInfo ===

impl ModelInfo {
    /// Whether the model scores pairs (a cross-encoder) rather than embedding texts.
    pub fn is_reranker(&self) -> bool {
        matches!(self.task, Task::Rerank { .. })
    }

    /// Bytes of the ONNX file and its external data files (0 for a file that cannot be read).
    pub fn weight_bytes(&self) -> u64 {
        std::iter::once(&self.onnx_path)
            .chain(&self.external_data)
            .map(|file| std::fs::metadata(file).map_or(0, |m| m.len()))
            .sum()
    }

    /// A start-up warning for a large model (weights of at least [`LARGE_MODEL_BYTES`]) whose export spells
    /// attention out while it accepts inputs of [`LONG_INPUT_TOKENS`] or more: such an input needs several
    /// batch × heads × seq × seq tensors at once, more memory than the weights themselves.
    pub fn long_input_warning(&self) -> Option<String> {
        let long =
            self.attention == Attention::SpelledOut && self.max_tokens >= LONG_INPUT_TOKENS && self.weight_bytes() >= LARGE_MODEL_BYTES;
        long.then(|| {
            format!(
                "this export spells attention out (Softmax over batch x heads x seq x seq tensors): an input near \
                 max_seq_length {} keeps several such tensors at once (a 0.6B decoder needed 2.3 GB above its \
                 weights for 3,027 tokens); an export with the ONNX Attention operator keeps one \
                 (tools/decoder-fixture/export.py --attention-op), or lower model.max_seq_length",
                self.max_tokens
            )
        })
    }

    /// Reads the model directory and applies the config's overrides.
    pub fn load(config: &ModelConfig) -> Result<ModelInfo, EngineError> {
        let dir = config.dir.clone();
        if !dir.is_dir() {
            return Err(model_error(&dir, "is not a directory (run `make setup` for the default model)"));
        }
        let onnx_path = find_onnx(&dir, config.file.as_deref())?;
        let graph = onnx_file::read(&onnx_path)?;
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(model_error(&tokenizer_path, "missing"));
        }
        let transformer = read_transformer_config(&dir)?;
        let task = read_task(&dir)?;
        let (max_tokens, max_tokens_uncapped) = match config.max_seq_length {
            Some(n) => (n, None),
            None => match transformer.max_seq_length {
                n if n > MAX_TOKENS_CAP => (MAX_TOKENS_CAP, Some(n)),
                n => (n, None),
            },
        };
        let pooling = read_pooling_for(&dir, config, task)?;
        let modules = read_modules(&dir)?;
        let normalize = config.normalize.unwrap_or(modules.normalize) && task == Task::Embed;
        let dim = match (task, config.dimension) {
            (Task::Rerank { .. }, _) => 1,
            (Task::Embed, Some(dim)) => dim,
            (Task::Embed, None) => match &modules.head_dim {
                Some(head_dim) => *head_dim,
                None => read_dim(&dir)?,
            },
        };
        let (prompts, default_prompt_name) = read_prompts(&dir)?;
        let name = config.display_name();
        Ok(ModelInfo {
            task,
            name,
            dir,
            onnx_path,
            external_data: graph.external_data,
            graph_inputs: graph.inputs,
            weights_precision: graph.weights,
            attention: graph.attention,
            quantization: graph.quantization,
            tokenizer_path,
            max_tokens,
            max_tokens_uncapped,
            pooling,
            normalize,
            dim,
            do_lower_case: transformer.do_lower_case,
            prompts,
            default_prompt_name,
            head_modules: modules.head,
        })
    }

    /// The prompt a request gets: its literal `prompt`, else the model prompt it names, else the model's default
    /// prompt (if any). Both at once, or an unknown name, is an [`EngineError::BadPrompt`] naming the known prompts.
    pub fn resolve_prompt<'a>(&'a self, name: Option<&str>, literal: Option<&'a str>) -> Result<Option<&'a str>, EngineError> {
        let known = || self.prompts.keys().cloned().collect::<Vec<_>>().join(", ");
        match (name, literal) {
            (Some(_), Some(_)) => Err(EngineError::BadPrompt(format!(
                "prompt_name and prompt are exclusive (this model's prompts: {})",
                or_none(&known())
            ))),
            (None, Some(literal)) => Ok(Some(literal)),
            (Some(name), None) => match self.prompts.get(name) {
                Some(text) => Ok(Some(text.as_str())),
                None => Err(EngineError::BadPrompt(format!(
                    "unknown prompt_name {:?} (this model's prompts: {})",
                    name.chars().take(64).collect::<String>(),
                    or_none(&known())
                ))),
            },
            (None, None) => Ok(self
                .default_prompt_name
                .as_deref()
                .and_then(|name| self.prompts.get(name))
                .map(String::as_str)),
        }
    }
}

fn or_none(list: &str) -> &str {
    if list.is_empty() {
        "none"
    } else {
        list
    }
}

pub(crate) fn model_error(file: &Path, message: &str) -> EngineError {
    EngineError::Model {
        file: file.to_owned(),
        message: message.to_owned(),
    }
}

fn read_json(path: &Path) -> Result<Value, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| model_error(path, &e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| model_error(path, &format!("invalid JSON: {e}")))
}

/// The pooling: `[model] pooling`, else the directory's; a cross-encoder's graph pools and scores itself, and its
/// inputs are padded on the right as BERT's are.
fn read_pooling_for(dir: &Path, config: &ModelConfig, task: Task) -> Result<Pooling, EngineError> {
    match &config.pooling {
        Some(text) => Pooling::parse(text).ok_or_else(|| model_error(Path::new("[model] pooling"), &format!("unknown pooling {text:?}"))),
        None if task != Task::Embed => Ok(Pooling::Cls),
        None => read_pooling(dir),
    }
}

/// A directory is a cross-encoder when `config.json` names a sequence-classification architecture (as
/// `CrossEncoder.save` and every reranker repository write it); it must then have one label, and its activation
/// comes from `config.json` `sentence_transformers.activation_fn` (sentence-transformers 3-5) or
/// `config_sentence_transformers.json` `activation_fn`, sigmoid when neither names one.
fn read_task(dir: &Path) -> Result<Task, EngineError> {
    let path = dir.join("config.json");
    let Some(config) = read_optional_json(&path)? else {
        return Ok(Task::Embed);
    };
    let classifier = config.get("architectures").and_then(Value::as_array).is_some_and(|list| {
        list.iter()
            .filter_map(Value::as_str)
            .any(|a| a.ends_with("ForSequenceClassification"))
    });
    if !classifier {
        return Ok(Task::Embed);
    }
    let labels = match config.get("id2label").and_then(Value::as_object) {
        Some(map) => map.len() as u64,
        None => config.get("num_labels").and_then(Value::as_u64).unwrap_or(2),
    };
    if labels != 1 {
        return Err(model_error(
            &path,
            &format!(
                "is a sequence classifier with {labels} labels; akidbd serves cross-encoders with one label \
                 (a relevance score) as rerankers"
            ),
        ));
    }
    let named = config
        .pointer("/sentence_transformers/activation_fn")
        .cloned()
        .or(read_optional_json(&dir.join("config_sentence_transformers.json"))?.and_then(|c| c.get("activation_fn").cloned()));
    let activation = match named.as_ref().and_then(Value::as_str) {
        None => Activation::Sigmoid,
        Some(name) if name.ends_with("Sigmoid") => Activation::Sigmoid,
        Some(name) if name.ends_with("Identity") => Activation::Identity,
        Some(name) if name.ends_with("Tanh") => Activation::Tanh,
        Some(other) => {
            return Err(model_error(
                &path,
                &format!("activation_fn {other} is not one akidbd applies (Sigmoid, Identity, Tanh)"),
            ))
        }
    };
    Ok(Task::Rerank { activation })
}

/// Where the ONNX file is: `file` inside `dir` when configured, else `model.onnx`, else `onnx/model.onnx`.
fn find_onnx(dir: &Path, file: Option<&Path>) -> Result<PathBuf, EngineError> {
    if let Some(file) = file {
        let path = dir.join(file);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(model_error(&path, "missing (model.file)"))
        };
    }
    ["model.onnx", "onnx/model.onnx"]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            model_error(
                &dir.join("model.onnx"),
                "missing (also looked for onnx/model.onnx; set model.file to choose another file)",
            )
        })
}

/// The Transformer module's settings from `sentence_bert_config.json`.
struct TransformerConfig {
    max_seq_length: usize,
    do_lower_case: bool,
}

/// `sentence_bert_config.json`; without the file or its `max_seq_length`, `config.json`
/// `max_position_embeddings`, as sentence-transformers does.
fn read_transformer_config(dir: &Path) -> Result<TransformerConfig, EngineError> {
    let path = dir.join("sentence_bert_config.json");
    let json = if path.is_file() { read_json(&path)? } else { Value::Null };
    let do_lower_case = json.get("do_lower_case").and_then(Value::as_bool).unwrap_or(false);
    match json.get("max_seq_length") {
        Some(Value::Null) | None => {}
        Some(value) => {
            let max_seq_length = value
                .as_u64()
                .filter(|&n| n > 0)
                .ok_or_else(|| model_error(&path, "max_seq_length is not a positive integer"))?;
            return Ok(TransformerConfig {
                max_seq_length: max_seq_length as usize,
                do_lower_case,
            });
        }
    }
    // As sentence-transformers does without an explicit max_seq_length (and as its 6.x releases save it): the
    // smaller of the tokenizer's model_max_length and the transformer's max_position_embeddings.
    let tokenizer_limit = read_optional_json(&dir.join("tokenizer_config.json"))?
        .and_then(|json| json.get("model_max_length").and_then(Value::as_u64))
        .filter(|&n| n > 0 && n < 1 << 40);
    let position_limit = read_optional_json(&dir.join("config.json"))?
        .and_then(|json| json.get("max_position_embeddings").and_then(Value::as_u64))
        .filter(|&n| n > 0);
    let max_seq_length = [tokenizer_limit, position_limit].into_iter().flatten().min().ok_or_else(|| {
        model_error(
            &path,
            "gives no max_seq_length, and neither tokenizer_config.json (model_max_length) nor config.json \
             (max_position_embeddings) says one (set model.max_seq_length)",
        )
    })?;
    Ok(TransformerConfig {
        max_seq_length: max_seq_length as usize,
        do_lower_case,
    })
}

fn read_optional_json(path: &Path) -> Result<Option<Value>, EngineError> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// `config_sentence_transformers.json` `prompts` and `default_prompt_name` (absent file: none).
fn read_prompts(dir: &Path) -> Result<(BTreeMap<String, String>, Option<String>), EngineError> {
    let path = dir.join("config_sentence_transformers.json");
    if !path.is_file() {
        return Ok((BTreeMap::new(), None));
    }
    let json = read_json(&path)?;
    let mut prompts = BTreeMap::new();
    match json.get("prompts") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, text) in map {
                let text = text
                    .as_str()
                    .ok_or_else(|| model_error(&path, &format!("prompt {name:?} is not a string")))?;
                prompts.insert(name.clone(), text.to_owned());
            }
        }
        Some(_) => return Err(model_error(&path, "prompts is not a map of names to strings")),
    }
    let default_prompt_name = match json.get("default_prompt_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if prompts.contains_key(name) => Some(name.clone()),
        Some(other) => {
            return Err(model_error(
                &path,
                &format!("default_prompt_name {other} is not one of its prompts"),
            ))
        }
    };
    Ok((prompts, default_prompt_name))
}

/// `1_Pooling/config.json`: the `pooling_mode_*` flags of sentence-transformers up to 5.x, or the
/// `pooling_mode` name that 6.x writes.
fn read_pooling(dir: &Path) -> Result<Pooling, EngineError> {
    let path = dir.join("1_Pooling").join("config.json");
    if !path.is_file() {
        return Err(model_error(&path, "missing (set [model] pooling to choose one)"));
    }
    let json = read_json(&path)?;
    if json.get("include_prompt").and_then(Value::as_bool) == Some(false) {
        return Err(model_error(
            &path,
            "include_prompt is false (pooling without the prompt's tokens), which akidbd does not implement",
        ));
    }
    if let Some(mode) = json.get("pooling_mode").and_then(Value::as_str) {
        return match mode {
            "mean" | "mean_tokens" => Ok(Pooling::Mean),
            "cls" | "cls_token" => Ok(Pooling::Cls),
            "lasttoken" | "last_token" => Ok(Pooling::LastToken),
            other => Err(model_error(&path, &format!("unsupported pooling {other}"))),
        };
    }
    let flag = |key: &str| json.get(key).and_then(Value::as_bool).unwrap_or(false);
    let modes: Vec<Pooling> = [
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_lasttoken", Pooling::LastToken),
    ]
    .into_iter()
    .filter(|(key, _)| flag(key))
    .map(|(_, mode)| mode)
    .collect();
    let unsupported: Vec<&str> = [
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
    ]
    .into_iter()
    .filter(|key| flag(key))
    .collect();
    if !unsupported.is_empty() {
        return Err(model_error(&path, &format!("unsupported pooling {}", unsupported.join(", "))));
    }
    match modes.as_slice() {
        [mode] => Ok(*mode),
        [] => Err(model_error(&path, "no known pooling mode is set (mean, cls or lasttoken)")),
        _ => Err(model_error(&path, "more than one pooling mode is set")),
    }
}

/// What `modules.json` says beyond the transformer and its pooling.
struct Modules {
    normalize: bool,
    /// Modules after pooling that change the vector, by type name.
    head: Vec<String>,
    /// The output size of the last Dense module, which is then the model's dimension.
    head_dim: Option<usize>,
}

/// Reads `modules.json` as sentence-transformers would run it. No file: a bare transformer with pooling.
fn read_modules(dir: &Path) -> Result<Modules, EngineError> {
    let path = dir.join("modules.json");
    let mut modules = Modules {
        normalize: false,
        head: Vec::new(),
        head_dim: None,
    };
    if !path.is_file() {
        return Ok(modules);
    }
    let json = read_json(&path)?;
    let entries = json.as_array().ok_or_else(|| model_error(&path, "is not a JSON array"))?;
    for entry in entries {
        let kind = entry.get("type").and_then(Value::as_str).unwrap_or("");
        let short = kind.rsplit('.').next().unwrap_or(kind);
        match short {
            "Transformer" | "Pooling" => {}
            "Normalize" => modules.normalize = true,
            "Dense" => {
                let sub = entry.get("path").and_then(Value::as_str).unwrap_or("");
                let config = dir.join(sub).join("config.json");
                if config.is_file() {
                    modules.head_dim = read_json(&config)?.get("out_features").and_then(Value::as_u64).map(|n| n as usize);
                }
                modules.head.push(short.to_owned());
            }
            "" => return Err(model_error(&path, "a module has no type")),
            other => modules.head.push(other.to_owned()),
        }
    }
    Ok(modules)
}

fn read_dim(dir: &Path) -> Result<usize, EngineError> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(model_error(&path, "missing (set [model] dimension to go without it)"));
    }
    let json = read_json(&path)?;
    ["hidden_size", "d_model", "dim"]
        .iter()
        .find_map(|key| json.get(*key).and_then(Value::as_u64))
        .filter(|&n| n > 0)
        .map(|n| n as usize)
        .ok_or_else(|| model_error(&path, "no hidden_size"))
}

#[cfg(test)]
mod tests;
