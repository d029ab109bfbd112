//! The C and C++ clients (clients/c) against the real daemon, as C and C++ programmers use them.
//!
//! Builds libakidb_client with cargo if needed, compiles clients/c/tests/*.{c,cpp} with the system compiler
//! (`cc`/`c++`, under AddressSanitizer with leak detection unless AKIDB_C_TEST_ASAN=0), and runs them against a
//! real akidbd: vectors equal the Rust client's bit for bit, error codes, a dead daemon, a stalled daemon (timeout),
//! 8 threads on one connection, a daemon restart. `installed_package_builds_the_example` installs the library into a temporary
//! prefix with clients/c/install.sh and builds clients/c/examples/cpp with CMake against it (the issue's "done
//! when"); `latency_figure` (ignored; run by hand) measures the wrapper's overhead against the Rust client and akictl.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use akidb::client::EmbedParams;

use crate::util::{self, Daemon};

/// The texts of clients/c/tests/test_c.c, in order.
const C_TEXTS: [&str; 4] = [
    "The robot picks up the red cup from the table.",
    "Where is the charging station?",
    "",
    "Ünïcödé tëxt with emoji 🤖 and CJK 机器人.",
];

/// The texts that test_cpp.cpp's `basic` mode embeds as a batch.
const CPP_TEXTS: [&str; 3] = ["Move the arm to the home position.", "Where is the charging station?", ""];

#[test]
fn c_api_matches_the_rust_client() {
    let programs = programs();
    let daemon = Daemon::start("");
    let vectors = daemon.dir.path().join("c-vectors.bin");
    let output = run(Command::new(&programs.c).arg(&daemon.socket).arg(&vectors));
    assert_passed(&output, "c:");
    assert_bitwise_equal(&read_floats(&vectors), &rust_vectors(&daemon, &C_TEXTS));
}

#[test]
fn cpp_wrapper_matches_the_rust_client() {
    let programs = programs();
    let daemon = Daemon::start("");
    let vectors = daemon.dir.path().join("cpp-vectors.bin");
    let output = run(Command::new(&programs.cpp).arg("basic").arg(&daemon.socket).arg(&vectors));
    assert_passed(&output, "cpp basic:");
    assert_bitwise_equal(&read_floats(&vectors), &rust_vectors(&daemon, &CPP_TEXTS));
}

#[test]
fn eight_threads_share_one_connection() {
    let programs = programs();
    let daemon = Daemon::start("");
    let output = run(Command::new(&programs.cpp).arg("threads").arg(&daemon.socket));
    assert_passed(&output, "cpp threads:");
}

/// The daemon is killed under a connected client (reported at once, not hung on), started again (the next call
/// reconnects), and restarted again while the client holds a stale connection (the call reconnects and retries).
#[test]
fn a_daemon_restart_is_reported_then_survived() {
    let programs = programs();
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("embed.sock");
    let mut daemon = start_at(&socket);
    let mut host = Stepped::spawn(&programs.cpp, "restart", &socket);
    host.expect("embedded");
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    host.tell("killed");
    host.expect("reported");

    drop(daemon);
    let daemon = start_at(&socket);
    host.tell("restarted");
    host.expect("reconnected");

    drop(daemon);
    let _daemon = start_at(&socket);
    host.tell("restarted");
    host.expect("done");
    host.finish("cpp restart:");
}

/// A daemon that stops answering (SIGSTOP) under a connected client: the call returns `AKIDB_TIMEOUT` after the
/// client's timeout instead of hanging; once the daemon runs again (SIGCONT) the next call reconnects.
#[test]
fn a_stalled_daemon_times_out_then_recovers() {
    let programs = programs();
    let daemon = Daemon::start("");
    let mut host = Stepped::spawn(&programs.cpp, "stall", &daemon.socket);
    host.expect("embedded");
    daemon.signal("STOP");
    wait_for_state(daemon.pid(), 'T');
    host.tell("stopped");
    host.expect("timed_out");
    daemon.signal("CONT");
    host.tell("continued");
    host.expect("done");
    host.finish("cpp stall:");
}

