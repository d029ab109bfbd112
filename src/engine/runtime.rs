//! Finding the ONNX Runtime libraries of a machine, and asking one what it is.
//!
//! Two uses: the daemon, when a device asks for `tensorrt` or `cuda` and `ort.library_path` is not set, looks for a
//! library that has that provider instead of taking the CPU-only one `make setup` placed ([`choose_gpu_library`]);
//! the doctor lists every library found ([`find_libraries`]) and reports each one's version and providers
//! ([`probe_library`], run in a child process so that a bad library cannot take the doctor down).
//!
//! The places searched, in this order ([`search_dirs`]); every absolute path is taken under a root prefix so
//! tests (and `akidbd --doctor --root`) read fake trees:
//! 1. each directory of `LD_LIBRARY_PATH`: what the user pointed the loader at;
//! 2. the `onnxruntime/capi/` directory of an installed onnxruntime Python package — a virtual environment
//!    (`$VIRTUAL_ENV`), the user's (`~/.local/lib/python3.*/site-packages`), then the system's
//!    (`/usr/local/lib/python3.*/{dist,site}-packages`, `/usr/lib/python3.*/{dist,site}-packages`): where
//!    NVIDIA's Jetson `onnxruntime-gpu` wheels install, for JetPack's Python;
//! 3. `/usr/local/lib` (where a from-source build's `cmake --install` and container images put the C library),
//!    `/usr/lib/aarch64-linux-gnu`, `/usr/lib/x86_64-linux-gnu`, `/usr/lib64`, `/usr/lib`: distribution
//!    packages;
//! 4. `/opt/onnxruntime/lib`, `/opt/onnxruntime*/lib`: the layout of ONNX Runtime's release tarballs unpacked
//!    under /opt.
//!
//! Which providers a library has is read in two ways: the provider shared objects beside it
//! (`libonnxruntime_providers_cuda.so`, `libonnxruntime_providers_tensorrt.so`: ONNX Runtime loads its CUDA and
//! TensorRT providers from its own directory, so a library without them beside it cannot run them), and the C
//! API's `GetAvailableProviders` (what it was built with). This module does not decide policy beyond "has the
//! asked provider"; the caller says what it chose and why.

use std::ffi::{CStr, OsStr};
use std::path::{Path, PathBuf};

use crate::config::{DeviceConfig, EpKind, OrtConfig};

/// File names of the provider libraries ONNX Runtime loads from its own directory.
const PROVIDER_FILES: [(EpKind, &str); 2] = [
    (EpKind::Cuda, "libonnxruntime_providers_cuda.so"),
    (EpKind::Tensorrt, "libonnxruntime_providers_tensorrt.so"),
];

/// The C API version asked for by [`probe_library`]: ONNX Runtime 1.17, the oldest akidbd runs on.
const PROBE_API_VERSION: u32 = 17;

/// The environment the search reads, apart from the file system: taken from the process by
/// [`SearchEnv::from_process`], or made up by tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchEnv {
    /// `LD_LIBRARY_PATH`'s directories.
    pub ld_library_path: Vec<PathBuf>,
    /// `$HOME` (for `~/.local`).
    pub home: Option<PathBuf>,
    /// `$VIRTUAL_ENV`.
    pub virtual_env: Option<PathBuf>,
}

/// A directory searched, and why it is searched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchDir {
    /// The directory, under the root prefix.
    pub dir: PathBuf,
    /// Why: "LD_LIBRARY_PATH", "Python package onnxruntime", "system library directory", "/opt".
    pub place: &'static str,
}

/// An ONNX Runtime library found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundLibrary {
    /// The library (`libonnxruntime.so*`), as found (not resolved), under the root prefix.
    pub path: PathBuf,
    /// Why its directory was searched.
    pub place: &'static str,
    /// The GPU providers whose shared object lies beside it.
    pub providers_beside: Vec<EpKind>,
}

/// A Python onnxruntime package whose `capi/` has GPU providers but no `libonnxruntime.so` to load (older wheels
/// link ONNX Runtime into the Python module only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvidersWithoutLibrary {
    /// The `capi/` directory.
    pub dir: PathBuf,
    /// The providers found there.
    pub providers: Vec<EpKind>,
}

