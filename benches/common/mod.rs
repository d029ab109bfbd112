//! What the daemon benchmarks share: the repository path, generated texts, percentiles, and a real `akidbd`
//! driven with the real `akictl bench`.

#![allow(dead_code)] // each bench uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const WORDS: &[&str] = &[
    "robot", "arm", "grasp", "the", "red", "cup", "on", "table", "move", "left", "camera", "sees", "a", "person", "near", "door",
    "battery", "low", "return", "to", "dock", "obstacle", "ahead", "slow", "down", "map", "kitchen", "pick", "up", "blue", "box",
];

pub fn sentences(n: usize, min_words: usize, max_words: usize, seed: u64) -> Vec<String> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as usize
    };
    (0..n)
        .map(|_| {
            let n_words = min_words + next() % (max_words - min_words + 1);
            (0..n_words).map(|_| WORDS[next() % WORDS.len()]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path, name: &str, extra: &str) -> Daemon {
        let socket = dir.join(format!("{name}.sock"));
        let config = dir.join(format!("{name}.toml"));
        // The default model unless `extra` names the models itself.
        let model = if extra.contains("[model]") || extra.contains("[[models]]") {
            String::new()
        } else {
            format!("[model]\ndir = {:?}\n", repo().join("models/all-MiniLM-L6-v2"))
        };
        std::fs::write(&config, format!("[server]\nsocket = {socket:?}\n{model}{extra}")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_akidbd"))
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let daemon = Daemon { child, socket };
        for _ in 0..600 {
            if Command::new(env!("CARGO_BIN_EXE_akictl"))
                .arg("--socket")
                .arg(&daemon.socket)
                .arg("health")
                .stderr(Stdio::null()) // "cannot reach akidbd" while it starts
                .status()
                .unwrap()
                .success()
            {
                return daemon;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("akidbd did not become ready");
    }

    pub fn bench(&self, args: &[&str]) -> Value {
        let output = Command::new(env!("CARGO_BIN_EXE_akictl"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("bench")
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    pub fn status(&self) -> Value {
        let output = Command::new(env!("CARGO_BIN_EXE_akictl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(["status", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// `akictl bench ARGS --json` in a thread of its own, against `socket`.
pub fn bench_in_background(socket: &Path, args: Vec<String>) -> std::thread::JoinHandle<Value> {
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_akictl"))
            .arg("--socket")
            .arg(&socket)
            .arg("bench")
            .args(&args)
            .arg("--json")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    })
}

/// `akictl bench` arguments for a bulk load: `clients` connections, 2 requests of 8 texts in flight each, for
/// `secs` seconds, texts from `texts`; on `model` (None: the default model).
pub fn bulk_args(model: Option<&str>, clients: usize, secs: u64, texts: &str) -> Vec<String> {
    let mut args: Vec<String> = model.map(|m| vec!["--model".to_owned(), m.to_owned()]).unwrap_or_default();
    let (clients, secs) = (clients.to_string(), secs.to_string());
    let rest = [
        "--concurrency",
        &clients,
        "--depth",
        "2",
        "--batch",
        "8",
        "--mix",
        "bulk",
        "--duration",
        &secs,
        "--texts",
        texts,
    ];
    args.extend(rest.iter().map(|s| (*s).to_owned()));
    args
}