/// A test program run step by step: it prints one line after each step and waits for the test to say, on its
/// stdin, what was done to the daemon meanwhile.
struct Stepped {
    child: std::process::Child,
    to_child: Option<std::process::ChildStdin>,
    from_child: BufReader<std::process::ChildStdout>,
}

impl Stepped {
    fn spawn(program: &Path, mode: &str, socket: &Path) -> Stepped {
        let mut command = Command::new(program);
        let mut child = sanitized(&mut command)
            .arg(mode)
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let to_child = child.stdin.take();
        let from_child = BufReader::new(child.stdout.take().unwrap());
        Stepped {
            child,
            to_child,
            from_child,
        }
    }

    fn expect(&mut self, want: &str) {
        let mut line = String::new();
        self.from_child.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), want, "the program said {line:?}");
    }

    fn tell(&mut self, what: &str) {
        writeln!(self.to_child.as_mut().unwrap(), "{what}").unwrap();
    }

    /// Closes its stdin, waits for it to exit, and checks that it passed every check (`PREFIX N passed, 0 failed`).
    fn finish(mut self, prefix: &str) {
        drop(self.to_child.take());
        let mut stdout = Vec::new();
        std::io::Read::read_to_end(&mut self.from_child, &mut stdout).unwrap();
        let mut output = self.child.wait_with_output().unwrap();
        output.stdout = stdout;
        assert_passed(&output, prefix);
    }
}

