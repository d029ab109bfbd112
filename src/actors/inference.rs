//! The inference actor: one per device, on its own OS thread, owning one ONNX Runtime session per model the
//! device holds.
//!
//! It builds its sessions and warms them up in `on_start` (for TensorRT this is where engines are built or loaded
//! from the cache), then runs the batches the batcher sends (each batch is of one model). Runs block the actor's thread, never a tokio worker.
//! When a run panics, kameo's supervision restarts the actor: `on_start` runs again, counts the restart, waits a
//! backoff and rebuilds the session. The batch that was running is answered `internal` by its items' `Drop`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kameo::actor::{Actor, ActorRef};
use kameo::message::{Context, Message};
use ort::environment::Environment;
use tokio::sync::watch;
use tokio::time::Instant;

use super::batcher::{BatchDone, Batcher, CostSample, WorkerUp};
use super::state::{lock, DaemonState, DeviceShared, DeviceState, Phase};
use super::{Item, ServeError, ServedModel};
use crate::config::{DeviceConfig, EpKind};
use crate::engine::{Embedder, Encoded, EngineError, OrtEngine};

/// How a device's first start went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Startup {
    Pending,
    Ready,
    /// Why, and whether the model (not the device) is at fault.
    Failed {
        message: String,
        model_error: bool,
    },
}

/// Everything an inference actor needs to (re)build its session.
#[derive(Clone)]
pub(crate) struct InferenceArgs {
    pub index: usize,
    pub device: DeviceConfig,
    pub env: Environment,
    /// Every served model, by index.
    pub models: Arc<[ServedModel]>,
    /// The indexes of the models this device holds a session of.
    pub holds: Vec<usize>,
    pub batcher: ActorRef<Batcher>,
    pub state: Arc<DaemonState>,
    pub warmup_seq_lengths: Vec<usize>,
    pub warmup_batch: usize,
    pub warmup_after_ready: bool,
    /// The batch token budget (`batcher.max_batch_tokens`): runs up to it keep their CPU arena memory.
    pub batch_tokens: usize,
    pub startup: Arc<watch::Sender<Startup>>,
}

pub(crate) struct InferenceActor {
    index: usize,
    id: kameo::actor::ActorId,
    /// By model index: the session of each model this device holds.
    sessions: Vec<Option<Session>>,
    batcher: ActorRef<Batcher>,
    state: Arc<DaemonState>,
}

/// One model's session on this device.
struct Session {
    engine: Box<dyn Embedder>,
    /// A long input of the model, cut to each warm-up length (also for the warm-ups run after READY).
    filler: Encoded,
}

/// Answers once the actor has finished what was sent before it: the watchdog's proof that the device is not hung.
pub(crate) struct Heartbeat;

/// A batch to run.
pub(crate) struct RunBatch {
    /// The model all its inputs are for.
    pub model: usize,
    pub items: Vec<Item>,
    pub padded_tokens: usize,
    pub real_tokens: usize,
    /// A warm-up shape (inputs, tokens) to run instead of items: the warm-ups left for after READY, sent by the
    /// batcher while the device is idle.
    pub warmup: Option<(usize, usize)>,
}

// === impl InferenceActor ===

impl Actor for InferenceActor {
    type Args = InferenceArgs;
    type Error = String;

    async fn on_start(args: Self::Args, actor_ref: ActorRef<Self>) -> Result<Self, Self::Error> {
        let device = &args.state.devices[args.index];
        let first_start = *args.startup.borrow() == Startup::Pending;
        if !first_start {
            back_off_before_restart(&args).await?;
        }
        let (sessions, warmups) = match build_and_warm_up(&args) {
            Ok(warmed) => warmed,
            Err((message, model_error)) => {
                tracing::error!(device = args.index, error = %message, "inference device could not start");
                *lock(&device.last_error) = Some(message.clone());
                device.set_state(DeviceState::Failed);
                if first_start {
                    args.startup.send_replace(Startup::Failed {
                        message: message.clone(),
                        model_error,
                    });
                }
                return Err(message);
            }
        };
        let ep = publish_device(device, &sessions);
        let _ = args
            .batcher
            .tell(WorkerUp {
                index: args.index,
                actor: actor_ref.clone(),
                ep,
                warmups,
            })
            .send()
            .await;
        if first_start {
            args.startup.send_replace(Startup::Ready);
        }
        Ok(InferenceActor {
            index: args.index,
            id: actor_ref.id(),
            sessions,
            batcher: args.batcher,
            state: args.state,
        })
    }
}

