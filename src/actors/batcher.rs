//! The batcher actor: queues inputs per priority class and hands batches to idle inference actors.
//!
//! Inference actors pull: the batcher sends a device a batch only while it has fewer than `1 + prefetch` batches
//! outstanding, so an idle device gets work at once. The batch prepared ahead is formed just in time: shortly
//! before the running batch is predicted to end (from the measured cost per token), so that it takes in every
//! request that arrived meanwhile instead of splitting the traffic into two half-size batches.
//!
//! While realtime traffic may arrive (a realtime request was seen within `realtime_horizon_ms`), normal and bulk
//! batches are sized from the measured cost per padded token so that none runs longer than `realtime_max_wait_ms`,
//! and nothing is prepared ahead: a realtime request then waits behind at most one such batch. Without recent
//! realtime traffic they use the full `max_batch_tokens` and the prefetch, for throughput. Realtime batches are
//! bounded by `max_batch_tokens` and `max_batch_size` only.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kameo::actor::{Actor, ActorId, ActorRef};
use kameo::message::{Context, Message};
use tokio::time::Instant;

use super::inference::{InferenceActor, RunBatch};
use super::queue::{Budget, Picked, Queues};
use super::state::{lock, DaemonState};
use super::supervisor::{ReplaceDevice, Supervisor};
use super::{Item, Pending, ServeError};
use crate::config::{BatcherConfig, EpKind};
use crate::monitor::thermal::ThermalState;
use crate::protocol::Priority;

/// Mailbox size of the batcher; a full mailbox answers `overloaded`.
pub(crate) const MAILBOX: usize = 4096;

/// Batches of at least this many inputs (or filling half the token budget) measure the cost per input used for
/// the backlog estimate.
const LOADED_BATCH: usize = 4;

pub(crate) struct Batcher {
    queues: Queues<Item>,
    workers: Vec<Worker>,
    config: BatcherConfig,
    /// Per model, what its batches cost.
    costs: Vec<Cost>,
    state: Arc<DaemonState>,
    self_ref: ActorRef<Batcher>,
    wake_at: Option<Instant>,
    last_realtime: Option<Instant>,
    /// After a batch of n inputs finishes, its clients are likely to send again within moments: an idle device
    /// waits until this deadline for up to n inputs instead of running a nearly empty batch.
    refill: Option<(Instant, usize)>,
    /// The monitor's latest thermal state and its explanation.
    thermal: (ThermalState, String),
    /// Told to replace a device that is stuck in a batch.
    supervisor: Option<ActorRef<Supervisor>>,
    /// When work last arrived or finished: warm-ups left for after READY wait for a pause in traffic.
    last_work: Instant,
}

/// The measured cost of one model's batches (exponential moving averages).
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    /// Milliseconds per padded token.
    ms_per_token: Option<f64>,
    /// Run time of a batch.
    batch_time: Option<Duration>,
    /// Run time per input of batches formed under load (at least `LOADED_BATCH` inputs): the cost of draining a
    /// queue.
    input_cost: Option<Duration>,
}

struct Worker {
    /// Per model, whether this device holds a session of it.
    holds: Vec<bool>,
    /// Batches this device may have prepared ahead: `accelerator_prefetch` once it runs on an accelerator, 0 on
    /// the CPU (and until it reports its provider).
    prefetch: usize,
    accelerator_prefetch: usize,
    /// Warm-up shapes (model, inputs, tokens) to run while the device is idle.
    warmups: VecDeque<(usize, usize, usize)>,
    actor: Option<ActorRef<InferenceActor>>,
    /// Predicted run time of each batch sent and not yet done, oldest (running) first.
    outstanding: VecDeque<Duration>,
    /// How long each of those batches may run before it counts as stuck (see `stuck_allowance`).
    stuck_allowed: VecDeque<Duration>,
    /// When the batches sent are predicted to be done.
    busy_until: Instant,
    /// The requests of each batch sent and not yet done, to answer them if the device gets stuck.
    in_flight: VecDeque<Vec<Arc<Pending>>>,
    /// When the batch now running was started (or sent to an idle device).
    running_since: Instant,
    lost: bool,
}

