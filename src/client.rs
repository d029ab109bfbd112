//! The async client of protocol v1, used by `akictl`, the integration tests and the benchmarks.
//!
//! [`Client`] offers one call per op (`embed`, `health`, `info`, `status`) and, for pipelining, [`Client::send`]
//! and [`Client::recv`]: send many requests, then read replies in completion order and match them by id.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::protocol::frame::encode_frame;
use crate::protocol::message::{
    unpack_f32, EmbedReply, Embeddings, Encoding, Envelope, InfoReply, RawRequest, RerankReply, StatusBody, StatusReply,
};
pub use crate::protocol::message::{ErrorCode, Priority};
use crate::protocol::{read_frame, FrameError, FrameLimits};

/// Errors a client call can return.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// A reply frame could not be read.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The daemon closed the connection.
    #[error("the daemon closed the connection")]
    Closed,
    /// A reply could not be decoded.
    #[error("cannot decode a reply: {0}")]
    Decode(String),
    /// The daemon answered with an error.
    #[error("{code}: {message}")]
    Server {
        /// The request's id.
        id: u64,
        /// The error code.
        code: ErrorCode,
        /// The daemon's explanation.
        message: String,
    },
}

/// Options of a `rerank` call (every field optional, as on the wire).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RerankParams {
    /// Only the N best.
    pub top_n: Option<u64>,
    /// Logits instead of the model's activation of them.
    pub raw_scores: Option<bool>,
    /// Cut over-long pairs (None: true).
    pub truncate: Option<bool>,
    /// Priority class.
    pub priority: Option<Priority>,
    /// Answer `deadline_exceeded` past this many ms.
    pub deadline_ms: Option<u64>,
    /// The reranker, by name (None: the daemon's first reranker).
    pub model: Option<String>,
    /// false bypasses the cache.
    pub cache: Option<bool>,
}

/// Options of an `embed` call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedParams {
    /// L2-normalize (None: the model's default).
    pub normalize: Option<bool>,
    /// Cut over-long inputs (None: true).
    pub truncate: Option<bool>,
    /// Keep the first N dimensions.
    pub dimensions: Option<u64>,
    /// Priority class (None: normal).
    pub priority: Option<Priority>,
    /// Deadline in ms after receipt.
    pub deadline_ms: Option<u64>,
    /// Ask for "array" encoding instead of packed f32.
    pub array_encoding: bool,
    /// One of the model's prompts, by name (`info.prompts`).
    pub prompt_name: Option<String>,
    /// A literal prompt put before every text (exclusive with `prompt_name`).
    pub prompt: Option<String>,
    /// The model, by name (None: the daemon's default model).
    pub model: Option<String>,
    /// Some(false) bypasses the embedding cache.
    pub cache: Option<bool>,
}

/// The result of `embed`.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// One vector per input.
    pub embeddings: Vec<Vec<f32>>,
    /// The whole reply (model, tokens, truncated, timing).
    pub reply: EmbedReply,
}

/// One reply read by [`Client::recv`]: its id and its raw body.
#[derive(Debug, Clone)]
pub struct RawReply {
    /// The request's id.
    pub id: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// The MessagePack body.
    pub body: Vec<u8>,
}

/// A connection to akidbd.
pub struct Client {
    writer: RequestWriter,
    reader: ReplyReader,
}

/// The sending half of a connection (see [`Client::split`]).
pub struct RequestWriter {
    writer: OwnedWriteHalf,
    next_id: u64,
}

/// The receiving half of a connection (see [`Client::split`]).
pub struct ReplyReader {
    reader: BufReader<OwnedReadHalf>,
    limits: FrameLimits,
}

// === impl Client ===

impl Client {
    /// Connects to the daemon's socket.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).await.map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let (reader, writer) = stream.into_split();
        Ok(Client {
            writer: RequestWriter { writer, next_id: 1 },
            reader: ReplyReader {
                reader: BufReader::new(reader),
                limits: FrameLimits {
                    max_frame_bytes: u32::MAX,
                    read_timeout: Duration::from_secs(600),
                    idle_timeout: None,
                },
            },
        })
    }

    /// Splits the connection so that one task can send while another reads replies.
    pub fn split(self) -> (RequestWriter, ReplyReader) {
        (self.writer, self.reader)
    }

    /// Sends a request without waiting for its reply; fills in and returns its id if it has none.
    pub async fn send(&mut self, request: RawRequest) -> Result<u64, ClientError> {
        self.writer.send(request).await
    }

    /// Sends an arbitrary body as one frame (tests use it to send malformed requests).
    pub async fn send_raw(&mut self, body: &[u8]) -> Result<(), ClientError> {
        self.writer.send_raw(body).await
    }

    /// Sends bytes as they are, with no framing (tests use it to send broken frames).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.writer.writer.write_all(bytes).await?;
        Ok(())
    }

    /// Reads the next reply, whichever request it answers.
    pub async fn recv(&mut self) -> Result<RawReply, ClientError> {
        self.reader.recv().await
    }

    /// Sends one request and waits for its reply (replies to other requests in flight are an error here).
    async fn call(&mut self, request: RawRequest) -> Result<Vec<u8>, ClientError> {
        let id = self.send(request).await?;
        let reply = self.recv().await?;
        // Connection-level errors (permission_denied, frame_too_large) come with id 0.
        if (reply.ok || reply.id != 0) && reply.id != id {
            return Err(ClientError::Decode(format!("expected the reply to request {id}, got {}", reply.id)));
        }
        check(reply)
    }

    /// Embeds texts.
    pub async fn embed<S: AsRef<str>>(&mut self, texts: &[S], params: &EmbedParams) -> Result<Embedded, ClientError> {
        let body = self.call(embed_request(texts, params)).await?;
        decode_embed(&body)
    }

    /// Scores `documents` against `query` with a reranker (a cross-encoder); results best first.
    pub async fn rerank<S: AsRef<str>>(&mut self, query: &str, documents: &[S], params: &RerankParams) -> Result<RerankReply, ClientError> {
        decode(&self.call(rerank_request(query, documents, params)).await?)
    }

    /// `health`: "starting", "ready", "degraded" or "stopping".
    pub async fn health(&mut self) -> Result<String, ClientError> {
        let body = self.call(op("health")).await?;
        let reply: crate::protocol::message::HealthReply = decode(&body)?;
        Ok(reply.status)
    }

    /// `info`: model and limits.
    pub async fn info(&mut self) -> Result<InfoReply, ClientError> {
        decode(&self.call(op("info")).await?)
    }

    /// `status`: the operator's view.
    pub async fn status(&mut self) -> Result<StatusBody, ClientError> {
        let reply: StatusReply = decode(&self.call(op("status")).await?)?;
        Ok(reply.body)
    }
}