/// Before a restart: counts it and waits out the backoff. A device that failed at startup is not restarted.
async fn back_off_before_restart(args: &InferenceArgs) -> Result<(), String> {
    if matches!(*args.startup.borrow(), Startup::Failed { .. }) {
        return Err("the device failed at startup".into());
    }
    let device = &args.state.devices[args.index];
    let restarts = device.restarts.fetch_add(1, Ordering::Relaxed) + 1;
    device.set_state(DeviceState::Restarting);
    let backoff = restart_backoff(restarts);
    tracing::warn!(
        device = args.index,
        restarts,
        backoff_ms = backoff.as_millis() as u64,
        "restarting inference actor"
    );
    tokio::time::sleep(backoff).await;
    Ok(())
}

/// Marks a warmed-up device ready in the state, with its provider and precisions; returns the provider (its first
/// session's: every session on a device is built with the same provider chain).
fn publish_device(device: &DeviceShared, sessions: &[Option<Session>]) -> EpKind {
    let first = sessions.iter().flatten().next().map(|s| s.engine.as_ref());
    let ep = first.map_or(EpKind::Cpu, |engine| engine.active_ep());
    *lock(&device.ep) = ep.to_string();
    let mut precisions: Vec<&str> = sessions.iter().flatten().map(|s| s.engine.precision()).collect();
    precisions.dedup();
    *lock(&device.precision) = Some(precisions.join(","));
    device.set_state(DeviceState::Ready);
    ep
}

/// 100 ms, doubling with each restart, at most 5 s.
fn restart_backoff(restarts: u64) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << restarts.saturating_sub(1).min(6))).min(Duration::from_secs(5))
}

/// What a device brings up: its sessions by model index, and the warm-up shapes (model, inputs, tokens) left for
/// after READY.
type Warmed = (Vec<Option<Session>>, Vec<(usize, usize, usize)>);

/// Builds the session of every model the device holds, one after the other, and runs each at the warm-up shapes
/// due before READY (see `batcher.warmup_after_ready`), reporting the cost to the batcher. An error says whether
/// the model is at fault (true) rather than the device.
fn build_and_warm_up(args: &InferenceArgs) -> Result<Warmed, StartError> {
    #[cfg(feature = "fault-injection")]
    if let Some(ms) = std::env::var("AKIDB_FAULT_WARMUP_MS").ok().and_then(|v| v.parse().ok()) {
        // Test hook: a slow warm-up, to observe the daemon while it is "starting".
        std::thread::sleep(Duration::from_millis(ms));
    }
    let mut sessions: Vec<Option<Session>> = (0..args.models.len()).map(|_| None).collect();
    let mut later = Vec::new();
    let mut built = Vec::new();
    for &model in &args.holds {
        let before = crate::memory::resident_bytes();
        let (session, shapes) = build_session(args, model)?;
        // What the warm-up freed is not the session's.
        crate::memory::release_free_memory();
        let memory = crate::memory::resident_bytes().saturating_sub(before);
        built.push((model, memory, session.engine.precision().to_owned()));
        later.extend(shapes.into_iter().map(|(batch_size, seq)| (model, batch_size, seq)));
        sessions[model] = Some(session);
    }
    *lock(&args.state.devices[args.index].sessions) = built;
    Ok((sessions, later))
}

/// A device's start-up error, and whether the model (not the device) is at fault.
type StartError = (String, bool);