/// What [`find_libraries`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Every library found, in search order, each real file once.
    pub libraries: Vec<FoundLibrary>,
    /// Python packages with GPU providers and no C library.
    pub without_library: Vec<ProvidersWithoutLibrary>,
}

/// What a library says of itself through the C API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LibraryProbe {
    /// `GetVersionString()`, e.g. "1.32.0".
    pub version: String,
    /// `GetAvailableProviders()`, e.g. `["CUDAExecutionProvider", "CPUExecutionProvider"]`; empty when the
    /// library is older than C API 17.
    pub providers: Vec<String>,
}

/// The library a configuration loads, and why that one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryChoice {
    /// The library.
    pub path: PathBuf,
    /// Why: which setting named it, or what the search found.
    pub why: String,
    /// True when it was found by searching for a GPU provider (the daemon then sets `ort.library_path` to it).
    pub searched: bool,
    /// True when GPU devices get the CPU library because they fall back to cpu (the daemon warns).
    pub cpu_for_gpu: bool,
}

// === impl SearchEnv ===

impl SearchEnv {
    /// `LD_LIBRARY_PATH`, `HOME` and `VIRTUAL_ENV` of this process.
    pub fn from_process() -> SearchEnv {
        let path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        SearchEnv {
            ld_library_path: std::env::var_os("LD_LIBRARY_PATH")
                .map(|paths| std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()).collect())
                .unwrap_or_default(),
            home: path("HOME"),
            virtual_env: path("VIRTUAL_ENV"),
        }
    }
}

/// `path` under `root` (`/usr/lib` under `/tmp/fake` is `/tmp/fake/usr/lib`; under `/` it is itself).
pub fn under_root(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(relative) => root.join(relative),
        Err(_) => root.join(path),
    }
}

/// The directories searched, in order (see the module's documentation), under `root`. Directories that do not
/// exist are left out.
pub fn search_dirs(root: &Path, env: &SearchEnv) -> Vec<SearchDir> {
    let mut dirs = Vec::new();
    let mut push = |dir: PathBuf, place: &'static str| {
        if dir.is_dir() && !dirs.iter().any(|d: &SearchDir| d.dir == dir) {
            dirs.push(SearchDir { dir, place });
        }
    };
    for dir in &env.ld_library_path {
        push(under_root(root, dir), "LD_LIBRARY_PATH");
    }
    let mut python_lib_dirs = Vec::new();
    if let Some(venv) = &env.virtual_env {
        python_lib_dirs.push(venv.join("lib"));
    }
    if let Some(home) = &env.home {
        python_lib_dirs.push(home.join(".local/lib"));
    }
    python_lib_dirs.push(PathBuf::from("/usr/local/lib"));
    python_lib_dirs.push(PathBuf::from("/usr/lib"));
    for lib in python_lib_dirs {
        for python in sorted_entries(&under_root(root, &lib), |name| name.starts_with("python3")) {
            for packages in ["dist-packages", "site-packages"] {
                push(python.join(packages).join("onnxruntime/capi"), "Python package onnxruntime");
            }
        }
    }
    for dir in [
        "/usr/local/lib",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ] {
        push(under_root(root, Path::new(dir)), "system library directory");
    }
    for opt in sorted_entries(&under_root(root, Path::new("/opt")), |name| name.starts_with("onnxruntime")) {
        push(opt.join("lib"), "/opt");
    }
    dirs
}

/// Every ONNX Runtime library in the [`search_dirs`], with the providers beside each.
pub fn find_libraries(root: &Path, env: &SearchEnv) -> Inventory {
    let mut inventory = Inventory::default();
    let mut seen = Vec::new();
    for SearchDir { dir, place } in search_dirs(root, env) {
        let providers_beside = providers_in(&dir);
        let libraries = library_files(&dir);
        if libraries.is_empty() && !providers_beside.is_empty() {
            inventory.without_library.push(ProvidersWithoutLibrary {
                dir: dir.clone(),
                providers: providers_beside.clone(),
            });
        }
        for path in libraries {
            let real = path.canonicalize().unwrap_or_else(|_| path.clone());
            if seen.contains(&real) {
                continue;
            }
            seen.push(real);
            inventory.libraries.push(FoundLibrary {
                path,
                place,
                providers_beside: providers_beside.clone(),
            });
        }
    }
    inventory
}

