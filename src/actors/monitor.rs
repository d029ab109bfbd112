//! The monitor actor: samples every device's sensors each `monitor.interval_ms`, publishes the readings in
//! `status`, and pushes thermal state changes to the batcher (nobody polls it).

use std::sync::Arc;
use std::time::Duration;

use kameo::actor::{Actor, ActorRef};
use kameo::message::{Context, Message};

use super::batcher::{Batcher, ThermalChange};
use super::state::{lock, DaemonState};
use crate::config::{DeviceConfig, EpKind, MonitorConfig};
use crate::monitor::nvml::NvmlSource;
use crate::monitor::sysfs::SysfsSource;
use crate::monitor::thermal::{ThermalLimits, ThermalState};
use crate::monitor::{Combined, Reading, SensorSource};
use crate::protocol::message::SensorStatus;

pub(crate) struct Monitor {
    sources: Vec<Box<dyn SensorSource>>,
    /// Each device's configuration and the provider its source was chosen for: the configured one until the
    /// device reports the provider really in use (a TensorRT device that fell back to the CPU reads CPU zones).
    devices: Vec<(DeviceConfig, EpKind)>,
    config: MonitorConfig,
    limits: ThermalLimits,
    thermal: ThermalState,
    state: Arc<DaemonState>,
    batcher: ActorRef<Batcher>,
}

pub(crate) struct MonitorArgs {
    pub config: MonitorConfig,
    pub devices: Vec<DeviceConfig>,
    pub state: Arc<DaemonState>,
    pub batcher: ActorRef<Batcher>,
}

/// Timer tick: take a sample.
struct Sample;

// === impl Monitor ===

impl Actor for Monitor {
    type Args = MonitorArgs;
    type Error = std::convert::Infallible;

    async fn on_start(args: Self::Args, actor_ref: ActorRef<Self>) -> Result<Self, Self::Error> {
        let config = &args.config;
        let sources = args.devices.iter().map(|device| source_for(device, device.ep, config)).collect();
        let interval = Duration::from_millis(config.interval_ms);
        let weak = actor_ref.downgrade();
        tokio::spawn(async move {
            loop {
                let Some(actor) = weak.upgrade() else { return };
                let _ = actor.tell(Sample).try_send();
                drop(actor);
                tokio::time::sleep(interval).await;
            }
        });
        let limits = ThermalLimits {
            soft_c: config.soft_c,
            hard_c: config.hard_c,
            hysteresis_c: config.hysteresis_c,
            power_cap_w: config.power_cap_w,
        };
        {
            let mut thermal = lock(&args.state.thermal);
            thermal.soft_c = limits.soft_c;
            thermal.hard_c = limits.hard_c;
        }
        Ok(Monitor {
            sources,
            devices: args.devices.iter().map(|d| (d.clone(), d.ep)).collect(),
            config: args.config.clone(),
            limits,
            thermal: ThermalState::Normal,
            state: args.state,
            batcher: args.batcher,
        })
    }
}

impl Monitor {
    /// Rebuilds a device's sensor source when the provider it really runs on differs from the one it was chosen
    /// for.
    fn follow_active_provider(&mut self, index: usize) {
        let active = lock(&self.state.devices[index].ep).clone();
        let Some(active) = EpKind::parse(&active) else { return };
        let (device, chosen_for) = &mut self.devices[index];
        if *chosen_for != active {
            tracing::info!(device = index, configured = %device.ep, active = %active, "sensors follow the provider in use");
            *chosen_for = active;
            self.sources[index] = source_for(device, active, &self.config);
        }
    }
}

/// GPU providers: NVML, with sysfs (GPU zones) for what NVML does not tell. CPU (and CoreML): sysfs CPU zones.
fn source_for(device: &DeviceConfig, ep: EpKind, config: &MonitorConfig) -> Box<dyn SensorSource> {
    let gpu = matches!(ep, EpKind::Cuda | EpKind::Tensorrt);
    let zones = if gpu { config.gpu_zones.clone() } else { config.cpu_zones.clone() };
    let sysfs = SysfsSource {
        root: config.sysfs_root.clone(),
        zones,
    };
    Box::new(Combined {
        nvml: gpu.then(|| NvmlSource::new(device.device_id)),
        sysfs,
    })
}

fn to_status(reading: Reading) -> SensorStatus {
    SensorStatus {
        temperature_c: reading.temperature_c,
        power_w: reading.power_w,
        power_limit_w: reading.power_limit_w,
        utilization_pct: reading.utilization_pct,
        sm_clock_mhz: reading.sm_clock_mhz,
        mem_clock_mhz: reading.mem_clock_mhz,
        memory_used_mib: reading.memory_used_mib,
        throttle: reading.throttle,
        perf_state: reading.perf_state,
        source: reading.source,
        unknown: reading.unknown_reason,
    }
}

impl Message<Sample> for Monitor {
    type Reply = ();

    async fn handle(&mut self, _msg: Sample, _ctx: &mut Context<Self, Self::Reply>) {
        let mut hottest: Option<f64> = None;
        let mut power: Option<f64> = None;
        for index in 0..self.sources.len() {
            self.follow_active_provider(index);
            let reading = self.sources[index].read();
            if let Some(t) = reading.temperature_c {
                hottest = Some(hottest.map_or(t, |h| h.max(t)));
            }
            if let Some(p) = reading.power_w {
                power = Some(power.map_or(p, |q| q.max(p)));
            }
            let status = to_status(reading);
            // Logged once, at the first sample; status keeps showing the reason.
            let first_unknown = status.unknown.clone();
            let previous = lock(&self.state.devices[index].sensors).replace(status);
            if let (None, Some(reason)) = (previous, first_unknown) {
                tracing::info!(device = index, %reason, "some sensor readings are unknown");
            }
        }
        let next = self.limits.next(self.thermal, hottest, power);
        {
            let mut thermal = lock(&self.state.thermal);
            thermal.hottest_c = hottest;
            if next != self.thermal {
                thermal.state = next.as_str().to_owned();
                thermal.transitions += 1;
            }
        }
        if next == self.thermal {
            return;
        }
        let reason = match (hottest, power) {
            (Some(t), Some(p)) => format!("{t:.1} °C, {p:.1} W"),
            (Some(t), None) => format!("{t:.1} °C"),
            (None, Some(p)) => format!("{p:.1} W"),
            (None, None) => "no reading".to_owned(),
        };
        tracing::warn!(from = %self.thermal, to = %next, %reason, soft_c = self.limits.soft_c, hard_c = self.limits.hard_c, "thermal state changed");
        self.thermal = next;
        let message = format!(
            "thermal state {next} ({reason}; soft {:.0} °C, hard {:.0} °C)",
            self.limits.soft_c, self.limits.hard_c
        );
        let _ = self.batcher.tell(ThermalChange { state: next, message }).send().await;
    }
}