pub(crate) struct BatcherArgs {
    pub config: BatcherConfig,
    pub state: Arc<DaemonState>,
    /// Batches prepared ahead, per device, when it runs on an accelerator (`batcher.prefetch`).
    pub prefetch: Vec<usize>,
    /// Per model, the devices that hold it.
    pub model_devices: Vec<Vec<usize>>,
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
    /// The provider the device's session really runs on (prefetch is for accelerators only).
    pub ep: EpKind,
    /// Warm-up shapes (model, inputs, tokens) left for after READY: sent while the device is idle.
    pub warmups: Vec<(usize, usize, usize)>,
}

/// An inference actor finished a batch.
pub(crate) struct BatchDone {
    pub index: usize,
    pub actor: ActorId,
    pub model: usize,
    pub n_items: usize,
    pub padded_tokens: usize,
    pub elapsed: Duration,
}

/// A timing measured during warm-up.
pub(crate) struct CostSample {
    pub model: usize,
    pub padded_tokens: usize,
    pub elapsed: Duration,
}

/// An inference actor is gone for good (restart limit reached).
pub(crate) struct WorkerLost {
    pub index: usize,
}

/// Fails everything still queued with `shutting_down` (end of the grace period).
pub(crate) struct Drain;

/// How long traffic must pause before a warm-up left for after READY is run.
const WARMUP_IDLE: Duration = Duration::from_millis(200);

/// A warm-up after READY predicted to run longer than this is skipped: a request arriving during it would wait
/// that long, and on a CPU the first real run of a shape costs only a fraction more than a warm one.
const WARMUP_MAX_RUN: Duration = Duration::from_millis(50);

/// A batch is stuck past this many times its predicted run time (and past `stuck_timeout_ms`).
pub(crate) const STUCK_FACTOR: f64 = 4.0;

/// Who to ask for a replacement of a stuck device.
pub(crate) struct SetSupervisor(pub ActorRef<Supervisor>);

/// The monitor's thermal state changed.
pub(crate) struct ThermalChange {
    pub state: ThermalState,
    pub message: String,
}

/// How long an idle device waits for the clients of a batch that took `elapsed` to send their next inputs: a tenth
/// of the batch, at most [`REFILL_WAIT`] or, for a dear batch, a fiftieth of it. Closed-loop clients resubmit
/// within a millisecond or two, but a process with many client threads may take longer; on a model whose batch
/// takes a second (the 0.6B decoder on this CPU), 2 ms split 8 such clients into alternating half batches: 6.4
/// sentences/s, 8.1 with this wait (in-process onnxruntime in runs of 8: 7.7).
fn refill_wait(elapsed: Duration) -> Duration {
    (elapsed / 10).min(REFILL_WAIT.max(elapsed / 50))
}

/// See [`refill_wait`].
const REFILL_WAIT: Duration = Duration::from_millis(2);

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
            workers: args
                .prefetch
                .iter()
                .enumerate()
                .map(|(index, &prefetch)| Worker {
                    holds: args.model_devices.iter().map(|devices| devices.contains(&index)).collect(),
                    prefetch: 0,
                    accelerator_prefetch: prefetch,
                    warmups: VecDeque::new(),
                    actor: None,
                    outstanding: VecDeque::new(),
                    stuck_allowed: VecDeque::new(),
                    busy_until: Instant::now(),
                    in_flight: VecDeque::new(),
                    running_since: Instant::now(),
                    lost: false,
                })
                .collect(),
            config: args.config,
            costs: vec![Cost::default(); args.model_devices.len()],
            state: args.state,
            self_ref: actor_ref,
            wake_at: None,
            last_realtime: None,
            refill: None,
            thermal: (ThermalState::Normal, String::new()),
            supervisor: None,
            last_work: Instant::now(),
        })
    }
}

impl Batcher {
    /// Whether a realtime request was seen recently enough that more may arrive.
    fn realtime_active(&self) -> bool {
        let horizon = Duration::from_millis(self.config.realtime_horizon_ms);
        self.last_realtime.is_some_and(|at| at.elapsed() < horizon)
    }

