//! Execution providers: turning a device's configuration into ONNX Runtime registrations, and the policy when one
//! does not register.
//!
//! Each provider is registered with `error_on_failure`, so a provider that ONNX Runtime cannot use is an error here
//! instead of ORT's silent fall back to the CPU; the session builder then walks the device's fallback list itself.
//! That way the provider a session reports is the one it really runs on.

use std::path::{Path, PathBuf};

use ort::ep::{self, ExecutionProviderDispatch};
use sha2::{Digest, Sha256};

use crate::config::{DeviceConfig, EpKind, TensorrtConfig};

/// The inputs the TensorRT optimisation profile must name.
pub(crate) struct ProfileInputs<'a> {
    pub names: &'a [String],
    pub max_tokens: usize,
}

/// Builds the registration for one provider kind with the device's settings.
pub(crate) fn dispatch(kind: EpKind, device: &DeviceConfig, trt_cache: Option<&TrtCache>) -> ExecutionProviderDispatch {
    let device_id = device.device_id as i32;
    match kind {
        // The arena keeps the peak of the largest batch: ~170 MB more resident memory (388 vs 217 MB here) for
        // ~10% more throughput. Off by default (robots share their memory); `cpu_arena = true` turns it on.
        EpKind::Cpu => ep::CPU::default().with_arena_allocator(device.cpu_arena).build().error_on_failure(),
        EpKind::Cuda => ep::CUDA::default().with_device_id(device_id).build().error_on_failure(),
        EpKind::Coreml => ep::CoreML::default().build().error_on_failure(),
        EpKind::Tensorrt => {
            let trt = &device.tensorrt;
            let mut provider = ep::TensorRT::default()
                .with_device_id(device_id)
                .with_fp16(trt.fp16)
                .with_int8(trt.int8)
                .with_builder_optimization_level(trt.builder_optimization_level);
            if let Some(cache) = trt_cache {
                let dir = cache.dir.display().to_string();
                provider = provider
                    .with_engine_cache(true)
                    .with_engine_cache_path(&dir)
                    .with_timing_cache(trt.timing_cache)
                    .with_timing_cache_path(&dir)
                    .with_profile_min_shapes(&cache.profile_min)
                    .with_profile_opt_shapes(&cache.profile_opt)
                    .with_profile_max_shapes(&cache.profile_max);
            }
            provider.build().error_on_failure()
        }
    }
}

/// Where a TensorRT engine for this model, runtime, GPU and profile is cached, and the profile itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtCache {
    /// The cache directory (created by the session builder).
    pub dir: PathBuf,
    /// `trt_profile_min_shapes`.
    pub profile_min: String,
    /// `trt_profile_opt_shapes`.
    pub profile_opt: String,
    /// `trt_profile_max_shapes`.
    pub profile_max: String,
}

/// Computes the cache directory and profile shapes.
///
/// ORT names cached engines by the graph's structure only, so a changed weight file, ORT or driver would load a
/// stale engine; the key here covers the model file's hash, the ORT build, the GPU and the profile.
pub(crate) fn trt_cache(
    root: &Path,
    model_sha: &str,
    ort_build: &str,
    gpu: &str,
    trt: &TensorrtConfig,
    inputs: &ProfileInputs<'_>,
) -> TrtCache {
    let seq = |value: usize| {
        if value == 0 {
            inputs.max_tokens
        } else {
            value.min(inputs.max_tokens)
        }
    };
    let [min_b, opt_b, max_b] = trt.profile_batch;
    let [min_s, opt_s, max_s] = trt.profile_seq;
    let shapes = |batch: usize, seq_len: usize| -> String {
        inputs
            .names
            .iter()
            .map(|name| format!("{name}:{batch}x{seq_len}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let profile_min = shapes(min_b, seq(min_s.max(1)));
    let profile_opt = shapes(opt_b, seq(opt_s.max(1)));
    let profile_max = shapes(max_b, seq(max_s));
    let mut hasher = Sha256::new();
    for part in [model_sha, ort_build, gpu, &profile_min, &profile_opt, &profile_max] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.update([u8::from(trt.fp16), u8::from(trt.int8), trt.builder_optimization_level]);
    let key = hex(&hasher.finalize()[..8]);
    let gpu_slug: String = gpu
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    TrtCache {
        dir: root.join(format!("{}-{gpu_slug}-{key}", &model_sha[..12.min(model_sha.len())])),
        profile_min,
        profile_opt,
        profile_max,
    }
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

/// The GPU's name from NVML, or `gpu<id>` when NVML is not there (no driver, as on CPU machines).
pub(crate) fn gpu_name(device_id: u32) -> String {
    nvml_wrapper::Nvml::init()
        .ok()
        .and_then(|nvml| nvml.device_by_index(device_id).ok().and_then(|d| d.name().ok()))
        .unwrap_or_else(|| format!("gpu{device_id}"))
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["input_ids".into(), "attention_mask".into()]
    }

    #[test]
    fn cache_key_changes_with_everything_that_invalidates_an_engine() {
        let trt = TensorrtConfig::default();
        let names = names();
        let inputs = ProfileInputs {
            names: &names,
            max_tokens: 256,
        };
        let base = trt_cache(Path::new("/c"), "aaaa", "1.32.0", "H200", &trt, &inputs);
        assert_eq!(base.profile_max, "input_ids:64x256,attention_mask:64x256");
        assert_eq!(base.profile_min, "input_ids:1x1,attention_mask:1x1");
        let other_model = trt_cache(Path::new("/c"), "bbbb", "1.32.0", "H200", &trt, &inputs);
        let other_ort = trt_cache(Path::new("/c"), "aaaa", "1.31.0", "H200", &trt, &inputs);
        let other_gpu = trt_cache(Path::new("/c"), "aaaa", "1.32.0", "Thor", &trt, &inputs);
        let mut fp32 = trt.clone();
        fp32.fp16 = false;
        let other_precision = trt_cache(Path::new("/c"), "aaaa", "1.32.0", "H200", &fp32, &inputs);
        let mut bigger = trt.clone();
        bigger.profile_batch = [1, 16, 128];
        let other_profile = trt_cache(Path::new("/c"), "aaaa", "1.32.0", "H200", &bigger, &inputs);
        let dirs = [&base, &other_model, &other_ort, &other_gpu, &other_precision, &other_profile].map(|c| c.dir.clone());
        for (i, a) in dirs.iter().enumerate() {
            for b in &dirs[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Same inputs, same directory: the cache is found again after a restart.
        assert_eq!(base, trt_cache(Path::new("/c"), "aaaa", "1.32.0", "H200", &trt, &inputs));
    }

    #[test]
    fn ort_version_is_read_from_the_build_string() {
        let none = Path::new("");
        let release = "ORT Build Info: git-branch=rel-1.32.0, git-commit-id=abc, build type=Release";
        assert_eq!(ort_version(release, none), "1.32.0");
        assert_eq!(ort_version("git-branch=HEAD", Path::new("/x/libonnxruntime.so.1.32.0")), "1.32.0");
        assert_eq!(ort_version("custom", none), "custom");
    }

    #[test]
    fn gpu_name_without_nvml_is_the_index() {
        // This machine has no NVIDIA driver; on one that has, the name comes from NVML.
        if nvml_wrapper::Nvml::init().is_err() {
            assert_eq!(gpu_name(3), "gpu3");
        }
    }
}
