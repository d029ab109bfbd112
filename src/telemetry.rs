//! Logging: to journald when stderr is the journal, else to stderr. `RUST_LOG` filters (default: info, with
//! ONNX Runtime's chatty session logs at warn).

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

const DEFAULT_FILTER: &str = "info,ort=warn";

/// Installs the global subscriber. Safe to call once per process.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = registry.with(journald.with_syslog_identifier("akidbd".into())).try_init();
            return;
        }
    }
    let _ = registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .try_init();
}

/// systemd sets JOURNAL_STREAM to "device:inode" of the stream it connected to stderr.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}