/// Builds one model's session and warms it up; returns it and the warm-up shapes (inputs, tokens) left for after
/// READY.
fn build_session(args: &InferenceArgs, model: usize) -> Result<(Session, Vec<(usize, usize)>), StartError> {
    let started = Instant::now();
    let served = &args.models[model];
    let info = &served.info;
    let mut engine = Box::new(
        OrtEngine::load(&args.env, info.as_ref().clone(), served.tokenizer.clone(), &args.device)
            .map_err(|e| (format!("model {}: {e}", info.name), matches!(e, EngineError::Model { .. })))?,
    );
    engine.keep_arena_for(args.batch_tokens);
    if engine.has_arena() {
        tracing::info!(model = %info.name, device = args.index, "CPU memory arena on");
    }
    let filler = served
        .tokenizer
        .encode(&"robot ".repeat(info.max_tokens), true)
        .map_err(|e| (e.to_string(), true))?;
    let shapes: Vec<(usize, usize)> = args
        .warmup_seq_lengths
        .iter()
        .flat_map(|&seq| {
            let seq = seq.clamp(2, filler.ids.len());
            [(1, seq), (args.warmup_batch.max(1), seq)]
        })
        .collect();
    // A CPU session gains little from running a shape before it is needed; an accelerator compiles kernels or
    // TensorRT engines for it. So a CPU device runs the first shape now and the rest once READY, while idle.
    let now = if args.warmup_after_ready && engine.active_ep() == EpKind::Cpu {
        2.min(shapes.len())
    } else {
        shapes.len()
    };
    for &(batch_size, seq) in &shapes[..now] {
        let elapsed = run_warmup(engine.as_mut(), &filler, batch_size, seq).map_err(|e| (e, false))?;
        let _ = args
            .batcher
            .tell(CostSample {
                model,
                padded_tokens: batch_size * seq,
                elapsed,
            })
            .try_send();
    }
    // The fastest a realtime request can be served here: one short input alone, once warm.
    let short = shorten(&filler, 16.clamp(2, filler.ids.len()));
    let run_started = Instant::now();
    engine.run(&[&short]).map_err(|e| (format!("warm-up at 1x16 failed: {e}"), false))?;
    let smallest_us = run_started.elapsed().as_micros() as u64;
    args.state.devices[args.index].smallest_batch_us[model].store(smallest_us.max(1), Ordering::Relaxed);
    engine.commit_engine_cache();
    tracing::info!(
        device = args.index,
        model = %info.name,
        ep = %engine.active_ep(),
        warmup_ms = started.elapsed().as_millis() as u64,
        after_ready = shapes.len() - now,
        "session ready"
    );
    let later = shapes[now..].to_vec();
    Ok((Session { engine, filler }, later))
}

/// Runs one warm-up shape and returns how long it took.
fn run_warmup(engine: &mut dyn Embedder, filler: &Encoded, batch_size: usize, seq: usize) -> Result<Duration, String> {
    let encoded = shorten(filler, seq);
    let batch: Vec<&Encoded> = std::iter::repeat_n(&encoded, batch_size).collect();
    let started = Instant::now();
    engine
        .run(&batch)
        .map_err(|e| format!("warm-up at {batch_size}x{seq} failed: {e}"))?;
    Ok(started.elapsed())
}

/// The first `seq - 1` tokens of `filler` and its last (closing special) token.
fn shorten(filler: &Encoded, seq: usize) -> Encoded {
    let last = filler.ids.len() - 1;
    let keep = |v: &[i64]| v[..seq - 1].iter().chain(std::iter::once(&v[last])).copied().collect();
    Encoded {
        ids: keep(&filler.ids),
        type_ids: keep(&filler.type_ids),
        truncated: false,
    }
}

impl InferenceActor {
    /// The device is free again: what to tell the batcher the batch (or warm-up) cost.
    fn finish(&self, model: usize, n_items: usize, padded_tokens: usize, started: Instant) -> BatchDone {
        self.state.devices[self.index].set_state(DeviceState::Ready);
        BatchDone {
            index: self.index,
            actor: self.id,
            model,
            n_items,
            padded_tokens,
            elapsed: started.elapsed(),
        }
    }
}

impl Message<RunBatch> for InferenceActor {
    type Reply = ();

    async fn handle(&mut self, msg: RunBatch, _ctx: &mut Context<Self, Self::Reply>) {
        self.state.devices[self.index].set_state(DeviceState::Busy);
        let started = Instant::now();
        let model = msg.model;
        let (n_computed, padded_tokens) = self.serve_batch(msg, started);
        let done = self.finish(model, n_computed, padded_tokens, started);
        let _ = self.batcher.tell(done).send().await;
    }
}