/// The library the daemon loads for `ort` and `devices`: `ort.library_path`, else `ORT_DYLIB_PATH`
/// (`dylib_env`), else — when a device asks for `tensorrt` or `cuda` — the first library found under `root` with
/// those providers beside it ([`choose_gpu_library`]; when there is none, an error naming what to install, unless
/// every GPU device lists `cpu` as its fallback: then the CPU library, with the reason in `why`), else the CPU
/// library `make setup` placed (`setup_library`). The CPU library is never chosen silently for a GPU device.
pub fn resolve_library(
    ort: &OrtConfig,
    devices: &[DeviceConfig],
    dylib_env: Option<PathBuf>,
    setup_library: &Path,
    root: &Path,
    env: &SearchEnv,
) -> Result<LibraryChoice, String> {
    let choice = |path: PathBuf, why: String| LibraryChoice {
        path,
        why,
        searched: false,
        cpu_for_gpu: false,
    };
    if let Some(path) = &ort.library_path {
        return Ok(choice(path.clone(), "ort.library_path".into()));
    }
    if let Some(path) = dylib_env.filter(|p| !p.as_os_str().is_empty()) {
        return Ok(choice(path, "ORT_DYLIB_PATH".into()));
    }
    let mut wanted: Vec<EpKind> = Vec::new();
    for device in devices {
        if matches!(device.ep, EpKind::Cuda | EpKind::Tensorrt) && !wanted.contains(&device.ep) {
            wanted.push(device.ep);
        }
    }
    if wanted.is_empty() {
        return Ok(choice(
            setup_library.to_owned(),
            "the CPU library `make setup` placed (no GPU device)".into(),
        ));
    }
    let found = match choose_gpu_library(&find_libraries(root, env), &wanted) {
        Ok(found) => found,
        // Every GPU device lists cpu as its fallback: it asked to run on the CPU when its provider is missing, so
        // the CPU library serves it, and the reason is said at start-up (the daemon logs `why` as a warning).
        Err(message) if gpu_devices_fall_back_to_cpu(devices) => {
            return Ok(LibraryChoice {
                path: setup_library.to_owned(),
                why: format!("the CPU library `make setup` placed, because every GPU device lists cpu in its fallback: {message}"),
                searched: false,
                cpu_for_gpu: true,
            })
        }
        Err(message) => return Err(message),
    };
    Ok(LibraryChoice {
        why: format!(
            "ort.library_path is not set and a device asks for {}: the first library with {} beside it ({}; \
             searched LD_LIBRARY_PATH, Python onnxruntime packages, system library directories, /opt/onnxruntime*)",
            describe_providers(&wanted),
            describe_providers(&found.providers_beside),
            found.place
        ),
        path: found.path,
        searched: true,
        cpu_for_gpu: false,
    })
}

/// Whether every cuda/tensorrt device lists `cpu` among its fallbacks.
fn gpu_devices_fall_back_to_cpu(devices: &[DeviceConfig]) -> bool {
    devices
        .iter()
        .filter(|d| matches!(d.ep, EpKind::Cuda | EpKind::Tensorrt))
        .all(|d| d.fallback.contains(&EpKind::Cpu))
}

