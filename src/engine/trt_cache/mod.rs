//! The TensorRT engine cache: what keys it, and how it survives a power loss in the middle of a build.
//!
//! **Key.** ONNX Runtime names cached engines by the graph's structure only, so new weights, another ONNX
//! Runtime, TensorRT, CUDA or cuDNN, another driver or another GPU would load a stale or incompatible engine. The
//! cache directory here is keyed by everything that changes an engine: the graph and its external data, the
//! versions of ORT, TensorRT, CUDA, cuDNN and the driver, the GPU's name, compute capability and MIG mode, the
//! precision flags and the optimisation profile (built from the graph's real inputs). [`BuildHost`] gathers the
//! machine's part: from NVML where there is one, else (Jetson) from /proc and /etc; the libraries' versions from
//! the file names the dynamic loader would find.
//!
//! **Crash safety.** A robot may lose power while TensorRT writes an engine. Engines are therefore built into a
//! staging directory (`<key>.building-<pid>`) and moved into place with one `rename` once the device is warm; a
//! directory under the final name is always complete. A cached engine that ONNX Runtime cannot load (corrupt,
//! truncated, written by another build) is moved aside to `<key>.corrupt-<time>` and rebuilt once, never
//! crash-looped on. Staging directories left by a dead process are removed. A cache root that cannot be written
//! (read-only, full) costs the cache, not the device: engines are then built in memory at every start.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ep::hex;
use crate::config::TensorrtConfig;

/// What the machine contributes to an engine: GPU, driver and libraries. Fields are `None` when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BuildHost {
    /// The GPU's name (NVML), or the board (Jetson's device tree), or `gpu<id>`.
    pub gpu: String,
    pub compute_capability: Option<String>,
    /// MIG mode of the GPU ("enabled"/"disabled") when NVML reports one.
    pub mig: Option<String>,
    pub driver: Option<String>,
    pub cuda: Option<String>,
    pub tensorrt: Option<String>,
    pub cudnn: Option<String>,
}

/// Everything a cache directory is keyed by.
pub(crate) struct CacheKey<'a> {
    /// sha256 of the graph and its external data files.
    pub weights_sha: &'a str,
    pub ort: &'a str,
    pub host: &'a BuildHost,
    pub trt: &'a TensorrtConfig,
    /// The graph's run-time inputs, which the profile names.
    pub inputs: &'a [String],
    /// The model's max tokens (the profile's longest sequence when `profile_seq` says 0).
    pub max_tokens: usize,
}

/// Where a TensorRT engine for one key lives, and its optimisation profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtCache {
    /// The cache directory of this key (complete engines only).
    pub dir: PathBuf,
    /// `trt_profile_min_shapes`.
    pub profile_min: String,
    /// `trt_profile_opt_shapes`.
    pub profile_opt: String,
    /// `trt_profile_max_shapes`.
    pub profile_max: String,
}

/// How a session is to use the cache this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CachePlan {
    /// Load the engines in this complete directory.
    Use(PathBuf),
    /// Build into `staging`; [`commit`] moves it to `dir` once the device is warm.
    Build { staging: PathBuf, dir: PathBuf },
    /// The cache root cannot be written: build without a cache (the reason is logged).
    NoCache(String),
}

// === impl CacheKey ===

impl CacheKey<'_> {
    /// The cache directory and profile for this key under `root`.
    pub fn cache(&self, root: &Path) -> TrtCache {
        let seq = |value: usize| {
            if value == 0 {
                self.max_tokens
            } else {
                value.min(self.max_tokens)
            }
        };
        let [min_b, opt_b, max_b] = self.trt.profile_batch;
        let [min_s, opt_s, max_s] = self.trt.profile_seq;
        let shapes = |batch: usize, seq_len: usize| -> String {
            self.inputs
                .iter()
                .map(|name| format!("{name}:{batch}x{seq_len}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let profile_min = shapes(min_b, seq(min_s.max(1)));
        let profile_opt = shapes(opt_b, seq(opt_s.max(1)));
        let profile_max = shapes(max_b, seq(max_s));
        let host = self.host;
        let unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
        let mut hasher = Sha256::new();
        for part in [
            self.weights_sha.to_owned(),
            self.ort.to_owned(),
            host.gpu.clone(),
            unknown(&host.compute_capability),
            unknown(&host.mig),
            unknown(&host.driver),
            unknown(&host.cuda),
            unknown(&host.tensorrt),
            unknown(&host.cudnn),
            profile_min.clone(),
            profile_opt.clone(),
            profile_max.clone(),
        ] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        let trt = self.trt;
        hasher.update([u8::from(trt.fp16), u8::from(trt.int8), trt.builder_optimization_level]);
        let key = hex(&hasher.finalize()[..8]);
        let gpu_slug: String = host
            .gpu
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .collect();
        TrtCache {
            dir: root.join(format!("{}-{gpu_slug}-{key}", &self.weights_sha[..12.min(self.weights_sha.len())])),
            profile_min,
            profile_opt,
            profile_max,
        }
    }
}

// === cache directory life cycle ===

/// Decides how to use the cache at `dir`: its engines when it is there, else a fresh staging directory (after
/// removing staging directories of dead processes). Never fails: an unwritable root means no cache.
pub(crate) fn plan(dir: &Path) -> CachePlan {
    if dir.is_dir() {
        return CachePlan::Use(dir.to_owned());
    }
    let Some(root) = dir.parent() else {
        return CachePlan::NoCache(format!("{} has no parent directory", dir.display()));
    };
    if let Err(err) = std::fs::create_dir_all(root) {
        return CachePlan::NoCache(format!("cannot create {}: {err}", root.display()));
    }
    remove_dead_staging(dir);
    let staging = staging_name(dir, std::process::id());
    let _ = std::fs::remove_dir_all(&staging);
    match std::fs::create_dir(&staging) {
        Ok(()) => CachePlan::Build {
            staging,
            dir: dir.to_owned(),
        },
        Err(err) => CachePlan::NoCache(format!("cannot create {}: {err}", staging.display())),
    }
}

/// Moves a complete staging directory into place (one `rename`). When another process got there first, its
/// directory is kept and this one removed.
pub(crate) fn commit(staging: &Path, dir: &Path) -> Result<(), String> {
    match std::fs::rename(staging, dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(staging);
            Ok(())
        }
        Err(err) => {
            let _ = std::fs::remove_dir_all(staging);
            Err(format!("cannot move {} to {}: {err}", staging.display(), dir.display()))
        }
    }
}

/// Removes a staging directory after a failed build.
pub(crate) fn abandon(staging: &Path) {
    let _ = std::fs::remove_dir_all(staging);
}

/// Moves a cache directory whose engines could not be loaded aside (kept for a post-mortem), and returns where.
pub(crate) fn quarantine(dir: &Path) -> Result<PathBuf, String> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = PathBuf::from(format!("{}.corrupt-{stamp}", dir.display()));
    std::fs::rename(dir, &aside)
        .map(|()| aside)
        .map_err(|err| format!("cannot move {} aside: {err}", dir.display()))
}

