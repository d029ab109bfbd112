//! `akidbd --doctor`: what this machine offers akidbd, what the configuration would load, and for each problem the
//! fix. Needs no daemon and starts none.
//!
//! It reports the architecture and, on a Jetson, the model (`/proc/device-tree/model`) and L4T release
//! (`/etc/nv_tegra_release`); every ONNX Runtime library found ([`crate::engine::runtime`]) with its version and
//! providers, and the one the configuration would load; the CUDA, cuDNN and TensorRT libraries (versions from file
//! names); whether NVML answers; the thermal zones and power rails the monitor would read; the model directories;
//! the socket's directory. Every path it reads from the machine is taken under a root prefix (`--root`), so tests
//! run it over fake trees. Libraries are probed in child processes (`akidbd --probe-ort-library`): a library that
//! crashes while loading is reported, not fatal. This module is not the daemon's start-up: it only predicts it.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::config::{Config, DeviceConfig, EpKind};
use crate::engine::runtime::{self, LibraryProbe, SearchEnv};
use crate::engine::{ModelInfo, SETUP_ORT_LIBRARY};
use crate::monitor::sysfs;

/// How long one library probe may take before its process is killed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// The GPU libraries reported, by what they are and the file name stem the version follows.
const GPU_LIBRARIES: [(&str, &str); 3] = [
    ("CUDA runtime", "libcudart.so"),
    ("cuDNN", "libcudnn.so"),
    ("TensorRT", "libnvinfer.so"),
];

/// What the doctor is asked to look at.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// Prefix of every machine path read (`/` on the machine itself).
    pub root: PathBuf,
    /// The configuration, or why it could not be read (the doctor then reports on the defaults).
    pub config: Result<Config, String>,
    /// The program that probes a library (`akidbd`, run as `PROGRAM --probe-ort-library PATH`); None: no probes.
    pub prober: Option<PathBuf>,
    /// `ORT_DYLIB_PATH`.
    pub dylib_env: Option<PathBuf>,
    /// `LD_LIBRARY_PATH`, `HOME`, `VIRTUAL_ENV`.
    pub search_env: SearchEnv,
}

/// One problem and its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub what: String,
    /// What to do about it.
    pub fix: String,
    /// The configured service could not start because of it.
    pub fatal: bool,
}

/// The doctor's findings: the text to print and the problems.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The report, one section after another.
    pub text: String,
    /// Every problem found, in the order found.
    pub problems: Vec<Problem>,
}

/// A Jetson's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetsonInfo {
    /// `/proc/device-tree/model`, e.g. "NVIDIA Jetson AGX Orin Developer Kit".
    pub model: Option<String>,
    /// The L4T release from `/etc/nv_tegra_release`, e.g. "R36.4.3".
    pub l4t: Option<String>,
}

// === impl Report ===

impl Report {
    /// Whether the configured service could start, as far as the doctor can tell.
    pub fn can_start(&self) -> bool {
        !self.problems.iter().any(|p| p.fatal)
    }

    fn line(&mut self, text: impl AsRef<str>) {
        self.text.push_str(text.as_ref());
        self.text.push('\n');
    }

    fn problem(&mut self, fatal: bool, what: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Problem {
            what: what.into(),
            fix: fix.into(),
            fatal,
        });
    }
}

/// Looks at the machine and the configuration and writes the report.
pub fn examine(options: &DoctorOptions) -> Report {
    let mut report = Report::default();
    report.line(format!(
        "akidb doctor (akidbd {}, root {})",
        env!("CARGO_PKG_VERSION"),
        options.root.display()
    ));
    let config = match &options.config {
        Ok(config) => config.clone(),
        Err(message) => {
            report.problem(
                true,
                format!("configuration: {message}"),
                "fix the file (akidbd --config FILE --check-config)",
            );
            Config::default()
        }
    };
    machine(&mut report, &options.root);
    let loaded = onnx_runtime(&mut report, options, &config);
    gpu_libraries(&mut report, &options.root, loaded.as_deref(), &options.search_env);
    nvml(&mut report, &config, jetson_info(&options.root).is_some());
    sensors(&mut report, options, &config);
    models(&mut report, &options.root, &config);
    socket(&mut report, &options.root, &config);
    summary(&mut report);
    report
}

