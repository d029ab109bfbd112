//! Several models on one device, in one run: what sharing it costs and whether priorities hold across models.
//!
//! Run with `cargo bench --bench models` (or `make bench`). Starts the real `akidbd` twice, once serving the
//! default MiniLM alone and once serving it beside the int8 MiniLM graph that `make setup` lays out
//! (models/all-MiniLM-L6-v2-int8, `[[models]]`), and drives both with
//! the real `akictl bench`. Writes target/bench-models.json. Measured:
//! 1. realtime p50/p99 of short requests on the default model while bulk clients (8 x 8 mixed-length texts)
//!    saturate the device: with the bulk on the same model (one model served), and with the bulk on the other
//!    model (two served);
//! 2. bulk throughput (tokens/s) of each model alone (8 clients) and of both at once (4 clients each): each
//!    model's share of its alone throughput, and their sum (1.0 = switching between models costs nothing). In
//!    tokens, because the two `akictl bench` runs walk the same text file and so send other mixes of lengths
//!    than one run with twice the clients.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{bench_in_background, bulk_args, repo, sentences, Daemon};
use serde_json::{json, Value};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("models bench: run it with `cargo bench --bench models`");
        return;
    }
    let int8 = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2-int8");
    assert!(
        int8.join("model.onnx").is_file(),
        "this bench serves models/all-MiniLM-L6-v2-int8 beside the default model: run `make setup`"
    );
    let dir = tempfile::tempdir().unwrap();
    let short_file = dir.path().join("short.txt");
    let mixed_file = dir.path().join("mixed.txt");
    std::fs::write(&short_file, sentences(2048, 9, 13, 7).join("\n")).unwrap();
    let mut mixed = sentences(1024, 3, 20, 11);
    mixed.extend(sentences(1024, 60, 190, 13));
    std::fs::write(&mixed_file, mixed.join("\n")).unwrap();
    let (short, mixed) = (short_file.to_str().unwrap(), mixed_file.to_str().unwrap());
    let realtime = |model: &str| -> Vec<String> {
        [
            "--model",
            model,
            "--concurrency",
            "1",
            "--duration",
            "8",
            "--mix",
            "realtime",
            "--texts",
            short,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let f = |v: &Value, path: &[&str]| path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(f64::NAN);
    let name = "all-MiniLM-L6-v2";

    // One model served: realtime behind bulk of the same model.
    let single = Daemon::start(dir.path(), "single", "");
    let bulk = bench_in_background(&single.socket, bulk_args(Some(name), 8, 12, mixed));
    std::thread::sleep(Duration::from_secs(1));
    let args = realtime(name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let single_rt = single.bench(&args);
    let single_bulk = bulk.join().unwrap();
    drop(single);

    // Two models served.
    let two = Daemon::start(
        dir.path(),
        "two",
        &format!(
            "[[models]]\nname = \"{name}\"\ndir = {:?}\n[[models]]\nname = \"int8\"\ndir = {int8:?}\n",
            repo().join("models/all-MiniLM-L6-v2")
        ),
    );
    let alone_small = bench_in_background(&two.socket, bulk_args(Some(name), 8, 8, mixed)).join().unwrap();
    let alone_int8 = bench_in_background(&two.socket, bulk_args(Some("int8"), 8, 8, mixed))
        .join()
        .unwrap();
    let both_small = bench_in_background(&two.socket, bulk_args(Some(name), 4, 10, mixed));
    let both_int8 = bench_in_background(&two.socket, bulk_args(Some("int8"), 4, 10, mixed));
    let (both_small, both_int8) = (both_small.join().unwrap(), both_int8.join().unwrap());
    let bulk = bench_in_background(&two.socket, bulk_args(Some("int8"), 8, 12, mixed));
    std::thread::sleep(Duration::from_secs(1));
    let args = realtime(name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cross_rt = two.bench(&args);
    let cross_bulk = bulk.join().unwrap();
    let sessions = two.status()["devices"][0]["sessions"].clone();
    drop(two);

    let rate = |v: &Value| f(v, &["tokens_per_s"]);
    let share_small = rate(&both_small) / rate(&alone_small);
    let share_int8 = rate(&both_int8) / rate(&alone_int8);
    let report = json!({
        "one_model_realtime_under_bulk_p50_ms": f(&single_rt, &["latency_ms", "realtime", "p50"]),
        "one_model_realtime_under_bulk_p99_ms": f(&single_rt, &["latency_ms", "realtime", "p99"]),
        "one_model_bulk_tokens_per_s": rate(&single_bulk),
        "two_models_realtime_under_other_bulk_p50_ms": f(&cross_rt, &["latency_ms", "realtime", "p50"]),
        "two_models_realtime_under_other_bulk_p99_ms": f(&cross_rt, &["latency_ms", "realtime", "p99"]),
        "two_models_other_bulk_tokens_per_s": rate(&cross_bulk),
        "alone_default_tokens_per_s": rate(&alone_small),
        "alone_int8_tokens_per_s": rate(&alone_int8),
        "together_default_tokens_per_s": rate(&both_small),
        "together_int8_tokens_per_s": rate(&both_int8),
        "together_share_default": share_small,
        "together_share_int8": share_int8,
        "together_shares_sum": share_small + share_int8,
        "sessions": sessions,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let _ = std::fs::write(
        repo().join("target/bench-models.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    );
}