impl InferenceActor {
    /// Serves one batch: a warm-up, a batch to refuse (no session, the stop's time ran out), or inputs to compute
    /// (those whose caller has left or whose deadline passed are answered, not computed). Returns what the batcher
    /// is told: the inputs computed and the padded tokens the device ran.
    fn serve_batch(&mut self, msg: RunBatch, started: Instant) -> (usize, usize) {
        let device = &self.state.devices[self.index];
        let Some(session) = self.sessions.get_mut(msg.model).and_then(Option::as_mut) else {
            // The batcher sends a device only the models it holds.
            for item in msg.items {
                item.fail(ServeError::Internal(format!(
                    "device {} holds no session of this model",
                    self.index
                )));
            }
            return (0, 0);
        };
        *lock(&device.stopper) = session.engine.run_stopper();
        if let Some((batch_size, seq)) = msg.warmup {
            // A warm-up left for after READY, sent while the device was idle.
            if let Err(err) = run_warmup(session.engine.as_mut(), &session.filler, batch_size, seq) {
                tracing::warn!(device = self.index, error = %err, "warm-up after ready failed");
            }
            return (0, msg.padded_tokens);
        }
        if self.state.work_cut.load(Ordering::Acquire) {
            // The graceful stop ran out of time: answer instead of computing.
            for item in msg.items {
                item.fail(ServeError::ShuttingDown);
            }
            return (0, 0);
        }
        let (live, dead): (Vec<Item>, Vec<Item>) = msg.items.into_iter().partition(|item| item.pending.is_live(Instant::now()));
        for item in dead {
            item.expire();
        }
        #[cfg(feature = "fault-injection")]
        inject_faults(&live);
        let n_live = live.len();
        if n_live > 0 {
            compute(&self.state, self.index, session, live, started);
            device.batches.fetch_add(1, Ordering::Relaxed);
            device.inputs.fetch_add(n_live as u64, Ordering::Relaxed);
            self.state.record_batch(n_live, msg.padded_tokens, msg.real_tokens);
        }
        (n_live, msg.padded_tokens)
    }
}

/// Runs the live inputs of a batch on the device's session and answers each: its vector, or the batch's error
/// (`shutting_down` when the stop cut the run short, else `internal`).
fn compute(state: &DaemonState, index: usize, session: &mut Session, live: Vec<Item>, started: Instant) {
    let batch: Vec<&Encoded> = live.iter().map(|item| &item.encoded).collect();
    let result = session.engine.run(&batch);
    let elapsed_us = started.elapsed().as_micros() as u64;
    match result {
        Ok(vectors) => {
            let mut late = 0;
            for (item, vector) in live.into_iter().zip(vectors) {
                late += u64::from(!item.complete(vector, started, elapsed_us));
            }
            state.late_inputs.fetch_add(late, Ordering::Relaxed);
        }
        Err(err) if state.phase() == Phase::Stopping => {
            // Stopped at the end of the grace period (see `WorkStopper`).
            tracing::warn!(device = index, error = %err, "batch cut short by the stop");
            for item in live {
                item.fail(ServeError::ShuttingDown);
            }
        }
        Err(err) => {
            tracing::error!(device = index, error = %err, "batch failed");
            *lock(&state.devices[index].last_error) = Some(err.to_string());
            for item in live {
                item.fail(ServeError::Internal(err.to_string()));
            }
        }
    }
}

#[cfg(feature = "fault-injection")]
fn inject_faults(items: &[Item]) {
    for item in items {
        match item.fault {
            Some(super::Fault::Panic) => panic!("fault injection: panic in the middle of a batch"),
            Some(super::Fault::Hang(duration)) => std::thread::sleep(duration),
            None => {}
        }
    }
}

impl Message<Heartbeat> for InferenceActor {
    type Reply = ();

    async fn handle(&mut self, _msg: Heartbeat, _ctx: &mut Context<Self, Self::Reply>) {}
}
