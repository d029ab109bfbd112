//! The actors: a supervisor that owns one inference actor per device and a batcher that feeds them.
//!
//! Several models may be served: each device holds one session per model assigned to it, and the one batcher
//! schedules every model's work across the devices that hold it (class first, then fair shares of device time
//! between models; see `queue`).
//!
//! [`DaemonHandle`] is the door the server uses: it answers what the cache has, tokenizes the rest with the
//! requested model's tokenizer, hands its inputs to the batcher and waits
//! for the one reply. Each input travels as an [`Item`] that holds a share of its request; whatever happens to the
//! item (computed, expired, dropped in a panicking actor), the request is answered exactly once, because the reply
//! sender sits in the request and an item that is dropped unanswered fails its request (see `Item`'s `Drop`).
//!
//! Architecture invariant: actors never see bytes or sockets; they take and give plain Rust values.

mod batcher;
mod inference;
mod monitor;
pub(crate) mod queue;
pub(crate) mod state;
mod supervisor;

use std::sync::Arc;
use std::sync::Mutex;

use kameo::actor::ActorRef;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::cache::{CacheKey, Cached, EmbedCache};
use crate::engine::{check_dimensions, finish_vector, EmbedOptions, Encoded, EngineError, ModelInfo, SharedTokenizer, TextTokenizer};
use crate::protocol::Priority;
pub(crate) use state::{DaemonState, Phase};
pub(crate) use supervisor::{start, Heartbeats, Started, SupervisorArgs};

use batcher::{Batcher, Submit};
use state::lock;

/// An embed request as the actors see it.
#[derive(Debug, Clone)]
pub(crate) struct EmbedJob {
    pub inputs: Vec<String>,
    /// The request's `prompt_name` and literal `prompt` (resolved against the model when served).
    pub prompt_name: Option<String>,
    pub prompt: Option<String>,
    /// The model asked for by name (None: the default model).
    pub model: Option<String>,
    /// A rerank request's query: each input is then a document scored against it by a cross-encoder, and each
    /// "embedding" is the pair's logit.
    pub query: Option<String>,
    /// Whether the embedding cache may answer and store this request.
    pub use_cache: bool,
    pub options: EmbedOptions,
    pub priority: Priority,
    pub deadline: Option<Instant>,
    pub received: Instant,
}

/// One served model: what it is and its tokenizer.
#[derive(Debug, Clone)]
pub(crate) struct ServedModel {
    pub info: Arc<ModelInfo>,
    pub tokenizer: SharedTokenizer,
}

/// A served embed request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EmbedDone {
    /// The model that served it (its index).
    pub model: usize,
    pub embeddings: Vec<Vec<f32>>,
    pub tokens: usize,
    pub truncated: Vec<usize>,
    pub queue_us: u64,
    pub inference_us: u64,
}

/// Why a request was not served. Mapped to wire error codes in one place (`server::connection`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("{0}")]
    Overloaded(String),
    #[error("the deadline passed before the request was served")]
    DeadlineExceeded,
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Unavailable(String),
    #[error("input {index} has more than {max_tokens} tokens and truncate is false")]
    InputTooLong { index: usize, max_tokens: usize },
    #[error("dimensions {asked} is not in 1..={dim}")]
    BadDimensions { asked: usize, dim: usize },
    /// More inputs to compute than the class's queue ever holds: no retry would fit (not `Overloaded`).
    #[error(
        "{inputs} inputs to compute, more than the {class} queue ever holds ({capacity}, \
         batcher.queue_capacity.{class}): send fewer per request"
    )]
    QueueTooSmall {
        inputs: usize,
        capacity: usize,
        class: &'static str,
    },
    #[error("{0}")]
    BadPrompt(String),
    #[error("{0}")]
    UnknownModel(String),
    /// An embed request to a reranker, or a rerank request to an embedding model.
    #[error("{0}")]
    WrongTask(String),
    #[error("{0}")]
    Internal(String),
}

type Reply = Result<EmbedDone, ServeError>;