// === impl RequestWriter ===

impl RequestWriter {
    /// Sends a request without waiting for its reply; fills in and returns its id if it has none.
    pub async fn send(&mut self, mut request: RawRequest) -> Result<u64, ClientError> {
        let id = *request.id.get_or_insert_with(|| {
            let id = self.next_id;
            self.next_id += 1;
            id
        });
        let body = rmp_serde::to_vec_named(&request).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.send_raw(&body).await?;
        Ok(id)
    }

    /// Sends an arbitrary body as one frame.
    pub async fn send_raw(&mut self, body: &[u8]) -> Result<(), ClientError> {
        self.writer.write_all(&encode_frame(body)).await?;
        Ok(())
    }
}

// === impl ReplyReader ===

impl ReplyReader {
    /// Reads the next reply, whichever request it answers. Not cancel-safe: a reply half read is lost if the
    /// future is dropped, so read from a task of its own rather than inside `select!`.
    pub async fn recv(&mut self) -> Result<RawReply, ClientError> {
        let body = read_frame(&mut self.reader, &self.limits).await?.ok_or(ClientError::Closed)?;
        let envelope: Envelope = rmp_serde::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(RawReply {
            id: envelope.id,
            ok: envelope.ok,
            body,
        })
    }
}

/// An `embed` request for `texts` with `params`.
pub fn embed_request<S: AsRef<str>>(texts: &[S], params: &EmbedParams) -> RawRequest {
    RawRequest {
        op: Some("embed".into()),
        inputs: Some(texts.iter().map(|t| t.as_ref().to_owned()).collect()),
        normalize: params.normalize,
        truncate: params.truncate,
        dimensions: params.dimensions,
        priority: params.priority,
        deadline_ms: params.deadline_ms,
        encoding: params.array_encoding.then_some(Encoding::Array),
        prompt_name: params.prompt_name.clone(),
        prompt: params.prompt.clone(),
        model: params.model.clone(),
        cache: params.cache,
        ..RawRequest::default()
    }
}

/// A `rerank` request for `documents` against `query` with `params`.
pub fn rerank_request<S: AsRef<str>>(query: &str, documents: &[S], params: &RerankParams) -> RawRequest {
    RawRequest {
        op: Some("rerank".into()),
        query: Some(query.to_owned()),
        documents: Some(documents.iter().map(|t| t.as_ref().to_owned()).collect()),
        top_n: params.top_n,
        raw_scores: params.raw_scores,
        truncate: params.truncate,
        priority: params.priority,
        deadline_ms: params.deadline_ms,
        model: params.model.clone(),
        cache: params.cache,
        ..RawRequest::default()
    }
}

fn op(name: &str) -> RawRequest {
    RawRequest {
        op: Some(name.into()),
        ..RawRequest::default()
    }
}

/// Turns an error reply into [`ClientError::Server`].
pub fn check(reply: RawReply) -> Result<Vec<u8>, ClientError> {
    if reply.ok {
        return Ok(reply.body);
    }
    let envelope: Envelope = decode(&reply.body)?;
    let error = envelope
        .error
        .ok_or_else(|| ClientError::Decode("error reply without error".into()))?;
    Err(ClientError::Server {
        id: reply.id,
        code: error.code,
        message: error.message,
    })
}

/// Decodes an `embed` reply body, unpacking the vectors.
pub fn decode_embed(body: &[u8]) -> Result<Embedded, ClientError> {
    let reply: EmbedReply = decode(body)?;
    let embeddings = match &reply.embeddings {
        Embeddings::Array(vectors) => vectors.clone(),
        Embeddings::F32(bytes) => unpack_f32(bytes, reply.dim as usize)
            .ok_or_else(|| ClientError::Decode(format!("{} bytes is not a whole number of {}-dim vectors", bytes.len(), reply.dim)))?,
    };
    if embeddings.len() as u64 != reply.count {
        return Err(ClientError::Decode(format!(
            "count {} but {} vectors",
            reply.count,
            embeddings.len()
        )));
    }
    Ok(Embedded { embeddings, reply })
}

/// Decodes any reply body.
pub fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    rmp_serde::from_slice(body).map_err(|e| ClientError::Decode(e.to_string()))
}
