//! Reading model directories: both sentence-transformers layouts, overrides, prompts, the token cap, errors.

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
#[test]
fn sentence_transformers_6_layout_prompts_and_the_token_cap() {
    let dir = minimal_dir();
    std::fs::remove_file(dir.path().join("sentence_bert_config.json")).unwrap();
    write(
        dir.path(),
        "sentence_bert_config.json",
        r#"{"transformer_task": "feature-extraction"}"#,
    );
    write(dir.path(), "tokenizer_config.json", r#"{"model_max_length": 300}"#);
    write(
        dir.path(),
        "1_Pooling/config.json",
        r#"{"pooling_mode": "lasttoken", "include_prompt": true}"#,
    );
    write(
        dir.path(),
        "config_sentence_transformers.json",
        r#"{"prompts": {"query": "Instruct: find\nQuery:", "document": ""}, "default_prompt_name": "query"}"#,
    );
    let info = ModelInfo::load(&config(dir.path())).unwrap();
    assert_eq!(
        (info.max_tokens, info.pooling),
        (300, Pooling::LastToken),
        "min(model_max_length, positions)"
    );
    assert_eq!(info.resolve_prompt(None, None).unwrap(), Some("Instruct: find\nQuery:"));
    assert_eq!(info.resolve_prompt(Some("document"), None).unwrap(), Some(""));
    assert_eq!(info.resolve_prompt(None, Some("x: ")).unwrap(), Some("x: "));
    let err = info.resolve_prompt(Some("passage"), None).unwrap_err().to_string();
    assert!(err.contains("passage") && err.contains("document, query"), "{err}");
    let err = info.resolve_prompt(Some("query"), Some("x")).unwrap_err().to_string();
    assert!(err.contains("exclusive"), "{err}");

    write(dir.path(), "sentence_bert_config.json", r#"{"max_seq_length": 32768}"#);
    let info = ModelInfo::load(&config(dir.path())).unwrap();
    assert_eq!((info.max_tokens, info.max_tokens_uncapped), (MAX_TOKENS_CAP, Some(32768)));
    let mut cfg = config(dir.path());
    cfg.max_seq_length = Some(16384);
    let info = ModelInfo::load(&cfg).unwrap();
    assert_eq!(
        (info.max_tokens, info.max_tokens_uncapped),
        (16384, None),
        "an explicit value lifts the cap"
    );
}

#[test]
fn a_dense_head_is_recorded_with_its_dimension() {
    let dir = minimal_dir();
    write(
        dir.path(),
        "modules.json",
        r#"[{"type": "sentence_transformers.models.Transformer", "path": ""},
            {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"},
            {"type": "sentence_transformers.models.Dense", "path": "2_Dense"},
            {"type": "sentence_transformers.models.Normalize", "path": "3_Normalize"}]"#,
    );
    write(dir.path(), "2_Dense/config.json", r#"{"in_features": 384, "out_features": 128}"#);
    let info = ModelInfo::load(&config(dir.path())).unwrap();
    assert_eq!(
        (info.head_modules.clone(), info.dim, info.normalize),
        (vec!["Dense".to_owned()], 128, true)
    );
}

#[test]
fn pooling_without_the_prompt_and_a_missing_model_file_are_refused() {
    let dir = minimal_dir();
    write(
        dir.path(),
        "1_Pooling/config.json",
        r#"{"pooling_mode": "mean", "include_prompt": false}"#,
    );
    let err = ModelInfo::load(&config(dir.path())).unwrap_err().to_string();
    assert!(err.contains("include_prompt"), "{err}");

    let dir = minimal_dir();
    let mut cfg = config(dir.path());
    cfg.file = Some("onnx/model_fp16.onnx".into());
    let err = ModelInfo::load(&cfg).unwrap_err().to_string();
    assert!(err.contains("model_fp16.onnx") && err.contains("model.file"), "{err}");
    write(dir.path(), "onnx/model_fp16.onnx", "graph");
    assert!(ModelInfo::load(&cfg).unwrap().onnx_path.ends_with("onnx/model_fp16.onnx"));
}
