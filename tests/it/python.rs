//! The Python client (tools/python) against the real daemon, with and without numpy.

use std::process::Command;

use crate::util::{self, Daemon};

#[test]
fn python_client_matches_the_references() {
    let repo = util::repo();
    let deps = repo.join("target/python");
    let probe = Command::new("python3")
        .args(["-c", "import msgpack"])
        .env("PYTHONPATH", &deps)
        .status();
    assert!(
        matches!(probe, Ok(status) if status.success()),
        "python3 with msgpack is missing, so the Python client cannot be tested (tools/setup.sh installs it into \
         target/python: run `make setup`)"
    );
    let daemon = Daemon::start("");
    let full = util::shared().join("fixtures/minilm/public.jsonl");
    let fixtures = if full.is_file() {
        full
    } else {
        repo.join("tests/data/minilm-sample.jsonl")
    };
    for extra in [None, Some("--no-numpy")] {
        let mut command = Command::new("python3");
        command
            .arg(repo.join("tools/python/test_client.py"))
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("--fixtures")
            .arg(&fixtures)
            .env("PYTHONPATH", format!("{}:{}", repo.join("tools/python").display(), deps.display()));
        if let Some(flag) = extra {
            command.arg(flag);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        eprintln!("python client {extra:?}:\n{stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{stdout}");
        assert!(stdout.contains(" passed, 0 failed"));
    }
}