/// One request in flight: the reply sender and the results gathered so far.
#[derive(Debug)]
pub(crate) struct Pending {
    deadline: Option<Instant>,
    received: Instant,
    options: EmbedOptions,
    model: Arc<ModelInfo>,
    /// The model's index.
    model_index: usize,
    /// Where computed vectors are stored, with the key of each input that missed (None: not to be stored).
    cache: Option<(Arc<EmbedCache>, Vec<Option<CacheKey>>)>,
    inner: Mutex<PendingInner>,
}

#[derive(Debug)]
struct PendingInner {
    reply: Option<oneshot::Sender<Reply>>,
    results: Vec<Option<Vec<f32>>>,
    /// Tokens and whether it was cut, per input (for the cache).
    inputs: Vec<(usize, bool)>,
    remaining: usize,
    tokens: usize,
    truncated: Vec<usize>,
    first_start: Option<Instant>,
    inference_us: u64,
    /// Start times of the batches already counted in `inference_us` (a batch holding several of the request's
    /// inputs counts once).
    batches_counted: Vec<Instant>,
}

/// One input of a request, queued in the batcher and run by an inference actor.
#[derive(Debug)]
pub(crate) struct Item {
    pending: Arc<Pending>,
    index: usize,
    encoded: Encoded,
    answered: bool,
    #[cfg(feature = "fault-injection")]
    fault: Option<Fault>,
}

/// Test-only faults, triggered by magic input texts (compiled only with the `fault-injection` feature).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The inference actor panics in the middle of the batch.
    Panic,
    /// The inference actor's run takes this long.
    Hang(std::time::Duration),
}

/// What the server holds to reach the actors.
#[derive(Clone)]
pub(crate) struct DaemonHandle {
    pub state: Arc<DaemonState>,
    /// The served models, the default first.
    models: Arc<[ServedModel]>,
    batcher: ActorRef<Batcher>,
}

/// Inputs bigger than this (bytes in total) are tokenized on the blocking pool rather than on the connection's task.
const INLINE_TOKENIZE_BYTES: usize = 16 * 1024;

// === impl DaemonHandle ===

