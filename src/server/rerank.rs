//! Rerank requests, for every transport: a query and its candidate documents become one job of (query, document)
//! pairs for a cross-encoder, served by the same actors, queues, priorities and cache as embed requests (each
//! pair is an input whose "vector" is its logit); the logits become scores, best first.
//!
//! This is not where the pairs are tokenized (`engine::tokenizer`) or scheduled (`actors`): only the translation
//! at the edge, on both sides of [`DaemonHandle::embed`].

use std::time::Duration;

use tokio::time::Instant;

use super::connection;
use crate::actors::{DaemonHandle, EmbedJob, ServeError};
use crate::engine::{EmbedOptions, Task};
use crate::protocol::message::{RerankReply, RerankRequest, RerankResult, Timing};
use crate::protocol::PROTOCOL_VERSION;

/// A served rerank request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reranked {
    /// The model that served it (its index).
    pub model: usize,
    /// (document index, score), best first, at most `top_n`.
    pub results: Vec<(usize, f32)>,
    pub tokens: usize,
    pub truncated: Vec<usize>,
    pub queue_us: u64,
    pub inference_us: u64,
}

/// A rerank request refused before any work is done on it (stopping, starting, or a deadline the queue ahead
/// makes impossible), recorded in the status figures.
pub(crate) fn refusal(handle: &DaemonHandle, rerank: &RerankRequest, received: Instant) -> Option<ServeError> {
    connection::refusal_of(handle, rerank.priority, deadline(rerank, received), received)
}

/// Serves one rerank request through the actors and records its outcome. The caller has already checked
/// [`refusal`].
pub(crate) async fn serve_rerank(handle: &DaemonHandle, rerank: RerankRequest, received: Instant) -> Result<Reranked, ServeError> {
    let (priority, n_inputs) = (rerank.priority, rerank.documents.len());
    let outcome = match reranker(handle, rerank.model.as_deref()) {
        Ok(model) => serve(handle, rerank, model, received).await,
        Err(err) => Err(err),
    };
    let served = outcome.as_ref().map(|done| (done.model, done.tokens));
    connection::record_outcome(handle, priority, n_inputs, received, served);
    outcome
}

/// The socket's answer to a served rerank request.
pub(crate) fn rerank_reply(handle: &DaemonHandle, id: u64, done: Reranked, latency: Duration) -> RerankReply {
    RerankReply {
        v: PROTOCOL_VERSION,
        id,
        ok: true,
        model: handle.state.models[done.model].name.clone(),
        results: done
            .results
            .iter()
            .map(|&(index, score)| RerankResult {
                index: index as u64,
                score,
            })
            .collect(),
        tokens: done.tokens as u64,
        truncated: done.truncated.into_iter().map(|i| i as u64).collect(),
        timing_us: Timing {
            queue: done.queue_us,
            inference: done.inference_us,
            total: latency.as_micros() as u64,
        },
    }
}

/// The model a rerank request names, or the first reranker served when it names none. Naming an embedding model
/// is left to the actors' task check, which says so.
fn reranker(handle: &DaemonHandle, name: Option<&str>) -> Result<String, ServeError> {
    if let Some(name) = name {
        return Ok(name.to_owned());
    }
    let models = &handle.state.models;
    models.iter().find(|m| m.is_reranker()).map(|m| m.name.clone()).ok_or_else(|| {
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        ServeError::WrongTask(format!(
            "no reranker is served (models: {}); serve a cross-encoder beside them in [[models]]",
            names.join(", ")
        ))
    })
}

async fn serve(handle: &DaemonHandle, rerank: RerankRequest, model: String, received: Instant) -> Result<Reranked, ServeError> {
    let job = EmbedJob {
        options: EmbedOptions {
            truncate: rerank.truncate,
            normalize: Some(false),
            dimensions: None,
        },
        priority: rerank.priority,
        deadline: deadline(&rerank, received),
        received,
        inputs: rerank.documents,
        prompt_name: None,
        prompt: None,
        model: Some(model),
        query: Some(rerank.query),
        use_cache: rerank.cache,
    };
    let done = handle.embed(job).await?;
    let activation = match handle.state.models[done.model].task {
        Task::Rerank { activation } => activation,
        Task::Embed => return Err(ServeError::Internal("an embedding model answered a rerank request".into())),
    };
    let logits: Vec<f32> = done.embeddings.iter().map(|v| v.first().copied().unwrap_or(f32::NAN)).collect();
    let scores = if rerank.raw_scores {
        logits
    } else {
        logits.into_iter().map(|logit| activation.apply(logit)).collect()
    };
    Ok(Reranked {
        model: done.model,
        results: ranked(&scores, rerank.top_n),
        tokens: done.tokens,
        truncated: done.truncated,
        queue_us: done.queue_us,
        inference_us: done.inference_us,
    })
}

/// (index, score) best first, ties in request order, at most `top_n`.
pub(crate) fn ranked(scores: &[f32], top_n: Option<usize>) -> Vec<(usize, f32)> {
    let mut results: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    results.truncate(top_n.unwrap_or(usize::MAX));
    results
}

/// A request's deadline, counted from receipt.
fn deadline(rerank: &RerankRequest, received: Instant) -> Option<Instant> {
    rerank.deadline_ms.map(|ms| received + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::ranked;

    #[test]
    fn ranking_is_best_first_ties_in_order_and_cut_at_top_n() {
        let scores = [0.2, 0.9, 0.5, 0.9, -1.0];
        assert_eq!(ranked(&scores, None), [(1, 0.9), (3, 0.9), (2, 0.5), (0, 0.2), (4, -1.0)]);
        assert_eq!(ranked(&scores, Some(2)), [(1, 0.9), (3, 0.9)]);
        assert_eq!(ranked(&scores, Some(10)).len(), 5);
    }
}
