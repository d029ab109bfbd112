//! The batcher actor: queues inputs per priority class and hands batches to idle inference actors.
//!
//! Inference actors pull: the batcher sends a device a batch only while it has fewer than `1 + prefetch` batches
//! outstanding, so an idle device gets work at once and a busy one has exactly `prefetch` batches waiting.
//! Normal and bulk batches are sized from the measured cost per padded token so that no batch runs longer than
//! `realtime_max_wait_ms / (1 + prefetch)`: a realtime request arriving behind them waits at most
//! `realtime_max_wait_ms`. Realtime batches are bounded by `max_batch_tokens` and `max_batch_size` only.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kameo::actor::{Actor, ActorRef};
use kameo::message::{Context, Message};
use tokio::time::Instant;

use super::inference::{InferenceActor, RunBatch};
use super::queue::{Budget, Queues};
use super::state::DaemonState;
use super::{Item, ServeError};
use crate::config::BatcherConfig;
use crate::protocol::Priority;

/// Mailbox size of the batcher; a full mailbox answers `overloaded`.
pub(crate) const MAILBOX: usize = 4096;

pub(crate) struct Batcher {
    queues: Queues<Item>,
    workers: Vec<Worker>,
    config: BatcherConfig,
    /// Measured milliseconds per padded token (exponential moving average).
    ms_per_token: Option<f64>,
    state: Arc<DaemonState>,
    self_ref: ActorRef<Batcher>,
    wake_at: Option<Instant>,
}

struct Worker {
    actor: Option<ActorRef<InferenceActor>>,
    outstanding: usize,
    lost: bool,
}

pub(crate) struct BatcherArgs {
    pub config: BatcherConfig,
    pub state: Arc<DaemonState>,
    pub n_devices: usize,
}

/// A request's inputs, all queued or none.
pub(crate) struct Submit {
    pub class: Priority,
    pub items: Vec<Item>,
}

/// An inference actor (re)started and is ready for work.
pub(crate) struct WorkerUp {
    pub index: usize,
    pub actor: ActorRef<InferenceActor>,
}

/// An inference actor finished a batch.
pub(crate) struct BatchDone {
    pub index: usize,
    pub padded_tokens: usize,
    pub elapsed: Duration,
}

/// A timing measured during warm-up.
pub(crate) struct CostSample {
    pub padded_tokens: usize,
    pub elapsed: Duration,
}

/// An inference actor is gone for good (restart limit reached).
pub(crate) struct WorkerLost {
    pub index: usize,
}

/// Fails everything still queued with `shutting_down` (end of the grace period).
pub(crate) struct Drain;

/// Timer tick for `max_wait_us`.
struct Wake;

// === impl Batcher ===

impl Actor for Batcher {
    type Args = BatcherArgs;
    type Error = std::convert::Infallible;

    async fn on_start(args: Self::Args, actor_ref: ActorRef<Self>) -> Result<Self, Self::Error> {
        let caps = &args.config.queue_capacity;
        Ok(Batcher {
            queues: Queues::new([caps.realtime, caps.normal, caps.bulk]),
            workers: (0..args.n_devices)
                .map(|_| Worker {
                    actor: None,
                    outstanding: 0,
                    lost: false,
                })
                .collect(),
            config: args.config,
            ms_per_token: None,
            state: args.state,
            self_ref: actor_ref,
            wake_at: None,
        })
    }
}

impl Batcher {
    fn budget(&self, class: Priority) -> Budget {
        let mut max_tokens = self.config.max_batch_tokens;
        if class != Priority::Realtime {
            if let Some(ms_per_token) = self.ms_per_token {
                let share = self.config.realtime_max_wait_ms as f64 / (1 + self.config.prefetch) as f64;
                max_tokens = max_tokens.min((share / ms_per_token.max(1e-9)) as usize).max(1);
            }
        }
        Budget {
            max_tokens,
            max_size: self.config.max_batch_size,
        }
    }

    fn record_cost(&mut self, padded_tokens: usize, elapsed: Duration) {
        if padded_tokens == 0 {
            return;
        }
        let sample = elapsed.as_secs_f64() * 1000.0 / padded_tokens as f64;
        self.ms_per_token = Some(match self.ms_per_token {
            Some(ema) => 0.8 * ema + 0.2 * sample,
            None => sample,
        });
    }

    fn update_gauges(&self) {
        for class in Priority::ALL {
            self.state.queued[class.index()].store(self.queues.len(class) as u64, Ordering::Relaxed);
        }
    }

    fn no_device_left(&self) -> bool {
        self.workers.iter().all(|w| w.lost)
    }

    /// The least-loaded device that can take one more batch.
    fn free_worker(&self) -> Option<usize> {
        let limit = 1 + self.config.prefetch;
        (0..self.workers.len())
            .filter(|&i| self.workers[i].actor.is_some() && !self.workers[i].lost && self.workers[i].outstanding < limit)
            .min_by_key(|&i| self.workers[i].outstanding)
    }

