//! Shared test helpers: fixture files, model paths, and the one ONNX Runtime environment of this process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use akidb::config::{DeviceConfig, ModelConfig};
use akidb::engine::{self, ModelInfo, OrtEngine};

/// One fixture text with its sentence-transformers reference embedding.
pub struct Fixture {
    pub text: String,
    pub tokens: usize,
    pub embedding: Vec<f32>,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn shared() -> PathBuf {
    repo().join("..").join("shared")
}

pub fn default_model_dir() -> PathBuf {
    repo().join("models").join("all-MiniLM-L6-v2")
}

/// The exact fp32 model in ../shared, if it is there.
pub fn fp32_model_dir() -> Option<PathBuf> {
    let dir = shared().join("models").join("all-MiniLM-L6-v2-fp32");
    dir.join("model.onnx").is_file().then_some(dir)
}

fn read_jsonl(path: &Path) -> Vec<Fixture> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
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
        .collect()
}

/// All 200 fixture texts from ../shared when present; else the 38-text sample committed in tests/data (which
/// keeps the truncation-boundary and over-512-token texts).
pub fn fixtures() -> (Vec<Fixture>, &'static str) {
    let full = shared().join("fixtures").join("minilm").join("public.jsonl");
    if full.is_file() {
        (read_jsonl(&full), "../shared/fixtures/minilm/public.jsonl (200 texts)")
    } else {
        eprintln!("note: ../shared is absent; using the committed 38-text sample of the fixtures");
        (
            read_jsonl(&repo().join("tests/data/minilm-sample.jsonl")),
            "tests/data/minilm-sample.jsonl (38 texts)",
        )
    }
}

pub fn env() -> ort::environment::Environment {
    engine::environment(Path::new(engine::SETUP_ORT_LIBRARY)).expect("ONNX Runtime (run `make setup`)")
}

pub fn model_info(dir: &Path) -> ModelInfo {
    ModelInfo::load(&ModelConfig {
        dir: dir.to_owned(),
        ..ModelConfig::default()
    })
    .unwrap()
}

pub fn cpu_engine(dir: &Path) -> OrtEngine {
    engine::load_engine(&env(), &model_info(dir), &DeviceConfig::default()).unwrap()
}