/// The first library (in search order) with every GPU provider in `wanted` beside it, or a message that names
/// what was found and what to install.
pub fn choose_gpu_library(inventory: &Inventory, wanted: &[EpKind]) -> Result<FoundLibrary, String> {
    let has_all = |lib: &FoundLibrary| wanted.iter().all(|kind| lib.providers_beside.contains(kind));
    if let Some(found) = inventory.libraries.iter().find(|lib| has_all(lib)) {
        return Ok(found.clone());
    }
    let names: Vec<String> = wanted.iter().map(ToString::to_string).collect();
    let mut message = format!(
        "a device asks for {} but no ONNX Runtime library with that provider was found",
        names.join(" and ")
    );
    if inventory.libraries.is_empty() {
        message.push_str(" (no libonnxruntime.so at all in the places searched)");
    } else {
        let listed: Vec<String> = inventory
            .libraries
            .iter()
            .map(|lib| format!("{} [{}]", lib.path.display(), describe_providers(&lib.providers_beside)))
            .collect();
        message.push_str(&format!(" (found: {})", listed.join(", ")));
    }
    for partial in &inventory.without_library {
        message.push_str(&format!(
            "; {} has the {} provider(s) but no libonnxruntime.so (a Python-only build)",
            partial.dir.display(),
            describe_providers(&partial.providers)
        ));
    }
    message.push_str(
        ". Install ONNX Runtime built with CUDA/TensorRT: on a Jetson, NVIDIA's onnxruntime-gpu wheel for your \
         JetPack (pip3 install it for JetPack's python3; its onnxruntime/capi/ holds the library and the \
         providers) or a JetPack container that ships it; on a desktop GPU, the onnxruntime-gpu package. Or set \
         ort.library_path to such a libonnxruntime.so. The CPU-only library `make setup` places is not used for \
         a GPU device unless the device lists \"cpu\" in its fallback. `akidbd --doctor` lists what it finds.",
    );
    Err(message)
}

/// "cuda, tensorrt" or "no GPU provider".
pub fn describe_providers(kinds: &[EpKind]) -> String {
    if kinds.is_empty() {
        return "no GPU provider".into();
    }
    kinds.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The GPU providers whose shared object is in `dir`.
pub fn providers_in(dir: &Path) -> Vec<EpKind> {
    PROVIDER_FILES
        .iter()
        .filter(|(_, file)| dir.join(file).exists())
        .map(|(kind, _)| *kind)
        .collect()
}

/// Loads `path` into this process and asks it for its version and providers through the C API.
///
/// The library stays loaded (ONNX Runtime does not support unloading): call this in a process of its own
/// (`akidbd --probe-ort-library PATH`), which also keeps a library that crashes while loading from taking the
/// caller down.
pub fn probe_library(path: &Path) -> Result<LibraryProbe, String> {
    // The loader's own message for a library of another architecture is a misleading "No such file": say it.
    match elf_machine(path)? {
        Some(arch) if arch != std::env::consts::ARCH => {
            return Err(format!("an {arch} library; this machine runs {}", std::env::consts::ARCH))
        }
        _ => {}
    }
    let api_base = api_base(path)?;
    // SAFETY: `api_base` is non-null and points at the library's static OrtApiBase, whose two leading function
    // pointers are stable across ONNX Runtime versions. The version string is static and NUL-terminated.
    #[allow(unsafe_code)]
    let (version, api) = unsafe {
        let base = &*api_base;
        let version = CStr::from_ptr((base.GetVersionString)()).to_string_lossy().into_owned();
        (version, (base.GetApi)(PROBE_API_VERSION))
    };
    if api.is_null() {
        // Older than C API 17: the version is known, the providers are not asked.
        return Ok(LibraryProbe {
            version,
            providers: Vec::new(),
        });
    }
    let providers = available_providers(api)?;
    Ok(LibraryProbe { version, providers })
}

/// Loads the library (never unloaded) and returns its `OrtApiBase`.
fn api_base(path: &Path) -> Result<*const ort::sys::OrtApiBase, String> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| "path contains a NUL byte".to_owned())?;
    // SAFETY: `c_path` is a valid NUL-terminated string. dlopen runs the library's initializers, which is the
    // point of the probe; the caller runs this in a child process for that reason.
    #[allow(unsafe_code)]
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(format!("cannot load it: {}", dl_error()));
    }
    // SAFETY: `handle` is a live handle from dlopen (never closed) and the symbol name is NUL-terminated.
    #[allow(unsafe_code)]
    let symbol = unsafe { libc::dlsym(handle, c"OrtGetApiBase".as_ptr()) };
    if symbol.is_null() {
        return Err("no OrtGetApiBase: not an ONNX Runtime library".into());
    }
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: OrtGetApiBase has this signature in every ONNX Runtime release (onnxruntime_c_api.h); the
    // pointer-to-function transmute is how a dlsym result is called.
    #[allow(unsafe_code)]
    let api_base = unsafe { std::mem::transmute::<*mut libc::c_void, GetApiBase>(symbol)() };
    if api_base.is_null() {
        return Err("OrtGetApiBase returned null".into());
    }
    Ok(api_base)
}

