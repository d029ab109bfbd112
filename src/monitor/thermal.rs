//! The thermal policy: soft and hard temperature limits and an optional power cap, with hysteresis.
//!
//! Above soft (or over the power cap) the batcher halves its token budget and defers bulk; above hard it refuses
//! bulk and normal work and serves realtime only. The state falls back only once the temperature is below the
//! limit minus the hysteresis, so a reading hovering at a limit does not flap.

use std::fmt;

/// Thermal state, mildest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThermalState {
    /// Normal service.
    Normal,
    /// Smaller batches, bulk deferred.
    Soft,
    /// Realtime only.
    Hard,
}

/// Limits of the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThermalLimits {
    /// Soft limit, °C.
    pub soft_c: f64,
    /// Hard limit, °C.
    pub hard_c: f64,
    /// Degrees below a limit before its state is left.
    pub hysteresis_c: f64,
    /// Power above which the state is at least soft, watts.
    pub power_cap_w: Option<f64>,
}

impl ThermalLimits {
    /// The next state from the current one and the hottest reading (None: unknown, which changes nothing).
    pub fn next(&self, current: ThermalState, temperature_c: Option<f64>, power_w: Option<f64>) -> ThermalState {
        let over_power = matches!((self.power_cap_w, power_w), (Some(cap), Some(p)) if p > cap);
        let Some(t) = temperature_c else {
            return if over_power { current.max(ThermalState::Soft) } else { current };
        };
        let stays_hard = current == ThermalState::Hard && t > self.hard_c - self.hysteresis_c;
        let stays_soft = current >= ThermalState::Soft && t > self.soft_c - self.hysteresis_c;
        let by_temperature = if t >= self.hard_c || stays_hard {
            ThermalState::Hard
        } else if t >= self.soft_c || stays_soft {
            ThermalState::Soft
        } else {
            ThermalState::Normal
        };
        if over_power {
            by_temperature.max(ThermalState::Soft)
        } else {
            by_temperature
        }
    }
}

impl ThermalState {
    /// The name in status and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ThermalState::Normal => "normal",
            ThermalState::Soft => "soft",
            ThermalState::Hard => "hard",
        }
    }
}

impl fmt::Display for ThermalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ThermalState::*;
    use super::*;

    const LIMITS: ThermalLimits = ThermalLimits {
        soft_c: 80.0,
        hard_c: 90.0,
        hysteresis_c: 5.0,
        power_cap_w: Some(30.0),
    };

    #[test]
    fn rises_through_the_limits() {
        assert_eq!(LIMITS.next(Normal, Some(79.9), None), Normal);
        assert_eq!(LIMITS.next(Normal, Some(80.0), None), Soft);
        assert_eq!(LIMITS.next(Normal, Some(95.0), None), Hard);
    }

    #[test]
    fn falls_back_only_below_limit_minus_hysteresis() {
        assert_eq!(LIMITS.next(Hard, Some(86.0), None), Hard);
        assert_eq!(LIMITS.next(Hard, Some(85.0), None), Soft);
        assert_eq!(LIMITS.next(Soft, Some(76.0), None), Soft);
        assert_eq!(LIMITS.next(Soft, Some(75.0), None), Normal);
    }

    #[test]
    fn power_cap_and_unknown_readings() {
        assert_eq!(LIMITS.next(Normal, Some(50.0), Some(31.0)), Soft);
        assert_eq!(LIMITS.next(Normal, None, Some(31.0)), Soft);
        assert_eq!(LIMITS.next(Hard, None, None), Hard, "an unknown reading changes nothing");
        assert_eq!(LIMITS.next(Normal, None, None), Normal);
    }
}
