//! A decoder embedding model (Qwen3 architecture, last-token pooling, left padding, EOS appended by the tokenizer,
//! a query prompt) served by the real daemon in every export layout, against the vectors sentence-transformers
//! computed for it (tests/data/qwen3-tiny, made by tools/decoder-fixture/make.py).

use std::path::{Path, PathBuf};
use std::time::Duration;

use akidb::client::{ClientError, EmbedParams};
use akidb::engine::pooling::cosine;
use akidb::protocol::ErrorCode;

use crate::util::{self, Daemon};

/// One reference case: texts, the request options that reproduce it, and sentence-transformers' output.
pub(crate) struct Case {
    pub name: String,
    pub texts: Vec<String>,
    pub params: EmbedParams,
    pub tokens: Vec<usize>,
    pub embeddings: Vec<Vec<f32>>,
}

pub(crate) fn fixture_dir() -> PathBuf {
    util::repo().join("tests/data/qwen3-tiny")
}

fn dense_dir() -> PathBuf {
    util::repo().join("tests/data/qwen3-tiny-dense")
}

pub(crate) fn cases(dir: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(dir.join("references.jsonl")).expect("the decoder fixture (tests/data)");
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let options = &value["options"];
            let strings = |key: &str| -> Vec<String> {
                value[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_owned())
                    .collect()
            };
            Case {
                name: value["case"].as_str().unwrap().to_owned(),
                texts: strings("texts"),
                params: EmbedParams {
                    prompt_name: options["prompt_name"].as_str().map(str::to_owned),
                    prompt: options["prompt"].as_str().map(str::to_owned),
                    dimensions: options["dimensions"].as_u64(),
                    ..EmbedParams::default()
                },
                tokens: value["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as usize)
                    .collect(),
                embeddings: value["embeddings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
                    .collect(),
            }
        })
        .collect()
}

fn model_table(dir: &Path, file: &str) -> String {
    format!("[model]\ndir = {dir:?}\nfile = {file:?}\n[batcher]\nwarmup_seq_lengths = [16]\n")
}

/// Embeds every case through the daemon, batched (one request) and one text per request, and returns the worst
/// cosine to the references per case.
async fn serve_cases(daemon: &Daemon, cases: &[Case]) -> Vec<(String, f64)> {
    let mut client = daemon.client().await;
    let mut worst = Vec::new();
    for case in cases {
        let batched = util::within(60, client.embed(&case.texts, &case.params)).await.unwrap();
        let tokens = batched.reply.tokens as usize;
        assert_eq!(
            tokens,
            case.tokens.iter().sum::<usize>(),
            "{}: tokens (prompt and EOS included)",
            case.name
        );
        let mut min = f64::MAX;
        for (index, (got, want)) in batched.embeddings.iter().zip(&case.embeddings).enumerate() {
            assert_eq!(got.len(), want.len(), "{}: dimension", case.name);
            let alone = util::within(60, client.embed(&case.texts[index..=index], &case.params))
                .await
                .unwrap();
            min = min.min(cosine(got, want)).min(cosine(&alone.embeddings[0], want));
        }
        worst.push((case.name.clone(), min));
    }
    worst
}

async fn check_layout(file: &str, threshold: f64) {
    let daemon = Daemon::start(&model_table(&fixture_dir(), file));
    let worst = serve_cases(&daemon, &cases(&fixture_dir())).await;
    for (case, min) in &worst {
        eprintln!("decoder {file}: {case}: min cosine {min:.9}");
        assert!(*min >= threshold, "{file} {case}: min cosine {min} < {threshold}");
    }
}

#[tokio::test]
async fn plain_export_serves_documents_prompts_truncation_and_dimensions() {
    check_layout("model.onnx", 0.99999).await;
}

#[tokio::test]
async fn export_with_position_ids_serves_the_same_vectors() {
    check_layout("model_position_ids.onnx", 0.99999).await;
}

#[tokio::test]
async fn export_with_external_data_serves_the_same_vectors() {
    check_layout("model_external.onnx", 0.99999).await;
}

#[tokio::test]
async fn an_opset_23_export_with_attention_operators_serves_the_same_vectors() {
    // Attention, RotaryEmbedding and RMSNormalization nodes and a position_ids input (export.py --attention-op).
    check_layout("model_attention_op.onnx", 0.99999).await;
}

#[tokio::test]
async fn an_fp16_model_serves_the_same_vectors() {
    check_layout("model_fp16.onnx", 0.9999).await;
}

#[tokio::test]
async fn fp16_and_bf16_outputs_are_read() {
    // The graph casts its hidden states to 16 bits: the rounding is all that may differ.
    check_layout("model_fp16_output.onnx", 0.9999).await;
    check_layout("model_bf16_output.onnx", 0.999).await;
}

#[tokio::test]
async fn a_dense_head_is_served_through_sentence_embedding() {
    let daemon = Daemon::start(&model_table(&dense_dir(), "model.onnx"));
    let worst = serve_cases(&daemon, &cases(&dense_dir())).await;
    for (case, min) in &worst {
        eprintln!("decoder with Dense head: {case}: min cosine {min:.9}");
        assert!(*min >= 0.99999, "dense {case}: min cosine {min}");
    }
    let info = daemon.client().await.info().await.unwrap();
    assert_eq!(info.dim, 32, "the Dense module's out_features");
}

