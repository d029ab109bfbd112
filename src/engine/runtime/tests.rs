use std::fs;

use super::*;

fn touch(root: &Path, path: &str) {
    let path = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, b"\x7fELF fake").unwrap();
}

fn link(root: &Path, target: &str, path: &str) {
    let path = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

/// A JetPack 6 machine: the CPU library of `make setup` elsewhere, NVIDIA's onnxruntime-gpu wheel installed for
/// python3.10 with sudo, and a distribution's CPU build in /usr/lib/aarch64-linux-gnu.
fn jetson_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let capi = "/usr/local/lib/python3.10/dist-packages/onnxruntime/capi";
    touch(root, &format!("{capi}/libonnxruntime.so.1.20.0"));
    touch(root, &format!("{capi}/libonnxruntime_providers_shared.so"));
    touch(root, &format!("{capi}/libonnxruntime_providers_cuda.so"));
    touch(root, &format!("{capi}/libonnxruntime_providers_tensorrt.so"));
    touch(root, "/usr/lib/aarch64-linux-gnu/libonnxruntime.so.1.17.1");
    link(root, "libonnxruntime.so.1.17.1", "/usr/lib/aarch64-linux-gnu/libonnxruntime.so.1");
    link(root, "libonnxruntime.so.1", "/usr/lib/aarch64-linux-gnu/libonnxruntime.so");
    dir
}

#[test]
fn under_root_prefixes_absolute_paths() {
    assert_eq!(under_root(Path::new("/"), Path::new("/usr/lib")), PathBuf::from("/usr/lib"));
    assert_eq!(
        under_root(Path::new("/tmp/x"), Path::new("/usr/lib")),
        PathBuf::from("/tmp/x/usr/lib")
    );
}

#[test]
fn the_jetson_wheel_is_found_with_its_providers_and_each_real_file_once() {
    let tree = jetson_tree();
    let inventory = find_libraries(tree.path(), &SearchEnv::default());
    let found: Vec<(String, &str, Vec<EpKind>)> = inventory
        .libraries
        .iter()
        .map(|lib| {
            let relative = lib.path.strip_prefix(tree.path()).unwrap().display().to_string();
            (relative, lib.place, lib.providers_beside.clone())
        })
        .collect();
    assert_eq!(
        found,
        vec![
            (
                "usr/local/lib/python3.10/dist-packages/onnxruntime/capi/libonnxruntime.so.1.20.0".into(),
                "Python package onnxruntime",
                vec![EpKind::Cuda, EpKind::Tensorrt]
            ),
            (
                "usr/lib/aarch64-linux-gnu/libonnxruntime.so.1.17.1".into(),
                "system library directory",
                vec![]
            ),
        ],
        "the two symlinks to 1.17.1 are the same library"
    );
    let chosen = choose_gpu_library(&inventory, &[EpKind::Tensorrt]).unwrap();
    assert!(chosen.path.ends_with("capi/libonnxruntime.so.1.20.0"));
    assert!(choose_gpu_library(&inventory, &[EpKind::Cuda, EpKind::Tensorrt]).is_ok());
}

#[test]
fn ld_library_path_comes_first_and_the_user_and_venv_packages_are_searched() {
    let tree = jetson_tree();
    let root = tree.path();
    touch(
        root,
        "/home/robot/.local/lib/python3.10/site-packages/onnxruntime/capi/libonnxruntime.so.1.22.0",
    );
    touch(
        root,
        "/home/robot/.local/lib/python3.10/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so",
    );
    touch(
        root,
        "/srv/venv/lib/python3.12/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0",
    );
    touch(root, "/opt/custom/lib/libonnxruntime.so.1.21.0");
    touch(root, "/opt/custom/lib/libonnxruntime_providers_tensorrt.so");
    touch(root, "/opt/custom/lib/libonnxruntime_providers_cuda.so");
    let env = SearchEnv {
        ld_library_path: vec![PathBuf::from("/opt/custom/lib"), PathBuf::from("/does/not/exist")],
        home: Some(PathBuf::from("/home/robot")),
        virtual_env: Some(PathBuf::from("/srv/venv")),
    };
    let places: Vec<&str> = search_dirs(root, &env).iter().map(|d| d.place).collect();
    assert_eq!(places[0], "LD_LIBRARY_PATH");
    let inventory = find_libraries(root, &env);
    let names: Vec<String> = inventory
        .libraries
        .iter()
        .map(|lib| lib.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "libonnxruntime.so.1.21.0",
            "libonnxruntime.so.1.32.0",
            "libonnxruntime.so.1.22.0",
            "libonnxruntime.so.1.20.0",
            "libonnxruntime.so.1.17.1"
        ]
    );
    assert!(choose_gpu_library(&inventory, &[EpKind::Tensorrt])
        .unwrap()
        .path
        .starts_with(root.join("opt/custom")));
    // Only CUDA asked: the user's package has it, but LD_LIBRARY_PATH's library comes first and has it too.
    assert_eq!(choose_gpu_library(&inventory, &[EpKind::Cuda]).unwrap().place, "LD_LIBRARY_PATH");
}

