//! The HTTP surface: OpenAI-compatible embeddings, health and Prometheus metrics, for the clients of the wider
//! ecosystem (the `openai` package, LangChain, LlamaIndex, Prometheus).
//!
//! It is a second transport beside [`super::connection`], not a second daemon: an HTTP request becomes the same
//! [`EmbedRequest`] as a socket frame, passes the same refusal checks, is served by the same
//! [`connection::serve_embed`] through the same batcher and priorities, and its errors come from the same
//! [`connection::error_code`] table, mapped here once more onto HTTP statuses and OpenAI's error JSON.
//!
//! Bounds for slow or hostile clients: at most `server.max_connections` connections (a new one waits up to a
//! second for a slot, then is closed), request headers must arrive within `server.read_timeout_ms` (hyper's
//! header timer) and the body within the same time, bodies over `http.max_body_bytes` are answered 413 without
//! being read, and at most `http.max_inputs` inputs per request (OpenAI's 2048 by default). Against web pages:
//! a body must be declared JSON (no CORS-"simple" request can make the daemon compute), and without an API key a
//! loopback listener answers only requests addressed to loopback (`host_guard`, against DNS rebinding).
//!
//! Every answered request is counted in the status figures as a socket request is, including those refused
//! here before they reach the actors (bad JSON, a wrong key, too many inputs): each such error carries the wire
//! code it is counted under ([`ApiError::counted`]).

mod rerank;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection;
use crate::actors::{DaemonHandle, EmbedDone, ServeError};
use crate::config::{HttpConfig, ServerConfig};
use crate::engine::ModelInfo;
use crate::metrics::Format;
use crate::protocol::message::{EmbedRequest, Encoding, Priority};
use crate::protocol::ErrorCode;

/// The request header that selects the priority class (`realtime`, `normal`, `bulk`; default `normal`).
pub const PRIORITY_HEADER: &str = "x-akidb-priority";
/// The request header that sets a deadline in milliseconds after receipt, as `deadline_ms` does on the socket.
pub const DEADLINE_HEADER: &str = "x-akidb-deadline-ms";

/// What the handlers share.
#[derive(Clone)]
struct App {
    handle: DaemonHandle,
    api_key: Option<Arc<str>>,
    max_inputs: usize,
    max_body_bytes: usize,
    read_timeout: Duration,
    /// Refuse requests whose `Host` names something other than this machine's loopback (see [`host_guard`]).
    loopback_hosts_only: bool,
}

/// `POST /v1/embeddings`, as OpenAI defines it, plus akidb's optional fields.
#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: Option<String>,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<u64>,
    /// OpenAI's end-user id: accepted and ignored.
    #[serde(rename = "user")]
    _user: Option<String>,
    /// akidb: one of the model's prompts (`GET /v1/models` lists them).
    prompt_name: Option<String>,
    /// akidb: a literal prompt.
    prompt: Option<String>,
    /// akidb: cut over-long inputs instead of answering 400 (OpenAI's behaviour, the default here).
    truncate: Option<bool>,
    /// akidb: false bypasses the embedding cache.
    cache: Option<bool>,
}

/// The `POST /v1/embeddings` reply (typed, so that vectors are written as the shortest f32 text).
#[derive(Serialize)]
struct EmbeddingsReply<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: Embedding,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// An error as OpenAI's API answers it.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: String,
    message: String,
    param: Option<&'static str>,
    /// The wire code this refusal is counted under in the status figures (`errors`), or `None` when the
    /// daemon's serving path has counted it already.
    counted: Option<ErrorCode>,
}