impl DaemonHandle {
    /// Serves one embed request; always returns exactly one outcome.
    ///
    /// A request the server read before the daemon began stopping is served even if the stop begins meanwhile; the
    /// server answers requests read after that `shutting_down` itself.
    pub async fn embed(&self, job: EmbedJob) -> Reply {
        if let Some(err) = self.refusal(job.priority, job.deadline) {
            return Err(err);
        }
        let index = self.state.model_index(job.model.as_deref()).map_err(ServeError::UnknownModel)?;
        let served = &self.models[index];
        let model = &served.info;
        check_task(&job, model)?;
        check_dimensions(&job.options, model).map_err(engine_to_serve)?;
        // A rerank request's query stands where a prompt does: in the cache key and before each document.
        let prompt = match &job.query {
            Some(query) => Some(query.as_str()),
            None => model
                .resolve_prompt(job.prompt_name.as_deref(), job.prompt.as_deref())
                .map_err(engine_to_serve)?,
        };
        // The cache answers what it has; only the inputs it misses are tokenized and queued.
        let cache = &self.state.cache;
        let keys: Vec<Option<CacheKey>> = job
            .inputs
            .iter()
            .map(|text| (job.use_cache && cache.enabled()).then(|| EmbedCache::key(&model.name, prompt, job.options.truncate, text)))
            .collect();
        let hits: Vec<Option<Arc<Cached>>> = keys.iter().map(|key| key.as_ref().and_then(|key| cache.get(index, key))).collect();
        let misses: Vec<usize> = (0..job.inputs.len()).filter(|&i| hits[i].is_none()).collect();
        if misses.is_empty() {
            return Ok(answer_from_cache(&job, index, model, &hits));
        }
        let texts: Vec<String> = misses.iter().map(|&i| job.inputs[i].clone()).collect();
        let encoded = tokenize(&served.tokenizer, texts, prompt, job.options.truncate, job.query.is_some())
            .await
            .map_err(|err| match err {
                // Name the input by its index in the request, not among the misses.
                ServeError::InputTooLong { index, max_tokens } => ServeError::InputTooLong {
                    index: misses[index],
                    max_tokens,
                },
                other => other,
            })?;
        let (sender, receiver) = oneshot::channel();
        let items = self.items(&job, index, &misses, encoded, &hits, keys, sender);
        self.submit(job.priority, items)?;
        let outcome = match job.deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, receiver).await {
                Ok(outcome) => outcome,
                Err(_) => return Err(ServeError::DeadlineExceeded),
            },
            None => receiver.await,
        };
        outcome.unwrap_or_else(|_| Err(ServeError::Internal("the request was lost inside the daemon".into())))
    }

    /// Hands a request's items to the batcher, or says why it cannot take them.
    fn submit(&self, class: Priority, items: Vec<Item>) -> Result<(), ServeError> {
        let n_items = items.len();
        self.batcher.tell(Submit { class, items }).try_send().map_err(|err| match err {
            // The message (and with it every item) is dropped here; the items' Drop would answer `internal`, so the
            // reply is taken by the specific error first.
            kameo::error::SendError::MailboxFull(_) => {
                ServeError::Overloaded(format!("the batcher's mailbox is full ({n_items} inputs refused)"))
            }
            _ => ServeError::Unavailable("the batcher is not running".into()),
        })
    }

    /// Why an embed request of this class and deadline would be refused before any work is done on it: the
    /// daemon is still starting, or (under overload) the work queued ahead already reaches past its deadline.
    /// Cheap, so that the server can answer such requests without starting a task for them.
    pub fn refusal(&self, priority: Priority, deadline: Option<Instant>) -> Option<ServeError> {
        if self.state.phase() == Phase::Starting {
            return Some(ServeError::Unavailable("the daemon is starting (warming up its devices)".into()));
        }
        let backlog_us = self.state.backlog_us[priority.index()].load(std::sync::atomic::Ordering::Relaxed);
        let late =
            deadline.is_some_and(|deadline| backlog_us > 0 && Instant::now() + std::time::Duration::from_micros(backlog_us) >= deadline);
        late.then_some(ServeError::DeadlineExceeded)
    }

    /// The items of the inputs that missed the cache (`misses`: their indices in the request, in order), with the
    /// cache's answers for the others already in place.
    #[allow(clippy::too_many_arguments)]
    fn items(
        &self,
        job: &EmbedJob,
        index: usize,
        misses: &[usize],
        encoded: Vec<Encoded>,
        hits: &[Option<Arc<Cached>>],
        keys: Vec<Option<CacheKey>>,
        sender: oneshot::Sender<Reply>,
    ) -> Vec<Item> {
        let model = &self.models[index].info;
        let n = job.inputs.len();
        let mut results = vec![None; n];
        let mut inputs = vec![(0, false); n];
        for (i, hit) in hits.iter().enumerate() {
            if let Some(hit) = hit {
                results[i] = Some(finish_vector(hit.vector.to_vec(), &job.options, model));
                inputs[i] = (hit.tokens, hit.truncated);
            }
        }
        for (&i, encoded) in misses.iter().zip(&encoded) {
            inputs[i] = (encoded.ids.len(), encoded.truncated);
        }
        let store = keys.iter().any(Option::is_some).then(|| (self.state.cache.clone(), keys));
        let pending = Arc::new(Pending {
            deadline: job.deadline,
            received: job.received,
            options: job.options,
            model: model.clone(),
            model_index: index,
            cache: store,
            inner: Mutex::new(PendingInner {
                reply: Some(sender),
                results,
                remaining: misses.len(),
                tokens: inputs.iter().map(|(tokens, _)| tokens).sum(),
                truncated: inputs.iter().enumerate().filter(|(_, (_, cut))| *cut).map(|(i, _)| i).collect(),
                inputs,
                first_start: None,
                inference_us: 0,
                batches_counted: Vec::new(),
            }),
        });
        misses
            .iter()
            .zip(encoded)
            .map(|(&i, encoded)| Item {
                pending: pending.clone(),
                index: i,
                encoded,
                answered: false,
                #[cfg(feature = "fault-injection")]
                fault: Fault::parse(&job.inputs[i]),
            })
            .collect()
    }
}

