//! `akictl`, run as a real binary against the real daemon.

use std::process::Command;

use akidb::client::EmbedParams;
use akidb::engine::pooling::cosine;

use crate::util::Daemon;

pub(crate) fn akictl(daemon_socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_akictl"))
        .arg("--socket")
        .arg(daemon_socket)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn status_fits_80_columns_and_json_parses() {
    let daemon = Daemon::start("");
    akictl(&daemon.socket, &["embed", "warm the counters up"]);
    let text = akictl(&daemon.socket, &["status"]);
    assert_eq!(text.status.code(), Some(0));
    let screen = String::from_utf8(text.stdout).unwrap();
    for line in screen.lines() {
        assert!(line.chars().count() <= 80, "{} columns: {line}", line.chars().count());
    }
    for needle in ["READY", "all-MiniLM-L6-v2", "cpu", "realtime", "normal", "bulk", "p99", "errors"] {
        assert!(screen.contains(needle), "{needle} missing from:\n{screen}");
    }
    let json = akictl(&daemon.socket, &["status", "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["status"], "ready");
    assert_eq!(value["model"]["dim"], 384);
    assert_eq!(value["devices"][0]["ep"], "cpu");
    assert!(value["counters"]["inputs"].as_u64().unwrap() >= 1);
}

#[cfg(feature = "fault-injection")]
#[test]
fn health_exit_codes_ready_starting_absent() {
    let daemon = Daemon::start("");
    assert_eq!(akictl(&daemon.socket, &["health"]).status.code(), Some(0));
    let starting = Daemon::spawn("", &[("AKIDB_FAULT_WARMUP_MS", "4000")]);
    let mut code = None;
    for _ in 0..200 {
        code = akictl(&starting.socket, &["health"]).status.code();
        if code != Some(2) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(code, Some(1), "starting");
    let absent = daemon.dir.path().join("nobody-here.sock");
    let output = akictl(&absent, &["health"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nobody-here.sock") && stderr.contains("akidbd running"), "{stderr}");
    let status = akictl(&absent, &["status"]);
    assert_eq!(status.status.code(), Some(2));
}

#[test]
fn embed_prints_the_clients_vectors() {
    let daemon = Daemon::start("");
    let output = akictl(&daemon.socket, &["embed", "a robot arm", "the red cup"]);
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let socket = daemon.socket.clone();
    let expected = crate::util::runtime().block_on(async move {
        let mut client = akidb::client::Client::connect(&socket).await.unwrap();
        client
            .embed(&["a robot arm", "the red cup"], &EmbedParams::default())
            .await
            .unwrap()
            .embeddings
    });
    for (line, expected) in lines.iter().zip(&expected) {
        let got: Vec<f32> = line["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert!(cosine(&got, expected) > 0.99999);
    }
    // stdin, one text per line, with options.
    let mut child = Command::new(env!("CARGO_BIN_EXE_akictl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["embed", "--dimensions", "32", "--priority", "realtime"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"one\ntwo\nthree\n").unwrap();
    let output = child.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["text"], "three");
    assert_eq!(lines[0]["embedding"].as_array().unwrap().len(), 32);
}

#[test]
fn bench_is_bounded_and_its_figures_are_sane() {
    let daemon = Daemon::start("");
    let output = akictl(
        &daemon.socket,
        &[
            "bench",
            "--concurrency",
            "4",
            "--depth",
            "2",
            "--requests",
            "60",
            "--duration",
            "30",
            "--mix",
            "realtime=1,normal=2,bulk=1",
            "--json",
        ],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["requests"], 60, "bounded by --requests");
    assert_eq!(report["ok"], 60);
    assert!(report["elapsed_s"].as_f64().unwrap() < 30.0);
    assert!(report["requests_per_s"].as_f64().unwrap() > 1.0);
    assert!(report["tokens"].as_u64().unwrap() >= 60 * 8);
    for class in ["realtime", "normal", "bulk"] {
        let p = &report["latency_ms"][class];
        assert!(p["count"].as_u64().unwrap() > 0, "{class}");
        assert!(p["p50"].as_f64().unwrap() <= p["p99"].as_f64().unwrap());
        assert!(p["p99"].as_f64().unwrap() <= p["max"].as_f64().unwrap());
    }
    // Bounded by time as well.
    let output = akictl(&daemon.socket, &["bench", "--concurrency", "2", "--duration", "1"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("req/s"));
}

#[test]
fn metrics_are_prometheus_text() {
    let daemon = Daemon::start("");
    akictl(&daemon.socket, &["embed", "count me"]);
    let output = akictl(&daemon.socket, &["metrics"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let mut samples = 0;
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        // name{labels} value
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let bare = name.split('{').next().unwrap();
        assert!(
            bare.starts_with("akidb_") && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if let Some(labels) = name.strip_prefix(bare) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
        }
        samples += 1;
    }
    assert!(samples >= 10);
    // The classic format by default (node_exporter's textfile collector): counters typed under their samples' name.
    assert!(!text.contains("# EOF"), "classic text has no # EOF");
    assert!(text.contains("# TYPE akidb_inputs_total counter\n"), "{text}");
    assert!(text.contains("akidb_up 1"));
    assert!(text.contains("akidb_inputs_total 1"));
    let output = akictl(&daemon.socket, &["metrics", "--openmetrics"]);
    let openmetrics = String::from_utf8(output.stdout).unwrap();
    assert!(openmetrics.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    assert!(openmetrics.contains("# TYPE akidb_inputs counter\n"), "{openmetrics}");
}