/// `make install-client` as a user runs it (the debug build, to spare a release build here), then the example
/// project configured with plain CMake against the prefix, built, and run against a daemon; and pkg-config.
#[test]
fn installed_package_builds_the_example() {
    // Builds the library (the debug one is installed).
    programs();
    let cmake =
        tool(&["cmake"]).expect("cmake is missing, so the CMake package cannot be tested (make setup puts PyPI's cmake in target/pyenv)");
    let pkg_config = tool(&["pkg-config", "pkgconf"])
        .expect("pkg-config is missing, so the pkg-config file cannot be tested (make setup puts PyPI's pkgconf in target/pyenv)");
    let repo = util::repo();
    let scratch = tempfile::tempdir().unwrap();
    let prefix = scratch.path().join("prefix");
    let install = run(Command::new(repo.join("clients/c/install.sh"))
        .env("PREFIX", &prefix)
        .env("PROFILE", "debug")
        .env_remove("DESTDIR"));
    assert!(install.status.success());
    for file in [
        "lib/libakidb_client.so",
        "lib/libakidb_client.so.0",
        "lib/libakidb_client.a",
        "include/akidb_client.h",
        "include/akidb_client.hpp",
        "lib/cmake/akidb_client/akidb_clientConfig.cmake",
        "lib/cmake/akidb_client/akidb_clientConfigVersion.cmake",
        "lib/pkgconfig/akidb-client.pc",
    ] {
        assert!(prefix.join(file).exists(), "{file} was not installed");
    }

    let build = scratch.path().join("build");
    let configure = run(Command::new(&cmake)
        .arg("-S")
        .arg(repo.join("clients/c/examples/cpp"))
        .arg("-B")
        .arg(&build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())));
    assert!(configure.status.success());
    assert!(run(Command::new(&cmake).arg("--build").arg(&build)).status.success());

    let daemon = Daemon::start("");
    let text = "Move the arm to the home position.";
    let output = run(Command::new(build.join("akidb_embed"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg(text));
    assert!(output.status.success());
    let printed: Vec<f32> = serde_json::from_slice(&output.stdout).expect("one JSON array of floats");
    assert_bitwise_equal(&printed, &rust_vectors(&daemon, &[text]));

    // Without --socket: the default path, as akidbd and akictl derive it ($XDG_RUNTIME_DIR/akidb/embed.sock).
    let runtime_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(runtime_dir.path().join("akidb")).unwrap();
    let default_daemon = start_at(&runtime_dir.path().join("akidb/embed.sock"));
    let by_default = run(Command::new(build.join("akidb_embed"))
        .arg(text)
        .env("XDG_RUNTIME_DIR", runtime_dir.path()));
    assert!(by_default.status.success());
    assert_eq!(by_default.stdout, output.stdout, "the default socket path serves the same vector");
    drop(default_daemon);

    {
        let pkg = run(Command::new(&pkg_config)
            .args(["--cflags", "--libs", "akidb-client"])
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")));
        assert!(pkg.status.success());
        let flags = String::from_utf8_lossy(&pkg.stdout).trim().to_string();
        assert!(flags.contains("-lakidb_client") && flags.contains(&format!("-I{}", prefix.join("include").display())));
        let binary = scratch.path().join("pkg-config-built");
        let compile = run(Command::new("sh").arg("-c").arg(format!(
            "c++ -std=c++17 {} -o {} {flags} -Wl,-rpath,{}",
            repo.join("clients/c/examples/cpp/main.cpp").display(),
            binary.display(),
            prefix.join("lib").display()
        )));
        assert!(compile.status.success());
        let output = run(Command::new(&binary).arg("--socket").arg(&daemon.socket).arg(text));
        assert_eq!(
            output.stdout,
            run(Command::new(build.join("akidb_embed"))
                .arg("--socket")
                .arg(&daemon.socket)
                .arg(text))
            .stdout
        );
    }
}

/// The figure of docs/C-CLIENT.md: one short sentence, sequentially, from C++, the Rust client and akictl, in one
/// run. `cargo test --release --test it cclient::latency_figure -- --ignored --nocapture`; writes
/// target/c-client-latency.json.
#[test]
#[ignore = "a measurement, run by hand"]
fn latency_figure() {
    let programs = programs();
    let daemon = Daemon::start("");
    let n_requests = 500;
    let text = "Move the arm to the home position.";
    let texts = daemon.dir.path().join("one.txt");
    std::fs::write(&texts, format!("{text}\n")).unwrap();
    let mut rows = Vec::new();
    for cache in [true, false] {
        for round in 0..3 {
            let mut cpp_command = Command::new(&programs.cpp_bench);
            cpp_command.arg("bench").arg(&daemon.socket).arg(n_requests.to_string());
            if !cache {
                cpp_command.arg("nocache");
            }
            let cpp: serde_json::Value = serde_json::from_slice(&run(&mut cpp_command).stdout).unwrap();
            let rust = rust_latency(&daemon, text, n_requests, cache);
            let mut akictl_command = Command::new(env!("CARGO_BIN_EXE_akictl"));
            akictl_command
                .arg("--socket")
                .arg(&daemon.socket)
                .args(["bench", "--concurrency", "1", "--requests"])
                .arg(n_requests.to_string())
                .arg("--texts")
                .arg(&texts)
                .args(cache.then_some("--cache"))
                .arg("--json");
            let akictl: serde_json::Value = serde_json::from_slice(&run(&mut akictl_command).stdout).unwrap();
            let normal = &akictl["latency_ms"]["normal"];
            let akictl = serde_json::json!({
                "client": "akictl bench --concurrency 1 (no warm-up)",
                "requests": akictl["requests"],
                "p50_us": normal["p50"].as_f64().unwrap_or(f64::NAN) * 1000.0,
                "p99_us": normal["p99"].as_f64().unwrap_or(f64::NAN) * 1000.0,
            });
            let row = serde_json::json!({"cache": cache, "round": round, "cpp": cpp, "rust": rust, "akictl": akictl});
            util::say(&row.to_string());
            rows.push(row);
        }
    }
    let lscpu = Command::new("lscpu")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let cpu = lscpu
        .lines()
        .find_map(|line| line.strip_prefix("Model name:"))
        .unwrap_or("unknown")
        .trim();
    let report = serde_json::json!({
        "what": "one short sentence, sequential requests on one connection, p50/p99 in µs, after a warm-up; with \
                 cache true the daemon's embedding cache answers (same text), so the figures are the clients' and the \
                 socket's cost; with cache false every request runs the model",
        "cpu": cpu,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "requests_per_client": n_requests,
        "text": text,
        "rounds": rows,
    });
    std::fs::write(
        util::repo().join("target/c-client-latency.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
}

/// A daemon listening on `socket` (a path that outlives it, unlike `Daemon::start`'s), once it is ready.
fn start_at(socket: &Path) -> Daemon {
    let daemon = Daemon::spawn(&format!("[server]\nsocket = {socket:?}\n"), &[]);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let health = util::runtime().block_on(async {
            let mut client = akidb::client::Client::connect(socket).await.ok()?;
            client.health().await.ok()
        });
        if health.as_deref() == Some("ready") {
            return daemon;
        }
        assert!(!daemon.has_exited(), "akidbd exited before it became ready; log:\n{}", daemon.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("akidbd did not become ready; log:\n{}", daemon.log());
}

/// Waits (up to 5 s) until the process is in `state` (/proc/PID/stat's third field), since a signal's effect is
/// not synchronous with `kill` returning.
fn wait_for_state(pid: i32, state: char) {
    for _ in 0..500 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()) == Some(state) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("process {pid} did not reach state {state}");
}

/// The compiled test programs, built once per test binary.
struct Programs {
    c: PathBuf,
    cpp: PathBuf,
    /// test_cpp.cpp built optimized and without sanitizers, for timing.
    cpp_bench: PathBuf,
}

fn programs() -> &'static Programs {
    static PROGRAMS: OnceLock<Programs> = OnceLock::new();
    PROGRAMS.get_or_init(build_programs)
}

fn build_programs() -> Programs {
    let repo = util::repo();
    // The library of the profile these tests were built with (a release run measures the release library).
    let profile_dir = Path::new(env!("CARGO_BIN_EXE_akidbd")).parent().unwrap().to_owned();
    let release = profile_dir.ends_with("release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "-p", "akidb-client-c"])
        .args(release.then_some("--release"))
        .current_dir(&repo)
        .status()
        .unwrap();
    assert!(built.success(), "cargo build -p akidb-client-c failed");
    let library = profile_dir.join("libakidb_client.so");
    assert!(library.is_file());
    let out = repo.join("target/cclient-tests");
    // The programs link by the library's soname, which cargo's output directory lacks: name it in a folder of ours.
    let lib_dir = out.join("lib");
    std::fs::create_dir_all(&lib_dir).unwrap();
    for name in ["libakidb_client.so", "libakidb_client.so.0"] {
        let _ = std::fs::remove_file(lib_dir.join(name));
        std::os::unix::fs::symlink(&library, lib_dir.join(name)).unwrap();
    }
    let asan = std::env::var("AKIDB_C_TEST_ASAN").map_or(true, |v| v != "0");
    let sanitize: &[&str] = if asan {
        &["-fsanitize=address", "-fno-omit-frame-pointer"]
    } else {
        &[]
    };
    util::say(&format!(
        "cclient: compiling the C and C++ tests{}",
        if asan { " under AddressSanitizer" } else { "" }
    ));
    let compile = |compiler: &str, std: &str, source: &str, output: &Path, extra: &[&str], libs: &[&str]| {
        let status = Command::new(compiler)
            .args([std, "-Wall", "-Wextra", "-Werror", "-g"])
            .args(extra)
            .arg(format!("-I{}", repo.join("clients/c/include").display()))
            .arg(repo.join("clients/c/tests").join(source))
            .arg("-o")
            .arg(output)
            .arg(format!("-L{}", lib_dir.display()))
            .arg("-lakidb_client")
            .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
            .args(libs)
            .status()
            .unwrap_or_else(|e| panic!("{compiler}: {e} (a C/C++ compiler is needed to test the C client)"));
        assert!(status.success(), "{compiler} {source} failed");
    };
    let programs = Programs {
        c: out.join("test_c"),
        cpp: out.join("test_cpp"),
        cpp_bench: out.join("test_cpp_bench"),
    };
    compile("cc", "-std=c11", "test_c.c", &programs.c, sanitize, &["-lm"]);
    compile("c++", "-std=c++17", "test_cpp.cpp", &programs.cpp, sanitize, &["-pthread"]);
    compile("c++", "-std=c++17", "test_cpp.cpp", &programs.cpp_bench, &["-O2"], &["-pthread"]);
    programs
}

/// Sets the sanitizer's options: leaks are errors (the library frees all it allocates).
fn sanitized(command: &mut Command) -> &mut Command {
    command.env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:exitcode=86")
}

fn run(command: &mut Command) -> Output {
    let output = sanitized(command).output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        util::say(&format!("{command:?} failed ({}):\n{stdout}\n{stderr}", output.status));
    } else if !stderr.is_empty() {
        eprintln!("{stderr}");
    }
    output
}

fn assert_passed(output: &Output, prefix: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        stdout.lines().any(|line| line.starts_with(prefix) && line.ends_with(" 0 failed")),
        "{stdout}"
    );
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The first of `names` on the PATH, else in target/pyenv/bin (where `make setup` installs PyPI's cmake and
/// pkgconf, so that a machine without them still runs these tests).
fn tool(names: &[&str]) -> Option<PathBuf> {
    let pyenv = util::repo().join("target/pyenv/bin");
    names
        .iter()
        .map(PathBuf::from)
        .chain(names.iter().map(|name| pyenv.join(name)))
        .find(|candidate| have(&candidate.to_string_lossy()))
}

fn read_floats(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The Rust client's vectors for `texts` in one request with default options, flattened.
fn rust_vectors(daemon: &Daemon, texts: &[&str]) -> Vec<f32> {
    let socket = daemon.socket.clone();
    let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    util::runtime().block_on(async move {
        let mut client = akidb::client::Client::connect(&socket).await.unwrap();
        let embedded = util::within(60, client.embed(&texts, &EmbedParams::default())).await.unwrap();
        embedded.embeddings.concat()
    })
}

fn assert_bitwise_equal(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "float counts differ");
    let differ = got.iter().zip(want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(differ, 0, "{differ} of {} floats differ from the Rust client's", got.len());
}

/// p50/p99 in µs of `n_requests` sequential embeds of `text` through the Rust client, after a warm-up.
fn rust_latency(daemon: &Daemon, text: &str, n_requests: usize, cache: bool) -> serde_json::Value {
    let socket = daemon.socket.clone();
    let text = text.to_owned();
    util::runtime().block_on(async move {
        let mut client = akidb::client::Client::connect(&socket).await.unwrap();
        let params = EmbedParams {
            cache: Some(cache),
            ..EmbedParams::default()
        };
        for _ in 0..50 {
            client.embed(&[&text], &params).await.unwrap();
        }
        let mut micros = Vec::with_capacity(n_requests);
        for _ in 0..n_requests {
            let start = tokio::time::Instant::now();
            client.embed(&[&text], &params).await.unwrap();
            micros.push(start.elapsed().as_secs_f64() * 1e6);
        }
        micros.sort_by(f64::total_cmp);
        let at = |q: f64| micros[((q * n_requests as f64) as usize).min(n_requests - 1)];
        serde_json::json!({"client": "rust", "requests": n_requests, "p50_us": at(0.5), "p99_us": at(0.99)})
    })
}
