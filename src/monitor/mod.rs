//! Device sensors and the thermal policy: NVML for NVIDIA GPUs, sysfs for Jetson and CPU machines.
//!
//! Every reading is optional: a missing driver, an unsupported query or a lost GPU yields "unknown" with a reason,
//! never an error or a panic. [`SensorSource`] is the one trait the monitor actor reads through, so tests drive the
//! real actor and batcher with fake sysfs trees. [`thermal`] turns readings into a Normal/Soft/Hard state with
//! hysteresis. This module knows nothing of actors or sockets.

pub(crate) mod nvml;
pub(crate) mod sysfs;
pub(crate) mod thermal;

/// One sample of a device's sensors. `None` = not known.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// Degrees Celsius.
    pub temperature_c: Option<f64>,
    /// Watts drawn.
    pub power_w: Option<f64>,
    /// Enforced power limit, watts.
    pub power_limit_w: Option<f64>,
    /// GPU utilization, percent.
    pub utilization_pct: Option<f64>,
    /// SM (or GPU devfreq) clock, MHz.
    pub sm_clock_mhz: Option<f64>,
    /// Memory clock, MHz.
    pub mem_clock_mhz: Option<f64>,
    /// Device memory in use, MiB.
    pub memory_used_mib: Option<f64>,
    /// Active throttle reasons, as NVML names them.
    pub throttle: Option<String>,
    /// Performance state (P0 fastest).
    pub perf_state: Option<String>,
    /// Where the figures came from ("nvml", "sysfs", "nvml+sysfs").
    pub source: String,
    /// Why some or all figures are unknown.
    pub unknown_reason: Option<String>,
}

/// Something that can be sampled for a device's readings.
pub trait SensorSource: Send {
    /// Takes one sample. Never fails: what cannot be read is `None`, with the reason in `unknown_reason`.
    fn read(&mut self) -> Reading;
}

/// NVML first, with whatever it cannot tell filled in from sysfs (Jetson's NVML reports little or nothing).
pub(crate) struct Combined {
    pub nvml: Option<nvml::NvmlSource>,
    pub sysfs: sysfs::SysfsSource,
}

impl SensorSource for Combined {
    fn read(&mut self) -> Reading {
        let from_sysfs = self.sysfs.read();
        let Some(nvml) = self.nvml.as_mut() else { return from_sysfs };
        let mut reading = nvml.read();
        let mut filled = false;
        let mut fill = |slot: &mut Option<f64>, value: Option<f64>| {
            if slot.is_none() && value.is_some() {
                *slot = value;
                filled = true;
            }
        };
        fill(&mut reading.temperature_c, from_sysfs.temperature_c);
        fill(&mut reading.power_w, from_sysfs.power_w);
        fill(&mut reading.sm_clock_mhz, from_sysfs.sm_clock_mhz);
        if filled {
            reading.source = format!("{}+sysfs", reading.source);
        }
        if reading.temperature_c.is_some() {
            reading.unknown_reason = None;
        } else if let (Some(a), Some(b)) = (&reading.unknown_reason, &from_sysfs.unknown_reason) {
            reading.unknown_reason = Some(format!("{a}; {b}"));
        }
        reading
    }
}