    /// The budget of a class's next batch of `model`; `None` while the class is paused (bulk in the soft thermal
    /// state).
    fn budget(&self, class: Priority, model: usize, realtime_active: bool) -> Option<Budget> {
        let thermal = self.thermal.0;
        if class == Priority::Bulk && thermal >= ThermalState::Soft {
            return None;
        }
        let mut max_tokens = self.config.max_batch_tokens;
        if class != Priority::Realtime && thermal >= ThermalState::Soft {
            max_tokens = (max_tokens / 2).max(1);
        }
        if class != Priority::Realtime && realtime_active {
            if let Some(ms_per_token) = self.costs[model].ms_per_token {
                let allowed = self.config.realtime_max_wait_ms as f64 / ms_per_token.max(1e-9);
                max_tokens = max_tokens.min(allowed as usize).max(1);
            }
        }
        Some(Budget {
            max_tokens,
            max_size: self.config.max_batch_size,
            group_by_length: self.config.group_by_length,
            max_padding_ratio: self.config.max_padding_ratio,
        })
    }

    fn record_cost(&mut self, model: usize, padded_tokens: usize, elapsed: Duration) {
        if padded_tokens == 0 {
            return;
        }
        let cost = &mut self.costs[model];
        cost.batch_time = Some(cost.batch_time.map_or(elapsed, |ema| ema.mul_f64(0.8) + elapsed.mul_f64(0.2)));
        let sample = elapsed.as_secs_f64() * 1000.0 / padded_tokens as f64;
        cost.ms_per_token = Some(match cost.ms_per_token {
            Some(ema) => 0.8 * ema + 0.2 * sample,
            None => sample,
        });
    }

    /// Publishes the queue lengths and, per class, the estimated wait of an input queued now: until the first
    /// device is free, plus the inputs queued at or above its priority at their model's measured cost per input,
    /// shared by the devices.
    fn update_gauges(&self) {
        let now = Instant::now();
        let live: Vec<&Worker> = self.workers.iter().filter(|w| w.actor.is_some() && !w.lost).collect();
        let first_free = live.iter().map(|w| w.busy_until.saturating_duration_since(now)).min();
        let mut ahead = Duration::ZERO;
        let mut known = false;
        for class in Priority::ALL {
            self.state.queued[class.index()].store(self.queues.len(class) as u64, Ordering::Relaxed);
            for (model, cost) in self.costs.iter().enumerate() {
                let queued = self.queues.model_len(class, model);
                self.state.queued_by_model[model][class.index()].store(queued as u64, Ordering::Relaxed);
                if let Some(input_cost) = cost.input_cost {
                    ahead += input_cost.mul_f64(queued as f64);
                    known = true;
                }
            }
            let backlog = match first_free.filter(|_| known) {
                Some(first_free) => first_free + ahead.div_f64(live.len() as f64),
                None => Duration::ZERO,
            };
            self.state.backlog_us[class.index()].store(backlog.as_micros() as u64, Ordering::Relaxed);
        }
    }

    fn no_device_left(&self) -> bool {
        self.workers.iter().all(|w| w.lost)
    }

    /// An idle device, else a busy one whose running batch is about to end and that may get a batch prepared
    /// ahead (devices in `skip` found nothing they hold to run). When a device will be ready for its prepared
    /// batch only later, a wake-up is scheduled for then.
    fn free_worker(&mut self, realtime_active: bool, skip: &[bool]) -> Option<usize> {
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        let mut best: Option<usize> = None;
        for (index, worker) in self.workers.iter().enumerate() {
            let limit = if realtime_active { 1 } else { 1 + worker.prefetch };
            if skip[index] || worker.actor.is_none() || worker.lost || worker.outstanding.len() >= limit {
                continue;
            }
            if worker.outstanding.is_empty() {
                return Some(index);
            }
            // Prepare the next batch a little before the running ones end: 10% of their predicted time, >= 0.5 ms.
            let lead = worker
                .outstanding
                .iter()
                .sum::<Duration>()
                .mul_f64(0.1)
                .max(Duration::from_micros(500));
            let ready_at = worker.busy_until.checked_sub(lead).unwrap_or(now);
            if ready_at <= now {
                best = best.or(Some(index));
            } else {
                earliest = Some(earliest.map_or(ready_at, |e| e.min(ready_at)));
            }
        }
        if best.is_none() {
            if let Some(at) = earliest {
                self.wake_at_least(at);
            }
        }
        best
    }

