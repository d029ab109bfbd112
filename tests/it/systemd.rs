//! systemd integration against the real daemon: notifications on a NOTIFY_SOCKET the test binds, the watchdog
//! (fed while the devices work or idle, including long batches, and kept up by a replacement when one hangs), and
//! socket activation through LISTEN_FDS.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use akidb::client::EmbedParams;
use tokio::time::Instant;

use crate::util::{self, Daemon};

/// Every datagram received, with when it arrived.
fn listen(socket: UnixDatagram) -> Arc<Mutex<Vec<(Instant, String)>>> {
    let messages = Arc::new(Mutex::new(Vec::new()));
    let sink = messages.clone();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => sink
                    .lock()
                    .unwrap()
                    .push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    if Arc::strong_count(&sink) == 1 {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    messages
}

fn count(messages: &Mutex<Vec<(Instant, String)>>, needle: &str, from: Instant, to: Instant) -> usize {
    messages
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, m)| *at >= from && *at < to && m.lines().any(|l| l == needle))
        .count()
}

#[cfg(feature = "fault-injection")]
#[test]
fn ready_watchdog_and_stopping_are_notified() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let messages = listen(UnixDatagram::bind(&notify_path).unwrap());
    let notify = notify_path.to_str().unwrap();
    let mut daemon = Daemon::spawn(
        "[batcher]\nstuck_timeout_ms = 300\nmax_batch_tokens = 8192\n",
        &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "400000")],
    );
    daemon.wait_ready();
    let ready_at = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        count(&messages, "READY=1", ready_at - Duration::from_secs(60), Instant::now()),
        1,
        "READY=1 once, after warm-up"
    );
    assert!(
        count(
            &messages,
            "EXTEND_TIMEOUT_USEC=30000000",
            ready_at - Duration::from_secs(60),
            ready_at
        ) >= 1
    );

    // WATCHDOG_USEC=400 ms: pinged every 200 ms while healthy.
    std::thread::sleep(Duration::from_millis(1500));
    let healthy = count(&messages, "WATCHDOG=1", ready_at, Instant::now());
    assert!(healthy >= 5, "{healthy} pings in 1.6 s");

    // Long real batches (24 inputs of ~256 tokens each, batches of up to 8192 tokens) keep the pings going: the device is working, not hung,
    // for as long as its batches take in proportion to their tokens.
    let socket = daemon.socket.clone();
    let long = std::thread::spawn(move || {
        util::runtime().block_on(async move {
            let mut client = akidb::client::Client::connect(&socket).await.unwrap();
            let text = "the robot arm moves each heavy box from the pallet to the shelf ".repeat(24);
            let texts = vec![text; 24];
            client.embed(&texts, &EmbedParams::default()).await.unwrap();
        })
    });
    let long_start = Instant::now();
    long.join().unwrap();
    let long_end = Instant::now();
    let pings: Vec<Instant> = messages
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, m)| *at >= long_start && *at < long_end && m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(at, _)| *at)
        .collect();
    let mut edges = vec![long_start];
    edges.extend(&pings);
    edges.push(long_end);
    let widest = edges.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    eprintln!(
        "long batches for {:?}: {} pings, widest gap {widest:?} (WatchdogSec 400 ms)",
        long_end - long_start,
        pings.len()
    );
    assert!(
        widest < Duration::from_millis(400),
        "a ping gap of {widest:?} while the device worked"
    );
    let socket = daemon.socket.clone();
    let restarts = util::runtime().block_on(async move {
        let mut client = akidb::client::Client::connect(&socket).await.unwrap();
        client.status().await.unwrap().devices[0].restarts
    });
    assert_eq!(restarts, 0, "no long batch was taken for a hung one");

    // A hung batch (test fault: a 3 s sleep, predicted at a few ms) is hung past its stuck deadline: the device
    // is replaced, its request answered `internal`, and the replacement keeps the service alive.
    let socket = daemon.socket.clone();
    let hang_start = Instant::now();
    let outcome = util::runtime().block_on(async move {
        let mut client = akidb::client::Client::connect(&socket).await.unwrap();
        let outcome = client.embed(&["\0akidb-fault:hang:3000"], &EmbedParams::default()).await;
        // The replacement is started right after the batch is answered.
        let mut restarts = 0;
        for _ in 0..100 {
            restarts = client.status().await.unwrap().devices[0].restarts;
            if restarts > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (outcome.map(|_| ()).map_err(|e| e.to_string()), restarts)
    });
    assert!(outcome.0.as_ref().is_err_and(|e| e.contains("stuck")), "{outcome:?}");
    assert_eq!(outcome.1, 1, "the hung device was replaced");
    std::thread::sleep(Duration::from_millis(1000));
    let after = count(&messages, "WATCHDOG=1", hang_start + Duration::from_millis(500), Instant::now());
    assert!(after >= 2, "pings go on with the replacement ({after})");

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count(&messages, "STOPPING=1", hang_start, Instant::now()), 1);
}

#[test]
fn socket_activation_serves_the_inherited_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let config = dir.path().join("akidb.toml");
    // The configured socket path is deliberately elsewhere: the daemon must serve fd 3, not bind.
    let unused = dir.path().join("unused.sock");
    std::fs::write(
        &config,
        util::daemon_config(
            dir.path(),
            &format!("[server]\nsocket = {unused:?}\n[[devices]]\nep = \"cpu\"\nintra_threads = 1\n"),
        ),
    )
    .unwrap();
    // Python stands in for systemd: bind and listen, put the socket at fd 3, set LISTEN_FDS/LISTEN_PID, exec.
    let script = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(64)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"; os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], [sys.argv[2], "--config", sys.argv[3]])
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&socket)
        .arg(env!("CARGO_BIN_EXE_akidbd"))
        .arg(&config)
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let result = util::runtime().block_on(async {
        for _ in 0..600 {
            if let Ok(mut client) = akidb::client::Client::connect(&socket).await {
                if client.health().await.ok().as_deref() == Some("ready") {
                    return Some(
                        client
                            .embed(&["through an inherited socket"], &EmbedParams::default())
                            .await
                            .unwrap(),
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    });
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    let embedded = result.unwrap_or_else(|| panic!("never served on the activated socket; log:\n{log}"));
    assert_eq!(embedded.embeddings[0].len(), 384);
    assert!(!unused.exists(), "the configured path was not bound");
    assert!(log.contains("socket activation"), "{log}");
}
