//! The supervisor: spawns the batcher and one supervised inference actor per device, reports readiness, and
//! stops everything in order.
//!
//! Inference actors run under kameo's one-for-one supervision (`Transient`: restarted after a panic or error, not
//! after a graceful stop) with the configured restart limit. When a device exceeds it, kameo tells the supervisor
//! (`on_link_died`), which marks the device failed and tells the batcher to stop sending it work.

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use kameo::actor::{Actor, ActorId, ActorRef, Spawn, WeakActorRef};
use kameo::error::ActorStopReason;
use kameo::mailbox;
use kameo::supervision::{RestartPolicy, SupervisionStrategy};
use ort::environment::Environment;
use tokio::sync::watch;
use tokio::time::Instant;

use super::batcher::{Batcher, BatcherArgs, Drain, SetSupervisor, WorkerLost, MAILBOX};
use super::inference::{Heartbeat, InferenceActor, InferenceArgs, Startup};
use super::monitor::{Monitor, MonitorArgs};
use super::state::{lock, DaemonState, DeviceState, Phase};
use super::{DaemonHandle, ServedModel};
use crate::config::Config;

/// What the supervisor needs.
pub(crate) struct SupervisorArgs {
    pub config: Config,
    pub env: Environment,
    /// The served models, the default first (`state.model_devices` says which devices hold which).
    pub models: Arc<[ServedModel]>,
    pub state: Arc<DaemonState>,
}

pub(crate) struct Supervisor {
    state: Arc<DaemonState>,
    monitor: ActorRef<Monitor>,
    batcher: ActorRef<Batcher>,
    devices: Vec<ActorRef<InferenceActor>>,
    device_ids: HashMap<ActorId, usize>,
    startups: Vec<watch::Receiver<Startup>>,
    device_args: Vec<InferenceArgs>,
    restart_limit: (u32, Duration),
    /// Per device, when it was last replaced for being stuck (within the restart window).
    replaced: Vec<VecDeque<Instant>>,
}

/// The running actors.
pub(crate) struct Started {
    pub handle: DaemonHandle,
    supervisor: ActorRef<Supervisor>,
}

/// Asks for the refs needed to stop in order.
struct Children;

/// A device is stuck in a batch: start a fresh inference actor for it and let the stuck one go.
pub(crate) struct ReplaceDevice {
    pub index: usize,
}

/// Asks for the devices' start-up watches.
struct Startups;

// === impl Supervisor ===

impl Actor for Supervisor {
    type Args = SupervisorArgs;
    type Error = std::convert::Infallible;

    fn supervision_strategy() -> SupervisionStrategy {
        SupervisionStrategy::OneForOne
    }

    async fn on_start(args: Self::Args, actor_ref: ActorRef<Self>) -> Result<Self, Self::Error> {
        let devices_config = args.config.effective_devices();
        let batcher_args = BatcherArgs {
            config: args.config.batcher.clone(),
            state: args.state.clone(),
            // Used once a device reports that it runs on an accelerator (see `WorkerUp`).
            prefetch: vec![args.config.batcher.prefetch; devices_config.len()],
            model_devices: args.state.model_devices.clone(),
        };
        let batcher = Batcher::spawn_with_mailbox(batcher_args, mailbox::bounded(MAILBOX));
        let monitor_args = MonitorArgs {
            config: args.config.monitor.clone(),
            devices: devices_config.clone(),
            state: args.state.clone(),
            batcher: batcher.clone(),
        };
        let monitor = Monitor::spawn(monitor_args);
        let batcher_cfg = &args.config.batcher;
        let mut devices = Vec::new();
        let mut device_ids = HashMap::new();
        let mut startups = Vec::new();
        let mut device_args = Vec::new();
        let restart_limit = (batcher_cfg.max_restarts, Duration::from_secs(batcher_cfg.restart_window_s));
        let _ = batcher.tell(SetSupervisor(actor_ref.clone())).send().await;
        for (index, device) in devices_config.into_iter().enumerate() {
            let (startup_tx, startup_rx) = watch::channel(Startup::Pending);
            let inference_args = InferenceArgs {
                index,
                device,
                env: args.env.clone(),
                models: args.models.clone(),
                holds: (0..args.models.len())
                    .filter(|&model| args.state.model_devices[model].contains(&index))
                    .collect(),
                batcher: batcher.clone(),
                state: args.state.clone(),
                warmup_seq_lengths: batcher_cfg.warmup_seq_lengths.clone(),
                warmup_batch: batcher_cfg.max_batch_size.min(8),
                warmup_after_ready: batcher_cfg.warmup_after_ready,
                batch_tokens: batcher_cfg.max_batch_tokens,
                startup: Arc::new(startup_tx),
            };
            device_args.push(inference_args.clone());
            let actor = spawn_device(&actor_ref, inference_args, restart_limit).await;
            device_ids.insert(actor.id(), index);
            devices.push(actor);
            startups.push(startup_rx);
        }
        Ok(Supervisor {
            state: args.state,
            monitor,
            batcher,
            devices,
            device_ids,
            startups,
            replaced: vec![VecDeque::new(); device_args.len()],
            device_args,
            restart_limit,
        })
    }