/// A request every input of which was in the cache: answered here, without the batcher.
fn answer_from_cache(job: &EmbedJob, index: usize, model: &ModelInfo, hits: &[Option<Arc<Cached>>]) -> EmbedDone {
    let cached: Vec<&Cached> = hits.iter().flatten().map(Arc::as_ref).collect();
    EmbedDone {
        model: index,
        embeddings: cached
            .iter()
            .map(|c| finish_vector(c.vector.to_vec(), &job.options, model))
            .collect(),
        tokens: cached.iter().map(|c| c.tokens).sum(),
        truncated: cached.iter().enumerate().filter(|(_, c)| c.truncated).map(|(i, _)| i).collect(),
        queue_us: 0,
        inference_us: 0,
    }
}

/// Tokenizes a request's inputs with its model's tokenizer: inline when small, on the blocking pool otherwise.
/// With `pairs`, `prompt` is a rerank query and each text a document paired with it.
async fn tokenize(
    tokenizer: &SharedTokenizer,
    texts: Vec<String>,
    prompt: Option<&str>,
    truncate: bool,
    pairs: bool,
) -> Result<Vec<Encoded>, ServeError> {
    let total_bytes: usize = texts.iter().map(String::len).sum::<usize>() + prompt.map_or(0, str::len) * texts.len();
    let encode = move |tokenizer: &TextTokenizer, texts: &[String], prompt: Option<&str>| match (pairs, prompt) {
        (true, Some(query)) => tokenizer.encode_pairs(query, texts, truncate),
        _ => tokenizer.encode_all(texts, prompt, truncate),
    };
    let result = if total_bytes <= INLINE_TOKENIZE_BYTES {
        encode(tokenizer, &texts, prompt)
    } else {
        let tokenizer = tokenizer.clone();
        let prompt = prompt.map(str::to_owned);
        tokio::task::spawn_blocking(move || encode(&tokenizer, &texts, prompt.as_deref()))
            .await
            .map_err(|e| ServeError::Internal(format!("tokenizer task failed: {e}")))?
    };
    result.map_err(engine_to_serve)
}

/// A rerank request needs a cross-encoder, an embed request an embedding model; a rerank request has no prompt.
fn check_task(job: &EmbedJob, model: &ModelInfo) -> Result<(), ServeError> {
    match (job.query.is_some(), model.is_reranker()) {
        (true, false) => Err(ServeError::WrongTask(format!(
            "model {:?} is an embedding model, not a reranker: send it `embed` requests",
            model.name
        ))),
        (false, true) => Err(ServeError::WrongTask(format!(
            "model {:?} is a reranker (a cross-encoder): send it `rerank` requests",
            model.name
        ))),
        (true, true) if job.prompt.is_some() || job.prompt_name.is_some() || job.options.dimensions.is_some() => Err(
            ServeError::WrongTask("a rerank request takes no prompt, prompt_name or dimensions".into()),
        ),
        _ => Ok(()),
    }
}

fn engine_to_serve(err: EngineError) -> ServeError {
    match err {
        EngineError::InputTooLong { index, max_tokens } => ServeError::InputTooLong { index, max_tokens },
        EngineError::BadDimensions { asked, dim } => ServeError::BadDimensions { asked, dim },
        EngineError::BadPrompt(message) => ServeError::BadPrompt(message),
        other => ServeError::Internal(other.to_string()),
    }
}

// === impl Pending ===

impl Pending {
    /// Answers the request with an error, unless it was answered already.
    fn fail(&self, error: ServeError) {
        if let Some(reply) = lock(&self.inner).reply.take() {
            let _ = reply.send(Err(error));
        }
    }

