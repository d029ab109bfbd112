use std::fs;

use super::*;

fn write(root: &Path, path: &str, bytes: &[u8]) {
    let path = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

const ORIN_RELEASE: &str =
    "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n";

/// A Jetson AGX Orin on JetPack 6: device tree, L4T release, sensors, CUDA/cuDNN/TensorRT, and NVIDIA's
/// onnxruntime-gpu wheel (a fake library file: it cannot be loaded here).
fn jetson_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "/proc/device-tree/model", b"NVIDIA Jetson AGX Orin Developer Kit\0");
    write(root, "/etc/nv_tegra_release", ORIN_RELEASE.as_bytes());
    write(root, "/sys/class/thermal/thermal_zone0/type", b"cpu-thermal\n");
    write(root, "/sys/class/thermal/thermal_zone0/temp", b"47800\n");
    write(root, "/sys/class/thermal/thermal_zone1/type", b"gpu-thermal\n");
    write(root, "/sys/class/thermal/thermal_zone1/temp", b"45300\n");
    write(root, "/sys/class/hwmon/hwmon1/name", b"ina3221\n");
    write(root, "/sys/class/hwmon/hwmon1/in1_input", b"19136\n");
    write(root, "/sys/class/hwmon/hwmon1/curr1_input", b"480\n");
    write(root, "/usr/local/cuda/lib64/libcudart.so.12.6.68", b"");
    write(root, "/usr/lib/aarch64-linux-gnu/libcudnn.so.9.3.0", b"");
    write(root, "/usr/lib/aarch64-linux-gnu/libcudnn.so.9", b"");
    write(root, "/usr/lib/aarch64-linux-gnu/libnvinfer.so.10.3.0", b"");
    let capi = "/usr/local/lib/python3.10/dist-packages/onnxruntime/capi";
    for file in [
        "libonnxruntime.so.1.20.0",
        "libonnxruntime_providers_cuda.so",
        "libonnxruntime_providers_tensorrt.so",
    ] {
        write(root, &format!("{capi}/{file}"), b"");
    }
    dir
}

fn options(root: &Path, config: Config) -> DoctorOptions {
    DoctorOptions {
        root: root.to_owned(),
        config: Ok(config),
        prober: None,
        dylib_env: None,
        search_env: SearchEnv::default(),
    }
}

#[test]
fn the_l4t_release_and_jetpack_are_read() {
    assert_eq!(l4t_release(ORIN_RELEASE).as_deref(), Some("R36.4.3"));
    assert_eq!(
        l4t_release("# R38 (release), REVISION: 2.0, GCID: 1, BOARD: generic, EABI: aarch64").as_deref(),
        Some("R38.2.0")
    );
    assert_eq!(l4t_release("garbage"), None);
    assert_eq!(jetpack_of("R36.4.3"), Some(6));
    assert_eq!(jetpack_of("R38.2.0"), Some(7));
    assert_eq!(jetpack_of("R99.1"), None);
}

#[test]
fn a_jetson_is_recognised_and_other_machines_are_not() {
    let tree = jetson_tree();
    let info = jetson_info(tree.path()).unwrap();
    assert_eq!(info.model.as_deref(), Some("NVIDIA Jetson AGX Orin Developer Kit"));
    assert_eq!(info.l4t.as_deref(), Some("R36.4.3"));
    let plain = tempfile::tempdir().unwrap();
    write(plain.path(), "/proc/device-tree/model", b"Raspberry Pi 5 Model B Rev 1.0\0");
    assert_eq!(jetson_info(plain.path()), None);
}

#[test]
fn gpu_library_versions_come_from_the_most_specific_file_name() {
    let tree = jetson_tree();
    let dirs = vec![
        tree.path().join("usr/lib/aarch64-linux-gnu"),
        tree.path().join("usr/local/cuda/lib64"),
    ];
    assert_eq!(library_version(&dirs, "libcudnn.so").unwrap().0, "9.3.0");
    assert_eq!(library_version(&dirs, "libcudart.so").unwrap().0, "12.6.68");
    assert_eq!(library_version(&dirs, "libnvinfer_plugin.so"), None);
}

#[test]
fn on_the_fake_jetson_a_tensorrt_device_finds_the_wheel_and_the_sensors() {
    let tree = jetson_tree();
    let mut config = Config::default();
    config.devices = vec![crate::config::DeviceConfig {
        ep: EpKind::Tensorrt,
        ..Default::default()
    }];
    let report = examine(&options(tree.path(), config));
    let text = &report.text;
    assert!(
        text.contains("jetson: NVIDIA Jetson AGX Orin Developer Kit, L4T R36.4.3 (JetPack 6)"),
        "{text}"
    );
    assert!(
        text.contains("capi/libonnxruntime.so.1.20.0 (Python package onnxruntime)"),
        "{text}"
    );
    assert!(
        text.contains("beside it: cuda, tensorrt  <- the configuration loads this one"),
        "{text}"
    );
    assert!(text.contains("CUDA runtime (libcudart.so): 12.6.68"), "{text}");
    assert!(text.contains("cuDNN (libcudnn.so): 9.3.0"), "{text}");
    assert!(text.contains("TensorRT (libnvinfer.so): 10.3.0"), "{text}");
    assert!(text.contains("thermal_zone1 gpu-thermal 45.3 °C"), "{text}");
    assert!(text.contains("hwmon1 ina3221 9.19 W"), "{text}");
    assert!(text.contains("tensorrt device: the monitor reads zone gpu-thermal"), "{text}");
    // Not probed here (no child process in unit tests): nothing fatal, the default model is in this checkout.
    assert!(report.can_start(), "{:?}", report.problems);
}

#[test]
fn a_gpu_device_without_a_gpu_runtime_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.devices = vec![crate::config::DeviceConfig {
        ep: EpKind::Cuda,
        ..Default::default()
    }];
    let report = examine(&options(dir.path(), config));
    assert!(report.text.contains("loads: nothing"), "{}", report.text);
    let problem = report
        .problems
        .iter()
        .find(|p| p.fatal && p.what.contains("asks for cuda"))
        .unwrap();
    assert!(problem.fix.contains("Running on Jetson"));
    assert!(report.text.contains("verdict: the configured service could NOT start"));
}

#[test]
fn a_bad_configuration_and_a_missing_model_are_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.model.dir = PathBuf::from("/models/missing");
    let mut with_bad_file = options(dir.path(), config);
    let report = examine(&with_bad_file);
    assert!(
        report.problems.iter().any(|p| p.fatal && p.what.contains("model directory")),
        "{:?}",
        report.problems
    );
    with_bad_file.config = Err("unknown key".into());
    let report = examine(&with_bad_file);
    assert!(report
        .problems
        .iter()
        .any(|p| p.fatal && p.what.contains("configuration: unknown key")));
}
