//! The real `akidbd` with the real model, driven over its socket as clients drive it.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use akidb::client::{ClientError, EmbedParams, ErrorCode, Priority};
use akidb::engine::pooling::cosine;
use akidb::engine::EmbedOptions;

use crate::util::{self, within, Daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_equal_the_engine_and_the_references() {
    let daemon = Daemon::start("");
    let (fixtures, source) = util::fixtures();
    let mut engine = util::cpu_engine(&util::default_model_dir());
    let mut client = daemon.client().await;
    let mut worst_engine = f64::INFINITY;
    let mut worst_reference = f64::INFINITY;
    for (chunk_idx, chunk) in fixtures.chunks(16).enumerate() {
        let texts: Vec<&str> = chunk.iter().map(|f| f.text.as_str()).collect();
        let params = EmbedParams {
            array_encoding: chunk_idx % 2 == 1,
            ..EmbedParams::default()
        };
        let got = within(60, client.embed(&texts, &params)).await.unwrap();
        let expected = engine
            .embed(
                &texts,
                &EmbedOptions {
                    truncate: true,
                    ..EmbedOptions::default()
                },
            )
            .unwrap();
        assert_eq!(got.reply.count as usize, texts.len());
        assert_eq!(got.reply.tokens as usize, expected.tokens.iter().sum::<usize>());
        assert_eq!(
            got.reply.truncated,
            expected.truncated.iter().map(|&i| i as u64).collect::<Vec<_>>()
        );
        for ((daemon_vec, engine_vec), fixture) in got.embeddings.iter().zip(&expected.embeddings).zip(chunk) {
            worst_engine = worst_engine.min(cosine(daemon_vec, engine_vec));
            worst_reference = worst_reference.min(cosine(daemon_vec, &fixture.embedding));
        }
    }
    eprintln!("daemon vs engine min cosine {worst_engine:.7}, vs sentence-transformers {worst_reference:.5} ({source})");
    assert!(worst_engine >= 0.99999, "{worst_engine}");
    assert!(worst_reference >= 0.99999, "{worst_reference}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_pipelining_clients_each_get_their_own_replies() {
    let daemon = Daemon::start("");
    let texts: Vec<String> = (0..16)
        .map(|i| format!("sentence number {i} about a robot that moves {} boxes", i * 7))
        .collect();
    let mut expected = Vec::new();
    let mut client = daemon.client().await;
    for text in &texts {
        expected.push(client.embed(&[text], &EmbedParams::default()).await.unwrap().embeddings.remove(0));
    }
    let mut tasks = Vec::new();
    for c in 0..64usize {
        let socket = daemon.socket.clone();
        let (texts, expected) = (texts.clone(), expected.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = akidb::client::Client::connect(&socket).await.unwrap();
            let mut sent: HashMap<u64, usize> = HashMap::new();
            for r in 0..8usize {
                let which = (c * 3 + r) % texts.len();
                let id = client
                    .send(akidb::client::embed_request(&[&texts[which]], &EmbedParams::default()))
                    .await
                    .unwrap();
                sent.insert(id, which);
            }
            for _ in 0..8 {
                let reply = client.recv().await.unwrap();
                let which = sent.remove(&reply.id).expect("a reply to a request this client sent, once");
                let body = akidb::client::check(reply).unwrap();
                let got = akidb::client::decode_embed(&body).unwrap().embeddings.remove(0);
                assert!(cosine(&got, &expected[which]) >= 0.99999, "client {c} got another request's vector");
            }
            assert!(sent.is_empty());
        }));
    }
    for task in tasks {
        within(120, task).await.unwrap();
    }
}

