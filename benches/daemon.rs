//! The daemon against the in-process engine, in one run: what the socket, the actors and the batcher cost.
//!
//! Run with `cargo bench --bench daemon` (or `make bench`). Starts the real `akidbd` and drives it with the real
//! `akictl bench`, so the figures are the ones an operator reproduces. Prints a table and writes
//! target/bench-daemon.json. Measured:
//! 1. throughput at saturation, 32 clients x 1 short sentence, vs the engine's best batch throughput;
//! 2. latency added on an idle daemon to one short request, vs the engine's batch-1 latency (p50, p99);
//! 3. mixed lengths (5-250 tokens): padding ratio and throughput, length grouping vs a plain FIFO batcher;
//! 4. realtime p99 while bulk clients saturate the daemon, vs `realtime_max_wait_ms` + the idle realtime p99.

mod common;

use std::path::Path;
use std::time::Duration;

use akidb::config::{DeviceConfig, ModelConfig};
use akidb::engine::{self, EmbedOptions, ModelInfo};
use common::{bench_in_background, bulk_args, percentile, repo, sentences, Daemon};
use serde_json::{json, Value};
use tokio::time::Instant;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench binaries without `--bench`: this one needs minutes and a release
        // build, so it only runs under `cargo bench`.
        println!("daemon bench: run it with `cargo bench --bench daemon`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let short = sentences(2048, 9, 13, 7);
    let mut mixed = sentences(1024, 3, 20, 11);
    mixed.extend(sentences(1024, 60, 190, 13));
    let short_file = dir.path().join("short.txt");
    let mixed_file = dir.path().join("mixed.txt");
    std::fs::write(&short_file, short.join("\n")).unwrap();
    std::fs::write(&mixed_file, mixed.join("\n")).unwrap();
    let short_path = short_file.to_str().unwrap();
    let mixed_path = mixed_file.to_str().unwrap();

    // In-process engine: best throughput over batch sizes, and batch-1 latency.
    let env = engine::environment(Path::new(engine::SETUP_ORT_LIBRARY)).expect("run `make setup` first");
    let model = ModelInfo::load(&ModelConfig {
        dir: repo().join("models/all-MiniLM-L6-v2"),
        ..ModelConfig::default()
    })
    .unwrap();
    let mut engine = engine::load_engine(&env, &model, &DeviceConfig::default()).unwrap();
    let options = EmbedOptions {
        truncate: true,
        ..EmbedOptions::default()
    };
    let mut engine_best = (0.0f64, 0usize);
    for batch in [1usize, 8, 16, 32, 64] {
        let started = Instant::now();
        let mut done = 0;
        let mut offset = 0;
        while started.elapsed() < Duration::from_secs(4) {
            let texts: Vec<&str> = (0..batch).map(|i| short[(offset + i) % short.len()].as_str()).collect();
            offset += batch;
            engine.embed(&texts, &options).unwrap();
            done += batch;
        }
        let rate = done as f64 / started.elapsed().as_secs_f64();
        println!("engine batch {batch:>2}: {rate:.0} sentences/s");
        if rate > engine_best.0 {
            engine_best = (rate, batch);
        }
    }
    let mut single: Vec<f64> = (0..600)
        .map(|i| {
            let started = Instant::now();
            engine.embed(&[short[i % short.len()].as_str()], &options).unwrap();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    single.sort_by(f64::total_cmp);
    let (engine_p50, engine_p99) = (percentile(&single, 0.5), percentile(&single, 0.99));
    drop(engine);

    let daemon = Daemon::start(dir.path(), "default", "");
    let saturated = daemon.bench(&["--concurrency", "32", "--duration", "10", "--texts", short_path]);
    let idle = daemon.bench(&["--concurrency", "1", "--duration", "6", "--texts", short_path]);
    let idle_rt = daemon.bench(&["--concurrency", "1", "--duration", "4", "--mix", "realtime", "--texts", short_path]);
    drop(daemon);

    let grouped = Daemon::start(dir.path(), "grouped", "");
    let grouped_run = grouped.bench(&["--concurrency", "32", "--duration", "10", "--texts", mixed_path]);
    let grouped_padding = grouped.status()["padding_ratio"].as_f64().unwrap();
    drop(grouped);
    let fifo = Daemon::start(dir.path(), "fifo", "[batcher]\ngroup_by_length = false\n");
    let fifo_run = fifo.bench(&["--concurrency", "32", "--duration", "10", "--texts", mixed_path]);
    let fifo_padding = fifo.status()["padding_ratio"].as_f64().unwrap();
    drop(fifo);

    let loaded = Daemon::start(dir.path(), "loaded", "");
    let bulk = bench_in_background(&loaded.socket, bulk_args(None, 8, 12, mixed_path));
    std::thread::sleep(Duration::from_secs(1));
    let rt_loaded = loaded.bench(&["--concurrency", "1", "--duration", "8", "--mix", "realtime", "--texts", short_path]);
    let bulk_run = bulk.join().unwrap();
    drop(loaded);

    let f = |v: &Value, path: &[&str]| path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(f64::NAN);
    let daemon_rate = f(&saturated, &["inputs_per_s"]);
    let report = json!({
        "engine_best_sentences_per_s": engine_best.0,
        "engine_best_batch": engine_best.1,
        "daemon_32_clients_per_s": daemon_rate,
        "daemon_over_engine": daemon_rate / engine_best.0,
        "daemon_32_clients_p50_ms": f(&saturated, &["latency_ms", "normal", "p50"]),
        "daemon_32_clients_p99_ms": f(&saturated, &["latency_ms", "normal", "p99"]),
        "engine_batch1_p50_ms": engine_p50,
        "engine_batch1_p99_ms": engine_p99,
        "daemon_idle_p50_ms": f(&idle, &["latency_ms", "normal", "p50"]),
        "daemon_idle_p99_ms": f(&idle, &["latency_ms", "normal", "p99"]),
        "daemon_idle_per_s": f(&idle, &["requests_per_s"]),
        "mixed_grouped_per_s": f(&grouped_run, &["inputs_per_s"]),
        "mixed_grouped_padding": grouped_padding,
        "mixed_fifo_per_s": f(&fifo_run, &["inputs_per_s"]),
        "mixed_fifo_padding": fifo_padding,
        "realtime_idle_p99_ms": f(&idle_rt, &["latency_ms", "realtime", "p99"]),
        "realtime_under_bulk_p50_ms": f(&rt_loaded, &["latency_ms", "realtime", "p50"]),
        "realtime_under_bulk_p99_ms": f(&rt_loaded, &["latency_ms", "realtime", "p99"]),
        "bulk_inputs_per_s": f(&bulk_run, &["inputs_per_s"]),
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let _ = std::fs::write(
        repo().join("target/bench-daemon.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    );
}
