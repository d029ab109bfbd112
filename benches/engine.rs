//! In-process engine throughput: the ceiling the daemon's overhead is measured against.
//!
//! Sentences/s and tokens/s at batch 1, 8, 32 and 64, for short (~12 tokens) and long (~200 tokens) texts, with
//! the default model on the CPU, tokenization and pooling included. Criterion reports time per batch and
//! throughput in elements (sentences); the tokens per text are printed once at the start.

use std::path::{Path, PathBuf};

use akidb::config::{DeviceConfig, ModelConfig};
use akidb::engine::{self, EmbedOptions, ModelInfo};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SHORT: &str = "the robot picks up the red cup from the kitchen table";

fn long_text() -> String {
    let sentence = "the mobile robot follows the corridor, checks each door, and reports obstacles to the planner. ";
    sentence.repeat(11)
}

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
}

fn bench_engine(c: &mut Criterion) {
    let env = engine::environment(Path::new(engine::SETUP_ORT_LIBRARY)).expect("run `make setup` first");
    let model = ModelInfo::load(&ModelConfig {
        dir: model_dir(),
        ..ModelConfig::default()
    })
    .unwrap();
    let mut engine = engine::load_engine(&env, &model, &DeviceConfig::default()).unwrap();
    let options = EmbedOptions {
        truncate: true,
        ..EmbedOptions::default()
    };
    let long = long_text();
    for (name, text) in [("short", SHORT), ("long", long.as_str())] {
        let tokens = engine.embed(&[text], &options).unwrap().tokens[0];
        println!("{name} text: {tokens} tokens");
        let mut group = c.benchmark_group(format!("engine/{name}"));
        group.sample_size(10);
        for batch in [1usize, 8, 32, 64] {
            let texts = vec![text; batch];
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::from_parameter(batch), &texts, |b, texts| {
                b.iter(|| engine.embed(texts, &options).unwrap());
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_engine);
criterion_main!(benches);
