//! Fuzzes the frame reader: any byte stream, read as a sequence of frames with a small limit, must end in a clean
//! close or an error, never a panic, and never allocate past the limit.
#![no_main]

use std::time::Duration;

// akidb's protocol module itself, compiled here alone (see Cargo.toml); only part of it is used.
#[allow(dead_code, unused_imports)]
#[path = "../../../src/protocol/mod.rs"]
mod protocol;

use libfuzzer_sys::fuzz_target;
use protocol::{read_frame, FrameLimits};

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let limits = FrameLimits {
        max_frame_bytes: 4096,
        read_timeout: Duration::from_secs(1),
        idle_timeout: None,
    };
    runtime.block_on(async {
        let mut reader = data;
        for _ in 0..64 {
            match read_frame(&mut reader, &limits).await {
                Ok(Some(body)) => assert!(body.len() <= 4096),
                Ok(None) | Err(_) => break,
            }
        }
    });
});