/// Reads `/proc/device-tree/model` and `/etc/nv_tegra_release` under `root`; None when neither says Jetson.
pub fn jetson_info(root: &Path) -> Option<JetsonInfo> {
    let model = std::fs::read(runtime::under_root(root, Path::new("/proc/device-tree/model")))
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).trim_end_matches(['\0', '\n', ' ']).to_owned())
        .filter(|m| !m.is_empty());
    let l4t = std::fs::read_to_string(runtime::under_root(root, Path::new("/etc/nv_tegra_release")))
        .ok()
        .and_then(|text| l4t_release(&text));
    let is_jetson = model.as_deref().is_some_and(|m| m.contains("Jetson") || m.contains("Tegra")) || l4t.is_some();
    is_jetson.then_some(JetsonInfo { model, l4t })
}

/// "R36.4.3" from `# R36 (release), REVISION: 4.3, GCID: ..., BOARD: ..., EABI: aarch64, DATE: ...`.
pub fn l4t_release(text: &str) -> Option<String> {
    let first = text.lines().find(|line| line.contains("REVISION"))?;
    let major = first
        .trim_start_matches(['#', ' '])
        .split_whitespace()
        .next()?
        .trim_start_matches('R');
    let revision = first.split("REVISION:").nth(1)?.split(',').next()?.trim();
    (!major.is_empty() && major.chars().all(|c| c.is_ascii_digit())).then(|| format!("R{major}.{revision}"))
}

/// The JetPack major release an L4T release belongs to (R35 → 5, R36 → 6, R38 → 7).
pub fn jetpack_of(l4t: &str) -> Option<u32> {
    let major: u32 = l4t.trim_start_matches('R').split('.').next()?.parse().ok()?;
    match major {
        32 => Some(4),
        35 => Some(5),
        36 => Some(6),
        38 => Some(7),
        _ => None,
    }
}

/// The most specific version in `dirs` of `stem.*` from file names (`libnvinfer.so.10.3.0` → "10.3.0"), with the
/// directory it is in.
pub fn library_version(dirs: &[PathBuf], stem: &str) -> Option<(String, PathBuf)> {
    let prefix = format!("{stem}.");
    let mut best: Option<(String, PathBuf)> = None;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name
                .strip_prefix(&prefix)
                .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
            else {
                continue;
            };
            if best.as_ref().is_none_or(|(seen, _)| version.len() > seen.len()) {
                best = Some((version.to_owned(), dir.clone()));
            }
        }
        if best.is_some() {
            return best;
        }
    }
    best
}

/// Runs `prober --probe-ort-library library` and reads its JSON answer; a crash or a hang is an error.
pub fn probe_in_child(prober: &Path, library: &Path) -> Result<LibraryProbe, String> {
    let mut child = Command::new(prober)
        .arg("--probe-ort-library")
        .arg(library)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", prober.display()))?;
    let started = std::time::SystemTime::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed().unwrap_or_default() > PROBE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s (killed)", PROBE_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for the probe: {e}")),
        }
    }
    let output = child.wait_with_output().map_err(|e| format!("reading the probe: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(match std::os::unix::process::ExitStatusExt::signal(&output.status) {
            Some(signal) => format!("crashed while loading (signal {signal})"),
            None if stderr.is_empty() => format!("probe failed ({})", output.status),
            None => stderr,
        });
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("unreadable probe answer: {e}"))
}

fn machine(report: &mut Report, root: &Path) {
    report.line("\nmachine");
    report.line(format!("  architecture: {}", std::env::consts::ARCH));
    match jetson_info(root) {
        Some(info) => {
            let model = info.model.as_deref().unwrap_or("(no /proc/device-tree/model)");
            let release = match &info.l4t {
                Some(l4t) => match jetpack_of(l4t) {
                    Some(jetpack) => format!("L4T {l4t} (JetPack {jetpack})"),
                    None => format!("L4T {l4t}"),
                },
                None => "no /etc/nv_tegra_release".into(),
            };
            report.line(format!("  jetson: {model}, {release}"));
        }
        None => report.line("  jetson: no (no Jetson /proc/device-tree/model or /etc/nv_tegra_release)"),
    }
}

