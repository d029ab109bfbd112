//! What a CPU machine can show of the TensorRT path (tools/gpu-check.sh checks the rest on a GPU): a device that
//! asks for TensorRT and falls back to the CPU serves, reports the provider it really uses, reads the sensors of
//! that provider, leaves no half-built engine behind, and starts whatever state its cache directory is in.

use std::path::Path;
use std::time::Duration;

use akidb::client::EmbedParams;

use crate::util::{within, Daemon};

fn tensorrt_device(cache_root: &Path, sysfs: &Path) -> String {
    format!(
        "[monitor]\ninterval_ms = 50\nsysfs_root = {sysfs:?}\n\
         [[devices]]\nep = \"tensorrt\"\nfallback = [\"cpu\"]\nintra_threads = 1\n\
         [devices.tensorrt]\nengine_cache_dir = {cache_root:?}\nprofile_batch = [1, 8, 32]\n"
    )
}

/// A fake sysfs with one CPU zone at 42 °C: GPU zones would find nothing there.
fn cpu_zone_at_42() -> tempfile::TempDir {
    let sysfs = tempfile::tempdir().unwrap();
    let zone = sysfs.path().join("class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).unwrap();
    std::fs::write(zone.join("type"), "cpu-thermal\n").unwrap();
    std::fs::write(zone.join("temp"), "42000\n").unwrap();
    sysfs
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tensorrt_device_that_falls_back_serves_as_the_cpu_it_runs_on() {
    let cache = tempfile::tempdir().unwrap();
    // Garbage and truncated "engines" from an earlier life of the cache directory.
    std::fs::create_dir_all(cache.path().join("0123456789ab-gpu0-deadbeefdeadbeef")).unwrap();
    std::fs::write(
        cache
            .path()
            .join("0123456789ab-gpu0-deadbeefdeadbeef/TensorrtExecutionProvider.engine"),
        b"\x7fELF trunc",
    )
    .unwrap();
    std::fs::write(cache.path().join("random.bin"), [0u8, 1, 2, 3]).unwrap();
    let before = entries(cache.path());
    let sysfs = cpu_zone_at_42();
    let daemon = Daemon::start(&tensorrt_device(cache.path(), sysfs.path()));
    let mut client = daemon.client().await;
    let served = within(30, client.embed(&["the robot picks up the red cup"], &EmbedParams::default()))
        .await
        .unwrap();
    assert_eq!(served.embeddings[0].len(), 384);
    let mut status = client.status().await.unwrap();
    for _ in 0..100 {
        if status.devices[0].sensors.as_ref().is_some_and(|s| s.temperature_c.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = client.status().await.unwrap();
    }
    let device = &status.devices[0];
    assert_eq!(
        (device.kind.as_str(), device.ep.as_str()),
        ("tensorrt", "cpu"),
        "the provider really in use"
    );
    assert_eq!(
        device.precision.as_deref(),
        Some("fp32"),
        "the CPU's precision, not TensorRT's fp16"
    );
    let temperature = device.sensors.as_ref().and_then(|s| s.temperature_c);
    assert_eq!(
        temperature,
        Some(42.0),
        "sensors of the provider in use (CPU zones): {:?}",
        device.sensors
    );
    assert!(daemon.log().contains("execution provider fell back"), "{}", daemon.log());
    // Nothing half-built is left, and what was there is untouched.
    assert_eq!(entries(cache.path()), before, "no staging directory left behind");
}

#[test]
fn an_unwritable_engine_cache_costs_the_cache_not_the_device() {
    // A cache root under a regular file cannot be created (root ignores permission bits, so no chmod here).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let sysfs = cpu_zone_at_42();
    let daemon = Daemon::start(&tensorrt_device(&file.join("tensorrt"), sysfs.path()));
    assert_eq!(daemon.health().as_deref(), Some("ready"));
    assert!(daemon.log().contains("will not be cached"), "{}", daemon.log());
}
