//! The embedding cache in the real daemon: hits are the computed vectors (with `dimensions` and `normalize`
//! applied after the hit), skip the batcher, respect the byte budget, count evictions, and can be bypassed; the
//! same text sent concurrently is answered right; an unknown model is `unknown_model`.

use std::time::Duration;

use akidb::client::{ClientError, EmbedParams};
use akidb::engine::pooling::cosine;
use akidb::protocol::ErrorCode;

use crate::util::{within, Daemon};

fn words(i: usize) -> String {
    format!("label {i}: the robot sees object number {i} on shelf {}", i % 7)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_inputs_are_answered_from_the_cache_exactly() {
    let daemon = Daemon::start("");
    let mut client = daemon.client().await;
    let texts: Vec<String> = (0..8).map(words).collect();
    let first = within(30, client.embed(&texts, &EmbedParams::default())).await.unwrap();
    // The batch is counted just after its replies go out.
    let mut batches = 0;
    for _ in 0..100 {
        batches = client.status().await.unwrap().counters.batches;
        if batches > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(batches > 0);
    let again = within(30, client.embed(&texts, &EmbedParams::default())).await.unwrap();
    assert_eq!(again.embeddings, first.embeddings, "a hit is the computed vector, bit for bit");
    assert_eq!(again.reply.tokens, first.reply.tokens);
    assert_eq!(again.reply.timing_us.inference, 0, "no inference for a request the cache answered");
    let status = client.status().await.unwrap();
    assert_eq!(status.counters.batches, batches, "the batcher never saw the hits");
    assert_eq!((status.cache.hits, status.cache.misses), (8, 8));
    assert_eq!(status.cache.per_model["all-MiniLM-L6-v2"].hits, 8);
    assert!(status.cache.entries == 8 && status.cache.bytes > 8 * 384 * 4, "{:?}", status.cache);

    // dimensions and normalize apply after a hit as after a run; a mixed request computes only its misses.
    let short = EmbedParams {
        dimensions: Some(32),
        normalize: Some(false),
        ..EmbedParams::default()
    };
    let mut mixed = texts[..4].to_vec();
    mixed.push("a text never seen before".into());
    let hit = within(30, client.embed(&mixed, &short)).await.unwrap();
    let fresh = within(
        30,
        client.embed(
            &mixed,
            &EmbedParams {
                cache: Some(false),
                ..short.clone()
            },
        ),
    )
    .await
    .unwrap();
    for (a, b) in hit.embeddings.iter().zip(&fresh.embeddings) {
        assert_eq!(a.len(), 32);
        assert!(cosine(a, b) > 0.999_999 && (a[0] - b[0]).abs() < 1e-6, "same vector, same scale");
    }
    let status = client.status().await.unwrap();
    assert_eq!(
        (status.cache.hits, status.cache.misses),
        (12, 9),
        "4 hits + 1 miss; cache: false looks nothing up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_budget_holds_and_evictions_are_counted() {
    // About 40 vectors of 384 floats fit in 64 KiB.
    let daemon = Daemon::start("[cache]\nmax_bytes = 65536\n");
    let mut client = daemon.client().await;
    let texts: Vec<String> = (0..200).map(words).collect();
    for chunk in texts.chunks(50) {
        within(60, client.embed(chunk, &EmbedParams::default())).await.unwrap();
    }
    let cache = client.status().await.unwrap().cache;
    assert!(cache.bytes <= 65536, "{} bytes in a 65536-byte cache", cache.bytes);
    assert!(cache.entries >= 20 && cache.entries <= 45, "{} entries", cache.entries);
    assert_eq!(cache.evictions, 200 - cache.entries, "every entry that is gone was evicted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_text_sent_concurrently_is_answered_right_everywhere() {
    let daemon = Daemon::start("");
    let text = "the same command, from sixteen processes at once";
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = daemon.client().await;
        tasks.push(tokio::spawn(async move {
            within(30, client.embed(&[text, text], &EmbedParams::default()))
                .await
                .unwrap()
                .embeddings
        }));
    }
    let mut vectors = Vec::new();
    for task in tasks {
        vectors.extend(task.await.unwrap());
    }
    let reference = &vectors[0];
    assert!(
        vectors.iter().all(|v| cosine(v, reference) > 0.999_999),
        "every copy is the same vector"
    );
    let mut client = daemon.client().await;
    let cache = client.status().await.unwrap().cache;
    assert_eq!(cache.hits + cache.misses, 32);
    assert_eq!(cache.entries, 1, "one entry, whoever computed it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_named_and_the_cache_can_be_off() {
    let daemon = Daemon::start("[cache]\nmax_bytes = 0\n");
    let mut client = daemon.client().await;
    let unknown = EmbedParams {
        model: Some("qwen3-embedding-8b".into()),
        ..EmbedParams::default()
    };
    match within(10, client.embed(&["x"], &unknown)).await {
        Err(ClientError::Server { code, message, .. }) => {
            assert_eq!(code, ErrorCode::UnknownModel);
            assert!(
                message.contains("qwen3-embedding-8b") && message.contains("all-MiniLM-L6-v2"),
                "{message}"
            );
        }
        other => panic!("expected unknown_model, got {other:?}"),
    }
    let named = EmbedParams {
        model: Some("all-MiniLM-L6-v2".into()),
        ..EmbedParams::default()
    };
    within(10, client.embed(&["x"], &named)).await.unwrap();
    within(10, client.embed(&["x"], &named)).await.unwrap();
    let mut status = client.status().await.unwrap();
    for _ in 0..100 {
        if status.counters.batches >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = client.status().await.unwrap();
    }
    assert!(!status.cache.enabled && status.cache.entries == 0 && status.cache.hits == 0);
    assert_eq!(status.counters.batches, 2, "with the cache off every request is computed");
}