#[test]
fn opt_tarballs_are_searched() {
    let dir = tempfile::tempdir().unwrap();
    touch(dir.path(), "/opt/onnxruntime-linux-aarch64-gpu-1.20.1/lib/libonnxruntime.so.1.20.1");
    touch(
        dir.path(),
        "/opt/onnxruntime-linux-aarch64-gpu-1.20.1/lib/libonnxruntime_providers_cuda.so",
    );
    let inventory = find_libraries(dir.path(), &SearchEnv::default());
    assert_eq!(inventory.libraries.len(), 1);
    assert_eq!(inventory.libraries[0].place, "/opt");
    assert_eq!(inventory.libraries[0].providers_beside, vec![EpKind::Cuda]);
}

#[test]
fn a_cpu_only_machine_is_refused_with_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    touch(dir.path(), "/usr/lib/libonnxruntime.so.1.32.0");
    let inventory = find_libraries(dir.path(), &SearchEnv::default());
    let message = choose_gpu_library(&inventory, &[EpKind::Tensorrt]).unwrap_err();
    assert!(message.contains("asks for tensorrt"), "{message}");
    assert!(message.contains("libonnxruntime.so.1.32.0 [no GPU provider]"), "{message}");
    assert!(message.contains("onnxruntime-gpu"), "{message}");
    assert!(message.contains("ort.library_path"), "{message}");
    let empty = tempfile::tempdir().unwrap();
    let nothing = find_libraries(empty.path(), &SearchEnv::default());
    assert!(nothing.libraries.is_empty());
    assert!(choose_gpu_library(&nothing, &[EpKind::Cuda])
        .unwrap_err()
        .contains("no libonnxruntime.so at all"));
}

#[test]
fn a_python_only_gpu_wheel_is_named_in_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let capi = "/usr/lib/python3.8/dist-packages/onnxruntime/capi";
    touch(dir.path(), &format!("{capi}/onnxruntime_pybind11_state.so"));
    touch(dir.path(), &format!("{capi}/libonnxruntime_providers_tensorrt.so"));
    let inventory = find_libraries(dir.path(), &SearchEnv::default());
    assert!(inventory.libraries.is_empty());
    assert_eq!(inventory.without_library.len(), 1);
    let message = choose_gpu_library(&inventory, &[EpKind::Tensorrt]).unwrap_err();
    assert!(
        message.contains("has the tensorrt provider(s) but no libonnxruntime.so"),
        "{message}"
    );
}

#[test]
fn probing_a_missing_or_foreign_file_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let missing = probe_library(&dir.path().join("libonnxruntime.so")).unwrap_err();
    assert!(missing.contains("cannot open it"), "{missing}");
    let not_elf = dir.path().join("libonnxruntime.so.1");
    fs::write(&not_elf, b"not a library at all").unwrap();
    assert!(probe_library(&not_elf).unwrap_err().contains("not an ELF shared object"));
    // An ELF header of the other architecture (x86_64 <-> aarch64) is named as such, not loaded.
    let foreign = dir.path().join("libonnxruntime.so.2");
    let mut header = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    header.resize(18, 0);
    let other: u16 = if std::env::consts::ARCH == "aarch64" { 0x3e } else { 0xb7 };
    header.extend_from_slice(&other.to_le_bytes());
    header.resize(64, 0);
    fs::write(&foreign, &header).unwrap();
    let said = probe_library(&foreign).unwrap_err();
    assert!(said.contains("library; this machine runs"), "{said}");
    assert_eq!(
        elf_machine(Path::new(crate::engine::SETUP_ORT_LIBRARY)).unwrap(),
        Some(std::env::consts::ARCH)
    );
    // A real shared object that is not ONNX Runtime.
    let libc_path = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib64/libm.so.6",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if let Some(libm) = libc_path {
        assert!(probe_library(&libm).unwrap_err().contains("no OrtGetApiBase"));
    }
}