    /// Whether computing more of this request is still useful: someone waits for it and its deadline (if any)
    /// falls after `horizon`, when the work would be done.
    fn is_live(&self, horizon: Instant) -> bool {
        let inner = lock(&self.inner);
        let waiting = inner.reply.as_ref().is_some_and(|reply| !reply.is_closed());
        waiting && self.deadline.is_none_or(|deadline| horizon < deadline)
    }

    /// Stores one input's vector; the last one sends the reply. Returns whether someone still waits for it.
    fn complete(&self, index: usize, vector: Vec<f32>, batch_start: Instant, batch_us: u64) -> bool {
        let mut inner = lock(&self.inner);
        if inner.reply.as_ref().is_none_or(oneshot::Sender::is_closed) {
            return false;
        }
        if inner.results[index].is_none() {
            if let Some((cache, keys)) = &self.cache {
                if let Some(key) = keys[index] {
                    let (tokens, truncated) = inner.inputs[index];
                    cache.insert(
                        key,
                        Cached {
                            model: self.model_index,
                            vector: vector.clone().into_boxed_slice(),
                            tokens,
                            truncated,
                        },
                    );
                }
            }
            inner.results[index] = Some(finish_vector(vector, &self.options, &self.model));
            inner.remaining -= 1;
        }
        inner.first_start = Some(inner.first_start.map_or(batch_start, |t| t.min(batch_start)));
        if !inner.batches_counted.contains(&batch_start) {
            inner.batches_counted.push(batch_start);
            inner.inference_us += batch_us;
        }
        if inner.remaining > 0 {
            return true;
        }
        let Some(reply) = inner.reply.take() else { return false };
        let embeddings = inner.results.iter_mut().map(|r| r.take().unwrap_or_default()).collect();
        let queue_us = inner
            .first_start
            .map_or(0, |start| start.saturating_duration_since(self.received).as_micros() as u64);
        let done = EmbedDone {
            model: self.model_index,
            embeddings,
            tokens: inner.tokens,
            truncated: std::mem::take(&mut inner.truncated),
            queue_us,
            inference_us: inner.inference_us,
        };
        reply.send(Ok(done)).is_ok()
    }
}

// === impl Item ===

impl Item {
    /// Delivers this input's vector; false when nobody waits for it any more (the deadline passed while the
    /// batch ran, or the request already failed): the work was wasted.
    fn complete(mut self, vector: Vec<f32>, batch_start: Instant, batch_us: u64) -> bool {
        self.answered = true;
        self.pending.complete(self.index, vector, batch_start, batch_us)
    }

    /// Fails this input's request.
    fn fail(mut self, error: ServeError) {
        self.answered = true;
        self.pending.fail(error);
    }

    /// Answers an item that is no longer live: its deadline passed, or nobody waits for it any more.
    fn expire(self) {
        let error = if self.pending.deadline.is_some() {
            ServeError::DeadlineExceeded
        } else {
            ServeError::Internal("abandoned".into())
        };
        self.fail(error);
    }
}

impl queue::Queued for Item {
    fn tokens(&self) -> usize {
        self.encoded.ids.len()
    }

    fn is_live(&self, horizon: Instant) -> bool {
        self.pending.is_live(horizon)
    }

    fn received(&self) -> Instant {
        self.pending.received
    }

    fn model(&self) -> usize {
        self.pending.model_index
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        if !self.answered {
            self.pending.fail(ServeError::Internal(
                "the inference device failed while running this request's batch".into(),
            ));
        }
    }
}

#[cfg(feature = "fault-injection")]
impl Fault {
    /// `"\0akidb-fault:panic"` or `"\0akidb-fault:hang:<ms>"`.
    fn parse(text: &str) -> Option<Fault> {
        let rest = text.strip_prefix("\0akidb-fault:")?;
        if rest == "panic" {
            return Some(Fault::Panic);
        }
        let ms: u64 = rest.strip_prefix("hang:")?.parse().ok()?;
        Some(Fault::Hang(std::time::Duration::from_millis(ms)))
    }
}
