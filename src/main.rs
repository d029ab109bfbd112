//! akidbd: arguments → configuration → telemetry → run → exit code.
//!
//! Exit codes: 0 stopped cleanly; 64 bad arguments or configuration; 65 bad model directory; 69 ONNX Runtime or
//! a device unavailable; 75 the socket is taken (another daemon runs) or cannot be created.

use std::path::PathBuf;
use std::process::ExitCode;

use akidb::config::Config;
use akidb::daemon::{self, DaemonError};
use clap::Parser;

/// The akidb embedding daemon.
#[derive(Debug, Parser)]
#[command(
    name = "akidbd",
    version,
    about = "Local embedding daemon: texts in over a Unix socket, vectors out"
)]
struct Args {
    /// Configuration file (TOML). Without it, the defaults apply.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Socket path (overrides server.socket).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Model directory (overrides model.dir).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Serve the OpenAI-compatible HTTP surface on this address, e.g. 127.0.0.1:8080 (overrides http.listen).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Validate the configuration, print what would run, and exit.
    #[arg(long)]
    check_config: bool,
    /// Examine this machine for akidbd (architecture, Jetson release, ONNX Runtime libraries and their providers,
    /// CUDA/cuDNN/TensorRT, NVML, sensors, model, socket), print each problem with its fix, and exit: 0 when the
    /// configured service could start, 1 when not. Needs no daemon.
    #[arg(long)]
    doctor: bool,
    /// With --doctor: read the machine's files under this directory instead of / (a fake tree).
    #[arg(long, value_name = "DIR", default_value = "/", requires = "doctor")]
    root: PathBuf,
    /// Load this ONNX Runtime library and print its version and providers as JSON (the doctor's child process).
    #[arg(long, value_name = "LIB", hide = true)]
    probe_ort_library: Option<PathBuf>,
}

const EXIT_CONFIG: u8 = 64;
const EXIT_MODEL: u8 = 65;
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_SOCKET: u8 = 75;

fn main() -> ExitCode {
    akidb::memory::limit_malloc_arenas();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            // Help and version go to stdout with status 0; usage errors exit with EXIT_CONFIG, not clap's 2.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { EXIT_CONFIG } else { 0 });
        }
    };
    if let Some(library) = &args.probe_ort_library {
        return probe(library);
    }
    if args.doctor {
        return doctor(&args);
    }
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("akidbd: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        println!("configuration OK");
        for (key, value) in akidb::config::summary(&config) {
            println!("  {key}: {value}");
        }
        return ExitCode::SUCCESS;
    }
    akidb::telemetry::init();
    let config = match choose_ort_library(config) {
        Ok(config) => config,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("akidbd: {message}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    serve(config)
}

/// Runs the daemon on a tokio runtime with `server.io_threads` workers until a signal stops it; the exit code
/// says how it ended.
fn serve(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.io_threads())
        .enable_all()
        .thread_name("akidbd")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("akidbd: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    match runtime.block_on(daemon::run(config, akidb::server_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("akidbd: {err:#}");
            ExitCode::from(match err {
                DaemonError::Model(_) | DaemonError::ModelGraph(_) => EXIT_MODEL,
                DaemonError::Runtime(_) | DaemonError::Device(_) => EXIT_UNAVAILABLE,
                DaemonError::Socket(_) => EXIT_SOCKET,
            })
        }
    }
}

fn load_config(args: &Args) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(socket) = &args.socket {
        config.server.socket = Some(socket.clone());
    }
    if let Some(model) = &args.model {
        config.serve_only(model.clone());
    }
    if let Some(http) = &args.http {
        config.http.listen = Some(http.clone());
    }
    config.validate().map_err(|errors| format!("invalid configuration:\n{errors}"))?;
    Ok(config)
}

/// Settles which ONNX Runtime library to load and says why. When `ort.library_path` and `ORT_DYLIB_PATH` are
/// unset and a device asks for tensorrt or cuda, the machine is searched for a library with that provider
/// (`engine::runtime`) and `ort.library_path` is set to it; none found is an error that names what to install.
fn choose_ort_library(mut config: Config) -> Result<Config, String> {
    use akidb::engine::runtime::{resolve_library, SearchEnv};
    let choice = resolve_library(
        &config.ort,
        &config.effective_devices(),
        std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
        std::path::Path::new(akidb::engine::SETUP_ORT_LIBRARY),
        std::path::Path::new("/"),
        &SearchEnv::from_process(),
    )?;
    if choice.cpu_for_gpu {
        tracing::warn!(library = %choice.path.display(), why = %choice.why, "ONNX Runtime library");
    } else {
        tracing::info!(library = %choice.path.display(), why = %choice.why, "ONNX Runtime library");
    }
    if choice.searched {
        config.ort.library_path = Some(choice.path);
    }
    Ok(config)
}

/// `--doctor`: the report on stdout; exit 0 when the configured service could start, else 1.
fn doctor(args: &Args) -> ExitCode {
    let options = akidb::doctor::DoctorOptions {
        root: args.root.clone(),
        config: load_config(args),
        prober: std::env::current_exe().ok(),
        dylib_env: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
        search_env: akidb::engine::runtime::SearchEnv::from_process(),
    };
    let report = akidb::doctor::examine(&options);
    print!("{}", report.text);
    if report.can_start() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `--probe-ort-library LIB`: `{"version": ..., "providers": [...]}` on stdout, or the reason on stderr and 1.
fn probe(library: &std::path::Path) -> ExitCode {
    match akidb::engine::runtime::probe_library(library) {
        Ok(probe) => {
            println!("{}", serde_json::to_string(&probe).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(1)
        }
    }
}