/// Binds the HTTP listener (before the actors start, so that a taken port fails start-up at once).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves HTTP until `stop` is cancelled, then lets in-flight requests finish within the grace period.
pub(crate) async fn serve(listener: TcpListener, handle: DaemonHandle, http: &HttpConfig, server: &ServerConfig, stop: CancellationToken) {
    let app = App {
        handle: handle.clone(),
        api_key: http.api_key.as_deref().map(Arc::from),
        max_inputs: http.max_inputs,
        max_body_bytes: http.max_body_bytes,
        read_timeout: Duration::from_millis(server.read_timeout_ms),
        loopback_hosts_only: http.api_key.is_none() && listener.local_addr().is_ok_and(|addr| addr.ip().is_loopback()),
    };
    let read_timeout = app.read_timeout;
    let router = router(app);
    let slots = Arc::new(Semaphore::new(server.max_connections));
    let tracker = TaskTracker::new();
    let close_all = CancellationToken::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let slot = match super::admit(&slots, &stop, &handle, "http", server.max_connections).await {
            super::Admission::Admitted(slot) => slot,
            super::Admission::Refused => continue,
            super::Admission::Stopping => break,
        };
        let service = TowerToHyperService::new(router.clone());
        tracker.spawn(serve_connection(stream, service, read_timeout, close_all.child_token(), slot));
    }
    drop(listener);
    tracker.close();
    // Idle keep-alive connections are closed now; those with a request in flight finish it first.
    close_all.cancel();
    let grace = Duration::from_millis(server.shutdown_grace_ms);
    let _ = tokio::time::timeout(grace, tracker.wait()).await;
}

/// The routes: OpenAI's embeddings and models, health and metrics; every request passes the Host check first.
fn router(app: App) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/rerank", post(rerank::tei))
        .route("/v1/rerank", post(rerank::cohere))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), host_guard))
        .with_state(app)
}

/// One HTTP/1 connection until the client closes it, or `close` asks it to finish its request in flight (two
/// seconds at most) and close; `slot` is its place among `server.max_connections`.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    service: TowerToHyperService<Router>,
    read_timeout: Duration,
    close: CancellationToken,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(read_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = close.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
        }
    }
    drop(slot);
}

// === handlers ===

async fn embeddings(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let received = Instant::now();
    match embed(&app, &headers, body, received).await {
        Ok(response) => response,
        Err(err) => err.answer(&app, received),
    }
}

/// `POST /v1/embeddings`: the OpenAI request translated to the socket's, served by the same path, answered in
/// OpenAI's shape.
async fn embed(app: &App, headers: &HeaderMap, body: Body, received: Instant) -> Result<Response, ApiError> {
    authorize(app, headers)?;
    let request: EmbeddingsRequest = read_json(app, headers, body).await?;
    let (embed, base64) = translate(app, headers, request)?;
    if let Some(err) = connection::refusal(&app.handle, &embed, received) {
        return Err(ApiError::from_serve(&err));
    }
    let state = &app.handle.state;
    let model = embed.model.clone().unwrap_or_default();
    state.in_flight.fetch_add(1, Ordering::Relaxed);
    let outcome = connection::serve_embed(&app.handle, embed, received).await;
    state.in_flight.fetch_sub(1, Ordering::Relaxed);
    let done = outcome.map_err(|err| ApiError::from_serve(&err))?;
    Ok(embeddings_reply(done, &model, base64))
}

/// Checks an OpenAI embeddings request and translates it to the socket's request (with the served model's name
/// filled in); also says whether the vectors go back as base64.
fn translate(app: &App, headers: &HeaderMap, request: EmbeddingsRequest) -> Result<(EmbedRequest, bool), ApiError> {
    let state = &app.handle.state;
    let model = match state.model_index(request.model.as_deref()) {
        Ok(index) => &state.models[index],
        Err(_) => {
            let names: Vec<&str> = state.models.iter().map(|m| m.name.as_str()).collect();
            return Err(model_not_found(request.model.as_deref().unwrap_or_default(), &names));
        }
    };
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(
                ApiError::invalid(format!("encoding_format must be \"float\" or \"base64\", not {other:?}")).param("encoding_format"),
            )
        }
    };
    let inputs = inputs(request.input)?;
    if inputs.len() > app.max_inputs {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            ErrorCode::TooManyInputs.as_str(),
            format!("{} inputs, at most {} per request (http.max_inputs)", inputs.len(), app.max_inputs),
        )
        .param("input")
        .counted_as(ErrorCode::TooManyInputs));
    }
    if request.dimensions == Some(0) {
        return Err(ApiError::invalid("dimensions must be at least 1".into()).param("dimensions"));
    }
    let embed = EmbedRequest {
        inputs,
        normalize: None,
        truncate: request.truncate.unwrap_or(false),
        dimensions: request.dimensions.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        priority: priority(headers)?,
        deadline_ms: deadline_ms(headers)?,
        encoding: Encoding::F32,
        prompt_name: request.prompt_name,
        prompt: request.prompt,
        model: Some(model.name.clone()),
        cache: request.cache.unwrap_or(true),
    };
    Ok((embed, base64))
}

