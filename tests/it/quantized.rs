//! Quantized models served by the real daemon as ONNX Runtime computes them in-process: the default MiniLM
//! quantized here at test time by tools/quantize.py (MatMulNBits 8 bits, 4 bits with zero points, 4-bit QDQ)
//! and by onnxruntime's dynamic int8; the decoder fixture's committed 4- and 8-bit files; the precision reported as
//! what it is; and a graph that needs an operator the loaded ONNX Runtime lacks, refused at start-up, named.

use std::path::{Path, PathBuf};
use std::process::Command;

use akidb::client::EmbedParams;
use akidb::config::{DeviceConfig, ModelConfig};
use akidb::engine::pooling::cosine;
use akidb::engine::{self, EmbedOptions, EngineError, ModelInfo};

use crate::decoder;
use crate::util::{self, within, Daemon};

fn python() -> PathBuf {
    let python = util::repo().join("target/pyenv/bin/python");
    let probe = Command::new(&python)
        .args(["-I", "-c", "import onnx, onnxruntime, onnx_ir, tokenizers"])
        .status();
    assert!(
        matches!(probe, Ok(status) if status.success()),
        "{} with onnx, onnxruntime and tokenizers is missing, so tools/quantize.py cannot run (run `make setup`)",
        python.display()
    );
    python
}

/// Runs tools/quantize.py on `dir` with `args` writing `out`, and returns its report (Null with `--no-report`).
fn quantize(dir: &Path, out: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new(python())
        .arg(util::repo().join("tools/quantize.py"))
        .arg(dir)
        .args(["--out", out])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "quantize.py: {}", String::from_utf8_lossy(&output.stderr));
    match std::fs::read_to_string(dir.join(format!("{out}.report.json"))) {
        Ok(text) => serde_json::from_str(&text).unwrap(),
        Err(_) => serde_json::Value::Null,
    }
}

fn engine_for(dir: &Path, file: &str) -> engine::OrtEngine {
    let info = ModelInfo::load(&ModelConfig {
        dir: dir.to_owned(),
        file: Some(file.into()),
        ..ModelConfig::default()
    })
    .unwrap();
    // One thread, as the test daemons' device has: the kernels' partition of the work follows the thread count.
    let device = DeviceConfig {
        intra_threads: 1,
        ..DeviceConfig::default()
    };
    engine::load_engine(&util::env(), &info, &device).unwrap()
}