    /// Makes sure a `Wake` arrives at `at` or earlier.
    fn wake_at_least(&mut self, at: Instant) {
        // A pending wake-up in the past has fired (or is about to be handled): it does not cover a new one.
        if self.wake_at.is_some_and(|pending| pending <= at && pending > Instant::now()) {
            return;
        }
        self.wake_at = Some(at);
        let actor = self.self_ref.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            // `send` waits for room: a lost wake-up could leave an idle device waiting for no one.
            let _ = actor.tell(Wake).send().await;
        });
    }

    /// How long a batch predicted at `predicted` with rows of `seq` tokens may run before it counts as stuck:
    /// [`STUCK_FACTOR`] times the prediction, scaled up for long rows. The cost model is per token, measured
    /// mostly on short shapes, while attention makes a token of a long row dearer: on the 0.6B decoder on this
    /// CPU a 3,150-token input ran 5x longer than the per-token prediction. Scale: 1 + seq / s0, with s0 half the
    /// model's width (at least 256 tokens).
    fn stuck_allowance(&self, model: usize, predicted: Duration, seq: usize) -> Duration {
        let s0 = (self.state.models[model].dim / 2).max(256) as f64;
        predicted.mul_f64(STUCK_FACTOR * (1.0 + seq as f64 / s0))
    }

    fn predicted(&self, model: usize, padded_tokens: usize) -> Duration {
        self.costs[model]
            .ms_per_token
            .map_or(Duration::ZERO, |ms| Duration::from_secs_f64(ms * padded_tokens as f64 / 1000.0))
    }

    /// Whether an idle device should wait a moment longer for the clients of the batch that just finished.
    fn awaiting_refill(&mut self) -> bool {
        let Some((deadline, expected)) = self.refill else { return false };
        let queued = self.queues.total_len();
        if Instant::now() >= deadline || queued >= expected || self.queues.len(Priority::Realtime) > 0 {
            self.refill = None;
            return false;
        }
        self.wake_at_least(deadline);
        true
    }

    /// With `max_wait_us`, waits for a batch to fill while the oldest input is younger than that.
    fn should_wait(&mut self) -> bool {
        if self.config.max_wait_us == 0 {
            return false;
        }
        let queued = self.queues.total_len();
        if queued >= self.config.max_batch_size || self.queues.len(Priority::Realtime) > 0 {
            return false;
        }
        let due = self
            .queues
            .oldest_received()
            .map(|t| t + Duration::from_micros(self.config.max_wait_us));
        match due {
            Some(due) if due > Instant::now() => {
                self.wake_at_least(due);
                true
            }
            _ => false,
        }
    }

    /// Answers the batches of a device stuck in its batch with `internal`, stops the stuck run, and asks the
    /// supervisor for a fresh inference actor; schedules the next check otherwise.
    ///
    /// A batch is stuck when it has run longer than `stuck_timeout_ms` *and* longer than its allowance:
    /// [`STUCK_FACTOR`] times the time its tokens were predicted to take (from the measured cost per token),
    /// scaled up for long rows (`stuck_allowance`): a 3,000-token input on a slow CPU may rightly run for minutes,
    /// a short one that takes ten times its prediction is hung. The same
    /// deadline is published per device (`DeviceShared::stuck_deadline`), and the systemd watchdog is fed only
    /// while no busy device is past it: one signal tells working from hung for both.
    fn check_stuck(&mut self) {
        let timeout = Duration::from_millis(self.config.stuck_timeout_ms);
        let now = Instant::now();
        let mut next_check: Option<Instant> = None;
        for index in 0..self.workers.len() {
            let slot = &mut self.workers[index];
            let device = &self.state.devices[index];
            let running = slot
                .outstanding
                .front()
                .zip(slot.stuck_allowed.front())
                .filter(|_| slot.actor.is_some());
            let Some((&predicted, &allowed)) = running else {
                *lock(&device.stuck_deadline) = None;
                continue;
            };
            let allowed = timeout.max(allowed);
            let due = slot.running_since + allowed;
            *lock(&device.stuck_deadline) = Some(due);
            if due > now {
                next_check = Some(next_check.map_or(due, |n| n.min(due)));
                continue;
            }
            let message = format!(
                "inference device {index} was stuck in a batch for more than {} ms (predicted {} ms); it is being \
                 replaced",
                allowed.as_millis(),
                predicted.as_millis()
            );
            tracing::error!(
                device = index,
                allowed_ms = allowed.as_millis() as u64,
                predicted_ms = predicted.as_millis() as u64,
                "inference device stuck; stopping its run and replacing it"
            );
            // ONNX Runtime stops the run at its next kernel boundary: the abandoned batch does not keep computing
            // beside the replacement's warm-up (a run blocked inside one kernel cannot be stopped).
            if let Some(stopper) = lock(&device.stopper).as_ref() {
                stopper.stop();
            }
            *lock(&device.stuck_deadline) = None;
            for pendings in slot.in_flight.drain(..) {
                for pending in pendings {
                    pending.fail(ServeError::Internal(message.clone()));
                }
            }
            slot.outstanding.clear();
            slot.stuck_allowed.clear();
            slot.actor = None;
            if let Some(supervisor) = &self.supervisor {
                let _ = supervisor.tell(ReplaceDevice { index }).try_send();
            }
        }
        if let Some(at) = next_check {
            self.wake_at_least(at + Duration::from_millis(1));
        }
    }

    /// Hands batches to free devices while work is queued and the batching policy says to send now, then warm-ups,
    /// the stuck check and the gauges.
    fn dispatch(&mut self) {
        let realtime_active = self.realtime_active();
        let mut skip = vec![false; self.workers.len()];
        while !self.queues.is_empty() {
            let Some(worker) = self.free_worker(realtime_active, &skip) else {
                break;
            };
            if self.should_wait() || (self.workers[worker].outstanding.is_empty() && self.awaiting_refill()) {
                break;
            }
            let Some(mut picked) = self.pick_for(worker, realtime_active) else {
                // Nothing this device holds is queued; another device may hold what is.
                skip[worker] = true;
                continue;
            };
            for item in std::mem::take(&mut picked.expired) {
                item.expire();
            }
            if picked.items.is_empty() {
                continue;
            }
            self.hand_over(worker, picked);
        }
        self.send_warmups(realtime_active);
        self.check_stuck();
        self.update_gauges();
    }

    /// The next batch for `worker` from the models it holds, within each class's and model's budget; None when
    /// nothing it holds is queued.
    fn pick_for(&mut self, worker: usize, realtime_active: bool) -> Option<Picked<Item>> {
        let budgets: Vec<[Option<Budget>; 3]> = (0..self.costs.len())
            .map(|model| Priority::ALL.map(|class| self.budget(class, model, realtime_active)))
            .collect();
        // Inputs whose deadline falls before this batch would end are answered now instead of computed late:
        // under overload this keeps the device on requests that can still be met (no goodput collapse). A
        // quarter of a batch time of margin (of the cheapest model's: the batch's model is not known yet):
        // batch times vary, and an input finished late is wasted work.
        let start = self.workers[worker].busy_until.max(Instant::now());
        let batch_time = self.costs.iter().filter_map(|c| c.batch_time).min().unwrap_or(Duration::ZERO);
        let horizon = start + batch_time.mul_f64(1.25);
        let holds = &self.workers[worker].holds;
        self.queues.pick(
            horizon,
            |class, model| budgets[model][class.index()],
            |model| holds.get(model).copied().unwrap_or(false),
        )
    }

    /// Charges the batch's model for its predicted device time and tells `worker`'s actor to run it; the device
    /// then counts as busy until the prediction ends.
    fn hand_over(&mut self, worker: usize, picked: Picked<Item>) {
        let model = picked.model;
        let predicted = self.predicted(model, picked.padded_tokens);
        // Device time is what models share: a model is charged the predicted run time of its batch (its
        // padded tokens, in microseconds' worth of a nominal token, until its cost is measured).
        let charge = if predicted.is_zero() {
            picked.padded_tokens as f64
        } else {
            predicted.as_secs_f64() * 1e6
        };
        self.queues.charge(picked.class, model, charge);
        let allowed = self.stuck_allowance(model, predicted, picked.padded_tokens / picked.items.len().max(1));
        let pendings: Vec<Arc<Pending>> = picked.items.iter().map(|item| item.pending.clone()).collect();
        let batch = RunBatch {
            model,
            items: picked.items,
            padded_tokens: picked.padded_tokens,
            real_tokens: picked.real_tokens,
            warmup: None,
        };
        let slot = &mut self.workers[worker];
        let actor = slot.actor.as_ref().expect("free_worker only returns devices with an actor");
        match actor.tell(batch).try_send() {
            Ok(()) => {
                let start = if slot.outstanding.is_empty() {
                    slot.running_since = Instant::now();
                    Instant::now()
                } else {
                    slot.busy_until
                };
                slot.busy_until = start + predicted;
                slot.outstanding.push_back(predicted);
                slot.stuck_allowed.push_back(allowed);
                slot.in_flight.push_back(pendings);
            }
            Err(err) => {
                // The actor is restarting or gone; the batch's items answer `internal` as they drop. WorkerUp
                // brings the device back.
                tracing::warn!(device = worker, error = %err, "could not hand a batch to an inference actor");
                slot.actor = None;
            }
        }
    }

    /// Hands idle devices the warm-up shapes they left for after READY, one at a time, only while nothing is
    /// queued, no realtime traffic is recent and traffic has paused for [`WARMUP_IDLE`], and only those predicted
    /// to run within [`WARMUP_MAX_RUN`] (the dearer ones are dropped): a request arriving meanwhile waits for at
    /// most that.
    fn send_warmups(&mut self, realtime_active: bool) {
        if !self.queues.is_empty() || realtime_active || self.workers.iter().all(|w| w.warmups.is_empty()) {
            return;
        }
        let quiet_from = self.last_work + WARMUP_IDLE;
        if Instant::now() < quiet_from {
            self.wake_at_least(quiet_from);
            return;
        }
        for index in 0..self.workers.len() {
            let slot = &self.workers[index];
            if slot.actor.is_none() || !slot.outstanding.is_empty() {
                continue;
            }
            let mut next = None;
            while let Some((model, batch_size, seq)) = self.workers[index].warmups.pop_front() {
                let predicted = self.predicted(model, batch_size * seq);
                if predicted <= WARMUP_MAX_RUN {
                    next = Some((model, batch_size, seq, predicted));
                    break;
                }
                tracing::debug!(
                    device = index,
                    model,
                    batch_size,
                    seq,
                    "warm-up skipped: too long to run while serving"
                );
            }
            let Some((model, batch_size, seq, predicted)) = next else {
                continue;
            };
            let allowed = self.stuck_allowance(model, predicted, seq);
            let slot = &mut self.workers[index];
            let actor = slot.actor.as_ref().expect("checked above");
            let batch = RunBatch {
                model,
                items: Vec::new(),
                padded_tokens: batch_size * seq,
                real_tokens: 0,
                warmup: Some((batch_size, seq)),
            };
            if actor.tell(batch).try_send().is_ok() {
                slot.running_since = Instant::now();
                slot.busy_until = Instant::now() + predicted;
                slot.outstanding.push_back(predicted);
                slot.stuck_allowed.push_back(allowed);
                slot.in_flight.push_back(Vec::new());
            }
        }
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
        self.last_work = Instant::now();
        if self.no_device_left() {
            for item in msg.items {
                item.fail(ServeError::Unavailable("every inference device has failed".into()));
            }
            return;
        }
        if msg.class == Priority::Realtime {
            self.last_realtime = Some(Instant::now());
        } else if self.thermal.0 == ThermalState::Hard {
            if let Some(first) = msg.items.into_iter().next() {
                first.fail(ServeError::Overloaded(format!(
                    "{}: only realtime requests are served",
                    self.thermal.1
                )));
            }
            return;
        }
        let n_inputs = msg.items.len();
        if let Err(items) = self.queues.push(msg.class, msg.items) {
            let (queued, capacity, class) = (self.queues.len(msg.class), self.queues.capacity(msg.class), msg.class.as_str());
            let error = if n_inputs > capacity {
                ServeError::QueueTooSmall {
                    inputs: n_inputs,
                    capacity,
                    class,
                }
            } else {
                ServeError::Overloaded(format!(
                    "the {class} queue is full ({queued} inputs queued, {n_inputs} more refused)"
                ))
            };
            if let Some(first) = items.into_iter().next() {
                // One failure answers the request; the other items then drop as already answered.
                first.fail(error);
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
        // A CPU session computes on the cores that would prepare its next batch: nothing to overlap. Decided by
        // the provider in use, so a GPU device that fell back to the CPU prefetches nothing.
        slot.prefetch = if msg.ep == EpKind::Cpu { 0 } else { slot.accelerator_prefetch };
        slot.warmups = msg.warmups.into();
        self.last_work = Instant::now();
        slot.actor = Some(msg.actor);
        slot.outstanding.clear();
        slot.stuck_allowed.clear();
        slot.in_flight.clear();
        slot.lost = false;
        self.dispatch();
    }
}

impl Message<BatchDone> for Batcher {
    type Reply = ();

    async fn handle(&mut self, msg: BatchDone, _ctx: &mut Context<Self, Self::Reply>) {
        let slot = &mut self.workers[msg.index];
        if slot.actor.as_ref().map(|actor| actor.id()) != Some(msg.actor) {
            // A batch of an actor that was replaced (stuck) or restarted: its requests were answered already.
            return;
        }
        slot.outstanding.pop_front();
        slot.stuck_allowed.pop_front();
        slot.in_flight.pop_front();
        slot.running_since = Instant::now();
        if msg.n_items > 0 {
            self.last_work = Instant::now();
        }
        let slot = &mut self.workers[msg.index];
        // The next prepared batch (if any) starts now.
        slot.busy_until = Instant::now() + slot.outstanding.iter().sum::<Duration>();
        if slot.outstanding.is_empty() && msg.n_items > 1 {
            let wait = refill_wait(msg.elapsed);
            self.refill = Some((Instant::now() + wait, msg.n_items));
        }
        self.record_cost(msg.model, msg.padded_tokens, msg.elapsed);
        // A batch formed under load: several inputs, or long ones that filled much of the token budget (with
        // the CPU default budget, two 256-token inputs are a full batch).
        if msg.n_items >= LOADED_BATCH || (msg.n_items > 0 && msg.padded_tokens * 2 >= self.config.max_batch_tokens) {
            let sample = msg.elapsed / msg.n_items as u32;
            let cost = &mut self.costs[msg.model];
            cost.input_cost = Some(cost.input_cost.map_or(sample, |ema| ema.mul_f64(0.8) + sample.mul_f64(0.2)));
        }
        self.dispatch();
    }
}

impl Message<CostSample> for Batcher {
    type Reply = ();

    async fn handle(&mut self, msg: CostSample, _ctx: &mut Context<Self, Self::Reply>) {
        self.record_cost(msg.model, msg.padded_tokens, msg.elapsed);
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

impl Message<ThermalChange> for Batcher {
    type Reply = ();

    async fn handle(&mut self, msg: ThermalChange, _ctx: &mut Context<Self, Self::Reply>) {
        let entering_hard = msg.state == ThermalState::Hard && self.thermal.0 != ThermalState::Hard;
        self.thermal = (msg.state, msg.message);
        if entering_hard {
            // Queued normal and bulk work would keep the device hot: refuse it now, as new requests are refused.
            let error = ServeError::Overloaded(format!("{}: only realtime requests are served", self.thermal.1));
            for class in [Priority::Normal, Priority::Bulk] {
                for item in self.queues.drain_class(class) {
                    item.fail(error.clone());
                }
            }
        }
        self.dispatch();
    }
}

impl Message<SetSupervisor> for Batcher {
    type Reply = ();

    async fn handle(&mut self, msg: SetSupervisor, _ctx: &mut Context<Self, Self::Reply>) {
        self.supervisor = Some(msg.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refill_wait_is_a_tenth_of_a_cheap_batch_and_a_fiftieth_of_a_dear_one() {
        assert_eq!(refill_wait(Duration::from_millis(5)), Duration::from_micros(500));
        assert_eq!(refill_wait(Duration::from_millis(50)), REFILL_WAIT);
        assert_eq!(refill_wait(Duration::from_secs(1)), Duration::from_millis(20));
    }
}