    async fn on_stop(&mut self, _actor_ref: WeakActorRef<Self>, _reason: ActorStopReason) -> Result<(), Self::Error> {
        self.stop_monitor();
        Ok(())
    }

    async fn on_link_died(
        &mut self,
        _actor_ref: WeakActorRef<Self>,
        id: ActorId,
        reason: ActorStopReason,
    ) -> Result<ControlFlow<ActorStopReason>, Self::Error> {
        let Some(&index) = self.device_ids.get(&id) else {
            return Ok(ControlFlow::Continue(()));
        };
        if matches!(reason, ActorStopReason::Normal) || self.state.phase() == Phase::Stopping {
            return Ok(ControlFlow::Continue(()));
        }
        self.device_failed(index, reason.to_string()).await;
        Ok(ControlFlow::Continue(()))
    }
}

impl Supervisor {
    /// Marks a device failed for good: the batcher stops sending it work and the daemon reports `degraded`.
    async fn device_failed(&self, index: usize, reason: String) {
        tracing::error!(device = index, reason = %reason, "inference device gave up after its restart limit");
        let device = &self.state.devices[index];
        device.set_state(DeviceState::Failed);
        lock(&device.last_error).get_or_insert(reason);
        let _ = self.batcher.tell(WorkerLost { index }).send().await;
        self.state.set_phase(Phase::Degraded);
    }

    /// The monitor goes with the supervisor.
    fn stop_monitor(&self) {
        self.monitor.kill();
    }
}

impl kameo::message::Message<Children> for Supervisor {
    type Reply = (ActorRef<Batcher>, Vec<ActorRef<InferenceActor>>);

    async fn handle(&mut self, _msg: Children, _ctx: &mut kameo::message::Context<Self, Self::Reply>) -> Self::Reply {
        (self.batcher.clone(), self.devices.clone())
    }
}

impl kameo::message::Message<Startups> for Supervisor {
    type Reply = Vec<watch::Receiver<Startup>>;

    async fn handle(&mut self, _msg: Startups, _ctx: &mut kameo::message::Context<Self, Self::Reply>) -> Self::Reply {
        self.startups.clone()
    }
}

/// One supervised inference actor on its own thread.
async fn spawn_device(
    supervisor: &ActorRef<Supervisor>,
    args: InferenceArgs,
    (restarts, window): (u32, Duration),
) -> ActorRef<InferenceActor> {
    InferenceActor::supervise(supervisor, args)
        .restart_policy(RestartPolicy::Transient)
        .restart_limit(restarts, window)
        .spawn_in_thread()
        .await
}

impl kameo::message::Message<ReplaceDevice> for Supervisor {
    type Reply = ();

    async fn handle(&mut self, msg: ReplaceDevice, ctx: &mut kameo::message::Context<Self, Self::Reply>) {
        let index = msg.index;
        let stuck = self.devices[index].clone();
        // The stuck actor's thread cannot be interrupted inside ONNX Runtime; it stops once its batch returns.
        self.device_ids.remove(&stuck.id());
        tokio::spawn(async move {
            let _ = stuck.stop_gracefully().await;
        });
        // Replacements count against the same limit as restarts after a panic (separately from them): a device
        // that keeps getting stuck is given up on.
        let (limit, window) = self.restart_limit;
        let now = Instant::now();
        let history = &mut self.replaced[index];
        history.retain(|at| now.duration_since(*at) < window);
        if history.len() >= limit as usize {
            let reason = format!(
                "stuck in a batch {} times within {} s (max_restarts {limit})",
                history.len() + 1,
                window.as_secs()
            );
            self.device_failed(index, reason).await;
            return;
        }
        history.push_back(now);
        self.state.devices[index].set_state(DeviceState::Restarting);
        let fresh = spawn_device(ctx.actor_ref(), self.device_args[index].clone(), self.restart_limit).await;
        self.device_ids.insert(fresh.id(), index);
        self.devices[index] = fresh;
    }
}

/// Spawns the supervisor (which spawns everything else) and returns the handle the server uses.
pub(crate) async fn start(args: SupervisorArgs) -> Started {
    let state = args.state.clone();
    let models = args.models.clone();
    let supervisor = Supervisor::spawn(args);
    let (batcher, _) = supervisor.ask(Children).await.expect("the supervisor starts without failing");
    Started {
        handle: DaemonHandle { state, models, batcher },
        supervisor,
    }
}

// === impl Started ===

