//! NVML readings through nvml-wrapper. Each query is optional; a missing library (no NVIDIA driver, as on CPU
//! machines) or an unsupported query leaves that figure unknown.

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::Nvml;

use super::{Reading, SensorSource};

/// NVML for one GPU index.
pub(crate) struct NvmlSource {
    nvml: Result<Nvml, String>,
    index: u32,
}

impl NvmlSource {
    /// Initializes NVML; a failure is remembered and reported in every reading.
    pub fn new(index: u32) -> NvmlSource {
        let nvml = Nvml::init().map_err(|e| format!("NVML unavailable: {e}"));
        if let Err(reason) = &nvml {
            tracing::info!(gpu = index, %reason, "GPU readings from NVML are unknown");
        }
        NvmlSource { nvml, index }
    }
}

impl SensorSource for NvmlSource {
    fn read(&mut self) -> Reading {
        let mut reading = Reading {
            source: "nvml".into(),
            ..Reading::default()
        };
        let nvml = match &self.nvml {
            Ok(nvml) => nvml,
            Err(reason) => {
                reading.unknown_reason = Some(reason.clone());
                return reading;
            }
        };
        let device = match nvml.device_by_index(self.index) {
            Ok(device) => device,
            Err(e) => {
                reading.unknown_reason = Some(format!("GPU {} not found by NVML: {e}", self.index));
                return reading;
            }
        };
        reading.temperature_c = device.temperature(TemperatureSensor::Gpu).ok().map(f64::from);
        reading.power_w = device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0);
        reading.power_limit_w = device.enforced_power_limit().ok().map(|mw| f64::from(mw) / 1000.0);
        reading.utilization_pct = device.utilization_rates().ok().map(|u| f64::from(u.gpu));
        reading.sm_clock_mhz = device.clock_info(Clock::SM).ok().map(f64::from);
        reading.mem_clock_mhz = device.clock_info(Clock::Memory).ok().map(f64::from);
        reading.memory_used_mib = device.memory_info().ok().map(|m| m.used as f64 / (1024.0 * 1024.0));
        reading.throttle = device.current_throttle_reasons().ok().map(|r| format!("{r:?}"));
        reading.perf_state = device.performance_state().ok().map(|p| format!("{p:?}"));
        if reading.temperature_c.is_none() {
            reading.unknown_reason = Some("NVML gives no temperature for this GPU".into());
        }
        reading
    }
}
