//! One short request on an idle daemon, three ways, in one run on one daemon: over the Unix socket computed (the
//! cache bypassed), over the socket answered by the embedding cache, and over HTTP computed.
//!
//! Run with `cargo bench --bench latency` (or `make bench`). Starts the real `akidbd` with `--http`, then sends
//! the same short sentence one request at a time, rotating between a socket client (`akidb::client`, protocol
//! v1) with `cache: false`, the same client with the cache, and an HTTP/1.1 keep-alive client (`POST
//! /v1/embeddings`, JSON floats, `cache: false`), and reports p50/p99 of each: what HTTP adds to a computed
//! request, and what a cache hit costs against a miss. Then start-up, over `STARTS` fresh daemons: exec → READY
//! (polling `health` every 5 ms), and the first short request right after READY against the steady p50 of the
//! next 100. Writes target/bench-latency.json.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use akidb::client::{Client, EmbedParams};
use common::{percentile, repo};
use serde_json::json;
use tokio::time::Instant;

const TEXT: &str = "the robot picks up the red cup from the kitchen table";
const ROUNDS: usize = 600;
const STARTS: usize = 8;

/// One fresh daemon (default model, cache off): seconds from exec to READY, the first request's ms, the steady
/// p50 ms.
fn start_up(runtime: &tokio::runtime::Runtime, dir: &std::path::Path, run: usize) -> (f64, f64, f64) {
    let socket = dir.join(format!("start-{run}.sock"));
    let config = dir.join("nocache.toml");
    std::fs::write(&config, "[cache]\nmax_bytes = 0\n").unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_akidbd"))
        .arg("--config")
        .arg(&config)
        .arg("--model")
        .arg(repo().join("models/all-MiniLM-L6-v2"))
        .arg("--socket")
        .arg(&socket)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let figures = runtime.block_on(async {
        let mut client = loop {
            if let Ok(client) = Client::connect(&socket).await {
                break client;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        while client.health().await.ok().as_deref() != Some("ready") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ready = started.elapsed().as_secs_f64();
        let t = Instant::now();
        client.embed(&[TEXT], &EmbedParams::default()).await.unwrap();
        let first = t.elapsed().as_secs_f64() * 1000.0;
        let mut steady: Vec<f64> = Vec::new();
        for i in 0..100 {
            let t = Instant::now();
            client.embed(&[format!("{TEXT} {i}")], &EmbedParams::default()).await.unwrap();
            steady.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        steady.sort_by(f64::total_cmp);
        (ready, first, percentile(&steady, 0.5))
    });
    let _ = child.kill();
    let _ = child.wait();
    figures
}

/// One `POST /v1/embeddings` on a kept-alive connection; returns the response body.
fn http_embed(stream: &mut BufReader<TcpStream>, body: &str) -> String {
    let request = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.get_mut().write_all(request.as_bytes()).unwrap();
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        stream.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut out = vec![0u8; length];
    stream.read_exact(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("latency bench: run it with `cargo bench --bench latency`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bench.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_akidbd"))
        .arg("--model")
        .arg(repo().join("models/all-MiniLM-L6-v2"))
        .arg("--socket")
        .arg(&socket)
        .args(["--http", &addr])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut client = runtime.block_on(async {
        for _ in 0..600 {
            if let Ok(mut client) = Client::connect(&socket).await {
                if client.health().await.ok().as_deref() == Some("ready") {
                    return client;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("akidbd did not become ready");
    });
    let mut http = BufReader::new(TcpStream::connect(&addr).unwrap());
    http.get_mut().set_nodelay(true).unwrap();
    let body = json!({"model": "all-MiniLM-L6-v2", "input": [TEXT], "cache": false}).to_string();
    let params = EmbedParams {
        cache: Some(false),
        ..EmbedParams::default()
    };
    let cached = EmbedParams::default();
    // Warm both paths, then alternate so that drift in the machine's speed hits both alike.
    for _ in 0..50 {
        runtime.block_on(client.embed(&[TEXT], &params)).unwrap();
        assert!(http_embed(&mut http, &body).contains("\"embedding\""));
    }
    let (mut socket_ms, mut http_ms, mut hit_ms) = (Vec::new(), Vec::new(), Vec::new());
    runtime.block_on(client.embed(&[TEXT], &cached)).unwrap();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        runtime.block_on(client.embed(&[TEXT], &params)).unwrap();
        socket_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        let hit = runtime.block_on(client.embed(&[TEXT], &cached)).unwrap();
        hit_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(hit.reply.timing_us.inference, 0, "answered by the cache");
        let started = Instant::now();
        http_embed(&mut http, &body);
        http_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = child.kill();
    let _ = child.wait();
    let starts: Vec<(f64, f64, f64)> = (0..STARTS).map(|run| start_up(&runtime, dir.path(), run)).collect();
    let ratios: Vec<f64> = starts.iter().map(|(_, first, p50)| first / p50).collect();
    let max = |v: &mut dyn Iterator<Item = f64>| v.fold(f64::MIN, f64::max);
    let min = |v: &mut dyn Iterator<Item = f64>| v.fold(f64::MAX, f64::min);
    socket_ms.sort_by(f64::total_cmp);
    http_ms.sort_by(f64::total_cmp);
    hit_ms.sort_by(f64::total_cmp);
    let report = json!({
        "rounds": ROUNDS,
        "cache_hit_p50_ms": percentile(&hit_ms, 0.5),
        "cache_hit_p99_ms": percentile(&hit_ms, 0.99),
        "miss_over_hit_p50": percentile(&socket_ms, 0.5) / percentile(&hit_ms, 0.5),
        "socket_p50_ms": percentile(&socket_ms, 0.5),
        "socket_p99_ms": percentile(&socket_ms, 0.99),
        "http_p50_ms": percentile(&http_ms, 0.5),
        "http_p99_ms": percentile(&http_ms, 0.99),
        "http_added_p50_ms": percentile(&http_ms, 0.5) - percentile(&socket_ms, 0.5),
        "http_added_p99_ms": percentile(&http_ms, 0.99) - percentile(&socket_ms, 0.99),
        "starts": STARTS,
        "ready_s_min": min(&mut starts.iter().map(|s| s.0)),
        "ready_s_max": max(&mut starts.iter().map(|s| s.0)),
        "first_over_steady_p50_min": min(&mut ratios.iter().copied()),
        "first_over_steady_p50_max": max(&mut ratios.iter().copied()),
        "first_request_ms": starts.iter().map(|s| s.1).collect::<Vec<_>>(),
        "steady_p50_ms": starts.iter().map(|s| s.2).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let _ = std::fs::write(
        repo().join("target/bench-latency.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    );
}
