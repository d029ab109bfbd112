//! One client connection: frames in, requests to the actors, replies out in completion order.
//!
//! A reader loop decodes frames and starts one task per request; a writer task writes replies as they complete.
//! Every request holds a reserved slot of the reply channel (at most `max_pending_replies`), so a client that sends
//! but never reads stops being read from instead of making the daemon buffer without bound. A bad body gets an
//! `invalid_request` reply and the connection goes on; only framing errors close it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::tokio::Stream;
use tokio::io::{AsyncWriteExt, ReadHalf};
use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{rerank, ConnectionPolicy};
use crate::actors::{DaemonHandle, EmbedDone, EmbedJob, Phase, ServeError};
use crate::engine::EmbedOptions;
use crate::protocol::frame::append_frame;
use crate::protocol::message::{
    decode_request, encode, pack_f32, EmbedReply, EmbedRequest, Embeddings, Encoding, ErrorReply, HealthReply, InfoReply, ModelDescription,
    Op, Request, StatusReply, Timing,
};
use crate::protocol::{read_frame, ErrorCode, FrameError, Priority, PROTOCOL_VERSION};

/// How long the writer may take to hand one reply to a client that reads slowly before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one connection until the client closes it, a framing error occurs, `close` is cancelled, or the daemon
/// is stopping (`stopping`) and the connection has no request in flight.
pub(crate) async fn run(
    stream: Stream,
    handle: DaemonHandle,
    policy: Arc<ConnectionPolicy>,
    close: CancellationToken,
    stopping: CancellationToken,
) {
    let (mut reader, writer) = tokio::io::split(stream);
    let (replies, receiver) = mpsc::channel::<Vec<u8>>(policy.max_pending_replies);
    // Cancelled when a reply cannot be written (the peer is gone): its other requests are dropped, so that their
    // inputs are not computed for no one. (The end of reading is no such sign: a client may half-close and read.)
    let gone = CancellationToken::new();
    let writer_task = tokio::spawn(write_replies(writer, receiver, gone.clone()));
    let connection = Connection {
        handle,
        policy,
        gone,
        requests: TaskTracker::new(),
    };
    while let Some((body, permit)) = connection.next_frame(&mut reader, &replies, &close, &stopping).await {
        connection.take(&body, permit);
    }
    connection.requests.close();
    tokio::select! {
        _ = connection.requests.wait() => {}
        _ = close.cancelled() => {}
    }
    drop(replies);
    let _ = writer_task.await;
}

/// What the reading side of one connection shares with the tasks of its requests.
struct Connection {
    handle: DaemonHandle,
    policy: Arc<ConnectionPolicy>,
    /// Cancelled when the peer is gone (a reply could not be written).
    gone: CancellationToken,
    /// The requests in flight, one task each.
    requests: TaskTracker,
}

impl Connection {
    /// The next frame's body with the reply slot reserved for it, or None when the connection is done (closed by
    /// either side, a framing error, or the daemon stopping while the connection is idle). A frame over the limit
    /// is answered `frame_too_large` before the connection closes.
    async fn next_frame(
        &self,
        reader: &mut ReadHalf<Stream>,
        replies: &mpsc::Sender<Vec<u8>>,
        close: &CancellationToken,
        stopping: &CancellationToken,
    ) -> Option<(Vec<u8>, OwnedPermit<Vec<u8>>)> {
        // Reserve the reply's slot before reading the request: this is the bound on unsent replies.
        let permit = tokio::select! {
            _ = close.cancelled() => return None,
            permit = replies.clone().reserve_owned() => permit.ok()?,
        };
        let frame = tokio::select! {
            // A frame already there is read first (and refused `shutting_down` while stopping).
            biased;
            _ = close.cancelled() => return None,
            frame = read_frame(reader, &self.policy.limits) => frame,
            () = idle_while_stopping(stopping, &self.requests) => return None,
        };
        match frame {
            Ok(Some(body)) => Some((body, permit)),
            Ok(None) => None,
            Err(FrameError::TooLarge { len, max }) => {
                let reply = ErrorReply::new(
                    0,
                    ErrorCode::FrameTooLarge,
                    format!("frame of {len} bytes is over max_frame_bytes {max}"),
                );
                self.handle
                    .state
                    .record_reply(None, Duration::ZERO, 0, 0, Some(ErrorCode::FrameTooLarge));
                permit.send(encode(&reply));
                None
            }
            Err(err) => {
                tracing::debug!(error = %err, "closing connection");
                None
            }
        }
    }

