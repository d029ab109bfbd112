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
