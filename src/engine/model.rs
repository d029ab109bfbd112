//! Reads a sentence-transformers model directory the way sentence-transformers does.
//!
//! Files read: `model.onnx` (or `onnx/model.onnx`), `tokenizer.json`, `config.json` (`hidden_size`),
//! `sentence_bert_config.json` (`max_seq_length`), `1_Pooling/config.json` (pooling mode) and `modules.json`
//! (whether a Normalize step follows). `[model]` in the config file overrides any of these. Anything missing or
//! inconsistent is an [`EngineError::Model`] naming the file. What the ONNX graph itself takes and gives is checked
//! later, by the session.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::EngineError;
use crate::config::ModelConfig;

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the attention mask.
    Mean,
    /// The first token ([CLS]).
    Cls,
    /// The last real token; implies left padding (Qwen3-Embedding and other decoder models).
    LastToken,
}

/// What the engine needs to know about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Name reported to clients.
    pub name: String,
    /// The model directory.
    pub dir: PathBuf,
    /// The ONNX file.
    pub onnx_path: PathBuf,
    /// The tokenizer file.
    pub tokenizer_path: PathBuf,
    /// Truncation length in tokens, special tokens included.
    pub max_tokens: usize,
    /// Pooling mode.
    pub pooling: Pooling,
    /// Whether vectors are L2-normalized by default.
    pub normalize: bool,
    /// Embedding dimension.
    pub dim: usize,
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

// === impl ModelInfo ===

impl ModelInfo {
    /// Reads the model directory and applies the config's overrides.
    pub fn load(config: &ModelConfig) -> Result<ModelInfo, EngineError> {
        let dir = config.dir.clone();
        if !dir.is_dir() {
            return Err(model_error(&dir, "is not a directory (run `make setup` for the default model)"));
        }
        let onnx_path = ["model.onnx", "onnx/model.onnx"]
            .iter()
            .map(|name| dir.join(name))
            .find(|path| path.is_file())
            .ok_or_else(|| model_error(&dir.join("model.onnx"), "missing (also looked for onnx/model.onnx)"))?;
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(model_error(&tokenizer_path, "missing"));
        }
        let max_tokens = match config.max_seq_length {
            Some(n) => n,
            None => read_max_seq_length(&dir)?,
        };
        let pooling = match &config.pooling {
            Some(text) => {
                Pooling::parse(text).ok_or_else(|| model_error(Path::new("[model] pooling"), &format!("unknown pooling {text:?}")))?
            }
            None => read_pooling(&dir)?,
        };
        let normalize = match config.normalize {
            Some(normalize) => normalize,
            None => read_normalize(&dir)?,
        };
        let dim = match config.dimension {
            Some(dim) => dim,
            None => read_dim(&dir)?,
        };
        let name = config.name.clone().unwrap_or_else(|| {
            dir.canonicalize()
                .unwrap_or_else(|_| dir.clone())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".to_owned())
        });
        Ok(ModelInfo {
            name,
            dir,
            onnx_path,
            tokenizer_path,
            max_tokens,
            pooling,
            normalize,
            dim,
        })
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

/// `sentence_bert_config.json` `max_seq_length`; a model without the file falls back to `config.json`
/// `max_position_embeddings`, as sentence-transformers does.
fn read_max_seq_length(dir: &Path) -> Result<usize, EngineError> {
    let path = dir.join("sentence_bert_config.json");
    if path.is_file() {
        let json = read_json(&path)?;
        return json
            .get("max_seq_length")
            .and_then(Value::as_u64)
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| model_error(&path, "no positive integer max_seq_length"));
    }
    let config_path = dir.join("config.json");
    let json = read_json(&config_path)?;
    json.get("max_position_embeddings")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| model_error(&path, "missing, and config.json has no max_position_embeddings"))
}

fn read_pooling(dir: &Path) -> Result<Pooling, EngineError> {
    let path = dir.join("1_Pooling").join("config.json");
    if !path.is_file() {
        return Err(model_error(&path, "missing (set [model] pooling to choose one)"));
    }
    let json = read_json(&path)?;
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

fn read_normalize(dir: &Path) -> Result<bool, EngineError> {
    let path = dir.join("modules.json");
    if !path.is_file() {
        return Ok(false);
    }
    let json = read_json(&path)?;
    let modules = json.as_array().ok_or_else(|| model_error(&path, "is not a JSON array"))?;
    Ok(modules
        .iter()
        .filter_map(|m| m.get("type").and_then(Value::as_str))
        .any(|t| t.ends_with("Normalize")))
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
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn minimal_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "model.onnx", "not really");
        write(dir.path(), "tokenizer.json", "{}");
        write(dir.path(), "config.json", r#"{"hidden_size": 384, "max_position_embeddings": 512}"#);
        write(dir.path(), "sentence_bert_config.json", r#"{"max_seq_length": 256}"#);
        write(dir.path(), "1_Pooling/config.json", r#"{"pooling_mode_mean_tokens": true}"#);
        write(
            dir.path(),
            "modules.json",
            r#"[{"type": "sentence_transformers.models.Normalize"}]"#,
        );
        dir
    }

    fn config(dir: &Path) -> ModelConfig {
        ModelConfig {
            dir: dir.to_owned(),
            ..ModelConfig::default()
        }
    }

    #[test]
    fn reads_what_sentence_transformers_reads() {
        let dir = minimal_dir();
        let info = ModelInfo::load(&config(dir.path())).unwrap();
        assert_eq!(
            (info.max_tokens, info.pooling, info.normalize, info.dim),
            (256, Pooling::Mean, true, 384)
        );
    }

    #[test]
    fn overrides_win() {
        let dir = minimal_dir();
        let mut cfg = config(dir.path());
        cfg.max_seq_length = Some(128);
        cfg.pooling = Some("cls".into());
        cfg.normalize = Some(false);
        cfg.dimension = Some(256);
        let info = ModelInfo::load(&cfg).unwrap();
        assert_eq!(
            (info.max_tokens, info.pooling, info.normalize, info.dim),
            (128, Pooling::Cls, false, 256)
        );
    }

    #[test]
    fn missing_and_bad_files_name_the_file() {
        let dir = minimal_dir();
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        let err = ModelInfo::load(&config(dir.path())).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json") && err.contains("missing"), "{err}");

        let dir = minimal_dir();
        write(dir.path(), "1_Pooling/config.json", r#"{"pooling_mode_max_tokens": true}"#);
        let err = ModelInfo::load(&config(dir.path())).unwrap_err().to_string();
        assert!(err.contains("1_Pooling") && err.contains("unsupported pooling"), "{err}");

        let dir = minimal_dir();
        write(dir.path(), "config.json", "{not json");
        let err = ModelInfo::load(&config(dir.path())).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("invalid JSON"), "{err}");

        let dir = minimal_dir();
        std::fs::remove_file(dir.path().join("model.onnx")).unwrap();
        let err = ModelInfo::load(&config(dir.path())).unwrap_err().to_string();
        assert!(err.contains("model.onnx"), "{err}");

        let err = ModelInfo::load(&config(Path::new("/nonexistent/model"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/model") && err.contains("not a directory"), "{err}");
    }

    #[test]
    fn last_token_pooling_pads_left() {
        let dir = minimal_dir();
        write(dir.path(), "1_Pooling/config.json", r#"{"pooling_mode_lasttoken": true}"#);
        let info = ModelInfo::load(&config(dir.path())).unwrap();
        assert_eq!(info.pooling, Pooling::LastToken);
        assert!(info.pooling.pads_left());
    }
}
