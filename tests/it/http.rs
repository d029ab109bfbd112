//! The OpenAI-compatible HTTP surface of the real daemon: the official `openai` package and a Prometheus
//! (OpenMetrics) parser as clients (tools/python/test_openai.py), and hostile HTTP clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use crate::util::{self, Daemon};

const KEY: &str = "test-key-0123";

/// A free loopback port (bound, then released for the daemon).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(extra: &str) -> (Daemon, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&format!(
        "[server]\nread_timeout_ms = 500\n[http]\nlisten = {addr:?}\napi_key = {KEY:?}\nmax_body_bytes = 65536\n{extra}"
    ));
    (daemon, addr)
}

/// Sends raw bytes and reads the whole response (the request asks the server to close).
pub(crate) fn exchange(addr: &str, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn post(addr: &str, body: &str) -> String {
    let raw = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, raw.as_bytes())
}

fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn the_openai_package_gets_the_sockets_vectors_and_metrics_parse() {
    let python = util::repo().join("target/pyenv/bin/python");
    let probe = Command::new(&python)
        .args(["-I", "-c", "import openai, prometheus_client, akidb_client"])
        .status();
    assert!(
        matches!(probe, Ok(status) if status.success()),
        "{} with openai, prometheus-client and akidb-client is missing, so the HTTP surface cannot be tested with \
         them (tools/setup.sh installs them: run `make setup`)",
        python.display()
    );
    let (daemon, addr) = start("");
    let output = Command::new(&python)
        .arg("-I")
        .arg(util::repo().join("tools/python/test_openai.py"))
        .args(["--url", &format!("http://{addr}"), "--api-key", KEY, "--socket"])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("openai client:\n{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn hostile_http_clients_are_bounded_and_others_still_served() {
    let (daemon, addr) = start("");
    // A body declared over max_body_bytes is refused before it is read.
    let huge = exchange(
        &addr,
        format!("POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status_of(&huge), 413, "{huge}");
    // So is a chunked one that turns out larger.
    let mut chunked = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 8192, "a".repeat(8192)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let response = exchange(&addr, &chunked);
    assert_eq!(status_of(&response), 413, "{response}");
    // Slowloris: headers that never finish, and a body that never arrives, are cut at read_timeout_ms (500 ms).
    let started = Instant::now();
    let mut slow_headers = TcpStream::connect(&addr).unwrap();
    slow_headers.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    slow_headers.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n").unwrap();
    let slow_body = exchange(
        &addr,
        format!("POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"inp").as_bytes(),
    );
    assert_eq!(status_of(&slow_body), 408, "{slow_body}");
    let mut rest = Vec::new();
    let _ = slow_headers.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "slow clients were cut ({:?})",
        started.elapsed()
    );
    // Garbage is a 400, bad JSON a 400 in OpenAI's error shape; a good client is served after all of it.
    let garbage = exchange(&addr, b"\x16\x03\x01 not http at all\r\n\r\n");
    assert!(garbage.is_empty() || status_of(&garbage) == 400, "{garbage}");
    let bad_json = post(&addr, "{not json");
    assert_eq!(status_of(&bad_json), 400, "{bad_json}");
    assert!(bad_json.contains("\"type\":\"invalid_request_error\""), "{bad_json}");
    let array = post(&addr, r#"["a", "b"]"#);
    assert_eq!(status_of(&array), 400, "{array}");
    assert!(array.contains("must be a JSON object"), "{array}");
    // A body not declared JSON is refused unread (a web page may POST text/plain or a typeless body to loopback
    // without a CORS preflight); a JSON type with parameters, or a +json type, is JSON.
    let typed = |content_type: &str| {
        let body = r#"{"input": ["typed"]}"#;
        exchange(
            &addr,
            format!(
                "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n{content_type}\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    for refused in [
        "Content-Type: text/plain\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "",
    ] {
        let response = typed(refused);
        assert_eq!(status_of(&response), 415, "{refused:?}: {response}");
        assert!(response.contains("\"code\":\"unsupported_media_type\""), "{response}");
    }
    for accepted in [
        "Content-Type: Application/JSON; charset=utf-8\r\n",
        "Content-Type: application/vnd.api+json\r\n",
    ] {
        let response = typed(accepted);
        assert_eq!(status_of(&response), 200, "{accepted:?}: {response}");
    }
    let good = post(&addr, r#"{"input": ["still served"]}"#);
    assert_eq!(status_of(&good), 200, "{good}");
    assert!(good.contains("\"object\":\"list\""), "{good}");
    drop(daemon);
}

#[test]
fn a_request_larger_than_its_class_queue_is_too_many_inputs_not_overloaded() {
    // http.max_inputs (2048) is larger than the realtime queue here: a request with more inputs to compute than
    // that could never be queued, so a retry would never help; `overloaded` would say the opposite.
    let (daemon, addr) = start("[batcher.queue_capacity]\nrealtime = 300\n");
    let body = format!(r#"{{"input": {}}}"#, serde_json::to_string(&vec!["a"; 301]).unwrap());
    let with_class = |class: &str| {
        exchange(
            &addr,
            format!(
                "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\
                 x-akidb-priority: {class}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    let realtime = with_class("realtime");
    assert_eq!(status_of(&realtime), 400, "{realtime}");
    assert!(realtime.contains("\"code\":\"too_many_inputs\""), "{realtime}");
    assert!(realtime.contains("batcher.queue_capacity.realtime"), "{realtime}");
    let normal = with_class("normal");
    assert_eq!(status_of(&normal), 200, "{normal}");
    // The limit is on what must be computed: the same inputs, now cached, need no room in the queue.
    let cached = with_class("realtime");
    assert_eq!(status_of(&cached), 200, "{cached}");
    drop(daemon);
}

#[test]
fn without_a_key_only_requests_addressed_to_loopback_are_served() {
    // DNS rebinding: a page whose own name now resolves to 127.0.0.1 sends that name in Host.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&format!("[http]\nlisten = {addr:?}\n"));
    let get = |host: &str| {
        exchange(
            &addr,
            format!("GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    let rebound = get(&format!("attacker.example:{port}"));
    assert_eq!(status_of(&rebound), 403, "{rebound}");
    assert!(rebound.contains("\"code\":\"host_not_allowed\""), "{rebound}");
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "[::1]".to_string()] {
        let served = get(&host);
        assert_eq!(status_of(&served), 200, "{host}: {served}");
    }
    drop(daemon);
}

#[test]
fn http_listens_on_loopback_unless_allowed_and_health_needs_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("akidb.toml");
    std::fs::write(&config, "[http]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_akidbd"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("loopback") && stderr.contains("allow_remote"), "{stderr}");

    let (_daemon, addr) = start("");
    let health = exchange(&addr, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&health), 200, "{health}");
    let unauthorized = exchange(&addr, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&unauthorized), 401, "{unauthorized}");
    assert!(
        unauthorized.to_ascii_lowercase().contains("www-authenticate: bearer"),
        "{unauthorized}"
    );
    // A known route with another method: 405, its methods in Allow, OpenAI's error JSON.
    let wrong_method = exchange(&addr, b"GET /v1/embeddings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&wrong_method), 405, "{wrong_method}");
    assert!(wrong_method.to_ascii_lowercase().contains("allow: post"), "{wrong_method}");
    assert!(wrong_method.contains("\"code\":\"method_not_allowed\""), "{wrong_method}");
}