fn server_code(err: ClientError) -> (ErrorCode, String) {
    match err {
        ClientError::Server { code, message, .. } => (code, message),
        other => panic!("expected an error reply, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_level_errors_leave_the_connection_usable() {
    let daemon = Daemon::start("[server]\nmax_inputs = 4\n");
    let mut client = daemon.client().await;
    let too_many = vec!["x"; 5];
    let (code, _) = server_code(client.embed(&too_many, &EmbedParams::default()).await.unwrap_err());
    assert_eq!(code, ErrorCode::TooManyInputs);
    let long = "word ".repeat(400);
    let params = EmbedParams {
        truncate: Some(false),
        ..EmbedParams::default()
    };
    let (code, message) = server_code(client.embed(&["short", long.as_str()], &params).await.unwrap_err());
    assert_eq!(code, ErrorCode::InputTooLong);
    assert!(message.contains("input 1"), "{message}");
    let params = EmbedParams {
        dimensions: Some(1000),
        ..EmbedParams::default()
    };
    assert_eq!(
        server_code(client.embed(&["x"], &params).await.unwrap_err()).0,
        ErrorCode::InvalidRequest
    );
    // Raw bodies: not MessagePack, not a map, wrong field types, unknown op, other version.
    for (body, code, id) in [
        (vec![0xc1], ErrorCode::InvalidRequest, 0),
        (rmp_serde::to_vec(&[1, 2, 3]).unwrap(), ErrorCode::InvalidRequest, 0),
        (
            rmp_serde::to_vec_named(&serde_json::json!({"id": 5, "op": "embed", "inputs": "not a list"})).unwrap(),
            ErrorCode::InvalidRequest,
            5,
        ),
        (
            rmp_serde::to_vec_named(&serde_json::json!({"id": 6, "op": "fly"})).unwrap(),
            ErrorCode::UnknownOp,
            6,
        ),
        (
            rmp_serde::to_vec_named(&serde_json::json!({"v": 2, "id": 7, "op": "health"})).unwrap(),
            ErrorCode::UnsupportedVersion,
            7,
        ),
    ] {
        client.send_raw(&body).await.unwrap();
        let reply = within(10, client.recv()).await.unwrap();
        assert_eq!(reply.id, id);
        let (got, _) = server_code(akidb::client::check(reply).unwrap_err());
        assert_eq!(got, code);
    }
    // The same connection still serves.
    let ok = client.embed(&["still here"], &EmbedParams::default()).await.unwrap();
    assert_eq!(ok.embeddings[0].len(), 384);
    let status = client.status().await.unwrap();
    for code in [
        "too_many_inputs",
        "input_too_long",
        "invalid_request",
        "unknown_op",
        "unsupported_version",
    ] {
        assert!(status.counters.errors.contains_key(code), "{code} counted in status");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_is_refused_and_closes_only_its_connection() {
    let daemon = Daemon::start("[server]\nmax_frame_bytes = 4096\n");
    let mut bad = daemon.client().await;
    let mut good = daemon.client().await;
    bad.send_bytes(&u32::MAX.to_be_bytes()).await.unwrap();
    let reply = within(10, bad.recv()).await.unwrap();
    assert_eq!(reply.id, 0);
    assert_eq!(server_code(akidb::client::check(reply).unwrap_err()).0, ErrorCode::FrameTooLarge);
    assert!(matches!(
        within(10, bad.recv()).await,
        Err(ClientError::Closed) | Err(ClientError::Io(_))
    ));
    good.embed(&["fine"], &EmbedParams::default()).await.unwrap();
}

/// Sends 2 requests of 256 inputs of `words` × 4 words on one connection and waits until they are queued and at
/// least `batches` batches have run (tokenizing them takes a while in a debug build). Returns that connection and
/// a fresh one.
async fn queue_backlog(daemon: &Daemon, words: usize, batches: u64) -> (akidb::client::Client, akidb::client::Client) {
    let long = vec!["robot arm camera lidar ".repeat(words); 256];
    let mut backlog = daemon.client().await;
    for _ in 0..2 {
        backlog
            .send(akidb::client::embed_request(&long, &EmbedParams::default()))
            .await
            .unwrap();
    }
    let mut client = daemon.client().await;
    within(60, async {
        loop {
            let status = client.status().await.unwrap();
            if status.queues["normal"] > 300 && status.counters.batches >= batches {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    (backlog, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_the_queue_ahead_makes_impossible_is_refused_on_arrival() {
    let daemon = Daemon::start("");
    // 512 inputs of 256 tokens queued behind one another (seconds of work on any machine); a few loaded batches have
    // measured the cost per input.
    let (_backlog, mut client) = queue_backlog(&daemon, 64, 3).await;
    // How long the queue ahead takes here: its length over the rate the device works it off, measured. The deadline
    // is a third of that, so no machine, however fast, can meet it.
    let before = client.status().await.unwrap();
    let sampled = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = client.status().await.unwrap();
    let done = after.devices[0].inputs - before.devices[0].inputs;
    assert!(done > 0, "the device computed nothing in a second: cannot measure the queue's pace");
    let ahead_ms = after.queues["normal"] as f64 * sampled.elapsed().as_secs_f64() * 1e3 / done as f64;
    let deadline_ms = (ahead_ms / 3.0) as u64;
    assert!(
        deadline_ms >= 300,
        "the backlog is too short to test against ({ahead_ms:.0} ms ahead)"
    );
    eprintln!("{ahead_ms:.0} ms of work ahead ({done} inputs computed in a second): deadline {deadline_ms} ms");
    let params = EmbedParams {
        deadline_ms: Some(deadline_ms),
        ..EmbedParams::default()
    };
    let started = tokio::time::Instant::now();
    let (code, _) = server_code(
        within(10 + deadline_ms / 1000, client.embed(&["no chance"], &params))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_millis(deadline_ms * 2 / 3),
        "refused on arrival, not when its {deadline_ms} ms deadline passed ({:?}; {ahead_ms:.0} ms of work ahead)",
        started.elapsed()
    );
    let status = client.status().await.unwrap();
    assert!(status.queues["normal"] > 0, "the backlog is still queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_a_client_that_hung_up_are_not_computed() {
    let daemon = Daemon::start("");
    // A few seconds of work (512 inputs of 128 tokens), then the client hangs up.
    let (leaver, mut client) = queue_backlog(&daemon, 32, 0).await;
    drop(leaver);
    // The daemon notices when the first reply cannot be written; the second request's inputs, still queued then,
    // are dropped, not computed. How long the first request takes depends on the machine: wait as long as the
    // daemon makes progress, and fail only when it stalls.
    let mut progress = (u64::MAX, u64::MAX);
    let mut last_change = tokio::time::Instant::now();
    let status = loop {
        let status = within(20, client.status()).await.unwrap();
        if status.queues["normal"] == 0 && status.counters.in_flight <= 1 {
            break status;
        }
        let now = (status.devices[0].inputs, status.queues["normal"]);
        if now != progress {
            (progress, last_change) = (now, tokio::time::Instant::now());
        }
        assert!(
            last_change.elapsed() < Duration::from_secs(20),
            "no progress for 20 s (computed, queued) = {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let computed = status.devices[0].inputs;
    assert!(computed <= 256 + 32, "{computed} of 512 inputs computed for a client that was gone");
    within(20, client.embed(&["still served"], &EmbedParams::default())).await.unwrap();
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_and_overload_are_answered_at_once() {
    let daemon = Daemon::start("[batcher]\nmax_batch_size = 1\n[batcher.queue_capacity]\nrealtime = 256\nnormal = 256\nbulk = 256\n");
    let mut blocker = daemon.client().await;
    // Occupy the only device for a while.
    let hang = EmbedParams::default();
    let hang_id = blocker
        .send(akidb::client::embed_request(&["\0akidb-fault:hang:1500"], &hang))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut client = daemon.client().await;
    let params = EmbedParams {
        deadline_ms: Some(100),
        ..EmbedParams::default()
    };
    let started = tokio::time::Instant::now();
    let (code, _) = server_code(within(10, client.embed(&["late"], &params)).await.unwrap_err());
    assert_eq!(code, ErrorCode::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "answered at the deadline, not after the device freed up"
    );
    // Fill the bulk queue (256 inputs), then one more request is refused at once.
    let mut filler = daemon.client().await;
    let many = vec!["fill"; 256];
    let bulk = EmbedParams {
        priority: Some(Priority::Bulk),
        ..EmbedParams::default()
    };
    let filler_id = filler.send(akidb::client::embed_request(&many, &bulk)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, message) = server_code(within(10, client.embed(&["one more"], &bulk)).await.unwrap_err());
    assert_eq!(code, ErrorCode::Overloaded);
    assert!(message.contains("bulk"), "{message}");
    // Realtime still gets through once the device is free; the queued work completes.
    let realtime = EmbedParams {
        priority: Some(Priority::Realtime),
        ..EmbedParams::default()
    };
    within(30, client.embed(&["urgent"], &realtime)).await.unwrap();
    assert_eq!(within(30, blocker.recv()).await.unwrap().id, hang_id);
    let reply = within(60, filler.recv()).await.unwrap();
    assert_eq!(reply.id, filler_id);
    assert!(reply.ok);
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_degraded_while_the_only_device_restarts() {
    // Every warm-up takes 1.5 s more, the restart's too: a window in which no device serves.
    let daemon = Daemon::spawn("[batcher]\nmax_restarts = 5\n", &[("AKIDB_FAULT_WARMUP_MS", "1500")]);
    daemon.wait_ready();
    let mut client = daemon.client().await;
    let failed = within(30, client.embed(&["\0akidb-fault:panic"], &EmbedParams::default())).await;
    assert!(failed.is_err());
    let mut seen = Vec::new();
    within(60, async {
        loop {
            let health = client.health().await.unwrap();
            if seen.last() != Some(&health) {
                seen.push(health.clone());
            }
            if health == "ready" && seen.iter().any(|h| h == "degraded") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(seen.contains(&"degraded".to_owned()), "health while the device restarts: {seen:?}");
    within(30, client.embed(&["served again"], &EmbedParams::default())).await.unwrap();
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_mid_batch_fails_that_batch_and_the_daemon_keeps_serving() {
    let daemon = Daemon::start("[batcher]\nmax_restarts = 5\n");
    let mut client = daemon.client().await;
    let (code, message) = server_code(
        within(30, client.embed(&["\0akidb-fault:panic"], &EmbedParams::default()))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::Internal);
    assert!(message.contains("failed"), "{message}");
    // Others keep being served (after the restart) and the restart is counted.
    let mut ok = false;
    for _ in 0..100 {
        match client.embed(&["after the panic"], &EmbedParams::default()).await {
            Ok(_) => {
                ok = true;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(ok, "the daemon serves again after the restart");
    let status = client.status().await.unwrap();
    assert_eq!(status.devices[0].restarts, 1);
    assert_eq!(status.counters.errors.get("internal"), Some(&1));
    assert_eq!(client.health().await.unwrap(), "ready");
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_past_its_restart_limit_leaves_the_daemon_degraded_and_unavailable() {
    let daemon = Daemon::start("[batcher]\nmax_restarts = 0\n");
    let mut client = daemon.client().await;
    let (code, _) = server_code(
        within(30, client.embed(&["\0akidb-fault:panic"], &EmbedParams::default()))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::Internal);
    let mut last = None;
    for _ in 0..100 {
        last = Some(client.embed(&["x"], &EmbedParams::default()).await);
        if matches!(
            &last,
            Some(Err(ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            }))
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        matches!(
            last,
            Some(Err(ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            }))
        ),
        "{last:?}"
    );
    assert_eq!(client.health().await.unwrap(), "degraded");
    assert_eq!(client.status().await.unwrap().devices[0].state, "failed");
}

#[test]
fn an_idle_connection_does_not_hold_the_stop() {
    // A client that keeps its connection open between requests (as robots' processes do) must not make every
    // stop wait out the grace period: with nothing in flight, its connection is closed at once.
    let mut daemon = Daemon::start("[server]\nshutdown_grace_ms = 60000\n");
    let runtime = util::runtime();
    let socket = daemon.socket.clone();
    let mut client = runtime.block_on(async {
        let mut client = akidb::client::Client::connect(&socket).await.unwrap();
        client.embed(&["still connected"], &EmbedParams::default()).await.unwrap();
        client
    });
    let started = tokio::time::Instant::now();
    daemon.signal("TERM");
    let code = daemon.wait_exit(Duration::from_secs(30));
    let took = started.elapsed();
    assert_eq!(
        code,
        Some(0),
        "stopped within 30 s of a 60 s grace period ({took:?}):\n{}",
        daemon.log()
    );
    util::say(&format!("stop with one idle connection open: {took:?}"));
    let after = runtime.block_on(within(10, client.embed(&["after the stop"], &EmbedParams::default())));
    assert!(after.is_err(), "the idle connection was closed, not served: {after:?}");
}

#[cfg(feature = "fault-injection")]
#[test]
fn sigterm_with_requests_in_flight_loses_none() {
    let mut daemon = Daemon::start("");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let socket = daemon.socket.clone();
    let (ids, mut client) = runtime.block_on(async {
        let mut client = akidb::client::Client::connect(&socket).await.unwrap();
        // The first request holds the device for a second (fault injection), so that the next 40 are read while it
        // is busy and are still in flight at SIGTERM however fast this machine computes them.
        let hold = akidb::client::embed_request(&["\0akidb-fault:hang:1000"], &EmbedParams::default());
        let mut ids = vec![client.send(hold).await.unwrap()];
        let long = "the robot carefully moves each of the heavy boxes to the shelf ".repeat(4);
        for _ in 0..40 {
            ids.push(
                client
                    .send(akidb::client::embed_request(&[&long, &long], &EmbedParams::default()))
                    .await
                    .unwrap(),
            );
        }
        // Signal once the daemon has read every request (answered or in flight: the held one has one input, the
        // others two each), with most still in flight.
        let mut observer = akidb::client::Client::connect(&socket).await.unwrap();
        loop {
            let counters = observer.status().await.unwrap().counters;
            if counters.in_flight + counters.inputs.div_ceil(2) >= 41 {
                assert!(
                    counters.in_flight >= 10,
                    "most requests are still in flight at SIGTERM ({})",
                    counters.in_flight
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (ids, client)
    });
    daemon.signal("TERM");
    let log_path = daemon.log.clone();
    runtime.block_on(async {
        let mut answered = HashMap::new();
        for _ in 0..ids.len() {
            let reply = within(30, client.recv()).await.unwrap();
            let id = reply.id;
            let outcome = akidb::client::check(reply).map(|_| ()).map_err(|e| e.to_string());
            assert!(answered.insert(id, outcome).is_none(), "one reply per request");
        }
        assert!(ids.iter().all(|id| answered.contains_key(id)));
        let lost: Vec<&String> = answered.values().filter_map(|outcome| outcome.as_ref().err()).collect();
        assert!(
            lost.is_empty(),
            "requests in flight at SIGTERM are all served: {lost:?}\n{}",
            std::fs::read_to_string(&log_path).unwrap()
        );
        // A request sent during the graceful stop is refused (or finds the connection closing), never served.
        match client.embed(&["after TERM"], &EmbedParams::default()).await {
            Ok(_) => panic!("a request sent after the stop began was served"),
            Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::ShuttingDown),
            Err(ClientError::Closed | ClientError::Io(_) | ClientError::Frame(_)) => {}
            Err(other) => panic!("{other}"),
        }
    });
    drop(client);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0), "log:\n{}", daemon.log());
    assert!(!daemon.socket.exists(), "the socket file is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_whether_the_realtime_bound_can_hold_on_this_model_and_device() {
    for bound in [20u64, 1] {
        let daemon = Daemon::start(&format!("[batcher]\nrealtime_max_wait_ms = {bound}\n"));
        let realtime = daemon.client().await.status().await.unwrap().realtime;
        let smallest = realtime.smallest_batch_ms.expect("measured at warm-up");
        assert!(smallest > 0.0 && realtime.bound_ms == bound, "{realtime:?}");
        assert_eq!(realtime.achievable, smallest <= bound as f64, "{realtime:?}");
        assert!(realtime.achievable_ms.unwrap() >= smallest);
        // The warning is logged just after the daemon reports ready.
        let mut warned = false;
        for _ in 0..50 {
            warned = daemon.log().contains("cannot hold on this model and device");
            if warned {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(warned, !realtime.achievable, "a warning exactly when the bound cannot hold");
    }
}

#[test]
fn sigterm_during_a_long_batch_answers_every_request_within_the_grace_period() {
    let mut daemon = Daemon::start("[server]\nshutdown_grace_ms = 1000\n[batcher]\nmax_batch_tokens = 16384\nmax_batch_size = 64\n");
    let socket = daemon.socket.clone();
    let long = |i: usize| {
        format!(
            "request {i}: {}",
            "the robot arm moves each heavy box from the pallet to the shelf ".repeat(30)
        )
    };
    let runtime = util::runtime();
    // How long one full batch (64 inputs of 256 tokens) takes here.
    let batch_time = runtime.block_on(async {
        let mut client = akidb::client::Client::connect(&socket).await.unwrap();
        let texts: Vec<String> = (0..64).map(long).collect();
        let started = tokio::time::Instant::now();
        client.embed(&texts, &EmbedParams::default()).await.unwrap();
        started.elapsed()
    });
    let (ids, mut client) = runtime.block_on(async {
        let mut client = akidb::client::Client::connect(&socket).await.unwrap();
        let mut ids = Vec::new();
        for request in 0..3 {
            let texts: Vec<String> = (0..64).map(|i| long(100 * (request + 1) + i)).collect();
            ids.push(
                client
                    .send(akidb::client::embed_request(&texts, &EmbedParams::default()))
                    .await
                    .unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        (ids, client)
    });
    let signalled = tokio::time::Instant::now();
    daemon.signal("TERM");
    let replies = runtime.block_on(async {
        let mut codes = Vec::new();
        for _ in &ids {
            let reply = within(30, client.recv())
                .await
                .unwrap_or_else(|e| panic!("{e}; log:\n{}", daemon.log()));
            codes.push(akidb::client::check(reply).map(|_| ()).map_err(|e| match e {
                ClientError::Server { code, .. } => code,
                other => panic!("{other}"),
            }));
        }
        codes
    });
    let answered_after = signalled.elapsed();
    eprintln!("batch of 64 x 256 tokens: {batch_time:?}; replies {replies:?} {answered_after:?} after SIGTERM");
    assert!(
        replies.iter().all(|r| matches!(r, Ok(()) | Err(ErrorCode::ShuttingDown))),
        "every request answered, served or shutting_down: {replies:?}"
    );
    // The run in progress stops at its next kernel boundary: allow a tenth of a batch for that (a slow or busy
    // machine runs each kernel longer), which is still far from the three batches of work queued.
    let stop_slack = batch_time.min(Duration::from_millis(500) + batch_time / 10);
    assert!(
        answered_after < Duration::from_millis(1000) + stop_slack,
        "answered within the grace period ({answered_after:?}), not after the 3 x {batch_time:?} of work queued"
    );
    if batch_time > Duration::from_millis(1500) {
        assert!(
            replies.contains(&Err(ErrorCode::ShuttingDown)),
            "work past the grace period was cut: {replies:?}"
        );
    }
    drop(client);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0), "log:\n{}", daemon.log());
}

#[test]
fn a_second_daemon_on_a_live_socket_refuses_and_a_stale_file_is_replaced() {
    let daemon = Daemon::start("");
    let config = daemon.dir.path().join("akidb.toml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_akidbd"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(75));
    assert!(String::from_utf8_lossy(&output.stderr).contains("already running"));
    assert_eq!(daemon.health().as_deref(), Some("ready"), "the first daemon is unharmed");

    // A stale socket file (nobody listening) is replaced.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("embed.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut second = Daemon::spawn(&format!("[server]\nsocket = {stale:?}\n"), &[]);
    second.socket = stale.clone();
    second.wait_ready();
    drop(dir);
}

#[test]
fn socket_file_gets_the_configured_mode() {
    use std::os::unix::fs::PermissionsExt;
    let daemon = Daemon::start("[server]\nsocket_mode = \"0600\"\n");
    let mode = std::fs::metadata(&daemon.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[cfg(feature = "fault-injection")]
#[test]
fn health_says_starting_during_warm_up() {
    let daemon = Daemon::spawn("", &[("AKIDB_FAULT_WARMUP_MS", "3000")]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = None;
    while tokio::time::Instant::now() < deadline {
        seen = daemon.health();
        if seen.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(seen.as_deref(), Some("starting"));
    let socket = daemon.socket.clone();
    let refused = util::runtime().block_on(async move {
        let mut client = akidb::client::Client::connect(&socket).await.unwrap();
        client.embed(&["too early"], &EmbedParams::default()).await.unwrap_err()
    });
    assert_eq!(server_code(refused).0, ErrorCode::Unavailable);
    daemon.wait_ready();
}

#[test]
fn startup_errors_have_clear_messages_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str| {
        std::fs::write(dir.path().join("c.toml"), config).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_akidbd"))
            .arg("--config")
            .arg(dir.path().join("c.toml"))
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let socket = dir.path().join("s.sock");
    let model = util::default_model_dir();
    let (code, err) = run(&format!(
        "[server]\nsocket = {socket:?}\n[model]\ndir = {model:?}\n[ort]\nlibrary_path = \"/nonexistent/libonnxruntime.so\"\n"
    ));
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("/nonexistent/libonnxruntime.so"), "{err}");
    let not_a_library = dir.path().join("libonnxruntime.so");
    std::fs::write(&not_a_library, "not a library").unwrap();
    let (code, err) = run(&format!(
        "[server]\nsocket = {socket:?}\n[model]\ndir = {model:?}\n[ort]\nlibrary_path = {not_a_library:?}\n"
    ));
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("libonnxruntime.so"), "{err}");
    let (code, err) = run(&format!("[server]\nsocket = {socket:?}\n[model]\ndir = \"/nonexistent/model\"\n"));
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("/nonexistent/model"), "{err}");
    let (code, err) = run(&format!(
        "[server]\nsocket = {socket:?}\n[model]\ndir = {model:?}\n[[devices]]\nep = \"cuda\"\n"
    ));
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("cuda") && err.contains("fallback"), "{err}");
    let (code, err) = run("[server]\nmax_connections = 0\nmax_inputs = 0\n[batcher]\nmax_batch_size = 0\n");
    assert_eq!(code, Some(64));
    for key in ["max_connections", "max_inputs", "max_batch_size"] {
        assert!(err.contains(key), "{key} in:\n{err}");
    }
}

#[test]
fn check_config_validates_and_exits() {
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_akidbd"))
        .args(["--config", "config/akidb.toml", "--check-config"])
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("configuration OK"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[server]\nsocket_mode = \"rwx\"\n").unwrap();
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_akidbd"))
        .arg("--config")
        .arg(dir.path().join("bad.toml"))
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("socket_mode"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_half_frame_is_closed_without_harming_others() {
    let daemon = Daemon::start("[server]\nread_timeout_ms = 300\n");
    let mut slow = daemon.client().await;
    slow.send_bytes(&[0, 0, 0, 50, 0x81]).await.unwrap();
    let mut good = daemon.client().await;
    within(10, good.embed(&["unaffected"], &EmbedParams::default())).await.unwrap();
    assert!(matches!(
        within(10, slow.recv()).await,
        Err(ClientError::Closed) | Err(ClientError::Io(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_make_the_daemon_buffer_without_bound() {
    let daemon = Daemon::start("[server]\nmax_pending_replies = 8\n");
    let mut greedy = daemon.client().await;
    let big: Vec<String> = (0..64).map(|i| format!("text {i}")).collect();
    // Send far more than the daemon will buffer, never reading; the daemon stops reading this socket.
    let sender = tokio::spawn(async move {
        for _ in 0..2000 {
            if greedy
                .send(akidb::client::embed_request(&big, &EmbedParams::default()))
                .await
                .is_err()
            {
                break;
            }
        }
        greedy
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut good = daemon.client().await;
    within(10, good.embed(&["others are served"], &EmbedParams::default()))
        .await
        .unwrap();
    let status = good.status().await.unwrap();
    assert!(
        status.counters.inputs < 64 * 200,
        "the daemon did not compute the whole flood: {}",
        status.counters.inputs
    );
    sender.abort();
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stuck_in_a_batch_is_detected_errored_and_replaced() {
    let daemon = Daemon::start("[batcher]\nstuck_timeout_ms = 500\n");
    let mut stuck = daemon.client().await;
    let started = tokio::time::Instant::now();
    // The stuck batch lasts 12 s: long enough for the replacement to warm up first on a slow machine.
    let (code, message) = server_code(
        within(30, stuck.embed(&["\0akidb-fault:hang:12000"], &EmbedParams::default()))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::Internal);
    assert!(message.contains("stuck"), "{message}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "answered at the stuck timeout, not when the batch returned"
    );
    // A fresh inference actor serves while the stuck one is still blocked.
    let mut client = daemon.client().await;
    let served = within(20, client.embed(&["served by the replacement"], &EmbedParams::default()))
        .await
        .unwrap();
    assert_eq!(served.embeddings[0].len(), 384);
    assert!(
        started.elapsed() < Duration::from_millis(11_900),
        "served before the stuck batch returned ({:?})",
        started.elapsed()
    );
    let status = client.status().await.unwrap();
    assert_eq!(status.devices[0].restarts, 1);
    // The stuck batch returning later changes nothing.
    tokio::time::sleep_until(started + Duration::from_millis(12_500)).await;
    within(20, client.embed(&["still fine"], &EmbedParams::default())).await.unwrap();
    assert_eq!(client.health().await.unwrap(), "ready");
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_keeps_getting_stuck_is_given_up_after_its_restart_limit() {
    let daemon = Daemon::start("[batcher]\nstuck_timeout_ms = 300\nmax_restarts = 1\n");
    let mut client = daemon.client().await;
    let hang = ["\0akidb-fault:hang:1500"];
    let params = EmbedParams::default();
    // First time: replaced, and the replacement serves.
    let (code, _) = server_code(within(30, client.embed(&hang, &params)).await.unwrap_err());
    assert_eq!(code, ErrorCode::Internal);
    within(20, client.embed(&["served by the replacement"], &EmbedParams::default()))
        .await
        .unwrap();
    // Second time within the restart window: over max_restarts = 1, the device is given up.
    let (code, _) = server_code(within(30, client.embed(&hang, &params)).await.unwrap_err());
    assert_eq!(code, ErrorCode::Internal);
    let (code, message) = server_code(
        within(20, client.embed(&["no device left"], &EmbedParams::default()))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::Unavailable, "{message}");
    assert_eq!(client.health().await.unwrap(), "degraded");
    let status = client.status().await.unwrap();
    assert_eq!(status.devices[0].state, "failed");
    let last_error = status.devices[0].last_error.clone().unwrap_or_default();
    assert!(last_error.contains("stuck in a batch 2 times"), "{last_error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_limit_waits_for_a_slot_then_is_closed() {
    let daemon = Daemon::start("[server]\nmax_connections = 2\n");
    let mut first = daemon.client().await;
    let mut second = daemon.client().await;
    assert_eq!(first.health().await.unwrap(), "ready");
    assert_eq!(second.health().await.unwrap(), "ready");
    // Over the limit: closed without a reply once the wait for a slot runs out.
    let started = tokio::time::Instant::now();
    let mut refused = daemon.client().await;
    let err = within(10, refused.health()).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Closed | ClientError::Io(_) | ClientError::Frame(_)),
        "{err}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}",
        started.elapsed()
    );
    // A slot that frees while a connection waits goes to it.
    let mut waiting = daemon.client().await;
    let reply = tokio::spawn(async move { waiting.health().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(first);
    assert_eq!(within(10, reply).await.unwrap().unwrap(), "ready");
    assert_eq!(second.health().await.unwrap(), "ready");
}

#[test]
fn a_peer_outside_the_allow_lists_gets_permission_denied() {
    // Tests run as root, who is always admitted; a client run as `nobody` through setpriv is not on the lists.
    assert!(
        Command::new("setpriv").arg("--version").output().is_ok(),
        "setpriv (util-linux) is missing, so a peer outside the allow-lists cannot be simulated (apt-get install util-linux)"
    );
    let daemon = Daemon::start("[server]\nsocket_mode = \"0666\"\nallowed_uids = [4242]\nallowed_gids = [4242]\n");
    std::fs::set_permissions(daemon.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_akictl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("health")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission_denied"), "{stderr}");
    // Root still gets in, and the refusal is counted.
    let socket = daemon.socket.clone();
    let errors = util::runtime().block_on(async move {
        let mut client = akidb::client::Client::connect(&socket).await.unwrap();
        client.status().await.unwrap().counters.errors
    });
    assert_eq!(errors.get("permission_denied"), Some(&1));
}