    /// Decodes one request and answers it: at once when it is malformed or refused (stopping, overload), else in
    /// a task of its own, so that the next frame is read meanwhile.
    fn take(&self, body: &[u8], permit: OwnedPermit<Vec<u8>>) {
        let received = Instant::now();
        let handle = &self.handle;
        let request = match decode_request(body, self.policy.max_inputs) {
            Ok(request) => request,
            Err(err) => {
                handle.state.record_reply(None, received.elapsed(), 0, 0, Some(err.code));
                permit.send(encode(&err.reply()));
                return;
            }
        };
        let refused = match &request.op {
            Op::Embed(embed) => refusal(handle, embed, received),
            Op::Rerank(rerank) => rerank::refusal(handle, rerank, received),
            _ => None,
        };
        if let Some(err) = refused {
            // Answered here, without a task: while stopping, and under overload for most requests.
            let code = error_code(&err);
            permit.send(encode(&ErrorReply::new(request.id, code, err.to_string())));
            return;
        }
        let (handle, policy, gone) = (handle.clone(), self.policy.clone(), self.gone.clone());
        handle.state.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.spawn(async move {
            tokio::select! {
                reply = answer(&handle, &policy, request, received) => {
                    permit.send(reply);
                }
                // Dropping `answer` drops the request's reply receiver: its queued inputs are skipped.
                _ = gone.cancelled() => {}
            }
            handle.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Resolves once the daemon is stopping and this connection has no request in flight, so that a client that
/// keeps an idle connection open does not hold the stop until the grace period ends (it sees the connection
/// close). A connection with requests in flight stays open until they are answered; what it sends meanwhile is
/// refused `shutting_down`.
async fn idle_while_stopping(stopping: &CancellationToken, requests: &TaskTracker) {
    stopping.cancelled().await;
    while !requests.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes replies as they complete; replies that are ready together go out in one write.
async fn write_replies(mut writer: tokio::io::WriteHalf<Stream>, mut receiver: mpsc::Receiver<Vec<u8>>, gone: CancellationToken) {
    /// Stop gathering once this much is ready to write.
    const GATHER_BYTES: usize = 256 * 1024;
    let mut out = Vec::new();
    while let Some(body) = receiver.recv().await {
        out.clear();
        append_frame(&mut out, &body);
        while out.len() < GATHER_BYTES {
            match receiver.try_recv() {
                Ok(body) => append_frame(&mut out, &body),
                Err(_) => break,
            }
        }
        match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&out)).await {
            Ok(Ok(())) => {}
            _ => {
                gone.cancel();
                return;
            }
        }
        if out.capacity() > 4 * GATHER_BYTES {
            out = Vec::new();
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

/// Serves one decoded request and encodes its reply.
async fn answer(handle: &DaemonHandle, policy: &ConnectionPolicy, request: Request, received: Instant) -> Vec<u8> {
    let state = &handle.state;
    let id = request.id;
    match request.op {
        Op::Health => {
            state.record_reply(None, received.elapsed(), 0, 0, None);
            encode(&HealthReply {
                v: PROTOCOL_VERSION,
                id,
                ok: true,
                status: state.health().to_owned(),
            })
        }
        Op::Info => {
            state.record_reply(None, received.elapsed(), 0, 0, None);
            encode(&info(handle, policy, id))
        }
        Op::Status => {
            state.record_reply(None, received.elapsed(), 0, 0, None);
            encode(&StatusReply {
                v: PROTOCOL_VERSION,
                id,
                ok: true,
                body: state.status(),
            })
        }
        Op::Embed(embed) => {
            let encoding = embed.encoding;
            match serve_embed(handle, embed, received).await {
                Ok(done) => encode(&embed_reply(handle, id, done, encoding, received.elapsed())),
                Err(err) => encode(&ErrorReply::new(id, error_code(&err), err.to_string())),
            }
        }
        Op::Rerank(rerank) => match rerank::serve_rerank(handle, rerank, received).await {
            Ok(done) => encode(&rerank::rerank_reply(handle, id, done, received.elapsed())),
            Err(err) => encode(&ErrorReply::new(id, error_code(&err), err.to_string())),
        },
    }
}

/// Serves one embed request through the actors, as every transport does, and records its outcome in the status
/// figures. The caller has already checked [`refusal`].
pub(crate) async fn serve_embed(handle: &DaemonHandle, embed: EmbedRequest, received: Instant) -> Result<EmbedDone, ServeError> {
    let (priority, n_inputs) = (embed.priority, embed.inputs.len());
    let outcome = handle.embed(job(embed, received)).await;
    let served = outcome.as_ref().map(|done| (done.model, done.tokens));
    record_outcome(handle, priority, n_inputs, received, served);
    outcome
}

/// Records a request that reached the actors in the status figures: by the model that served it and its tokens,
/// or by its error code.
pub(crate) fn record_outcome(
    handle: &DaemonHandle,
    priority: Priority,
    n_inputs: usize,
    received: Instant,
    served: Result<(usize, usize), &ServeError>,
) {
    let latency = received.elapsed();
    match served {
        Ok((model, tokens)) => handle.state.record_reply(Some((priority, model)), latency, n_inputs, tokens, None),
        Err(err) => handle
            .state
            .record_reply(Some((priority, 0)), latency, n_inputs, 0, Some(error_code(err))),
    }
}

/// An embed request the daemon refuses before doing any work on it: read while the daemon is stopping
/// (`shutting_down`), or refused by [`DaemonHandle::refusal`]. A refusal is recorded in the status figures here,
/// for every transport.
pub(crate) fn refusal(handle: &DaemonHandle, embed: &EmbedRequest, received: Instant) -> Option<ServeError> {
    refusal_of(handle, embed.priority, deadline(embed, received), received)
}

/// [`refusal`] for any request of this class and deadline (embed and rerank alike).
pub(crate) fn refusal_of(handle: &DaemonHandle, priority: Priority, deadline: Option<Instant>, received: Instant) -> Option<ServeError> {
    let err = if handle.state.phase() == Phase::Stopping {
        ServeError::ShuttingDown
    } else {
        handle.refusal(priority, deadline)?
    };
    handle
        .state
        .record_reply(Some((priority, 0)), received.elapsed(), 0, 0, Some(error_code(&err)));
    Some(err)
}

/// A request's deadline, counted from receipt.
fn deadline(embed: &EmbedRequest, received: Instant) -> Option<Instant> {
    embed.deadline_ms.map(|ms| received + Duration::from_millis(ms))
}

fn job(embed: EmbedRequest, received: Instant) -> EmbedJob {
    EmbedJob {
        options: EmbedOptions {
            truncate: embed.truncate,
            normalize: embed.normalize,
            dimensions: embed.dimensions,
        },
        priority: embed.priority,
        deadline: deadline(&embed, received),
        received,
        inputs: embed.inputs,
        prompt_name: embed.prompt_name,
        prompt: embed.prompt,
        model: embed.model,
        query: None,
        use_cache: embed.cache,
    }
}

fn embed_reply(handle: &DaemonHandle, id: u64, done: EmbedDone, encoding: Encoding, latency: Duration) -> EmbedReply {
    let dim = done.embeddings.first().map_or(0, Vec::len) as u64;
    let count = done.embeddings.len() as u64;
    let embeddings = match encoding {
        Encoding::F32 => Embeddings::F32(serde_bytes::ByteBuf::from(pack_f32(&done.embeddings))),
        Encoding::Array => Embeddings::Array(done.embeddings),
    };
    EmbedReply {
        v: PROTOCOL_VERSION,
        id,
        ok: true,
        model: handle.state.models[done.model].name.clone(),
        dim,
        count,
        embeddings,
        tokens: done.tokens as u64,
        truncated: done.truncated.into_iter().map(|i| i as u64).collect(),
        timing_us: Timing {
            queue: done.queue_us,
            inference: done.inference_us,
            total: latency.as_micros() as u64,
        },
    }
}

fn info(handle: &DaemonHandle, policy: &ConnectionPolicy, id: u64) -> InfoReply {
    let models = &handle.state.models;
    let model = &models[0];
    InfoReply {
        v: PROTOCOL_VERSION,
        id,
        ok: true,
        model: model.name.clone(),
        dim: model.dim as u64,
        max_tokens: model.max_tokens as u64,
        pooling: model.pooling.as_str().to_owned(),
        normalize: model.normalize,
        max_inputs: policy.max_inputs as u64,
        max_frame_bytes: u64::from(policy.limits.max_frame_bytes),
        max_batch_tokens: policy.max_batch_tokens as u64,
        protocol: PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        prompts: model.prompts.clone(),
        default_prompt_name: model.default_prompt_name.clone(),
        models: models
            .iter()
            .map(|model| ModelDescription {
                name: model.name.clone(),
                task: if model.is_reranker() { "rerank" } else { "embed" }.to_owned(),
                dim: model.dim as u64,
                max_tokens: model.max_tokens as u64,
                pooling: model.pooling.as_str().to_owned(),
                normalize: model.normalize,
                prompts: model.prompts.clone(),
                default_prompt_name: model.default_prompt_name.clone(),
            })
            .collect(),
    }
}

/// The one place where the daemon's internal errors become wire error codes.
pub(crate) fn error_code(err: &ServeError) -> ErrorCode {
    match err {
        ServeError::Overloaded(_) => ErrorCode::Overloaded,
        ServeError::DeadlineExceeded => ErrorCode::DeadlineExceeded,
        ServeError::ShuttingDown => ErrorCode::ShuttingDown,
        ServeError::Unavailable(_) => ErrorCode::Unavailable,
        ServeError::InputTooLong { .. } => ErrorCode::InputTooLong,
        ServeError::QueueTooSmall { .. } => ErrorCode::TooManyInputs,
        ServeError::BadDimensions { .. } | ServeError::BadPrompt(_) | ServeError::WrongTask(_) => ErrorCode::InvalidRequest,
        ServeError::UnknownModel(_) => ErrorCode::UnknownModel,
        ServeError::Internal(_) => ErrorCode::Internal,
    }
}
