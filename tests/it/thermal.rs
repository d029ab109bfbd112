//! The thermal policy in the real daemon, driven through the real sysfs reader pointed at a fake tree: at 95 °C
//! bulk and normal are refused and realtime is served; back below the soft limit minus hysteresis, all is served.

use std::path::Path;
use std::time::Duration;

use akidb::client::{ClientError, EmbedParams, ErrorCode, Priority};

use crate::util::{within, Daemon};

fn set_temperature(root: &Path, celsius: u32) {
    let zone = root.join("class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).unwrap();
    std::fs::write(zone.join("type"), "cpu-thermal\n").unwrap();
    std::fs::write(zone.join("temp.tmp"), format!("{}\n", celsius * 1000)).unwrap();
    std::fs::rename(zone.join("temp.tmp"), zone.join("temp")).unwrap();
}

async fn wait_for_state(client: &mut akidb::client::Client, state: &str) -> akidb::protocol::message::StatusBody {
    for _ in 0..200 {
        let status = client.status().await.unwrap();
        if status.thermal.state == state {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("thermal state never became {state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_95_degrees_bulk_is_refused_and_realtime_served() {
    let sysfs = tempfile::tempdir().unwrap();
    set_temperature(sysfs.path(), 50);
    let daemon = Daemon::start(&format!(
        "[monitor]\ninterval_ms = 50\nsysfs_root = {:?}\nsoft_c = 80.0\nhard_c = 90.0\nhysteresis_c = 5.0\n",
        sysfs.path()
    ));
    let mut client = daemon.client().await;
    let status = wait_for_state(&mut client, "normal").await;
    let sensors = status.devices[0].sensors.clone().expect("the monitor has sampled");
    assert_eq!(sensors.temperature_c, Some(50.0));
    assert_eq!(sensors.source, "sysfs");

    set_temperature(sysfs.path(), 95);
    let status = wait_for_state(&mut client, "hard").await;
    assert_eq!(status.thermal.hottest_c, Some(95.0));
    for priority in [Priority::Bulk, Priority::Normal] {
        let params = EmbedParams {
            priority: Some(priority),
            ..EmbedParams::default()
        };
        match within(10, client.embed(&["cool down"], &params)).await {
            Err(ClientError::Server {
                code: ErrorCode::Overloaded,
                message,
                ..
            }) => {
                assert!(message.contains("thermal state hard") && message.contains("95.0"), "{message}")
            }
            other => panic!("{priority:?} at 95 °C: {other:?}"),
        }
    }
    let realtime = EmbedParams {
        priority: Some(Priority::Realtime),
        ..EmbedParams::default()
    };
    within(10, client.embed(&["obstacle ahead"], &realtime))
        .await
        .expect("realtime is still served");

    // 87 °C is below hard but not below hard - hysteresis: still hard. 70 °C: back to normal.
    set_temperature(sysfs.path(), 87);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.status().await.unwrap().thermal.state, "hard");
    set_temperature(sysfs.path(), 70);
    let status = wait_for_state(&mut client, "normal").await;
    assert!(status.thermal.transitions >= 2);
    let bulk = EmbedParams {
        priority: Some(Priority::Bulk),
        ..EmbedParams::default()
    };
    within(10, client.embed(&["back to work"], &bulk)).await.unwrap();
    let log = daemon.log();
    assert!(log.contains("thermal state changed"), "transitions are logged:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sensors_status_says_unknown_and_why() {
    let empty = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&format!("[monitor]\ninterval_ms = 50\nsysfs_root = {:?}\n", empty.path()));
    let mut client = daemon.client().await;
    let mut sensors = None;
    for _ in 0..100 {
        sensors = client.status().await.unwrap().devices[0].sensors.clone();
        if sensors.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let sensors = sensors.unwrap();
    assert_eq!(sensors.temperature_c, None);
    assert!(sensors.unknown.unwrap().contains("no thermal zone"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_akictl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("status")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("sensors unknown: no thermal zone"));
}