/// Lists the libraries, probes each, says which one the configuration loads; returns that one if it exists.
fn onnx_runtime(report: &mut Report, options: &DoctorOptions, config: &Config) -> Option<PathBuf> {
    report.line("\nONNX Runtime");
    let devices = config.effective_devices();
    let setup = PathBuf::from(SETUP_ORT_LIBRARY);
    let choice = runtime::resolve_library(
        &config.ort,
        &devices,
        options.dylib_env.clone(),
        &setup,
        &options.root,
        &options.search_env,
    );
    let chosen = choice.as_ref().ok().map(|c| c.path.clone());
    let chosen_probe = list_libraries(report, options, &setup, chosen.as_deref());
    match choice {
        Ok(choice) => {
            report.line(format!("  loads: {} ({})", choice.path.display(), choice.why));
            check_chosen(report, &choice.path, chosen_probe, &devices);
            choice.path.is_file().then_some(choice.path)
        }
        Err(message) => {
            report.line("  loads: nothing (no library has the provider a device asks for)");
            report.problem(
                true,
                message,
                "install a GPU build of ONNX Runtime (see README \"Running on Jetson\"), or set ort.library_path",
            );
            None
        }
    }
}

/// One line per ONNX Runtime library found (the one `make setup` placed, the search's, the configured one): its
/// version and providers, what lies beside it, and which one the configuration loads; returns that one's probe.
fn list_libraries(
    report: &mut Report,
    options: &DoctorOptions,
    setup: &Path,
    chosen: Option<&Path>,
) -> Option<Result<LibraryProbe, String>> {
    let inventory = runtime::find_libraries(&options.root, &options.search_env);
    let mut listed: Vec<(PathBuf, String)> = inventory.libraries.iter().map(|l| (l.path.clone(), l.place.to_owned())).collect();
    if setup.is_file() && !listed.iter().any(|(p, _)| same_file(p, setup)) {
        listed.insert(0, (setup.to_owned(), "make setup".into()));
    }
    if let Some(path) = chosen.filter(|p| !listed.iter().any(|(q, _)| same_file(p, q))) {
        listed.push((path.to_owned(), "configured".into()));
    }
    if listed.is_empty() {
        report.line("  found: none");
    }
    let mut chosen_probe = None;
    for (path, place) in &listed {
        let is_chosen = chosen.is_some_and(|c| same_file(c, path));
        let probe = match (&options.prober, path.is_file()) {
            (_, false) => Some(Err("no such file".to_owned())),
            (Some(prober), true) => Some(probe_in_child(prober, path)),
            (None, true) => None,
        };
        let said = match &probe {
            Some(Ok(p)) => format!("version {}, providers {}", p.version, p.providers.join(" ")),
            Some(Err(why)) => format!("cannot be loaded here: {why}"),
            None => "not probed".to_owned(),
        };
        let beside = runtime::describe_providers(&runtime::providers_in(path.parent().unwrap_or(Path::new("."))));
        let mark = if is_chosen { "  <- the configuration loads this one" } else { "" };
        report.line(format!("  {} ({place}): {said}; beside it: {beside}{mark}", path.display()));
        if is_chosen {
            chosen_probe = probe;
        }
    }
    chosen_probe
}

/// Problems with the library the configuration loads: missing, unloadable, or without a provider a device asks for
/// (fatal unless the device falls back to a provider the library has).
fn check_chosen(report: &mut Report, path: &Path, probe: Option<Result<LibraryProbe, String>>, devices: &[DeviceConfig]) {
    let fix_missing = "run `make setup` (x86_64, aarch64) or set ort.library_path to an ONNX Runtime >= 1.17 library";
    match probe {
        None | Some(Err(_)) if !path.is_file() => report.problem(
            true,
            format!("the ONNX Runtime library {} does not exist", path.display()),
            fix_missing,
        ),
        Some(Err(why)) => report.problem(
            true,
            format!("the ONNX Runtime library {} cannot be loaded: {why}", path.display()),
            "install an ONNX Runtime >= 1.17 built for this machine (see README \"Running on Jetson\") or set \
             ort.library_path to one; `make setup` places the CPU one",
        ),
        None => {}
        Some(Ok(probe)) => {
            let has = |kind: &EpKind| probe.providers.iter().any(|p| p == provider_name(*kind));
            for device in devices.iter().filter(|d| !has(&d.ep)) {
                let fallback = device.fallback.iter().find(|k| has(k));
                report.problem(
                    fallback.is_none(),
                    match fallback {
                        Some(kind) => format!(
                            "a device asks for {} but {} was built without {}: it will run on {kind} (its fallback)",
                            device.ep,
                            path.display(),
                            provider_name(device.ep)
                        ),
                        None => format!(
                            "a device asks for {} but {} was built without {}",
                            device.ep,
                            path.display(),
                            provider_name(device.ep)
                        ),
                    },
                    "point ort.library_path at a build with that provider (on Jetson: NVIDIA's onnxruntime-gpu), or change the device's ep",
                );
            }
        }
    }
}