fn staging_name(dir: &Path, pid: u32) -> PathBuf {
    PathBuf::from(format!("{}.building-{pid}", dir.display()))
}

/// Staging directories of `dir` whose process is gone were left by a crash or a power loss mid-build.
fn remove_dead_staging(dir: &Path) {
    let (Some(root), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let prefix = format!("{}.building-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(dir = %entry.path().display(), "removing an engine build left by a dead process");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

// === the build host ===

impl BuildHost {
    /// Gathers what this machine contributes to an engine for GPU `device_id`. `ort_library` is the loaded ONNX
    /// Runtime library, whose directory is searched for the GPU libraries too (pip wheels put them there).
    pub fn probe(device_id: u32, ort_library: Option<&Path>) -> BuildHost {
        let mut host = BuildHost {
            gpu: format!("gpu{device_id}"),
            ..BuildHost::default()
        };
        if let Ok(nvml) = nvml_wrapper::Nvml::init() {
            host.driver = nvml.sys_driver_version().ok();
            host.cuda = nvml
                .sys_cuda_driver_version()
                .ok()
                .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
            if let Ok(device) = nvml.device_by_index(device_id) {
                if let Ok(name) = device.name() {
                    host.gpu = name;
                }
                host.compute_capability = device.cuda_compute_capability().ok().map(|c| format!("{}.{}", c.major, c.minor));
                host.mig = device
                    .mig_mode()
                    .ok()
                    .map(|m| if m.current == 1 { "enabled".into() } else { "disabled".into() });
            }
        } else {
            // Jetson: no NVML. The board and the L4T release stand for GPU and driver.
            if let Ok(model) = std::fs::read_to_string("/proc/device-tree/model") {
                host.gpu = model.trim_end_matches('\0').trim().to_owned();
            }
            host.driver = std::fs::read_to_string("/etc/nv_tegra_release")
                .ok()
                .and_then(|text| text.lines().next().map(str::to_owned))
                .or_else(|| {
                    std::fs::read_to_string("/proc/driver/nvidia/version")
                        .ok()
                        .and_then(|text| text.lines().next().map(str::to_owned))
                });
        }
        let dirs = library_dirs(ort_library);
        host.tensorrt = library_version(&dirs, "libnvinfer.so");
        host.cudnn = library_version(&dirs, "libcudnn.so");
        if host.cuda.is_none() {
            host.cuda = library_version(&dirs, "libcudart.so");
        }
        host
    }
}

/// Where the dynamic loader would look for the GPU libraries (approximately: `LD_LIBRARY_PATH`, the ONNX
/// Runtime library's directory and the usual system and CUDA directories).
fn library_dirs(ort_library: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    if let Some(dir) = ort_library.and_then(Path::parent) {
        dirs.push(dir.to_owned());
    }
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/aarch64-linux/lib",
        "/usr/lib64",
        "/usr/lib",
    ] {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}

/// The full version of the first `stem.MAJOR[.MINOR.PATCH]` found (symlinks resolved: `libnvinfer.so.10` →
/// `libnvinfer.so.10.3.0` → "10.3.0").
fn library_version(dirs: &[PathBuf], stem: &str) -> Option<String> {
    let prefix = format!("{stem}.");
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
            .collect();
        found.sort();
        for path in found {
            let real = path.canonicalize().unwrap_or(path);
            let name = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some(version) = name.strip_prefix(&prefix).filter(|v| !v.is_empty()) {
                return Some(version.to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
