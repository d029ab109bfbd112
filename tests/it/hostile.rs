//! Hostile and broken clients against the real daemon. After each case a well-behaved client still gets correct
//! embeddings promptly, and the daemon's resident memory stays bounded.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use akidb::client::{ClientError, EmbedParams, ErrorCode};
use akidb::engine::pooling::cosine;

use crate::util::{within, Daemon};

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn msgpack_map_header(n: u32) -> Vec<u8> {
    let mut out = vec![0xdf];
    out.extend_from_slice(&n.to_be_bytes());
    out
}

fn raw(socket: &std::path::Path, bytes: &[u8]) {
    if let Ok(mut stream) = UnixStream::connect(socket) {
        let _ = stream.write_all(bytes);
    }
}

fn framed(body: &[u8]) -> Vec<u8> {
    akidb::protocol::frame::encode_frame(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_harm_no_one() {
    // Every warm-up before READY, so that the RSS baseline below already holds what warm-up allocates: this test
    // measures what hostile clients add.
    let daemon = Daemon::start("[server]\nread_timeout_ms = 1000\nmax_inputs = 64\n[batcher]\nwarmup_after_ready = false\n");
    let mut good = daemon.client().await;
    let reference = good
        .embed(&["the reference sentence"], &EmbedParams::default())
        .await
        .unwrap()
        .embeddings
        .remove(0);
    let baseline = rss_kib(daemon.pid());
    let check = |name: &'static str| {
        let socket = daemon.socket.clone();
        let reference = reference.clone();
        async move {
            let mut client = akidb::client::Client::connect(&socket).await.unwrap();
            let got = within(20, client.embed(&["the reference sentence"], &EmbedParams::default()))
                .await
                .unwrap_or_else(|e| panic!("after {name}: {e}"));
            assert!(cosine(&got.embeddings[0], &reference) > 0.99999, "after {name}");
        }
    };
    let socket = daemon.socket.clone();

    // Frames claiming up to 4 GiB.
    for len in [u32::MAX, 1 << 31, 17 << 20] {
        raw(&socket, &len.to_be_bytes());
    }
    check("huge length prefixes").await;
    // Truncated frames and random bytes.
    raw(&socket, &[0, 0, 0, 100, 1, 2, 3]);
    let mut seed = 0x1234_5678_u64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    raw(&socket, &random);
    raw(&socket, &framed(&random));
    check("truncated and random bytes").await;
    // Deeply nested MessagePack and a map with 200,000 keys.
    let mut deep = vec![0x82, 0xa2, b'i', b'd', 0x01, 0xa1, b'x'];
    deep.extend(std::iter::repeat_n(0x91u8, 1_000_000));
    deep.push(0x01);
    let mut client = daemon.client().await;
    client.send_raw(&deep).await.unwrap();
    let reply = within(20, client.recv()).await.unwrap();
    assert!(!reply.ok);
    let mut keys = msgpack_map_header(200_000);
    for i in 0..200_000u32 {
        let key = format!("k{i}");
        keys.push(0xa0 | key.len() as u8);
        keys.extend_from_slice(key.as_bytes());
        keys.push(0xc0);
    }
    client.send_raw(&keys).await.unwrap();
    let reply = within(20, client.recv()).await.unwrap();
    assert!(!reply.ok);
    check("deep nesting and 200,000 keys").await;
    // Wrong types for every field.
    for (field, value) in [
        ("v", serde_json::json!("one")),
        ("id", serde_json::json!(-1)),
        ("op", serde_json::json!(7)),
        ("inputs", serde_json::json!([1, 2])),
        ("normalize", serde_json::json!("yes")),
        ("truncate", serde_json::json!(3)),
        ("dimensions", serde_json::json!(-4)),
        ("priority", serde_json::json!("urgent")),
        ("deadline_ms", serde_json::json!(1.5)),
        ("encoding", serde_json::json!("f16")),
    ] {
        let mut body = serde_json::json!({"id": 9, "op": "embed", "inputs": ["x"]});
        body[field] = value;
        client.send_raw(&rmp_serde::to_vec_named(&body).unwrap()).await.unwrap();
        let reply = within(10, client.recv()).await.unwrap();
        let code = match akidb::client::check(reply) {
            Err(ClientError::Server { code, .. }) => code,
            other => panic!("{field}: {other:?}"),
        };
        assert_eq!(code, ErrorCode::InvalidRequest, "{field}");
    }
    // Far above max_inputs, a 10 MB string, invalid UTF-8.
    let many: Vec<String> = (0..5000).map(|i| format!("t{i}")).collect();
    assert!(matches!(
        client.embed(&many, &EmbedParams::default()).await,
        Err(ClientError::Server {
            code: ErrorCode::TooManyInputs,
            ..
        })
    ));
    let huge = "robot ".repeat(10 * 1024 * 1024 / 6);
    let out = within(60, client.embed(&[huge.as_str()], &EmbedParams::default())).await.unwrap();
    assert_eq!(out.reply.truncated, vec![0]);
    let mut bad_utf8 = vec![0x83, 0xa2, b'i', b'd', 0x05, 0xa2, b'o', b'p', 0xa5, b'e', b'm', b'b', b'e', b'd'];
    bad_utf8.extend_from_slice(&[0xa6, b'i', b'n', b'p', b'u', b't', b's', 0x91, 0xa3, 0xc3, 0x28, 0xff]);
    client.send_raw(&bad_utf8).await.unwrap();
    let reply = within(10, client.recv()).await.unwrap();
    assert_eq!((reply.id, reply.ok), (5, false));
    check("wrong types, too many inputs, 10 MB string, invalid UTF-8").await;

    // 20 slowloris connections sending a byte at a time.
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(tokio::net::UnixStream::connect(&socket).await.unwrap());
    }
    for round in 0..3u8 {
        for stream in &mut slow {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(&[[0u8, 0, 0][round as usize % 3]]).await;
        }
        check("slowloris").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(slow);
    // 1,000 connections opened and dropped.
    for _ in 0..1000 {
        drop(UnixStream::connect(&socket).unwrap());
    }
    check("1,000 connections opened and dropped").await;

    let after = rss_kib(daemon.pid());
    eprintln!("daemon RSS: {baseline} KiB before the hostile clients, {after} KiB after");
    assert!(after < baseline + 200 * 1024, "RSS grew from {baseline} KiB to {after} KiB");
    let status = good.status().await.unwrap();
    assert!(status.counters.errors.get("frame_too_large").copied().unwrap_or(0) >= 1);
}

#[test]
fn kill_9_under_load_then_restart() {
    let mut daemon = Daemon::start("");
    let socket = daemon.socket.clone();
    let load = std::thread::spawn(move || {
        crate::util::runtime().block_on(async move {
            let mut client = akidb::client::Client::connect(&socket).await.unwrap();
            let mut outcome = Ok(0);
            for i in 0..100_000u64 {
                match client.embed(&["load before the crash"], &EmbedParams::default()).await {
                    Ok(_) => outcome = Ok(i + 1),
                    Err(err) => {
                        outcome = Err(err);
                        break;
                    }
                }
            }
            outcome
        })
    });
    std::thread::sleep(Duration::from_millis(800));
    daemon.signal("KILL");
    let outcome = load.join().unwrap();
    match outcome {
        Err(ClientError::Closed) | Err(ClientError::Io(_)) | Err(ClientError::Frame(_)) => {}
        other => panic!("the client should see a clean connection error, got {other:?}"),
    }
    let _ = daemon.child.wait();
    assert!(daemon.socket.exists(), "kill -9 leaves the socket file behind");
    // A new daemon on the same config replaces the stale file and serves.
    let config = daemon.dir.path().join("akidb.toml");
    let mut restarted = std::process::Command::new(env!("CARGO_BIN_EXE_akidbd"))
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = daemon.socket.clone();
    let served = crate::util::runtime().block_on(async move {
        for _ in 0..600 {
            if let Ok(mut client) = akidb::client::Client::connect(&socket).await {
                if client.health().await.ok().as_deref() == Some("ready") {
                    return client.embed(&["after the restart"], &EmbedParams::default()).await.is_ok();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    let _ = restarted.kill();
    let _ = restarted.wait();
    assert!(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_every_request_exactly_once() {
    let daemon = Daemon::start("[batcher.queue_capacity]\nrealtime = 256\nnormal = 256\nbulk = 256\n");
    let mut tasks = Vec::new();
    for conn in 0..8u64 {
        let socket = daemon.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = akidb::client::Client::connect(&socket).await.unwrap();
            let mut sent = std::collections::HashSet::new();
            let texts: Vec<String> = (0..8).map(|i| format!("overload text {conn} {i} with a few more words")).collect();
            for r in 0..150u64 {
                let params = EmbedParams {
                    deadline_ms: (r % 2 == 0).then_some(300),
                    ..EmbedParams::default()
                };
                sent.insert(client.send(akidb::client::embed_request(&texts, &params)).await.unwrap());
            }
            let mut codes = std::collections::BTreeMap::new();
            for _ in 0..sent.len() {
                let reply = within(120, client.recv()).await.unwrap();
                assert!(sent.remove(&reply.id), "one reply per request, to a request that was sent");
                let code = match akidb::client::check(reply) {
                    Ok(_) => "ok".to_owned(),
                    Err(ClientError::Server { code, .. }) => code.as_str().to_owned(),
                    Err(other) => panic!("{other}"),
                };
                *codes.entry(code).or_insert(0u64) += 1;
            }
            codes
        }));
    }
    let mut total = std::collections::BTreeMap::new();
    for task in tasks {
        for (code, n) in task.await.unwrap() {
            *total.entry(code).or_insert(0u64) += n;
        }
    }
    eprintln!("overload outcomes: {total:?}");
    assert_eq!(total.values().sum::<u64>(), 8 * 150);
    assert!(total.get("ok").copied().unwrap_or(0) > 0, "{total:?}");
    assert!(
        total
            .keys()
            .all(|code| ["ok", "overloaded", "deadline_exceeded"].contains(&code.as_str())),
        "{total:?}"
    );
    assert!(
        total.get("overloaded").copied().unwrap_or(0) > 0,
        "the queues did overflow: {total:?}"
    );
}
