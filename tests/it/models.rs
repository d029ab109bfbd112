//! Several models in one daemon: the default MiniLM, the int8 MiniLM graph as shipped and the decoder fixture served
//! side by side on one device, each with its own exact vectors; `unknown_model`; per-model status and cache; and
//! the scheduler across models: realtime work of one model goes before another model's bulk backlog, and a model
//! whose bulk work arrives second is served before the first model's backlog is done.

use std::time::Duration;

use akidb::client::{ClientError, EmbedParams};
use akidb::engine::pooling::cosine;
use akidb::engine::EmbedOptions;
use akidb::protocol::{ErrorCode, Priority};

use crate::decoder;
use crate::util::{self, within, Daemon};

/// Three models on one one-thread CPU device.
fn three_models() -> String {
    format!(
        "[[models]]\nname = \"minilm\"\ndir = {:?}\n\
         [[models]]\nname = \"minilm-int8\"\ndir = {:?}\n\
         [[models]]\nname = \"qwen3\"\ndir = {:?}\n\
         [batcher]\nwarmup_seq_lengths = [16]\n",
        util::default_model_dir(),
        util::int8_model_dir(),
        decoder::fixture_dir(),
    )
}

fn on(model: &str) -> EmbedParams {
    EmbedParams {
        model: Some(model.to_owned()),
        ..EmbedParams::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_models_in_one_daemon_each_serve_their_exact_vectors() {
    let daemon = Daemon::start(&three_models());
    let mut client = daemon.client().await;

    let info = client.info().await.unwrap();
    let names: Vec<&str> = info.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["minilm", "minilm-int8", "qwen3"]);
    assert_eq!(
        (info.model.as_str(), info.dim),
        ("minilm", 384),
        "v1 fields describe the default model"
    );
    assert_eq!(info.models[2].pooling, "last_token");
    assert!(info.models[2].prompts.contains_key("query"));

    // The default model (no `model` in the request) against the in-process engine.
    let (fixtures, source) = util::fixtures();
    let texts: Vec<&str> = fixtures.iter().take(32).map(|f| f.text.as_str()).collect();
    let got = within(60, client.embed(&texts, &EmbedParams::default())).await.unwrap();
    assert_eq!(got.reply.model, "minilm");
    let options = EmbedOptions {
        truncate: true,
        ..EmbedOptions::default()
    };
    let expected = util::cpu_engine(&util::default_model_dir()).embed(&texts, &options).unwrap();
    let worst_default = got
        .embeddings
        .iter()
        .zip(&expected.embeddings)
        .map(|(a, b)| cosine(a, b))
        .fold(f64::MAX, f64::min);

    // The int8 model against its own in-process engine (exact) and against the default model (different).
    let got = within(60, client.embed(&texts, &on("minilm-int8"))).await.unwrap();
    assert_eq!(got.reply.model, "minilm-int8");
    let expected_int8 = util::cpu_engine(&util::int8_model_dir()).embed(&texts, &options).unwrap();
    let worst_int8 = got
        .embeddings
        .iter()
        .zip(&expected_int8.embeddings)
        .map(|(a, b)| cosine(a, b))
        .fold(f64::MAX, f64::min);
    let int8_vs_default = got
        .embeddings
        .iter()
        .zip(&expected.embeddings)
        .map(|(a, b)| cosine(a, b))
        .fold(f64::MAX, f64::min);

    // The decoder against its references, every case (prompts, dimensions), interleaved with the others.
    let mut worst_decoder = f64::MAX;
    for case in decoder::cases(&decoder::fixture_dir()) {
        let params = EmbedParams {
            model: Some("qwen3".into()),
            ..case.params.clone()
        };
        let got = within(60, client.embed(&case.texts, &params)).await.unwrap();
        assert_eq!(got.reply.tokens as usize, case.tokens.iter().sum::<usize>(), "{}", case.name);
        for (a, b) in got.embeddings.iter().zip(&case.embeddings) {
            worst_decoder = worst_decoder.min(cosine(a, b));
        }
    }
    eprintln!(
        "three models ({source}): minilm vs engine {worst_default:.9}, minilm-int8 vs engine {worst_int8:.9} \
         (vs minilm {int8_vs_default:.6}), qwen3 vs sentence-transformers {worst_decoder:.9}"
    );
    assert!(worst_default >= 0.99999, "{worst_default}");
    assert!(worst_int8 >= 0.99999, "{worst_int8}");
    assert!(int8_vs_default < 0.9999, "two different encoders: {int8_vs_default}");
    assert!(worst_decoder >= 0.99999, "{worst_decoder}");

    // The three models at once, from three connections: each reply is its own model's.
    let sequential: Vec<Vec<f32>> = {
        let mut out = Vec::new();
        for model in ["minilm", "minilm-int8", "qwen3"] {
            out.push(
                client
                    .embed(&["pick up the red cup"], &on(model))
                    .await
                    .unwrap()
                    .embeddings
                    .remove(0),
            );
        }
        out
    };
    let mut tasks = Vec::new();
    for model in ["minilm", "minilm-int8", "qwen3"] {
        let mut c = daemon.client().await;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..10 {
                let params = EmbedParams {
                    cache: Some(false),
                    ..on(model)
                };
                let got = c.embed(&["pick up the red cup", "a second text"], &params).await.unwrap();
                assert_eq!(got.reply.model, model);
                out.push(got.embeddings[0].clone());
            }
            out
        }));
    }
    for (task, want) in tasks.into_iter().zip(&sequential) {
        for got in within(120, task).await.unwrap() {
            assert_eq!(got.len(), want.len());
            assert!(cosine(&got, want) > 0.999_999, "{}", cosine(&got, want));
        }
    }

    // An unknown model is `unknown_model`, naming the models served; the connection stays usable.
    match client.embed(&["x"], &on("gpt-4")).await {
        Err(ClientError::Server { code, message, .. }) => {
            assert_eq!(code, ErrorCode::UnknownModel);
            assert!(message.contains("minilm, minilm-int8, qwen3"), "{message}");
        }
        other => panic!("expected unknown_model, got {other:?}"),
    }

    // Per-model status: queues, latency, cache; one session per model on the device, with its memory.
    let again = within(30, client.embed(&["pick up the red cup"], &on("minilm-int8")))
        .await
        .unwrap();
    assert_eq!(again.reply.timing_us.inference, 0, "a cache hit");
    let status = client.status().await.unwrap();
    assert_eq!(status.models.len(), 3);
    for model in &status.models {
        assert!(model.latency_ms["normal"].count >= 10, "{}: {:?}", model.name, model.latency_ms);
        assert_eq!(model.devices, [0]);
        assert!(model.smallest_batch_ms.is_some());
    }
    let int8 = &status.models[1];
    assert_eq!(int8.cache, status.cache.per_model["minilm-int8"]);
    assert!(int8.cache.hits >= 1, "{:?}", int8.cache);
    assert!(int8.cache.entries >= 33 && int8.cache.bytes > 33 * 384 * 4, "{:?}", int8.cache);
    assert_eq!(
        status.cache.entries,
        status.models.iter().map(|m| m.cache.entries).sum::<u64>(),
        "per-model entries add up"
    );
    let sessions = &status.devices[0].sessions;
    let session_models: Vec<&str> = sessions.iter().map(|s| s.model.as_str()).collect();
    assert_eq!(session_models, ["minilm", "minilm-int8", "qwen3"]);
    eprintln!(
        "session memory (MB): {}",
        sessions
            .iter()
            .map(|s| format!("{} {:.1}", s.model, s.memory_bytes as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        sessions[1].memory_bytes > 20_000_000,
        "the int8 MiniLM session holds its weights: {:?}",
        sessions[1]
    );

    // akictl: `embed --model` and a status screen with one line per model, still 80 columns.
    let out = crate::akictl::akictl(&daemon.socket, &["embed", "--model", "qwen3", "--prompt-name", "query", "hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = crate::akictl::akictl(&daemon.socket, &["status"]);
    let screen = String::from_utf8(out.stdout).unwrap();
    for line in screen.lines() {
        assert!(line.chars().count() <= 80, "{} columns: {line}", line.chars().count());
    }
    for needle in ["MODEL", "minilm-int8", "qwen3", "HIT%", "sessions: minilm"] {
        assert!(screen.contains(needle), "{needle} missing from:\n{screen}");
    }
}

/// Measures how many long inputs per second `model` runs here, to size a backlog in time rather than in count.
pub(crate) async fn inputs_per_second(daemon: &Daemon, model: &str, long: &[String]) -> f64 {
    let mut client = daemon.client().await;
    let params = EmbedParams {
        cache: Some(false),
        ..on(model)
    };
    within(120, client.embed(long, &params)).await.unwrap();
    let started = tokio::time::Instant::now();
    for _ in 0..2 {
        within(120, client.embed(long, &params)).await.unwrap();
    }
    (2 * long.len()) as f64 / started.elapsed().as_secs_f64()
}

/// Sends `requests` requests of `long` at `priority` to `model` without reading the replies.
pub(crate) async fn backlog(daemon: &Daemon, model: &str, long: &[String], requests: usize, priority: Priority) -> akidb::client::Client {
    let mut client = daemon.client().await;
    let params = EmbedParams {
        cache: Some(false),
        priority: Some(priority),
        ..on(model)
    };
    for _ in 0..requests {
        client.send(akidb::client::embed_request(long, &params)).await.unwrap();
    }
    client
}

pub(crate) async fn queued(client: &mut akidb::client::Client, model: usize, class: &str) -> u64 {
    client.status().await.unwrap().models[model].queues[class]
}

/// A daemon serving "minilm" (the default model) and "int8", with about eight seconds of bulk work for "int8"
/// queued (sized from the throughput measured here, whatever this machine's speed); returns the daemon, the
/// connection holding the backlog, a fresh client, and what was queued (requests, the texts, inputs/s).
async fn int8_bulk_backlog(text: &str, repeat: usize) -> (Daemon, akidb::client::Client, akidb::client::Client, usize, Vec<String>, f64) {
    let daemon = Daemon::start(&format!(
        "[[models]]\nname = \"minilm\"\ndir = {:?}\n[[models]]\nname = \"int8\"\ndir = {:?}\n\
         [batcher]\nwarmup_seq_lengths = [16]\n",
        util::default_model_dir(),
        util::int8_model_dir()
    ));
    let long: Vec<String> = (0..16).map(|i| format!("{i} {text} ").repeat(repeat)).collect();
    let rate = inputs_per_second(&daemon, "int8", &long).await;
    let requests = ((rate * 8.0) as usize / long.len()).max(4);
    let bulk = backlog(&daemon, "int8", &long, requests, Priority::Bulk).await;
    let mut client = daemon.client().await;
    within(60, async {
        while queued(&mut client, 1, "bulk").await < long.len() as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    (daemon, bulk, client, requests, long, rate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_of_one_model_goes_before_the_bulk_backlog_of_another() {
    let (_daemon, _bulk, mut client, requests, long, rate) =
        int8_bulk_backlog("the robot arm moves the camera over the lidar mount and checks the wiring", 12).await;
    let realtime = EmbedParams {
        priority: Some(Priority::Realtime),
        cache: Some(false),
        ..EmbedParams::default()
    };
    let mut latencies = Vec::new();
    for i in 0..5 {
        let got = within(60, client.embed(&[format!("stop the arm now {i}")], &realtime))
            .await
            .unwrap();
        latencies.push(got.reply.timing_us.total as f64 / 1000.0);
        let left = queued(&mut client, 1, "bulk").await;
        assert!(
            left > 0,
            "realtime request {i} of the small model waited for the whole bulk backlog of the other"
        );
    }
    eprintln!(
        "realtime on minilm behind int8 bulk ({requests} requests x {} long inputs, {rate:.1} inputs/s): latency ms \
         {latencies:?}",
        long.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_bulk_work_arrives_second_is_not_starved_by_the_first() {
    let (_daemon, _first, mut client, _, long, _) =
        int8_bulk_backlog("the planner asks for the map of the second floor and the charging dock", 10).await;
    // The second model's bulk work: with first-come first-served it would wait for all of the first's.
    let params = EmbedParams {
        priority: Some(Priority::Bulk),
        cache: Some(false),
        ..on("minilm")
    };
    for i in 0..3 {
        within(120, client.embed(&long, &params)).await.unwrap();
        let left = queued(&mut client, 1, "bulk").await;
        assert!(
            left > 0,
            "request {i} of the second model waited for the first model's whole backlog"
        );
    }
    let status = client.status().await.unwrap();
    eprintln!(
        "fair share: minilm bulk p50 {:.1} ms while int8 had {} inputs queued",
        status.models[0].latency_ms["bulk"].p50, status.models[1].queues["bulk"]
    );
}