/// ONNX Runtime's name of a provider.
fn provider_name(kind: EpKind) -> &'static str {
    match kind {
        EpKind::Cuda => "CUDAExecutionProvider",
        EpKind::Tensorrt => "TensorrtExecutionProvider",
        EpKind::Coreml => "CoreMLExecutionProvider",
        EpKind::Cpu => "CPUExecutionProvider",
    }
}

fn gpu_libraries(report: &mut Report, root: &Path, ort_library: Option<&Path>, env: &SearchEnv) {
    report.line("\nGPU libraries");
    let mut dirs: Vec<PathBuf> = env.ld_library_path.iter().map(|d| runtime::under_root(root, d)).collect();
    if let Some(dir) = ort_library.and_then(Path::parent) {
        dirs.push(dir.to_owned());
    }
    for dir in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/aarch64-linux/lib",
        "/usr/local/cuda/targets/sbsa-linux/lib",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ] {
        dirs.push(runtime::under_root(root, Path::new(dir)));
    }
    for (what, stem) in GPU_LIBRARIES {
        match library_version(&dirs, stem) {
            Some((version, dir)) => report.line(format!("  {what} ({stem}): {version} in {}", dir.display())),
            None => report.line(format!("  {what} ({stem}): not found")),
        }
    }
}

fn nvml(report: &mut Report, config: &Config, jetson: bool) {
    let gpu = config
        .effective_devices()
        .iter()
        .any(|d| matches!(d.ep, EpKind::Cuda | EpKind::Tensorrt));
    match nvml_wrapper::Nvml::init() {
        Ok(nvml) => {
            let driver = nvml.sys_driver_version().unwrap_or_else(|e| format!("driver version unknown: {e}"));
            let count = nvml
                .device_count()
                .map(|n| n.to_string())
                .unwrap_or_else(|e| format!("unknown ({e})"));
            report.line(format!("\nNVML: answers (driver {driver}, {count} GPU(s))"));
        }
        Err(err) => {
            report.line(format!("\nNVML: unavailable ({err}); GPU temperature and power come from sysfs"));
            if gpu && jetson {
                report.line("  (expected on Jetson Orin, whose GPU NVML does not report; the monitor reads sysfs)");
            } else if gpu {
                report.problem(
                    false,
                    "NVML does not answer, so a GPU device has no NVML temperature, power or clocks",
                    "install the NVIDIA driver's libnvidia-ml.so.1 (or set monitor.gpu_zones to sysfs zones of this GPU)",
                );
            }
        }
    }
}

fn sensors(report: &mut Report, options: &DoctorOptions, config: &Config) {
    let root = if config.monitor.sysfs_root == Path::new("/sys") {
        runtime::under_root(&options.root, Path::new("/sys"))
    } else {
        config.monitor.sysfs_root.clone()
    };
    report.line(format!("\nsensors ({})", root.display()));
    let found = sysfs::inventory(&root);
    let celsius = |c: Option<f64>| c.map(|c| format!("{c:.1} °C")).unwrap_or_else(|| "unreadable".into());
    let zones: Vec<String> = found
        .zones
        .iter()
        .map(|(dir, kind, c)| format!("{dir} {kind} {}", celsius(*c)))
        .collect();
    report.line(format!(
        "  thermal zones: {}",
        if zones.is_empty() { "none".into() } else { zones.join(", ") }
    ));
    let watts = |w: Option<f64>| w.map(|w| format!("{w:.2} W")).unwrap_or_else(|| "no rail reads".into());
    let rails: Vec<String> = found
        .power_monitors
        .iter()
        .map(|(dir, chip, w)| format!("{dir} {chip} {}", watts(*w)))
        .collect();
    report.line(format!(
        "  power monitors (INA): {}",
        if rails.is_empty() { "none".into() } else { rails.join(", ") }
    ));
    let clocks: Vec<String> = found
        .gpu_clocks
        .iter()
        .map(|(name, mhz)| {
            format!(
                "{name} {}",
                mhz.map(|m| format!("{m:.0} MHz")).unwrap_or_else(|| "unreadable".into())
            )
        })
        .collect();
    report.line(format!(
        "  GPU clocks (devfreq): {}",
        if clocks.is_empty() { "none".into() } else { clocks.join(", ") }
    ));
    zones_read(report, config, &found);
}