/// The execution providers the library was built with (its C API's `GetAvailableProviders`).
fn available_providers(api: *const ort::sys::OrtApi) -> Result<Vec<String>, String> {
    // SAFETY: `api` is a non-null OrtApi of version >= 17, whose layout up to GetAvailableProviders /
    // ReleaseAvailableProviders is what ort-sys declares (the C API only ever appends). The provider array is read
    // within `count` and released by the library's own function; a status returned is released likewise.
    #[allow(unsafe_code)]
    unsafe {
        let api = &*api;
        let mut list: *mut *mut libc::c_char = std::ptr::null_mut();
        let mut count: libc::c_int = 0;
        let status = (api.GetAvailableProviders)(&mut list, &mut count);
        if !status.0.is_null() {
            let message = CStr::from_ptr((api.GetErrorMessage)(status.0)).to_string_lossy().into_owned();
            (api.ReleaseStatus)(status.0);
            return Err(format!("GetAvailableProviders failed: {message}"));
        }
        let names = (0..count.max(0) as usize)
            .map(|idx| CStr::from_ptr(*list.add(idx)).to_string_lossy().into_owned())
            .collect();
        let status = (api.ReleaseAvailableProviders)(list, count);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
        }
        Ok(names)
    }
}

/// The architecture an ELF file is built for, in Rust's names ("x86_64", "aarch64", ...; None for others), or an
/// error when the file cannot be read or is no ELF file.
pub fn elf_machine(path: &Path) -> Result<Option<&'static str>, String> {
    let mut header = [0u8; 20];
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    std::io::Read::read_exact(&mut file, &mut header).map_err(|_| "not an ELF shared object (too short)".to_owned())?;
    if &header[..4] != b"\x7fELF" {
        return Err("not an ELF shared object".into());
    }
    // e_machine is at offset 18, in the byte order EI_DATA (offset 5) names: 1 little-endian, 2 big-endian.
    let machine = match header[5] {
        2 => u16::from_be_bytes([header[18], header[19]]),
        _ => u16::from_le_bytes([header[18], header[19]]),
    };
    Ok(match machine {
        0x3e => Some("x86_64"),
        0xb7 => Some("aarch64"),
        0x28 => Some("arm"),
        0x03 => Some("x86"),
        0xf3 => Some("riscv64"),
        0x15 => Some("powerpc64"),
        _ => None,
    })
}

/// dlerror()'s message, or a generic one.
fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by libc, valid until the next dl* call on
    // this thread; it is copied at once.
    #[allow(unsafe_code)]
    unsafe {
        let message = libc::dlerror();
        if message.is_null() {
            "unknown dlopen error".into()
        } else {
            CStr::from_ptr(message).to_string_lossy().into_owned()
        }
    }
}

/// Files in `dir` named `libonnxruntime.so` or `libonnxruntime.so.*`, sorted with the most specific name first
/// (`libonnxruntime.so.1.32.0` before `libonnxruntime.so.1` before `libonnxruntime.so`).
fn library_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = sorted_entries(dir, |name| name == "libonnxruntime.so" || name.starts_with("libonnxruntime.so."));
    files.retain(|path| path.is_file());
    files.sort_by_key(|path| std::cmp::Reverse(path.file_name().map(OsStr::len).unwrap_or(0)));
    files
}

/// The entries of `dir` whose file name passes `keep`, sorted; none when it cannot be read.
fn sorted_entries(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.file_name().is_some_and(|name| keep(&name.to_string_lossy())))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests;
