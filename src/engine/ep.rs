//! Execution providers: turning a device's configuration into ONNX Runtime registrations, and the policy when one
//! does not register.
//!
//! Each provider is registered with `error_on_failure`, so a provider that ONNX Runtime cannot use is an error here
//! instead of ORT's silent fall back to the CPU; the session builder then walks the device's fallback list itself.
//! That way the provider a session reports is the one it really runs on.

use std::path::{Path, PathBuf};

use ort::ep::{self, ExecutionProviderDispatch};
use sha2::{Digest, Sha256};

use super::trt_cache::TrtCache;
use crate::config::{DeviceConfig, EpKind, LARGE_MODEL_BYTES};

/// Builds the registration for one provider kind with the device's settings.
/// `trt_cache`: the profile and the directory to build or load engines in (none: no engine cache); `arena`: the
/// CPU provider keeps ORT's memory arena (see [`cpu_arena`]).
pub(crate) fn dispatch(
    kind: EpKind,
    device: &DeviceConfig,
    trt_cache: Option<(&TrtCache, Option<&Path>)>,
    arena: bool,
) -> ExecutionProviderDispatch {
    let device_id = device.device_id as i32;
    match kind {
        EpKind::Cpu => ep::CPU::default().with_arena_allocator(arena).build().error_on_failure(),
        EpKind::Cuda => ep::CUDA::default().with_device_id(device_id).build().error_on_failure(),
        EpKind::Coreml => ep::CoreML::default().build().error_on_failure(),
        EpKind::Tensorrt => {
            let trt = &device.tensorrt;
            let mut provider = ep::TensorRT::default()
                .with_device_id(device_id)
                .with_fp16(trt.fp16)
                .with_int8(trt.int8)
                .with_builder_optimization_level(trt.builder_optimization_level);
            if let Some((cache, dir)) = trt_cache {
                if let Some(dir) = dir {
                    let dir = dir.display().to_string();
                    provider = provider
                        .with_engine_cache(true)
                        .with_engine_cache_path(&dir)
                        .with_timing_cache(trt.timing_cache)
                        .with_timing_cache_path(&dir);
                }
                provider = provider
                    .with_profile_min_shapes(&cache.profile_min)
                    .with_profile_opt_shapes(&cache.profile_opt)
                    .with_profile_max_shapes(&cache.profile_max);
            }
            provider.build().error_on_failure()
        }
    }
}

/// Whether a CPU session of a model with `weight_bytes` of weights keeps ORT's memory arena: `cpu_arena` when
/// set, else on for a large model ([`LARGE_MODEL_BYTES`]).
///
/// The arena keeps the activations of the largest run it has served. For MiniLM (90 MB of weights) that is about
/// as much again as the weights (~170 MB: 388 vs 217 MB resident) for ~10% more throughput: off. For a
/// Qwen3-Embedding-0.6B-shaped decoder (2.4 GB) without it, glibc's heap kept 2.2 GB more after one 512-token
/// input (resident 4.0 vs 1.87 GB with the arena) and the first run of each new shape spent most of its time in
/// page faults (12.8 vs 3.5 s): on. Runs larger than the batch token budget give their arena memory back (see
/// `OrtEngine::keep_arena_for`), so the arena holds at most one budget-sized batch's activations.
pub(crate) fn cpu_arena(device: &DeviceConfig, weight_bytes: u64) -> bool {
    device.cpu_arena.unwrap_or(weight_bytes >= LARGE_MODEL_BYTES)
}

/// The default root of TensorRT engine caches: `$CACHE_DIRECTORY/tensorrt` under systemd, else
/// `target/tensorrt-cache`.
pub(crate) fn default_trt_cache_root() -> PathBuf {
    match std::env::var_os("CACHE_DIRECTORY") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("tensorrt"),
        _ => PathBuf::from("target/tensorrt-cache"),
    }
}

/// sha256 of a file, hex.
pub(crate) fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// The ONNX Runtime version from its build string ("git-branch=rel-1.32.0, ..."), else from the library's file
/// name ("libonnxruntime.so.1.32.0"), else the whole build string.
pub(crate) fn ort_version(build_info: &str, library: &Path) -> String {
    let from_build = build_info.split([',', ' ']).find_map(|part| part.strip_prefix("git-branch=rel-"));
    let file_name = library.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let from_file = file_name
        .split_once(".so.")
        .map(|(_, version)| version.to_owned())
        .filter(|v| !v.is_empty());
    from_build
        .map(str::to_owned)
        .or(from_file)
        .unwrap_or_else(|| build_info.trim().to_owned())
}

/// sha256 of some bytes, hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Bytes as lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_arena_is_on_for_large_models_unless_configured() {
        let auto = DeviceConfig::default();
        assert!(!cpu_arena(&auto, 90 << 20), "MiniLM-sized");
        assert!(cpu_arena(&auto, 2_400_000_000), "0.6B-sized");
        let off = DeviceConfig {
            cpu_arena: Some(false),
            ..DeviceConfig::default()
        };
        assert!(!cpu_arena(&off, 2_400_000_000));
        let on = DeviceConfig {
            cpu_arena: Some(true),
            ..DeviceConfig::default()
        };
        assert!(cpu_arena(&on, 90 << 20));
    }

    #[test]
    fn ort_version_is_read_from_the_build_string() {
        let none = Path::new("");
        let release = "ORT Build Info: git-branch=rel-1.32.0, git-commit-id=abc, build type=Release";
        assert_eq!(ort_version(release, none), "1.32.0");
        assert_eq!(ort_version("git-branch=HEAD", Path::new("/x/libonnxruntime.so.1.32.0")), "1.32.0");
        assert_eq!(ort_version("custom", none), "custom");
    }
}