#[test]
fn the_setup_library_reports_its_version_and_cpu_provider() {
    let library = Path::new(crate::engine::SETUP_ORT_LIBRARY);
    assert!(library.is_file(), "{} is missing: run `make setup`", library.display());
    let probe = probe_library(library).unwrap();
    assert_eq!(probe.version, "1.32.0");
    assert!(probe.providers.iter().any(|p| p == "CPUExecutionProvider"), "{:?}", probe.providers);
    assert!(
        !probe.providers.iter().any(|p| p == "CUDAExecutionProvider"),
        "{:?}",
        probe.providers
    );
}

#[test]
fn the_configured_library_wins_and_gpu_devices_never_get_the_setup_library() {
    let tree = jetson_tree();
    let setup = Path::new("/checkout/target/onnxruntime/libonnxruntime.so.1.32.0");
    let env = SearchEnv::default();
    let cpu = [DeviceConfig::default()];
    let trt = [DeviceConfig {
        ep: EpKind::Tensorrt,
        ..DeviceConfig::default()
    }];
    let configured = OrtConfig {
        library_path: Some(PathBuf::from("/x/libonnxruntime.so")),
    };
    let resolve = |ort: &OrtConfig, devices: &[DeviceConfig], dylib: Option<&str>, root: &Path| {
        resolve_library(ort, devices, dylib.map(PathBuf::from), setup, root, &env)
    };
    let chosen = resolve(&configured, &trt, Some("/y/lib.so"), tree.path()).unwrap();
    assert_eq!(
        (chosen.path, chosen.why.as_str(), chosen.searched),
        (PathBuf::from("/x/libonnxruntime.so"), "ort.library_path", false)
    );
    assert_eq!(
        resolve(&OrtConfig::default(), &trt, Some("/y/lib.so"), tree.path()).unwrap().why,
        "ORT_DYLIB_PATH"
    );
    assert_eq!(resolve(&OrtConfig::default(), &cpu, None, tree.path()).unwrap().path, setup);
    let gpu = resolve(&OrtConfig::default(), &trt, None, tree.path()).unwrap();
    assert!(gpu.searched);
    assert!(gpu.path.ends_with("onnxruntime/capi/libonnxruntime.so.1.20.0"));
    assert!(gpu.why.contains("asks for tensorrt"), "{}", gpu.why);
    let empty = tempfile::tempdir().unwrap();
    let refused = resolve(&OrtConfig::default(), &trt, None, empty.path()).unwrap_err();
    assert!(
        refused.contains("not used for a GPU device unless the device lists \"cpu\" in its fallback"),
        "{refused}"
    );
    // A device that asked to fall back to the CPU gets the CPU library, and is told why.
    let trt_or_cpu = [DeviceConfig {
        ep: EpKind::Tensorrt,
        fallback: vec![EpKind::Cpu],
        ..DeviceConfig::default()
    }];
    let fallback = resolve(&OrtConfig::default(), &trt_or_cpu, None, empty.path()).unwrap();
    assert_eq!((fallback.path.as_path(), fallback.cpu_for_gpu), (setup, true));
    assert!(
        fallback.why.contains("lists cpu in its fallback") && fallback.why.contains("onnxruntime-gpu"),
        "{}",
        fallback.why
    );
    let mixed = [trt_or_cpu[0].clone(), trt[0].clone()];
    assert!(
        resolve(&OrtConfig::default(), &mixed, None, empty.path()).is_err(),
        "one device without cpu fallback"
    );
}
