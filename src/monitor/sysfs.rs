//! sysfs readings: thermal zones (`/sys/class/thermal/thermal_zone*/{type,temp}`), hwmon power rails
//! (INA3221 / INA238 on Jetson: `/sys/class/hwmon/hwmon*/{name,power*_input}` or `in*_input` × `curr*_input`) and
//! devfreq GPU clocks (`/sys/class/devfreq/*gpu*/cur_freq`). The root and the zone types are configurable, so tests
//! read fake trees made in a temp dir.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Reading, SensorSource};

/// sysfs under `root`, looking for thermal zones whose type is one of `zones` (first match wins, in that order).
pub(crate) struct SysfsSource {
    pub root: PathBuf,
    pub zones: Vec<String>,
}

fn read_number(path: &Path) -> Option<f64> {
    fs::read_to_string(path).ok()?.trim().parse::<f64>().ok()
}

fn entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// What [`SysfsSource`] would read on this machine: for `akidbd --doctor`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SysfsInventory {
    /// Each thermal zone: its directory name, type and temperature in °C (None: unreadable).
    pub zones: Vec<(String, String, Option<f64>)>,
    /// Each INA power monitor: its hwmon directory name, chip name, and power in watts (None: no rail reads).
    pub power_monitors: Vec<(String, String, Option<f64>)>,
    /// Each GPU devfreq node: its name and clock in MHz.
    pub gpu_clocks: Vec<(String, Option<f64>)>,
}

/// Lists the thermal zones, INA power monitors and GPU devfreq nodes under `root` (a sysfs mount), the same
/// files the monitor reads.
pub fn inventory(root: &Path) -> SysfsInventory {
    let name_of = |path: &Path| path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let zones = entries(&root.join("class/thermal"), "thermal_zone")
        .into_iter()
        .map(|zone| {
            let kind = fs::read_to_string(zone.join("type")).unwrap_or_default().trim().to_owned();
            (name_of(&zone), kind, read_number(&zone.join("temp")).map(|milli| milli / 1000.0))
        })
        .collect();
    let power_monitors = entries(&root.join("class/hwmon"), "hwmon")
        .into_iter()
        .filter_map(|hwmon| {
            let chip = fs::read_to_string(hwmon.join("name")).ok()?.trim().to_owned();
            chip.starts_with("ina")
                .then(|| (name_of(&hwmon), chip, hwmon_power_uw(&hwmon).map(|uw| uw / 1_000_000.0)))
        })
        .collect();
    let gpu_clocks = gpu_devfreq(root)
        .into_iter()
        .map(|node| (name_of(&node), read_number(&node.join("cur_freq")).map(|hz| hz / 1_000_000.0)))
        .collect();
    SysfsInventory {
        zones,
        power_monitors,
        gpu_clocks,
    }
}

/// The power one INA hwmon device reports, in microwatts: its `power*_input` files, or (INA3221) voltage (mV) ×
/// current (mA) per channel.
fn hwmon_power_uw(hwmon: &Path) -> Option<f64> {
    let mut total_uw = 0.0;
    let mut any = false;
    for power in entries(hwmon, "power") {
        if power.to_string_lossy().ends_with("_input") {
            if let Some(uw) = read_number(&power) {
                total_uw += uw;
                any = true;
            }
        }
    }
    // INA3221 exposes voltage (mV) and current (mA) per rail instead of power.
    for channel in 1..=3 {
        let volts = read_number(&hwmon.join(format!("in{channel}_input")));
        let amps = read_number(&hwmon.join(format!("curr{channel}_input")));
        if let (Some(mv), Some(ma)) = (volts, amps) {
            total_uw += mv * ma;
            any = true;
        }
    }
    any.then_some(total_uw)
}

/// The devfreq nodes that are a GPU (`*gpu*`, Jetson's `gv11b` / `ga10b`).
fn gpu_devfreq(root: &Path) -> Vec<PathBuf> {
    entries(&root.join("class/devfreq"), "")
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy().to_lowercase();
            name.contains("gpu") || name.contains("gv11b") || name.contains("ga10b")
        })
        .collect()
}

impl SysfsSource {
    /// The temperature of the first zone (in `zones` order) that reads, in °C (sysfs gives millidegrees).
    fn temperature(&self) -> Result<f64, String> {
        let dir = self.root.join("class/thermal");
        let zones: Vec<(String, PathBuf)> = entries(&dir, "thermal_zone")
            .into_iter()
            .filter_map(|zone| Some((fs::read_to_string(zone.join("type")).ok()?.trim().to_owned(), zone)))
            .collect();
        if zones.is_empty() {
            return Err(format!("no thermal zone under {}", dir.display()));
        }
        for wanted in &self.zones {
            for (kind, zone) in &zones {
                if kind.eq_ignore_ascii_case(wanted) {
                    if let Some(milli) = read_number(&zone.join("temp")) {
                        return Ok(milli / 1000.0);
                    }
                }
            }
        }
        let found: Vec<&str> = zones.iter().map(|(k, _)| k.as_str()).collect();
        Err(format!("no thermal zone of type {:?} (found {found:?})", self.zones))
    }