/// The OpenAI embeddings answer: one item per input, in order, as floats or base64 of little-endian f32.
fn embeddings_reply(done: EmbedDone, model: &str, base64: bool) -> Response {
    let data = done
        .embeddings
        .into_iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingItem {
            object: "embedding",
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Embedding::Float(vector)
            },
        })
        .collect();
    let reply = EmbeddingsReply {
        object: "list",
        data,
        model,
        usage: Usage {
            prompt_tokens: done.tokens,
            total_tokens: done.tokens,
        },
    };
    Json(reply).into_response()
}

async fn models(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(err) = authorize(&app, &headers) {
        return err.answer(&app, Instant::now());
    }
    let data: Vec<Value> = app.handle.state.models.iter().map(|m| model_json(m)).collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// `GET /v1/models/{id}`: one model, as OpenAI's "retrieve model" answers it.
async fn model(State(app): State<App>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(err) = authorize(&app, &headers) {
        return err.answer(&app, Instant::now());
    }
    let models = &app.handle.state.models;
    match models.iter().find(|m| m.name == id) {
        Some(found) => Json(model_json(found)).into_response(),
        None => {
            let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
            model_not_found(&id, &names).answer(&app, Instant::now())
        }
    }
}

fn model_json(model: &ModelInfo) -> Value {
    json!({
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": "akidb",
        "dim": model.dim,
        "max_tokens": model.max_tokens,
        "prompts": model.prompts,
    })
}

fn model_not_found(name: &str, served: &[&str]) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "model_not_found",
        format!("The model `{name}` does not exist; this daemon serves: {}", served.join(", ")),
    )
    .param("model")
    .counted_as(ErrorCode::UnknownModel)
}

async fn health(State(app): State<App>) -> Response {
    let status = app.handle.state.health();
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"status": status}))).into_response()
}

/// `GET /metrics`: OpenMetrics text when the scraper accepts it (Prometheus does), else Prometheus' classic text
/// format 0.0.4 (curl, older scrapers), as Prometheus' own client libraries negotiate.
async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(err) = authorize(&app, &headers) {
        return err.answer(&app, Instant::now());
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let format = if openmetrics { Format::OpenMetrics } else { Format::Classic };
    let text = crate::metrics::prometheus_text(&app.handle.state.status(), format);
    ([(header::CONTENT_TYPE, format.content_type())], text).into_response()
}

async fn not_found(State(app): State<App>) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        format!("no such route ({ROUTES})"),
    )
    .counted_as(ErrorCode::UnknownOp)
    .answer(&app, Instant::now())
}

/// A known route with another method: 405 with `Allow` (axum's) and OpenAI's error JSON.
async fn method_not_allowed(State(app): State<App>) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!("this route does not take that method ({ROUTES})"),
    )
    .counted_as(ErrorCode::UnknownOp)
    .answer(&app, Instant::now())
}

const ROUTES: &str = "POST /v1/embeddings, GET /v1/models, GET /v1/models/{id}, GET /health, GET /metrics";

/// DNS rebinding: a web page can point a name of its own at 127.0.0.1 and then call the daemon as if it were its
/// own origin, reading the answers. Its requests carry that name in `Host`. So when akidbd listens on loopback
/// without an API key, a request must name loopback in `Host` (`localhost`, `*.localhost`, a loopback address,
/// any port) or carry none (HTTP/1.0); others are `403 host_not_allowed`. With `http.api_key` set the key
/// protects instead, and a reverse proxy may pass another `Host`.
async fn host_guard(State(app): State<App>, request: Request, next: Next) -> Response {
    if app.loopback_hosts_only {
        let host = request.headers().get(header::HOST).map(|v| v.to_str().unwrap_or(""));
        if host.is_some_and(|host| !names_loopback(host)) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                "host_not_allowed",
                "without http.api_key, requests must be addressed to localhost or a loopback address (Host header)".into(),
            )
            .counted_as(ErrorCode::PermissionDenied)
            .answer(&app, Instant::now());
        }
    }
    next.run(request).await
}

