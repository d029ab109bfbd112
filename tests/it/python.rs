//! The Python client (tools/python) against the real daemon, with and without numpy.

use std::process::Command;

use crate::util::{self, Daemon};

#[test]
fn python_client_matches_the_references() {
    let repo = util::repo();
    // The package as `pip install ./tools/python` installed it (tools/setup.sh), not the file in the repository.
    let python = repo.join("target/pyenv/bin/python");
    let probe = Command::new(&python).args(["-I", "-c", "import akidb_client, msgpack"]).status();
    assert!(
        matches!(probe, Ok(status) if status.success()),
        "{} with the installed akidb-client package is missing, so the Python client cannot be tested \
         (tools/setup.sh installs it: run `make setup`)",
        python.display()
    );
    let daemon = Daemon::start("");
    let fixtures = util::fixtures_path();
    for extra in [None, Some("--no-numpy")] {
        let mut command = Command::new(&python);
        command
            .arg("-I")
            .arg(repo.join("tools/python/test_client.py"))
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("--fixtures")
            .arg(&fixtures);
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
