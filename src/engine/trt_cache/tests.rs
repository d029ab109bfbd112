//! The cache key and the cache directory's life cycle (what a CPU machine can show of the TensorRT cache).

use super::*;

fn host() -> BuildHost {
    BuildHost {
        gpu: "NVIDIA H200".into(),
        compute_capability: Some("9.0".into()),
        mig: Some("disabled".into()),
        driver: Some("580.65".into()),
        cuda: Some("13.0".into()),
        tensorrt: Some("10.13.0".into()),
        cudnn: Some("9.10.2".into()),
    }
}

fn key<'a>(host: &'a BuildHost, trt: &'a TensorrtConfig, inputs: &'a [String], sha: &'a str, ort: &'a str) -> CacheKey<'a> {
    CacheKey {
        weights_sha: sha,
        ort,
        host,
        trt,
        inputs,
        max_tokens: 256,
    }
}

#[test]
fn the_key_changes_with_everything_that_changes_an_engine() {
    let trt = TensorrtConfig::default();
    let inputs = vec!["input_ids".to_owned(), "attention_mask".to_owned()];
    let base_host = host();
    let base = key(&base_host, &trt, &inputs, "aaaa", "1.32.0").cache(Path::new("/c"));
    assert_eq!(base.profile_max, "input_ids:64x256,attention_mask:64x256");
    assert_eq!(base.profile_min, "input_ids:1x1,attention_mask:1x1");
    let mut dirs = vec![base.dir.clone()];
    dirs.push(key(&base_host, &trt, &inputs, "bbbb", "1.32.0").cache(Path::new("/c")).dir);
    dirs.push(key(&base_host, &trt, &inputs, "aaaa", "1.31.0").cache(Path::new("/c")).dir);
    type Edit = fn(&mut BuildHost);
    let edits: [Edit; 7] = [
        |h| h.gpu = "Thor".into(),
        |h| h.compute_capability = Some("8.7".into()),
        |h| h.mig = Some("enabled".into()),
        |h| h.driver = Some("575.1".into()),
        |h| h.cuda = Some("12.8".into()),
        |h| h.tensorrt = Some("10.3.0".into()),
        |h| h.cudnn = None,
    ];
    for edit in edits {
        let mut other = host();
        edit(&mut other);
        dirs.push(key(&other, &trt, &inputs, "aaaa", "1.32.0").cache(Path::new("/c")).dir);
    }
    let mut fp32 = trt.clone();
    fp32.fp16 = !fp32.fp16;
    dirs.push(key(&base_host, &fp32, &inputs, "aaaa", "1.32.0").cache(Path::new("/c")).dir);
    let mut bigger = trt.clone();
    bigger.profile_batch = [1, 16, 128];
    dirs.push(key(&base_host, &bigger, &inputs, "aaaa", "1.32.0").cache(Path::new("/c")).dir);
    let with_types = vec!["input_ids".to_owned(), "attention_mask".to_owned(), "token_type_ids".to_owned()];
    dirs.push(key(&base_host, &trt, &with_types, "aaaa", "1.32.0").cache(Path::new("/c")).dir);
    for (i, a) in dirs.iter().enumerate() {
        for b in &dirs[i + 1..] {
            assert_ne!(a, b);
        }
    }
    // Same inputs, same directory: the cache is found again after a restart.
    assert_eq!(base, key(&base_host, &trt, &inputs, "aaaa", "1.32.0").cache(Path::new("/c")));
}

#[test]
fn an_engine_is_built_aside_and_moved_into_place_whole() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model-gpu-key");
    let CachePlan::Build { staging, dir: final_dir } = plan(&dir) else {
        panic!("a new key is built")
    };
    assert!(staging.is_dir() && !dir.exists(), "building happens beside the final name");
    std::fs::write(staging.join("engine.plan"), b"engine").unwrap();
    commit(&staging, &final_dir).unwrap();
    assert!(!staging.exists() && dir.join("engine.plan").is_file());
    assert_eq!(plan(&dir), CachePlan::Use(dir.clone()), "a complete directory is used");
}

#[test]
fn a_build_cut_short_by_a_crash_is_cleaned_up_and_redone() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model-gpu-key");
    // A staging directory of a process that no longer exists (pid beyond pid_max), half written.
    let dead = staging_name(&dir, 4_194_999);
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("engine.plan"), b"half an eng").unwrap();
    let CachePlan::Build { staging, .. } = plan(&dir) else {
        panic!("rebuilt")
    };
    assert!(!dead.exists(), "the dead build is removed");
    assert!(staging.is_dir());
    abandon(&staging);
    assert!(!staging.exists());
}

#[test]
fn a_corrupt_engine_is_moved_aside_and_rebuilt() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model-gpu-key");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("engine.plan"), b"\x00garbage").unwrap();
    assert_eq!(plan(&dir), CachePlan::Use(dir.clone()));
    let aside = quarantine(&dir).unwrap();
    assert!(aside.join("engine.plan").is_file() && !dir.exists());
    assert!(aside.file_name().unwrap().to_string_lossy().contains(".corrupt-"));
    assert!(matches!(plan(&dir), CachePlan::Build { .. }));
}

#[test]
fn an_unwritable_cache_root_means_no_cache_not_no_device() {
    // A root under a regular file cannot be created, whoever runs the test (root ignores permission bits).
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let CachePlan::NoCache(reason) = plan(&file.join("cache").join("model-gpu-key")) else {
        panic!("no cache")
    };
    assert!(reason.contains("cannot create"), "{reason}");
}

#[test]
fn library_versions_come_from_the_resolved_file_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("libnvinfer.so.10.3.0"), b"").unwrap();
    std::os::unix::fs::symlink("libnvinfer.so.10.3.0", dir.path().join("libnvinfer.so.10")).unwrap();
    let dirs = vec![dir.path().to_owned()];
    assert_eq!(library_version(&dirs, "libnvinfer.so").as_deref(), Some("10.3.0"));
    assert_eq!(library_version(&dirs, "libcudnn.so"), None);
    // Without NVML (this machine), the GPU is named by its index and the rest stays unknown but stable.
    let probed = BuildHost::probe(0, None);
    assert!(!probed.gpu.is_empty());
    assert_eq!(probed, BuildHost::probe(0, None));
}