impl Started {
    /// Waits until every device is warm (Ok) or one failed to start (Err with its error, and whether the model
    /// rather than the device is at fault). The caller moves the daemon to `Phase::Ready`.
    pub async fn wait_ready(&self) -> Result<(), (String, bool)> {
        let startups = self.supervisor.ask(Startups).await.map_err(|e| (e.to_string(), false))?;
        for (index, mut startup) in startups.into_iter().enumerate() {
            let outcome = startup
                .wait_for(|s| *s != Startup::Pending)
                .await
                .map_err(|e| (e.to_string(), false))?
                .clone();
            if let Startup::Failed { message, model_error } = outcome {
                return Err((format!("device {index}: {message}"), model_error));
            }
        }
        Ok(())
    }

    /// What the graceful stop needs to cut work short at the end of its grace period.
    pub fn work_stopper(&self) -> WorkStopper {
        WorkStopper {
            supervisor: self.supervisor.clone(),
            state: self.handle.state.clone(),
        }
    }

    /// What the watchdog needs to check the devices.
    pub fn clone_for_heartbeat(&self) -> Heartbeats {
        Heartbeats {
            supervisor: self.supervisor.clone(),
            state: self.handle.state.clone(),
        }
    }

    /// Stops in order: fail what is still queued, stop the inference actors (letting a running batch finish),
    /// then the batcher and the supervisor. Waits at most `timeout` in all, however many devices there are (a
    /// device stuck in a batch is left behind; the process exits without it).
    pub async fn stop(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let Ok((batcher, devices)) = self.supervisor.ask(Children).await else {
            return;
        };
        let _ = batcher.tell(Drain).send().await;
        for device in &devices {
            let _ = device.stop_gracefully().await;
        }
        for device in &devices {
            if tokio::time::timeout_at(deadline, device.wait_for_shutdown()).await.is_err() {
                tracing::warn!("an inference device did not stop in time");
            }
        }
        let _ = batcher.stop_gracefully().await;
        let _ = self.supervisor.stop_gracefully().await;
        let _ = tokio::time::timeout_at(deadline, self.supervisor.wait_for_shutdown()).await;
    }
}

/// Ends the work still in progress when a graceful stop runs out of time.
pub(crate) struct WorkStopper {
    supervisor: ActorRef<Supervisor>,
    state: Arc<DaemonState>,
}

impl WorkStopper {
    /// Answers what is still queued `shutting_down` and stops the runs in progress (their requests are answered
    /// `shutting_down` too), so that every request read before the stop gets its reply before the connections
    /// close, however long its batch would have run.
    pub async fn stop_work(&self) {
        tracing::warn!("grace period ending: answering queued work shutting_down and stopping the runs in progress");
        // First no new batch runs (the inference actors answer them `shutting_down` at once), then the runs in
        // progress stop; otherwise a stopped batch would only make room for the next one.
        self.state.work_cut.store(true, std::sync::atomic::Ordering::Release);
        let mut stopped = 0;
        for device in &self.state.devices {
            if let Some(stopper) = super::state::lock(&device.stopper).as_ref() {
                stopper.stop();
                stopped += 1;
            }
        }
        tracing::info!(devices = stopped, "runs in progress asked to stop");
        if let Ok(Ok((batcher, _))) = tokio::time::timeout(Duration::from_millis(200), self.supervisor.ask(Children)).await {
            let _ = batcher.tell(Drain).try_send();
        }
    }
}

/// Checks that the devices answer (for systemd's watchdog).
pub(crate) struct Heartbeats {
    supervisor: ActorRef<Supervisor>,
    state: Arc<DaemonState>,
}

impl Heartbeats {
    /// Whether every device that has not given up is working or idle, for the watchdog. A device running a
    /// batch is working until the batcher's stuck deadline for that batch (scaled by its tokens: a long batch
    /// on a slow device is not a hang); a device being restarted or replaced is warming up; an idle device
    /// must answer a heartbeat within `timeout`.
    pub async fn all_alive(&self, timeout: Duration) -> bool {
        let Ok((_, devices)) = self.supervisor.ask(Children).await else {
            return false;
        };
        let now = tokio::time::Instant::now();
        for (index, device) in devices.iter().enumerate() {
            let shared = &self.state.devices[index];
            match shared.state() {
                DeviceState::Failed | DeviceState::Starting | DeviceState::Restarting => continue,
                DeviceState::Ready | DeviceState::Busy => {}
            }
            if let Some(deadline) = *super::state::lock(&shared.stuck_deadline) {
                if now < deadline {
                    continue;
                }
                tracing::warn!(device = index, "inference device past its stuck deadline; not feeding the watchdog");
                return false;
            }
            if !matches!(tokio::time::timeout(timeout, device.ask(Heartbeat)).await, Ok(Ok(()))) {
                tracing::warn!(device = index, "inference device missed its heartbeat; not feeding the watchdog");
                return false;
            }
        }
        true
    }
}
