//! Giving freed memory back to the system.
//!
//! ONNX Runtime (with its CPU arena off, the default) allocates each run's buffers through the C allocator and frees
//! them afterwards; glibc keeps much of that freed memory mapped for reuse, so the resident size after warm-up or
//! after a burst of long inputs stays at its peak (measured: 220 MB ready, 350+ MB after long-text load, against
//! 140 MB of live data). Capping malloc's mmap threshold would return it at once but costs a third of the
//! long-text throughput in page faults, so instead the daemon trims once warm and again whenever it has gone
//! idle after work: the memory comes back when nobody is waiting for a batch.

/// malloc arenas the process may use. glibc gives every thread that allocates concurrently an arena of its own
/// (up to 8 per core), and ONNX Runtime's intra-op threads each allocate and free a run's buffers in theirs, so
/// freed memory sits scattered over many arenas. Measured with the default model, 32 short clients then 4 x 8
/// long texts: peak RSS 321-346 MB with glibc's default, 225-253 MB with 2 arenas, throughput unchanged.
const MALLOC_ARENAS: i32 = 2;

/// Limits the C allocator to [`MALLOC_ARENAS`] arenas, unless `MALLOC_ARENA_MAX` is set in the environment (an
/// operator's choice wins). Call before any thread starts. A no-op off glibc.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        #[allow(unsafe_code)]
        // SAFETY: mallopt only sets an allocator parameter; called from main before other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

/// Returns the C allocator's free memory to the system (glibc's `malloc_trim`); a no-op elsewhere. Takes a few
/// milliseconds with a few hundred MB free; call it when no batch is running.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only walks and releases the allocator's own free lists; it takes the allocator's locks
    // and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The process's resident memory in bytes (0 where it cannot be read).
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * page_size()
}

fn page_size() -> u64 {
    #[cfg(unix)]
    #[allow(unsafe_code)]
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    #[cfg(not(unix))]
    let size = 4096;
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn freed_memory_in_the_middle_of_the_heap_goes_back() {
        // 3,200 chunks of 64 KiB (under malloc's mmap threshold, so they live in the heap), every other one freed:
        // 100 MiB free between live chunks, which glibc keeps mapped until it is trimmed.
        let mut chunks: Vec<Option<Vec<u8>>> = (0..3200).map(|i| Some(vec![i as u8 | 1; 64 * 1024])).collect();
        for chunk in chunks.iter_mut().step_by(2) {
            *chunk = None;
        }
        let before = rss_kib();
        super::release_free_memory();
        let after = rss_kib();
        assert!(after + 50 * 1024 < before, "RSS {before} KiB -> {after} KiB");
        drop(chunks);
    }
}
