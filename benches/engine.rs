//! The in-process engine on the fixture texts: the ceiling the daemon is measured against, and the default-model
//! options side by side.
//!
//! Run with `cargo bench --bench engine` (or `make bench`). For the default model, ../shared's exact fp32 model
//! when present, and every option `tools/default-model/options.sh` built into target/model-options/, on the CPU
//! with ONNX Runtime's default threads, tokenization and pooling included:
//! - `mixed_b32_per_s`: the fixture texts in file order, 32 at a time (real lengths, real padding);
//! - `short_b1_p50_ms`: one short fixture text (≤ 24 tokens) at a time, median;
//! - `long_b8_per_s` / `long_b1_per_s`: the fixture texts of 120 tokens or more, 8 at a time and one at a time;
//! - `min_cosine`: the worst cosine to sentence-transformers' reference vectors over every fixture text.
//!
//! Writes target/bench-engine.json.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use akidb::config::{DeviceConfig, ModelConfig};
use akidb::engine::pooling::cosine;
use akidb::engine::{self, EmbedOptions, ModelInfo};
use common::{percentile, repo};
use serde_json::{json, Value};
use tokio::time::Instant;

struct Fixture {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

fn fixtures() -> (Vec<Fixture>, String) {
    let shared = repo().join("../shared/fixtures/minilm/public.jsonl");
    let path = if shared.is_file() {
        shared
    } else {
        repo().join("tests/data/minilm-sample.jsonl")
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let fixtures = text
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            Fixture {
                text: value["text"].as_str().unwrap().to_owned(),
                tokens: value["tokens"].as_u64().unwrap() as usize,
                embedding: value["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            }
        })
        .collect();
    (fixtures, path.display().to_string())
}

/// Inputs per second embedding `texts` `batch` at a time, in order, for about `secs` seconds.
fn rate(engine: &mut dyn FnMut(&[&str]), texts: &[&str], batch: usize, secs: f64) -> f64 {
    let started = Instant::now();
    let mut done = 0;
    let mut offset = 0;
    while started.elapsed().as_secs_f64() < secs {
        let chunk: Vec<&str> = (0..batch).map(|i| texts[(offset + i) % texts.len()]).collect();
        offset += batch;
        engine(&chunk);
        done += batch;
    }
    done as f64 / started.elapsed().as_secs_f64()
}

fn measure(env: &ort::environment::Environment, dir: &Path, fixtures: &[Fixture]) -> Value {
    let model = ModelInfo::load(&ModelConfig {
        dir: dir.to_owned(),
        ..ModelConfig::default()
    })
    .unwrap();
    let options = EmbedOptions {
        truncate: true,
        ..EmbedOptions::default()
    };
    let mut engine = engine::load_engine(env, &model, &DeviceConfig::default()).unwrap();
    let all: Vec<&str> = fixtures.iter().map(|f| f.text.as_str()).collect();
    let mut min_cosine = f64::MAX;
    for (chunk, refs) in all.chunks(32).zip(fixtures.chunks(32)) {
        let out = engine.embed(chunk, &options).unwrap();
        for (got, fixture) in out.embeddings.iter().zip(refs) {
            min_cosine = min_cosine.min(cosine(got, &fixture.embedding));
        }
    }
    let mut run = |texts: &[&str]| {
        engine.embed(texts, &options).unwrap();
    };
    let long: Vec<&str> = fixtures.iter().filter(|f| f.tokens >= 120).map(|f| f.text.as_str()).collect();
    let short: Vec<&str> = fixtures.iter().filter(|f| f.tokens <= 24).map(|f| f.text.as_str()).collect();
    let mixed_b32 = rate(&mut run, &all, 32, 4.0);
    let long_b8 = rate(&mut run, &long, 8, 3.0);
    let long_b1 = rate(&mut run, &long, 1, 3.0);
    let mut single: Vec<f64> = (0..300)
        .map(|i| {
            let started = Instant::now();
            run(&[short[i % short.len()]]);
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    single.sort_by(f64::total_cmp);
    let size = std::fs::metadata(&model.onnx_path).map_or(0, |m| m.len());
    json!({
        "dir": dir.display().to_string(),
        "onnx_bytes": size,
        "min_cosine": min_cosine,
        "mixed_b32_per_s": mixed_b32,
        "short_b1_p50_ms": percentile(&single, 0.5),
        "long_b8_per_s": long_b8,
        "long_b1_per_s": long_b1,
    })
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("engine bench: run it with `cargo bench --bench engine`");
        return;
    }
    let env = engine::environment(Path::new(engine::SETUP_ORT_LIBRARY)).expect("run `make setup` first");
    let (fixtures, source) = fixtures();
    let mut candidates: Vec<(String, PathBuf)> = vec![("default".into(), repo().join("models/all-MiniLM-L6-v2"))];
    let shared = repo().join("../shared/models/all-MiniLM-L6-v2-fp32");
    if shared.join("model.onnx").is_file() {
        candidates.push(("shared-fp32".into(), shared));
    }
    if let Ok(entries) = std::fs::read_dir(repo().join("target/model-options")) {
        let mut options: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("model.onnx").is_file())
            .collect();
        options.sort();
        for dir in options {
            candidates.push((dir.file_name().unwrap().to_string_lossy().into_owned(), dir));
        }
    } else {
        println!("(no target/model-options: run tools/default-model/options.sh to measure the default-model options)");
    }
    let mut models = serde_json::Map::new();
    println!(
        "{:<18}{:>10}{:>14}{:>12}{:>12}{:>12}{:>14}",
        "model", "MB", "mixed b32/s", "short b1 ms", "long b8/s", "long b1/s", "min cosine"
    );
    for (name, dir) in candidates {
        let figures = measure(&env, &dir, &fixtures);
        let f = |key: &str| figures[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "{name:<18}{:>10.1}{:>14.1}{:>12.2}{:>12.1}{:>12.1}{:>14.9}",
            f("onnx_bytes") / 1e6,
            f("mixed_b32_per_s"),
            f("short_b1_p50_ms"),
            f("long_b8_per_s"),
            f("long_b1_per_s"),
            f("min_cosine")
        );
        models.insert(name, figures);
        // Let the machine settle between models (their thread pools are gone with the engine).
        std::thread::sleep(Duration::from_millis(500));
    }
    let report = json!({ "fixtures": source, "models": models });
    let _ = std::fs::write(
        repo().join("target/bench-engine.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    );
}
