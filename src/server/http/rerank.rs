//! The two rerank shapes HTTP clients already speak, over the socket's rerank path (`server::rerank`):
//! text-embeddings-inference's `POST /rerank` and Cohere's (and Jina's) `POST /v1/rerank`, which LangChain and
//! LlamaIndex rerankers call. Errors keep the OpenAI error shape of the rest of the HTTP surface.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{authorize, deadline_ms, model_not_found, priority, read_json, ApiError, App};
use crate::protocol::message::RerankRequest;
use crate::protocol::ErrorCode;
use crate::server::rerank::{self, Reranked};

/// Numbers the `/v1/rerank` answers' ids (Cohere's clients read an id; nothing depends on its form).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One result of `POST /rerank` (typed, so that scores are written as the shortest f32 text).
#[derive(Serialize)]
struct TeiResult<'a> {
    index: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

/// One result of `POST /v1/rerank`.
#[derive(Serialize)]
struct CohereResult<'a> {
    index: usize,
    relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<CohereDocument<'a>>,
}

#[derive(Serialize)]
struct CohereDocument<'a> {
    text: &'a str,
}

/// The whole `POST /v1/rerank` answer, typed (through `json!` its f32 scores would be written as widened f64s).
#[derive(Serialize)]
struct CohereReply<'a> {
    id: String,
    model: String,
    results: Vec<CohereResult<'a>>,
    usage: serde_json::Value,
    meta: serde_json::Value,
}

/// `POST /rerank` as text-embeddings-inference takes it.
#[derive(Debug, Deserialize)]
struct TeiRequest {
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    /// TEI's default: an over-long pair is an error unless asked to truncate.
    #[serde(default)]
    truncate: bool,
    /// akidb: the reranker, by name (default: the first one served).
    model: Option<String>,
}

/// `POST /v1/rerank` as Cohere and Jina take it.
#[derive(Debug, Deserialize)]
struct CohereRequest {
    model: Option<String>,
    query: String,
    /// Strings, or objects with a `text` field.
    documents: Vec<Value>,
    top_n: Option<u64>,
    #[serde(default)]
    return_documents: bool,
    /// Cohere's chunking of long documents: accepted and ignored (pairs are truncated longest-first instead).
    #[serde(rename = "max_chunks_per_doc")]
    _max_chunks_per_doc: Option<u64>,
}

/// `POST /rerank`: `[{index, score, text?}]`, best first.
pub(super) async fn tei(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let received = Instant::now();
    let outcome = async {
        authorize(&app, &headers)?;
        let request: TeiRequest = read_json(&app, &headers, body).await?;
        let texts = request.texts.clone();
        let rerank = RerankRequest {
            query: request.query,
            documents: request.texts,
            top_n: None,
            raw_scores: request.raw_scores,
            truncate: request.truncate,
            priority: priority(&headers)?,
            deadline_ms: deadline_ms(&headers)?,
            model: request.model,
            cache: true,
        };
        let done = serve(&app, rerank, received).await?;
        let results: Vec<TeiResult> = done
            .results
            .iter()
            .map(|&(index, score)| TeiResult {
                index,
                score,
                text: request.return_text.then_some(texts[index].as_str()),
            })
            .collect();
        Ok::<_, ApiError>(Json(results).into_response())
    }
    .await;
    outcome.unwrap_or_else(|err| err.answer(&app, received))
}

/// `POST /v1/rerank`: `{id, model, results: [{index, relevance_score, document?}], usage, meta}`, best first.
pub(super) async fn cohere(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let received = Instant::now();
    let outcome = async {
        authorize(&app, &headers)?;
        let request: CohereRequest = read_json(&app, &headers, body).await?;
        let documents = documents(request.documents)?;
        let rerank = RerankRequest {
            query: request.query,
            documents: documents.clone(),
            top_n: request.top_n.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            raw_scores: false,
            truncate: true,
            priority: priority(&headers)?,
            deadline_ms: deadline_ms(&headers)?,
            model: request.model,
            cache: true,
        };
        if rerank.top_n == Some(0) {
            return Err(ApiError::invalid("top_n must be at least 1".into()).param("top_n"));
        }
        let done = serve(&app, rerank, received).await?;
        let model = app.handle.state.models[done.model].name.clone();
        let results: Vec<CohereResult> = done
            .results
            .iter()
            .map(|&(index, score)| CohereResult {
                index,
                relevance_score: score,
                document: request.return_documents.then(|| CohereDocument {
                    text: documents[index].as_str(),
                }),
            })
            .collect();
        let id = format!("akidb-rerank-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let reply = CohereReply {
            id,
            model,
            results,
            usage: json!({ "total_tokens": done.tokens }),
            meta: json!({ "billed_units": { "search_units": 1 } }),
        };
        Ok::<_, ApiError>(Json(reply).into_response())
    }
    .await;
    outcome.unwrap_or_else(|err| err.answer(&app, received))
}

/// Cohere's documents: strings, or objects whose `text` is the document.
fn documents(list: Vec<Value>) -> Result<Vec<String>, ApiError> {
    list.into_iter()
        .enumerate()
        .map(|(i, document)| match document {
            Value::String(text) => Ok(text),
            Value::Object(mut map) => match map.remove("text") {
                Some(Value::String(text)) => Ok(text),
                _ => Err(ApiError::invalid(format!("documents[{i}] has no text string")).param("documents")),
            },
            _ => Err(ApiError::invalid(format!("documents[{i}] is neither a string nor an object with text")).param("documents")),
        })
        .collect()
}

/// The checks both shapes share, then the socket's rerank path.
async fn serve(app: &App, rerank: RerankRequest, received: Instant) -> Result<Reranked, ApiError> {
    if rerank.documents.is_empty() {
        return Err(ApiError::invalid("no documents to rerank".into()).param("documents"));
    }
    if rerank.documents.len() > app.max_inputs {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            ErrorCode::TooManyInputs.as_str(),
            format!(
                "{} documents, at most {} per request (http.max_inputs)",
                rerank.documents.len(),
                app.max_inputs
            ),
        )
        .param("documents")
        .counted_as(ErrorCode::TooManyInputs));
    }
    let state = &app.handle.state;
    if let Some(name) = rerank.model.as_deref() {
        if state.model_index(Some(name)).is_err() {
            let names: Vec<&str> = state.models.iter().map(|m| m.name.as_str()).collect();
            return Err(model_not_found(name, &names));
        }
    }
    if let Some(err) = rerank::refusal(&app.handle, &rerank, received) {
        return Err(ApiError::from_serve(&err));
    }
    state.in_flight.fetch_add(1, Ordering::Relaxed);
    let outcome = rerank::serve_rerank(&app.handle, rerank, received).await;
    state.in_flight.fetch_sub(1, Ordering::Relaxed);
    outcome.map_err(|err| ApiError::from_serve(&err))
}