/// The daemon's vectors of `texts` against the in-process engine's on the same file, each text alone: (the worst
/// cosine with the daemon's request of one text, with the daemon's request of all of them).
async fn daemon_vs_engine(
    daemon: &Daemon,
    engine: &mut engine::OrtEngine,
    texts: &[&str],
    params: &EmbedParams,
    options: &EmbedOptions,
) -> (f64, f64) {
    let mut client = daemon.client().await;
    // Past the cache: it would answer the requests of one text with the batch's vectors.
    let params = &EmbedParams {
        cache: Some(false),
        ..params.clone()
    };
    let batched = within(120, client.embed(texts, params)).await.unwrap();
    let (mut alone_worst, mut batched_worst) = (f64::MAX, f64::MAX);
    for (i, text) in texts.iter().enumerate() {
        let reference = engine.embed(&[*text], options).unwrap().embeddings.remove(0);
        let alone = within(60, client.embed(&[*text], params)).await.unwrap();
        alone_worst = alone_worst.min(cosine(&alone.embeddings[0], &reference));
        batched_worst = batched_worst.min(cosine(&batched.embeddings[i], &reference));
    }
    (alone_worst, batched_worst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_quantized_by_the_tool_is_served_as_onnxruntime_computes_it() {
    let copy = tempfile::tempdir().unwrap();
    for entry in walk(&util::default_model_dir()) {
        let to = copy.path().join(entry.strip_prefix(util::default_model_dir()).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    let report = quantize(copy.path(), "model_q8.onnx", &["--bits", "8", "--block", "32", "--rounds", "1"]);
    for key in [
        "min",
        "mean",
        "by_kind",
        "size_bytes",
        "speed",
        "worst",
        "loads",
        "batch_dependence",
    ] {
        assert!(!report[key].is_null(), "the report has {key}: {report}");
    }
    assert!(report["size_bytes"]["quantized"].as_u64() < report["size_bytes"]["source"].as_u64());
    // The report's batch dependence: block-wise files quantize activations per row, so none.
    let batched_min = |report: &serde_json::Value, which: &str| report["batch_dependence"][which]["min"].as_f64().unwrap();
    assert!(
        batched_min(&report, "source") >= 0.99999 && batched_min(&report, "quantized") >= 0.99999,
        "{report}"
    );
    // 4 bits with zero points, 4 bits as QDQ (DequantizeLinear + MatMul), and onnxruntime's dynamic int8, whose
    // activation scale covers the whole batch: its report says that its vectors move with their batch.
    quantize(
        copy.path(),
        "model_q4_zp.onnx",
        &["--bits", "4", "--block", "32", "--asymmetric", "--no-report"],
    );
    quantize(
        copy.path(),
        "model_qdq.onnx",
        &["--bits", "4", "--block", "32", "--qdq", "--no-report"],
    );
    let report = quantize(copy.path(), "model_dynamic.onnx", &["--dynamic", "--rounds", "1"]);
    assert!(batched_min(&report, "quantized") < batched_min(&report, "source"), "{report}");
    let (fixtures, source) = util::fixtures();
    let texts: Vec<&str> = fixtures.iter().map(|f| f.text.as_str()).collect();
    let options = EmbedOptions {
        truncate: true,
        ..EmbedOptions::default()
    };
    for (file, precision) in [
        ("model_q8.onnx", "int8 weights, block 32, int8 compute"),
        ("model_q4_zp.onnx", "int4 weights, block 32, int8 compute"),
        ("model_qdq.onnx", "QDQ: quantized tensors dequantized in the graph"),
        (
            "model_dynamic.onnx",
            "int8 weights, int8 activations quantized per tensor at run time (dynamic)",
        ),
    ] {
        let daemon = Daemon::start(&format!(
            "[model]\ndir = {:?}\nfile = {file:?}\n[batcher]\nwarmup_seq_lengths = [16]\n",
            copy.path()
        ));
        let mut engine = engine_for(copy.path(), file);
        let (exact, batched) = daemon_vs_engine(&daemon, &mut engine, &texts, &EmbedParams::default(), &options).await;
        let mut client = daemon.client().await;
        let served = within(120, client.embed(&texts, &EmbedParams::default())).await.unwrap();
        let to_reference = served
            .embeddings
            .iter()
            .zip(&fixtures)
            .map(|(a, f)| cosine(a, &f.embedding))
            .fold(f64::MAX, f64::min);
        let status = client.status().await.unwrap();
        eprintln!(
            "MiniLM {file}: daemon vs in-process {exact:.9} (batched {batched:.9}); vs sentence-transformers \
             {to_reference:.6} ({source}); precision {:?}",
            status.devices[0].precision
        );
        assert!(exact >= 0.999999, "{file}: the daemon computes as onnxruntime does: {exact}");
        // Block-wise: activations are quantized per token row and block, so a vector does not depend on its batch.
        // Dynamic int8 quantizes them per tensor, that is per batch: it does (README "Default model").
        if file != "model_dynamic.onnx" {
            assert!(batched >= 0.99999, "{file}: batched as alone: {batched}");
        }
        assert_eq!(status.devices[0].precision.as_deref(), Some(precision));
        assert_eq!(status.devices[0].sessions[0].precision, precision);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decoder_fixtures_quantized_files_are_served_as_onnxruntime_computes_them() {
    let dir = decoder::fixture_dir();
    let case = decoder::cases(&dir)
        .into_iter()
        .find(|c| c.params.prompt_name.is_some())
        .expect("a case with a prompt");
    let texts: Vec<&str> = case.texts.iter().map(String::as_str).collect();
    for (file, precision) in [
        ("model_q4_b32.onnx", "int4 weights, block 32, int8 compute"),
        ("model_q8_b32.onnx", "int8 weights, block 32, int8 compute"),
    ] {
        let daemon = Daemon::start(&format!(
            "[model]\ndir = {dir:?}\nfile = {file:?}\n[batcher]\nwarmup_seq_lengths = [16]\n"
        ));
        // The engine computes without a prompt: give the daemon the prompt's text literally, as the engine gets it.
        let info = ModelInfo::load(&ModelConfig {
            dir: dir.clone(),
            file: Some(file.into()),
            ..ModelConfig::default()
        })
        .unwrap();
        let prompt = info.prompts[case.params.prompt_name.as_deref().unwrap()].clone();
        let prompted: Vec<String> = texts.iter().map(|t| format!("{prompt}{t}")).collect();
        let prompted: Vec<&str> = prompted.iter().map(String::as_str).collect();
        let params = EmbedParams {
            prompt: Some(String::new()),
            ..EmbedParams::default()
        };
        let mut engine = engine_for(&dir, file);
        let options = EmbedOptions {
            truncate: true,
            ..EmbedOptions::default()
        };
        let (exact, batched) = daemon_vs_engine(&daemon, &mut engine, &prompted, &params, &options).await;
        let status = daemon.client().await.status().await.unwrap();
        eprintln!(
            "decoder {file}: daemon vs in-process {exact:.9} (batched {batched:.9}); precision {:?}",
            status.devices[0].precision
        );
        assert!(exact >= 0.999999, "{file}: {exact}");
        // Batched, left padding shifts a row's positions, which changes float rounding (NOTES: RoPE is relative);
        // activations rounded to int8 per block turn such a last-bit difference into a whole quantization step now
        // and then (measured: 1 - 1.5e-5 on two of 20 texts, where the fp32 file gives 1 - 1e-14).
        assert!(batched >= 0.9999, "{file}: batched {batched}");
        assert_eq!(status.devices[0].precision.as_deref(), Some(precision));
    }
}

#[test]
fn a_graph_needing_an_operator_this_onnx_runtime_lacks_is_refused_naming_it() {
    let copy = tempfile::tempdir().unwrap();
    for name in ["tokenizer.json", "config.json", "sentence_bert_config.json", "modules.json"] {
        std::fs::copy(util::default_model_dir().join(name), copy.path().join(name)).unwrap();
    }
    std::fs::create_dir(copy.path().join("1_Pooling")).unwrap();
    std::fs::copy(
        util::default_model_dir().join("1_Pooling/config.json"),
        copy.path().join("1_Pooling/config.json"),
    )
    .unwrap();
    // A graph whose one node is an operator no ONNX Runtime has (as an older runtime lacks MatMulNBits).
    let script = "import onnx, sys\nfrom onnx import helper, TensorProto as T\n\
        ids = helper.make_tensor_value_info('input_ids', T.INT64, ['b', 's'])\n\
        mask = helper.make_tensor_value_info('attention_mask', T.INT64, ['b', 's'])\n\
        out = helper.make_tensor_value_info('last_hidden_state', T.FLOAT, ['b', 's', 384])\n\
        node = helper.make_node('MatMulNBitsFromTheFuture', ['input_ids', 'attention_mask'], ['last_hidden_state'], domain='com.microsoft')\n\
        graph = helper.make_graph([node], 'g', [ids, mask], [out])\n\
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17), helper.make_opsetid('com.microsoft', 1)])\n\
        model.ir_version = 9\n\
        onnx.save(model, sys.argv[1])\n";
    let status = Command::new(python())
        .args(["-c", script])
        .arg(copy.path().join("model.onnx"))
        .status()
        .unwrap();
    assert!(status.success());
    let info = util::model_info(copy.path());
    let err = engine::load_engine(&util::env(), &info, &DeviceConfig::default())
        .err()
        .expect("refused");
    let message = err.to_string();
    eprintln!("{message}");
    assert!(matches!(err, EngineError::Model { .. }), "{err:?}");
    assert!(
        message.contains("com.microsoft:MatMulNBitsFromTheFuture"),
        "the operator is named: {message}"
    );
    assert!(
        message.contains(&engine::ort_version()),
        "the library's version is named: {message}"
    );

    // The daemon refuses to start with it, saying the same.
    let mut daemon = Daemon::spawn(&format!("[model]\ndir = {:?}\n", copy.path()), &[]);
    let code = daemon.child.wait().unwrap().code();
    assert_ne!(code, Some(0));
    assert!(daemon.log().contains("MatMulNBitsFromTheFuture"), "{}", daemon.log());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