    /// Total power of the hwmon power monitors (INA3221/INA238), in watts.
    fn power(&self) -> Option<f64> {
        let mut total_uw = 0.0;
        let mut any = false;
        for hwmon in entries(&self.root.join("class/hwmon"), "hwmon") {
            let name = fs::read_to_string(hwmon.join("name")).unwrap_or_default();
            if !name.trim().starts_with("ina") {
                continue;
            }
            if let Some(uw) = hwmon_power_uw(&hwmon) {
                total_uw += uw;
                any = true;
            }
        }
        any.then_some(total_uw / 1_000_000.0)
    }

    /// The GPU's devfreq clock in MHz (sysfs gives Hz).
    fn gpu_clock(&self) -> Option<f64> {
        gpu_devfreq(&self.root)
            .into_iter()
            .find_map(|p| read_number(&p.join("cur_freq")))
            .map(|hz| hz / 1_000_000.0)
    }
}

impl SensorSource for SysfsSource {
    fn read(&mut self) -> Reading {
        let mut reading = Reading {
            source: "sysfs".into(),
            ..Reading::default()
        };
        match self.temperature() {
            Ok(celsius) => reading.temperature_c = Some(celsius),
            Err(reason) => reading.unknown_reason = Some(reason),
        }
        reading.power_w = self.power();
        reading.sm_clock_mhz = self.gpu_clock();
        reading
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn jetson_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "class/thermal/thermal_zone0/type", "cpu-thermal\n");
        write(root, "class/thermal/thermal_zone0/temp", "48500\n");
        write(root, "class/thermal/thermal_zone1/type", "gpu-thermal\n");
        write(root, "class/thermal/thermal_zone1/temp", "61250\n");
        write(root, "class/thermal/thermal_zone2/type", "tj-thermal\n");
        write(root, "class/thermal/thermal_zone2/temp", "63000\n");
        write(root, "class/hwmon/hwmon1/name", "ina3221\n");
        write(root, "class/hwmon/hwmon1/in1_input", "5000\n");
        write(root, "class/hwmon/hwmon1/curr1_input", "1200\n");
        write(root, "class/hwmon/hwmon1/in2_input", "5000\n");
        write(root, "class/hwmon/hwmon1/curr2_input", "400\n");
        write(root, "class/hwmon/hwmon0/name", "nvme\n");
        write(root, "class/hwmon/hwmon0/power1_input", "99000000\n");
        write(root, "class/devfreq/17000000.gpu/cur_freq", "918000000\n");
        dir
    }

    #[test]
    fn jetson_zones_power_rails_and_gpu_clock() {
        let tree = jetson_tree();
        let mut source = SysfsSource {
            root: tree.path().to_owned(),
            zones: vec!["gpu-thermal".into(), "tj-thermal".into()],
        };
        let reading = source.read();
        assert_eq!(reading.temperature_c, Some(61.25));
        assert_eq!(
            reading.power_w,
            Some(8.0),
            "5 V x 1.2 A + 5 V x 0.4 A; the nvme sensor is not a power rail"
        );
        assert_eq!(reading.sm_clock_mhz, Some(918.0));
        assert_eq!(reading.unknown_reason, None);
    }

    #[test]
    fn the_inventory_lists_what_the_monitor_reads() {
        let tree = jetson_tree();
        let found = inventory(tree.path());
        let kinds: Vec<&str> = found.zones.iter().map(|(_, kind, _)| kind.as_str()).collect();
        assert_eq!(kinds, ["cpu-thermal", "gpu-thermal", "tj-thermal"]);
        assert_eq!(found.zones[1].2, Some(61.25));
        assert_eq!(found.power_monitors, vec![("hwmon1".into(), "ina3221".into(), Some(8.0))]);
        assert_eq!(found.gpu_clocks, vec![("17000000.gpu".into(), Some(918.0))]);
        assert_eq!(inventory(Path::new("/nonexistent")), SysfsInventory::default());
    }

    #[test]
    fn zone_order_is_the_configured_preference() {
        let tree = jetson_tree();
        let mut source = SysfsSource {
            root: tree.path().to_owned(),
            zones: vec!["tj-thermal".into(), "gpu-thermal".into()],
        };
        assert_eq!(source.read().temperature_c, Some(63.0));
    }

    #[test]
    fn ina238_power_input_in_microwatts() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "class/hwmon/hwmon3/name", "ina238\n");
        write(dir.path(), "class/hwmon/hwmon3/power1_input", "12500000\n");
        let mut source = SysfsSource {
            root: dir.path().to_owned(),
            zones: vec!["gpu".into()],
        };
        let reading = source.read();
        assert_eq!(reading.power_w, Some(12.5));
        assert!(reading.temperature_c.is_none());
        assert!(reading.unknown_reason.unwrap().contains("no thermal zone"));
    }

    #[test]
    fn missing_or_garbled_files_are_unknown_not_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "class/thermal/thermal_zone0/type", "cpu\n");
        write(dir.path(), "class/thermal/thermal_zone0/temp", "not a number\n");
        let mut source = SysfsSource {
            root: dir.path().to_owned(),
            zones: vec!["cpu".into()],
        };
        let reading = source.read();
        assert_eq!(reading.temperature_c, None);
        assert!(reading.unknown_reason.unwrap().contains("found [\"cpu\"]"));
        let mut nothing = SysfsSource {
            root: PathBuf::from("/nonexistent"),
            zones: vec!["cpu".into()],
        };
        assert!(nothing.read().unknown_reason.is_some());
    }
}