fn server_error(err: ClientError) -> (ErrorCode, String) {
    match err {
        ClientError::Server { code, message, .. } => (code, message),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[tokio::test]
async fn prompts_are_listed_and_bad_choices_name_the_known_ones() {
    let daemon = Daemon::start(&model_table(&fixture_dir(), "model.onnx"));
    let mut client = daemon.client().await;
    let info = client.info().await.unwrap();
    assert!(info.prompts["query"].starts_with("Instruct:"), "{:?}", info.prompts);
    assert_eq!(info.prompts.keys().collect::<Vec<_>>(), ["document", "query"]);
    assert_eq!(info.default_prompt_name, None);

    let both = EmbedParams {
        prompt_name: Some("query".into()),
        prompt: Some("x: ".into()),
        ..EmbedParams::default()
    };
    let (code, message) = server_error(client.embed(&["a"], &both).await.unwrap_err());
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("exclusive") && message.contains("document, query"), "{message}");

    let unknown = EmbedParams {
        prompt_name: Some("passage".into()),
        ..EmbedParams::default()
    };
    let (code, message) = server_error(client.embed(&["a"], &unknown).await.unwrap_err());
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("passage") && message.contains("document, query"), "{message}");

    // An over-long prompted input with truncate = false is refused, and the connection still serves.
    let strict = EmbedParams {
        prompt_name: Some("query".into()),
        truncate: Some(false),
        ..EmbedParams::default()
    };
    let long = "the robot moves ".repeat(40);
    let (code, _) = server_error(client.embed(&[long.as_str()], &strict).await.unwrap_err());
    assert_eq!(code, ErrorCode::InputTooLong);
    let ok = client.embed(&["short"], &strict).await.unwrap();
    assert_eq!(ok.embeddings.len(), 1);
}

/// Starts a daemon that must fail at start-up, and returns its exit code and log.
fn start_failure(extra: &str) -> (Option<i32>, String) {
    let mut daemon = Daemon::spawn(extra, &[]);
    let code = daemon.wait_exit(Duration::from_secs(60));
    (code, daemon.log())
}

#[test]
fn exports_it_cannot_serve_are_model_errors_naming_the_reason() {
    let (code, log) = start_failure(&model_table(&fixture_dir(), "model_with_past.onnx"));
    assert_eq!(code, Some(65), "{log}");
    assert!(log.contains("KV cache") && log.contains("past_key_values"), "{log}");

    let (code, log) = start_failure(&model_table(&fixture_dir(), "model_odd_input.onnx"));
    assert_eq!(code, Some(65), "{log}");
    assert!(log.contains("pixel_values"), "{log}");

    let (code, log) = start_failure(&model_table(&dense_dir(), "model_no_head.onnx"));
    assert_eq!(code, Some(65), "{log}");
    assert!(log.contains("Dense") && log.contains("sentence_embedding"), "{log}");

    let (code, log) = start_failure(&model_table(&fixture_dir(), "model_fp64.onnx"));
    assert_eq!(code, Some(65), "{log}");
    assert!(log.contains("model_fp64.onnx") && log.contains("missing"), "{log}");
}

#[test]
fn a_missing_external_data_file_is_named_at_start_up() {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        if path.is_file() && name != "model_external.onnx_data" {
            std::fs::copy(&path, copy.path().join(name)).unwrap();
        }
    }
    std::fs::create_dir(copy.path().join("1_Pooling")).unwrap();
    std::fs::copy(
        fixture_dir().join("1_Pooling/config.json"),
        copy.path().join("1_Pooling/config.json"),
    )
    .unwrap();
    let (code, log) = start_failure(&model_table(copy.path(), "model_external.onnx"));
    assert_eq!(code, Some(65), "{log}");
    assert!(log.contains("model_external.onnx_data") && log.contains("missing"), "{log}");
}

#[test]
fn a_large_export_that_spells_attention_out_is_warned_about_at_start_up() {
    use akidb::config::ModelConfig;
    use akidb::engine::{Attention, ModelInfo};
    let dir = fixture_dir();
    let load = |file: &str| {
        ModelInfo::load(&ModelConfig {
            dir: dir.clone(),
            file: Some(file.into()),
            ..ModelConfig::default()
        })
        .unwrap()
    };
    assert_eq!(load("model_attention_op.onnx").attention, Attention::Operator);
    let mut model = load("model.onnx");
    assert_eq!(model.attention, Attention::SpelledOut);
    assert_eq!(model.long_input_warning(), None, "a tiny model is not worth a warning");
    // The same graph with 600 MB of weights (a sparse file: no disk used) and long inputs.
    let big = tempfile::tempdir().unwrap();
    let weights = big.path().join("model.onnx_data");
    std::fs::File::create(&weights).unwrap().set_len(600 << 20).unwrap();
    model.external_data = vec![weights];
    model.max_tokens = 8192;
    let warning = model.long_input_warning().expect("large, spelled out, long inputs");
    assert!(warning.contains("--attention-op") && warning.contains("8192"), "{warning}");
    model.max_tokens = 512;
    assert_eq!(model.long_input_warning(), None, "short inputs only");
    model.max_tokens = 8192;
    model.attention = Attention::Operator;
    assert_eq!(model.long_input_warning(), None, "one attention operator per layer");
}
