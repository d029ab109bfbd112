//! A reranker (a cross-encoder) served beside an embedding model: scores and order as sentence-transformers'
//! `CrossEncoder.predict` and `rank` compute them on the committed tiny fixture (tests/data/rerank-tiny, made by
//! tools/rerank-fixture/make.py); every error; the cache; the two HTTP shapes; akictl and the Python client; and
//! the scheduler: a realtime rerank is not stuck behind another model's bulk backlog.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use akidb::client::{ClientError, EmbedParams, RerankParams};
use akidb::protocol::{ErrorCode, Priority};
use serde_json::Value;

use crate::models::{backlog, inputs_per_second, queued};
use crate::util::{self, within, Daemon};

/// One case of references.jsonl.
struct Case {
    query: String,
    documents: Vec<String>,
    scores: Vec<f64>,
    raw_scores: Vec<f64>,
    rank: Vec<u64>,
    tokens: Vec<u64>,
}

fn fixture_dir() -> PathBuf {
    util::repo().join("tests/data/rerank-tiny")
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture_dir().join("references.jsonl")).unwrap();
    let floats = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>();
    let ints = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect::<Vec<u64>>();
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            Case {
                query: v["query"].as_str().unwrap().to_owned(),
                documents: v["documents"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_str().unwrap().to_owned())
                    .collect(),
                scores: floats(&v["scores"]),
                raw_scores: floats(&v["raw_scores"]),
                rank: ints(&v["rank"]),
                tokens: ints(&v["tokens"]),
            }
        })
        .collect()
}

/// The default MiniLM ("minilm") and the tiny reranker ("reranker") on one device.
fn two_models(extra: &str) -> String {
    format!(
        "[[models]]\nname = \"minilm\"\ndir = {:?}\n[[models]]\nname = \"reranker\"\ndir = {:?}\n\
         [batcher]\nwarmup_seq_lengths = [16]\n{extra}",
        util::default_model_dir(),
        fixture_dir(),
    )
}

fn rerank_on(model: &str) -> RerankParams {
    RerankParams {
        model: Some(model.to_owned()),
        ..RerankParams::default()
    }
}