    /// With `max_wait_us`, waits for a batch to fill while the oldest input is younger than that.
    fn should_wait(&mut self) -> bool {
        if self.config.max_wait_us == 0 {
            return false;
        }
        let queued: usize = Priority::ALL.iter().map(|&c| self.queues.len(c)).sum();
        if queued >= self.config.max_batch_size || self.queues.len(Priority::Realtime) > 0 {
            return false;
        }
        let due = self
            .queues
            .oldest_received()
            .map(|t| t + Duration::from_micros(self.config.max_wait_us));
        match due {
            Some(due) if due > Instant::now() => {
                if self.wake_at.is_none_or(|at| at > due) {
                    self.wake_at = Some(due);
                    let actor = self.self_ref.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(due).await;
                        let _ = actor.tell(Wake).try_send();
                    });
                }
                true
            }
            _ => false,
        }
    }

    fn dispatch(&mut self) {
        while !self.queues.is_empty() {
            let Some(worker) = self.free_worker() else { break };
            if self.should_wait() {
                break;
            }
            let budgets = Priority::ALL.map(|class| self.budget(class));
            let Some(picked) = self.queues.pick(|class| budgets[class.index()]) else {
                break;
            };
            for item in picked.expired {
                item.expire();
            }
            if picked.items.is_empty() {
                continue;
            }
            let batch = RunBatch {
                items: picked.items,
                padded_tokens: picked.padded_tokens,
                real_tokens: picked.real_tokens,
            };
            let slot = &mut self.workers[worker];
            let actor = slot.actor.as_ref().expect("free_worker only returns devices with an actor");
            match actor.tell(batch).try_send() {
                Ok(()) => slot.outstanding += 1,
                Err(err) => {
                    // The actor is restarting or gone; the batch's items answer `internal` as they drop. WorkerUp
                    // brings the device back.
                    tracing::warn!(device = worker, error = %err, "could not hand a batch to an inference actor");
                    slot.actor = None;
                }
            }
        }
        self.update_gauges();
    }

    fn fail_all(&mut self, error: &ServeError) {
        for item in self.queues.drain() {
            item.fail(error.clone());
        }
        self.update_gauges();
    }
}

impl Message<Submit> for Batcher {
    type Reply = ();

    async fn handle(&mut self, msg: Submit, _ctx: &mut Context<Self, Self::Reply>) {
        if self.no_device_left() {
            for item in msg.items {
                item.fail(ServeError::Unavailable("every inference device has failed".into()));
            }
            return;
        }
        let n_inputs = msg.items.len();
        if let Err(items) = self.queues.push(msg.class, msg.items) {
            let queued = self.queues.len(msg.class);
            let message = format!(
                "the {} queue is full ({queued} inputs queued, {n_inputs} more refused)",
                msg.class.as_str()
            );
            if let Some(first) = items.into_iter().next() {
                // One failure answers the request; the other items then drop as already answered.
                first.fail(ServeError::Overloaded(message));
            }
            return;
        }
        self.dispatch();
    }
}

impl Message<WorkerUp> for Batcher {
    type Reply = ();

    async fn handle(&mut self, msg: WorkerUp, _ctx: &mut Context<Self, Self::Reply>) {
        let slot = &mut self.workers[msg.index];
        slot.actor = Some(msg.actor);
        slot.outstanding = 0;
        slot.lost = false;
        self.dispatch();
    }
}

impl Message<BatchDone> for Batcher {
    type Reply = ();

    async fn handle(&mut self, msg: BatchDone, _ctx: &mut Context<Self, Self::Reply>) {
        let slot = &mut self.workers[msg.index];
        slot.outstanding = slot.outstanding.saturating_sub(1);
        self.record_cost(msg.padded_tokens, msg.elapsed);
        self.dispatch();
    }
}

impl Message<CostSample> for Batcher {
    type Reply = ();

    async fn handle(&mut self, msg: CostSample, _ctx: &mut Context<Self, Self::Reply>) {
        self.record_cost(msg.padded_tokens, msg.elapsed);
    }
}

impl Message<WorkerLost> for Batcher {
    type Reply = ();

    async fn handle(&mut self, msg: WorkerLost, _ctx: &mut Context<Self, Self::Reply>) {
        let slot = &mut self.workers[msg.index];
        slot.lost = true;
        slot.actor = None;
        if self.no_device_left() {
            self.fail_all(&ServeError::Unavailable("every inference device has failed".into()));
        } else {
            self.dispatch();
        }
    }
}

impl Message<Drain> for Batcher {
    type Reply = ();

    async fn handle(&mut self, _msg: Drain, _ctx: &mut Context<Self, Self::Reply>) {
        self.fail_all(&ServeError::ShuttingDown);
    }
}

impl Message<Wake> for Batcher {
    type Reply = ();

    async fn handle(&mut self, _msg: Wake, _ctx: &mut Context<Self, Self::Reply>) {
        self.wake_at = None;
        self.dispatch();
    }
}
