//! `akidbd --doctor`, run as the real binary: on this machine's real tree, and on a faked Jetson AGX Orin tree
//! (`--root`) whose libraries are probed in child processes. Also the daemon's refusal to start a GPU device on
//! the CPU library without a fallback.

use std::path::Path;
use std::process::{Command, Output};

use akidb::engine::runtime::{find_libraries, SearchEnv};
use akidb::engine::SETUP_ORT_LIBRARY;

use crate::util::repo;

fn write(root: &Path, path: &str, bytes: &[u8]) {
    let path = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// akidbd with `args`, from the checkout (the default model directory is relative to it), without the loader
/// hints of the environment it runs in.
fn akidbd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_akidbd"))
        .args(args)
        .current_dir(repo())
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("VIRTUAL_ENV")
        .env("RUST_LOG", "info,ort=warn")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A config with a socket in `dir` and the given devices.
fn config(dir: &Path, devices: &str) -> std::path::PathBuf {
    let path = dir.join("akidb.toml");
    let socket = dir.join("embed.sock");
    std::fs::write(&path, format!("[server]\nsocket = {socket:?}\n{devices}")).unwrap();
    path
}

/// A Jetson AGX Orin on JetPack 6 (L4T R36.4.3) with a TensorRT device configured: sensors, CUDA libraries, and
/// two onnxruntime installs — NVIDIA's wheel (here a file that is no library) and a capi directory with the CPU
/// library of this checkout and provider files beside it (what a mislabelled install looks like).
fn jetson_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "/proc/device-tree/model", b"NVIDIA Jetson AGX Orin Developer Kit\0");
    write(
        root,
        "/etc/nv_tegra_release",
        b"# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n",
    );
    for (zone, kind, milli) in [(0, "cpu-thermal", "47800"), (1, "gpu-thermal", "45300"), (2, "tj-thermal", "48100")] {
        write(
            root,
            &format!("/sys/class/thermal/thermal_zone{zone}/type"),
            format!("{kind}\n").as_bytes(),
        );
        write(
            root,
            &format!("/sys/class/thermal/thermal_zone{zone}/temp"),
            format!("{milli}\n").as_bytes(),
        );
    }
    write(root, "/sys/class/hwmon/hwmon1/name", b"ina3221\n");
    write(root, "/sys/class/hwmon/hwmon1/in1_input", b"19136\n");
    write(root, "/sys/class/hwmon/hwmon1/curr1_input", b"480\n");
    write(root, "/sys/class/devfreq/17000000.gpu/cur_freq", b"1300500000\n");
    write(root, "/usr/local/cuda/lib64/libcudart.so.12.6.68", b"");
    write(root, "/usr/lib/aarch64-linux-gnu/libcudnn.so.9.3.0", b"");
    write(root, "/usr/lib/aarch64-linux-gnu/libnvinfer.so.10.3.0", b"");
    let capi = "/usr/local/lib/python3.10/dist-packages/onnxruntime/capi";
    write(root, &format!("{capi}/libonnxruntime.so.1.20.0"), b"not a library");
    write(root, &format!("{capi}/libonnxruntime_providers_cuda.so"), b"");
    write(root, &format!("{capi}/libonnxruntime_providers_tensorrt.so"), b"");
    dir
}

#[test]
fn on_this_machine_the_doctor_probes_the_setup_library_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let output = akidbd(&["--doctor", "--config", config.to_str().unwrap()]);
    let report = text(&output);
    crate::util::say(&report);
    assert_eq!(output.status.code(), Some(0), "{report}");
    let setup = format!("{SETUP_ORT_LIBRARY} (make setup): version 1.32.0, providers");
    assert!(report.contains(&setup), "{report}");
    assert!(
        report.contains("CPUExecutionProvider; beside it: no GPU provider  <- the configuration loads this one"),
        "{report}"
    );
    assert!(report.contains(&format!("architecture: {}", std::env::consts::ARCH)), "{report}");
    assert!(
        report.contains("models/all-MiniLM-L6-v2: ok (all-MiniLM-L6-v2, 384 dimensions"),
        "{report}"
    );
    assert!(report.contains("verdict: the configured service can start"), "{report}");
}

#[test]
fn on_a_faked_jetson_the_doctor_names_the_release_the_libraries_and_each_fix() {
    let tree = jetson_tree();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "[[devices]]\nep = \"tensorrt\"\n");
    let root = tree.path().to_str().unwrap();
    let output = akidbd(&["--doctor", "--root", root, "--config", config.to_str().unwrap()]);
    let report = text(&output);
    crate::util::say(&report);
    for needle in [
        "jetson: NVIDIA Jetson AGX Orin Developer Kit, L4T R36.4.3 (JetPack 6)",
        "capi/libonnxruntime.so.1.20.0 (Python package onnxruntime): cannot be loaded here: not an ELF shared object",
        "beside it: cuda, tensorrt  <- the configuration loads this one",
        "CUDA runtime (libcudart.so): 12.6.68",
        "cuDNN (libcudnn.so): 9.3.0",
        "TensorRT (libnvinfer.so): 10.3.0",
        "thermal_zone1 gpu-thermal 45.3 °C",
        "hwmon1 ina3221 9.19 W",
        "17000000.gpu 1300 MHz",
        "tensorrt device: the monitor reads zone gpu-thermal",
        "fix: install an ONNX Runtime >= 1.17 built for this machine",
        "verdict: the configured service could NOT start",
    ] {
        assert!(report.contains(needle), "{needle:?} missing from:\n{report}");
    }
    assert_eq!(output.status.code(), Some(1), "{report}");

    // The same place holding a real library built without TensorRT, with provider files beside it: the probe
    // (a child process) tells the truth the file names do not.
    let capi = tree.path().join("usr/local/lib/python3.10/dist-packages/onnxruntime/capi");
    std::fs::remove_file(capi.join("libonnxruntime.so.1.20.0")).unwrap();
    std::os::unix::fs::symlink(SETUP_ORT_LIBRARY, capi.join("libonnxruntime.so.1.32.0")).unwrap();
    let output = akidbd(&["--doctor", "--root", root, "--config", config.to_str().unwrap()]);
    let report = text(&output);
    assert!(
        report.contains("capi/libonnxruntime.so.1.32.0 (Python package onnxruntime): version 1.32.0"),
        "{report}"
    );
    assert!(report.contains("was built without TensorrtExecutionProvider"), "{report}");
    assert_eq!(output.status.code(), Some(1), "{report}");
}

#[test]
fn a_gpu_device_without_a_gpu_runtime_or_cpu_fallback_is_refused_naming_what_to_install() {
    let has_gpu_runtime = find_libraries(Path::new("/"), &SearchEnv::from_process())
        .libraries
        .iter()
        .any(|lib| !lib.providers_beside.is_empty());
    if has_gpu_runtime {
        crate::util::say("this machine has a GPU build of ONNX Runtime: the refusal cannot be shown here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "[[devices]]\nep = \"cuda\"\n");
    let output = akidbd(&["--config", config.to_str().unwrap()]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(69), "{said}");
    assert!(
        said.contains("a device asks for cuda but no ONNX Runtime library with that provider was found"),
        "{said}"
    );
    assert!(said.contains("onnxruntime-gpu") && said.contains("ort.library_path"), "{said}");
    assert!(!dir.path().join("embed.sock").exists());
}