fn server_code<T: std::fmt::Debug>(outcome: Result<T, ClientError>) -> (ErrorCode, String) {
    match outcome {
        Err(ClientError::Server { code, message, .. }) => (code, message),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reranker_beside_an_embedding_model_scores_as_sentence_transformers() {
    let daemon = Daemon::start(&two_models(""));
    let mut client = daemon.client().await;
    let info = client.info().await.unwrap();
    let tasks: Vec<(&str, &str)> = info.models.iter().map(|m| (m.name.as_str(), m.task.as_str())).collect();
    assert_eq!(tasks, [("minilm", "embed"), ("reranker", "rerank")]);

    let mut worst = 0f64;
    for case in cases() {
        // No model named: the first reranker served answers.
        let got = within(60, client.rerank(&case.query, &case.documents, &RerankParams::default()))
            .await
            .unwrap();
        assert_eq!(got.model, "reranker");
        let order: Vec<u64> = got.results.iter().map(|r| r.index).collect();
        assert_eq!(order, case.rank, "{:?}: CrossEncoder.rank's order", case.query);
        for result in &got.results {
            worst = worst.max((f64::from(result.score) - case.scores[result.index as usize]).abs());
        }
        assert_eq!(got.tokens, case.tokens.iter().sum::<u64>(), "{:?}: tokens", case.query);
        let cut: Vec<u64> = (0..case.documents.len() as u64)
            .filter(|&i| case.tokens[i as usize] == 48)
            .collect();
        assert_eq!(got.truncated, cut, "{:?}: the pairs cut at 48 tokens", case.query);

        // Raw scores are the logits; top_n keeps the best.
        let params = RerankParams {
            raw_scores: Some(true),
            top_n: Some(3),
            cache: Some(false),
            ..rerank_on("reranker")
        };
        let raw = within(60, client.rerank(&case.query, &case.documents, &params)).await.unwrap();
        assert_eq!(raw.results.len(), 3);
        assert_eq!(raw.results.iter().map(|r| r.index).collect::<Vec<_>>(), case.rank[..3]);
        for result in &raw.results {
            worst = worst.max((f64::from(result.score) - case.raw_scores[result.index as usize]).abs());
        }
    }
    eprintln!("rerank: worst |score - sentence-transformers| {worst:.2e}");
    assert!(worst <= 1e-5, "{worst}");

    // The same pairs again are answered from the cache.
    let case = &cases()[0];
    let again = within(30, client.rerank(&case.query, &case.documents, &RerankParams::default()))
        .await
        .unwrap();
    assert_eq!(again.timing_us.inference, 0, "a cache hit");
    assert_eq!(again.results.iter().map(|r| r.index).collect::<Vec<_>>(), case.rank);

    // The embedding model still embeds, as before.
    let embedded = within(30, client.embed(&["pick up the red cup"], &EmbedParams::default()))
        .await
        .unwrap();
    assert_eq!((embedded.reply.model.as_str(), embedded.embeddings[0].len()), ("minilm", 384));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_errors_have_their_codes_and_the_connection_goes_on() {
    let daemon = Daemon::start(&two_models("[server]\nmax_inputs = 16\n"));
    let mut client = daemon.client().await;
    let case = &cases()[3];

    // A model of the other task, both ways.
    let (code, message) = server_code(client.rerank("q", &["d"], &rerank_on("minilm")).await);
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("not a reranker"), "{message}");
    let embed_on_reranker = EmbedParams {
        model: Some("reranker".into()),
        ..EmbedParams::default()
    };
    let (code, message) = server_code(client.embed(&["x"], &embed_on_reranker).await);
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("is a reranker"), "{message}");

    // An unknown model names the models served.
    let (code, message) = server_code(client.rerank("q", &["d"], &rerank_on("bge")).await);
    assert_eq!(code, ErrorCode::UnknownModel);
    assert!(message.contains("minilm, reranker"), "{message}");

    // Too many documents, an over-long pair with truncate false (naming the document), no documents.
    let many: Vec<String> = (0..17).map(|i| format!("document {i}")).collect();
    assert_eq!(
        server_code(client.rerank("q", &many, &RerankParams::default()).await).0,
        ErrorCode::TooManyInputs
    );
    let strict = RerankParams {
        truncate: Some(false),
        ..RerankParams::default()
    };
    let (code, message) = server_code(client.rerank(&case.query, &case.documents, &strict).await);
    assert_eq!(code, ErrorCode::InputTooLong);
    assert!(message.contains("input 7 "), "the first over-long pair is named: {message}");
    let none: [&str; 0] = [];
    assert_eq!(
        server_code(client.rerank("q", &none, &RerankParams::default()).await).0,
        ErrorCode::InvalidRequest
    );
    let zero = RerankParams {
        top_n: Some(0),
        ..RerankParams::default()
    };
    assert_eq!(server_code(client.rerank("q", &["d"], &zero).await).0, ErrorCode::InvalidRequest);

    // A daemon serving no reranker says so.
    drop(daemon);
    let daemon = Daemon::start("");
    let mut client = daemon.client().await;
    let (code, message) = server_code(client.rerank("q", &["d"], &RerankParams::default()).await);
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("no reranker is served"), "{message}");
    assert_eq!(client.health().await.unwrap(), "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realtime_rerank_is_not_stuck_behind_another_models_bulk_backlog() {
    let daemon = Daemon::start(&two_models(""));
    // About eight seconds of bulk embedding work for MiniLM, sized from the rate measured here.
    let long: Vec<String> = (0..16)
        .map(|i| format!("{i} the robot arm moves the camera over the lidar mount and checks the wiring ").repeat(12))
        .collect();
    let rate = inputs_per_second(&daemon, "minilm", &long).await;
    let requests = ((rate * 8.0) as usize / long.len()).max(4);
    let _bulk = backlog(&daemon, "minilm", &long, requests, Priority::Bulk).await;
    let mut client = daemon.client().await;
    within(60, async {
        while queued(&mut client, 0, "bulk").await < long.len() as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let candidates: Vec<String> = (0..50).map(|i| format!("memory {i}: the red cup was on shelf {}", i % 7)).collect();
    let realtime = RerankParams {
        priority: Some(Priority::Realtime),
        cache: Some(false),
        ..RerankParams::default()
    };
    let mut latencies = Vec::new();
    for i in 0..3 {
        let got = within(60, client.rerank(&format!("where is the red cup {i}"), &candidates, &realtime))
            .await
            .unwrap();
        assert_eq!(got.results.len(), 50);
        latencies.push(got.timing_us.total as f64 / 1000.0);
        let left = queued(&mut client, 0, "bulk").await;
        assert!(
            left > 0,
            "realtime rerank {i} waited for the whole bulk backlog of the embedding model"
        );
    }
    let status = client.status().await.unwrap();
    assert!(status.models[1].latency_ms["realtime"].count >= 3, "rerank counted per model");
    eprintln!(
        "realtime rerank of 50 behind minilm bulk ({requests} x {} long inputs, {rate:.1} inputs/s): latency ms {latencies:?}",
        long.len()
    );
}

#[test]
fn http_rerank_in_tei_and_cohere_shapes() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&two_models(&format!("[http]\nlisten = {addr:?}\n")));
    let case = &cases()[0];
    let post = |path: &str, body: Value| -> (u16, Value) {
        let body = body.to_string();
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let response = crate::http::exchange(&addr, raw.as_bytes());
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let json = response
            .split("\r\n\r\n")
            .nth(1)
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        (status, json)
    };
    // TEI: an array, best first, with the texts when asked; truncation on request.
    let (status, tei) = post(
        "/rerank",
        serde_json::json!({"query": case.query, "texts": case.documents, "return_text": true, "truncate": true}),
    );
    assert_eq!(status, 200, "{tei}");
    let order: Vec<u64> = tei.as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(order, case.rank);
    let best = &tei[0];
    assert!((best["score"].as_f64().unwrap() - case.scores[case.rank[0] as usize]).abs() <= 1e-5);
    assert_shortest_f32(tei.as_array().unwrap().iter().map(|r| &r["score"]));
    assert_eq!(best["text"], case.documents[case.rank[0] as usize]);
    // TEI does not truncate unless asked: the long pairs are refused, with the input named.
    let (status, refused) = post("/rerank", serde_json::json!({"query": case.query, "texts": case.documents}));
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("input_too_long")),
        "{refused}"
    );

    // Cohere / Jina: results with relevance_score, top_n, documents as strings or {text}.
    let documents: Vec<Value> = case
        .documents
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                Value::from(d.as_str())
            } else {
                serde_json::json!({ "text": d })
            }
        })
        .collect();
    let (status, cohere) = post(
        "/v1/rerank",
        serde_json::json!({"model": "reranker", "query": case.query, "documents": documents, "top_n": 3, "return_documents": true}),
    );
    assert_eq!(status, 200, "{cohere}");
    let results = cohere["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(
        results.iter().map(|r| r["index"].as_u64().unwrap()).collect::<Vec<_>>(),
        case.rank[..3]
    );
    assert!((results[0]["relevance_score"].as_f64().unwrap() - case.scores[case.rank[0] as usize]).abs() <= 1e-5);
    assert_eq!(results[0]["document"]["text"], case.documents[case.rank[0] as usize]);
    assert_shortest_f32(results.iter().map(|r| &r["relevance_score"]));
    assert_eq!(cohere["model"], "reranker");
    // The other task and an unknown model keep their codes.
    let (status, wrong) = post(
        "/v1/rerank",
        serde_json::json!({"model": "minilm", "query": "q", "documents": ["d"]}),
    );
    assert_eq!((status, wrong["error"]["code"].as_str()), (400, Some("invalid_request")), "{wrong}");
    let (status, unknown) = post("/v1/rerank", serde_json::json!({"model": "nope", "query": "q", "documents": ["d"]}));
    assert_eq!(status, 404, "{unknown}");
    drop(daemon);
}

#[test]
fn akictl_and_the_python_client_rerank() {
    let daemon = Daemon::start(&two_models(""));
    let case = &cases()[1];
    let mut args = vec!["rerank", "--top-n", "2", case.query.as_str()];
    args.extend(case.documents.iter().map(String::as_str));
    let out = crate::akictl::akictl(&daemon.socket, &args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["index"].as_u64(), Some(case.rank[0]));
    assert_eq!(lines[0]["document"], case.documents[case.rank[0] as usize]);

    let python = util::repo().join("target/pyenv/bin/python");
    let output = Command::new(&python)
        .arg("-I")
        .arg(util::repo().join("tools/python/test_rerank.py"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("--references")
        .arg(fixture_dir().join("references.jsonl"))
        .output()
        .unwrap_or_else(|e| panic!("{} (run `make setup`): {e}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("python rerank:\n{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// Scores are f32s written as their shortest text ("0.8367496"), not as widened f64s ("0.8367496132850647").
fn assert_shortest_f32<'a>(scores: impl Iterator<Item = &'a Value>) {
    for score in scores {
        let value = score.as_f64().unwrap();
        assert_eq!(
            value.to_string(),
            (value as f32).to_string(),
            "{score} is not an f32's shortest text"
        );
    }
}