/// Whether a `Host` header value names this machine's loopback: `localhost`, `*.localhost`, `127.x.x.x` or
/// `[::1]`, with or without a port.
fn names_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inside, port)) if port.is_empty() || port.strip_prefix(':').is_some_and(is_port) => inside,
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

// === request parts ===

fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &app.api_key else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    if given.is_some_and(|given| constant_time_eq(given.as_bytes(), key.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect or missing API key (Authorization: Bearer <http.api_key>)".into(),
        )
        .counted_as(ErrorCode::PermissionDenied))
    }
}

/// The credentials of `Authorization: Bearer <token>`; the scheme's name is case-insensitive (RFC 9110).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start_matches(' '))
}

/// Compares without an early exit, so that the time taken says nothing about how much of a key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the whole body within the read timeout and the size limit, and parses it as JSON.
async fn read_json<T: for<'de> Deserialize<'de>>(app: &App, headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    if !declares_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            "the request body must be sent with Content-Type: application/json".into(),
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "payload_too_large",
            format!("the request body is over http.max_body_bytes ({} bytes)", app.max_body_bytes),
        )
        .counted_as(ErrorCode::FrameTooLarge)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > app.max_body_bytes as u64) {
        return Err(too_large());
    }
    let bytes = match tokio::time::timeout(app.read_timeout, axum::body::to_bytes(body, app.max_body_bytes)).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "timeout",
                "the request body did not arrive within server.read_timeout_ms".into(),
            ))
        }
        Ok(Err(_)) => return Err(too_large()),
        Ok(Ok(bytes)) => bytes,
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("the request body must be a JSON object".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// Whether the body is declared JSON (`application/json`, or a `+json` type, any parameters). A body declared
/// otherwise, or not at all, is refused before it is read: a web page of any origin may POST `text/plain`, a
/// form or a typeless body to a loopback port without asking first (CORS' "simple" requests), and would make the
/// daemon compute; a JSON body makes the browser ask first, which akidbd never allows. The official clients and
/// TEI's users send `application/json`.
fn declares_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// `input`: a string or an array of strings. Token-id arrays (which OpenAI also accepts) cannot be served: the
/// ids would be those of another tokenizer.
fn inputs(input: Value) -> Result<Vec<String>, ApiError> {
    let token_ids = || {
        ApiError::invalid(
            "token-id arrays are not supported: akidbd tokenizes with its model's own tokenizer; send the text \
             (input as a string or an array of strings)"
                .into(),
        )
        .param("input")
    };
    match input {
        Value::String(text) => Ok(vec![text]),
        Value::Array(items) if items.is_empty() => Err(ApiError::invalid("input is empty".into()).param("input")),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                Value::Number(_) | Value::Array(_) => Err(token_ids()),
                _ => Err(ApiError::invalid("input must be a string or an array of strings".into()).param("input")),
            })
            .collect(),
        _ => Err(ApiError::invalid("input must be a string or an array of strings".into()).param("input")),
    }
}

fn priority(headers: &HeaderMap) -> Result<Priority, ApiError> {
    match headers.get(PRIORITY_HEADER).map(|v| v.to_str().unwrap_or("")) {
        None => Ok(Priority::Normal),
        Some(text) => Priority::parse(text)
            .ok_or_else(|| ApiError::invalid(format!("{PRIORITY_HEADER} must be realtime, normal or bulk, not {text:?}"))),
    }
}

fn deadline_ms(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(DEADLINE_HEADER)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid(format!("{DEADLINE_HEADER} must be a number of milliseconds")))
        })
        .transpose()
}