/// Which zone the monitor would read for each device, and a problem where none is there.
fn zones_read(report: &mut Report, config: &Config, found: &sysfs::SysfsInventory) {
    for device in config.effective_devices() {
        let gpu = matches!(device.ep, EpKind::Cuda | EpKind::Tensorrt);
        let wanted = if gpu {
            &config.monitor.gpu_zones
        } else {
            &config.monitor.cpu_zones
        };
        let hit = wanted
            .iter()
            .find(|w| found.zones.iter().any(|(_, kind, c)| kind.eq_ignore_ascii_case(w) && c.is_some()));
        match hit {
            Some(zone) => report.line(format!("  {} device: the monitor reads zone {zone}", device.ep)),
            None => {
                report.line(format!(
                    "  {} device: no zone of {wanted:?}: temperature unknown, no thermal limits",
                    device.ep
                ));
                let fix = if found.zones.is_empty() {
                    "none: this machine exposes no thermal zones (common in VMs); the daemon runs without thermal limits".into()
                } else {
                    format!(
                        "set monitor.{}_zones to types this machine has (listed above) to get thermal limits",
                        if gpu { "gpu" } else { "cpu" }
                    )
                };
                report.problem(
                    false,
                    format!("no thermal zone of type {wanted:?} for the {} device", device.ep),
                    fix,
                );
            }
        }
    }
}

fn models(report: &mut Report, root: &Path, config: &Config) {
    report.line("\nmodels");
    for mut model in config.effective_models() {
        if model.dir.is_absolute() {
            model.dir = runtime::under_root(root, &model.dir);
        }
        match ModelInfo::load(&model) {
            Ok(info) => report.line(format!(
                "  {}: ok ({}, {} dimensions, {} tokens, {:?} pooling)",
                model.dir.display(),
                info.name,
                info.dim,
                info.max_tokens,
                info.pooling
            )),
            Err(err) => {
                report.line(format!("  {}: {err}", model.dir.display()));
                report.problem(
                    true,
                    format!("model directory {}: {err}", model.dir.display()),
                    "run `make setup` for the default model, or point model.dir at a sentence-transformers ONNX directory",
                );
            }
        }
    }
}

fn socket(report: &mut Report, root: &Path, config: &Config) {
    let socket = config.socket_path();
    let path = if socket.is_absolute() {
        runtime::under_root(root, &socket)
    } else {
        socket.clone()
    };
    report.line(format!("\nsocket {}", socket.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    match std::fs::metadata(dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            report.line(format!(
                "  directory {}: mode {mode:04o}, owner uid {} gid {}",
                dir.display(),
                meta.uid(),
                meta.gid()
            ));
            let uid = crate::config::current_uid();
            if uid != 0 && !(meta.uid() == uid && mode & 0o200 != 0) && mode & 0o002 == 0 {
                report.problem(
                    true,
                    format!("{} is not writable by uid {uid}: the socket cannot be created", dir.display()),
                    "run as the directory's owner, pick another server.socket, or under systemd use RuntimeDirectory= (the unit does)",
                );
            }
        }
        Err(_) => {
            let ancestor = dir.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
            report.line(format!(
                "  directory {}: absent; akidbd creates it (under {})",
                dir.display(),
                ancestor.display()
            ));
        }
    }
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(&path) {
            Ok(_) => report.problem(
                true,
                format!("{} is in use: another akidbd is serving it", socket.display()),
                "stop it (systemctl stop akidbd) or use another --socket",
            ),
            Err(_) => report.line("  a stale socket file is there; akidbd replaces it"),
        }
    }
}

fn summary(report: &mut Report) {
    if report.problems.is_empty() {
        report.line("\nno problems found");
    } else {
        report.line(format!("\nproblems ({})", report.problems.len()));
        for problem in report.problems.clone() {
            let kind = if problem.fatal { "error" } else { "warning" };
            report.line(format!("  {kind}: {}\n    fix: {}", problem.what, problem.fix));
        }
    }
    let verdict = if report.can_start() {
        "the configured service can start"
    } else {
        "the configured service could NOT start"
    };
    let _ = writeln!(report.text, "verdict: {verdict}");
}

/// Whether two paths name the same file (compared resolved, or as written when one does not exist).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests;