// === impl ApiError ===

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &str, message: String) -> ApiError {
        ApiError {
            status,
            kind,
            code: code.to_owned(),
            message,
            param: None,
            counted: Some(ErrorCode::InvalidRequest),
        }
    }

    fn counted_as(mut self, code: ErrorCode) -> ApiError {
        self.counted = Some(code);
        self
    }

    /// The response, after counting the refusal in the status figures (as the socket counts its error replies).
    fn answer(self, app: &App, received: Instant) -> Response {
        if let Some(code) = self.counted {
            app.handle.state.record_reply(None, received.elapsed(), 0, 0, Some(code));
        }
        self.into_response()
    }

    fn invalid(message: String) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            ErrorCode::InvalidRequest.as_str(),
            message,
        )
    }

    fn param(mut self, param: &'static str) -> ApiError {
        self.param = Some(param);
        self
    }

    /// The HTTP face of the daemon's one error table ([`connection::error_code`]).
    fn from_serve(err: &ServeError) -> ApiError {
        let code = connection::error_code(err);
        let (status, kind) = match code {
            ErrorCode::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            ErrorCode::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout_error"),
            ErrorCode::ShuttingDown | ErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            ErrorCode::Internal | ErrorCode::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
            _ => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        };
        let param = match (code, err) {
            (ErrorCode::InputTooLong | ErrorCode::TooManyInputs, _) => Some("input"),
            (_, ServeError::BadDimensions { .. }) => Some("dimensions"),
            _ => None,
        };
        ApiError {
            status,
            kind,
            code: code.as_str().to_owned(),
            message: err.to_string(),
            param,
            counted: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        if self.status == StatusCode::UNAUTHORIZED {
            return (self.status, [(header::WWW_AUTHENTICATE, "Bearer")], Json(body)).into_response();
        }
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_from_rebound_names() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1:8080",
            "127.1.2.3",
            "[::1]:8080",
            "[::1]",
            "a.localhost:1",
            "localhost.",
        ] {
            assert!(names_loopback(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[::2]:80",
            "127.0.0.1:x",
            "[::1]x",
            "",
            "::1",
        ] {
            assert!(!names_loopback(host), "{host}");
        }
    }

    #[test]
    fn only_bodies_declared_json_are_read() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            declares_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with(" Application/JSON ; charset=utf-8"));
        assert!(with("application/problem+json"));
        assert!(!with("text/plain"));
        assert!(!with("text/plain; charset=application/json"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!with("multipart/form-data; boundary=x"));
        assert!(!with("application/jsonp"));
        assert!(!declares_json(&HeaderMap::new()));
    }

    #[test]
    fn inputs_take_strings_and_refuse_token_ids() {
        assert_eq!(inputs(json!("a")).ok(), Some(vec!["a".to_owned()]));
        assert_eq!(inputs(json!(["a", "b"])).ok(), Some(vec!["a".to_owned(), "b".to_owned()]));
        for bad in [json!([1, 2, 3]), json!([[1, 2], [3]])] {
            let err = inputs(bad).err().unwrap();
            assert!(err.message.contains("token-id") && err.status == StatusCode::BAD_REQUEST);
        }
        assert!(inputs(json!([])).is_err());
        assert!(inputs(json!({"text": "a"})).is_err());
    }

    #[test]
    fn serve_errors_map_to_http_statuses() {
        let status = |err: ServeError| ApiError::from_serve(&err).status;
        assert_eq!(status(ServeError::Overloaded("full".into())), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status(ServeError::ShuttingDown), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            status(ServeError::InputTooLong { index: 0, max_tokens: 8 }),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status(ServeError::Internal("x".into())), StatusCode::INTERNAL_SERVER_ERROR);
        let param = |err: ServeError| ApiError::from_serve(&err).param;
        assert_eq!(param(ServeError::BadDimensions { asked: 999, dim: 384 }), Some("dimensions"));
        assert_eq!(param(ServeError::InputTooLong { index: 0, max_tokens: 8 }), Some("input"));
        assert_eq!(param(ServeError::Overloaded("full".into())), None);
        assert!(constant_time_eq(b"key", b"key") && !constant_time_eq(b"key", b"kez") && !constant_time_eq(b"k", b"key"));
    }
}
