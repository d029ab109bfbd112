//! The C ABI of the akidb client: `libakidb_client.so` / `.a`, described by `include/akidb_client.h`.
//!
//! Every function here is a thin, panic-proof shell over [`akidb::client::Client`] (through [`connection`]): it
//! checks and converts the C arguments, runs the call, and converts the result. There is no second implementation
//! of the protocol. The header is generated from this file by cbindgen (`build.rs`, `make client-header`), so the
//! doc comments below are the C documentation.
//!
//! Invariants: no panic crosses the boundary (each `extern "C"` fn runs its body under `catch_unwind`); every
//! pointer the library hands out says in its doc who frees it and with which function.

#![warn(missing_docs)]

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use akidb::client::{EmbedParams, Priority};

mod connection;
mod status;

use connection::Connection;
pub use status::AkidbStatus;
use status::{fail, Failure};

/// A connection to akidbd (opaque). Made by `akidb_connect`, released by `akidb_close`.
///
/// Thread safety: every call may be made from any thread, and several threads may share one connection; their
/// calls are serialized on it (one request at a time). For parallel requests open one connection per thread.
pub struct AkidbClient {
    connection: Connection,
}

/// Priority classes of an embed request (`akidb_embed_options.priority`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum AkidbPriority {
    /// The default.
    AKIDB_PRIORITY_NORMAL = 0,
    /// Served first, never deferred.
    AKIDB_PRIORITY_REALTIME = 1,
    /// Served when nothing else waits.
    AKIDB_PRIORITY_BULK = 2,
}

/// The daemon's health (`akidb_health`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum AkidbHealth {
    /// Loading models; embed requests get `AKIDB_UNAVAILABLE`.
    AKIDB_HEALTH_STARTING = 0,
    /// Serving.
    AKIDB_HEALTH_READY = 1,
    /// Serving with fewer devices than configured, or thermally limited.
    AKIDB_HEALTH_DEGRADED = 2,
    /// Shutting down.
    AKIDB_HEALTH_STOPPING = 3,
    /// A state this library does not know (a newer daemon).
    AKIDB_HEALTH_UNKNOWN = 4,
}

/// Options of one embed call. Start from `akidb_embed_options_default()` and set what you need; a NULL options
/// pointer means all defaults. The strings are borrowed for the duration of the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AkidbEmbedOptions {
    /// The model, by name; NULL: the daemon's default model.
    pub model: *const c_char,
    /// One of the model's named prompts (e.g. "query"); NULL: the model's default prompt, if any.
    pub prompt_name: *const c_char,
    /// Keep the first N dimensions (1..=dim), normalized after the cut; 0: all of them.
    pub dimensions: u32,
    /// An `akidb_priority` value; default `AKIDB_PRIORITY_NORMAL`.
    pub priority: i32,
    /// Answer `AKIDB_DEADLINE_EXCEEDED` if not done this many ms after the daemon reads the request; 0: none.
    pub deadline_ms: u32,
    /// L2-normalize: 1 yes, 0 no, -1 the model's default.
    pub normalize: i32,
    /// Cut over-long inputs: 1 yes, 0 no (such an input is `AKIDB_INPUT_TOO_LONG`), -1 the default (yes).
    pub truncate: i32,
    /// Use the daemon's embedding cache: 1 yes, 0 bypass it, -1 the default (yes).
    pub cache: i32,
}

/// What `akidb_info` reports (`akidb_server_info`). The strings are owned by the library: release them with `akidb_info_free`.
#[repr(C)]
#[derive(Debug)]
pub struct AkidbInfo {
    /// The default model's name (NUL-terminated, library-owned).
    pub model: *mut c_char,
    /// Its embedding dimension.
    pub dim: u32,
    /// Its truncation length in tokens.
    pub max_tokens: u32,
    /// Most texts per embed call.
    pub max_inputs: u32,
    /// Whether its vectors are normalized by default.
    pub normalize: bool,
    /// The daemon's version (NUL-terminated, library-owned).
    pub version: *mut c_char,
}

/// Connects to the daemon at `socket_path` (NULL: the default path the daemon and akictl use,
/// `$XDG_RUNTIME_DIR/akidb/embed.sock`, else `/tmp/akidb-$UID/embed.sock`) and stores a new connection in `*out`.
///
/// Returns `AKIDB_CONNECT_FAILED` if nothing listens there. The connection belongs to the caller: release it with
/// `akidb_close`. `socket_path` is borrowed for the call only. Calls time out after 60 s by default
/// (`akidb_set_timeout_ms`).
///
/// # Safety
/// `socket_path` is NULL or a NUL-terminated string; `out` is a valid pointer to write to.
#[no_mangle]
pub unsafe extern "C" fn akidb_connect(socket_path: *const c_char, out: *mut *mut AkidbClient) -> AkidbStatus {
    guard(|| {
        if out.is_null() {
            return Err(Failure::invalid("out is NULL"));
        }
        let path = if socket_path.is_null() {
            akidb::config::default_socket_path()
        } else {
            // SAFETY: non-NULL and NUL-terminated by the caller's contract.
            PathBuf::from(utf8(unsafe { CStr::from_ptr(socket_path) }, "socket_path")?)
        };
        let client = Box::new(AkidbClient {
            connection: Connection::open(path)?,
        });
        // SAFETY: `out` is non-NULL and writable by the caller's contract.
        unsafe { *out = Box::into_raw(client) };
        Ok(())
    })
}

/// Closes a connection and frees it. NULL is a no-op. No other call may use `client` during or after this one.
///
/// # Safety
/// `client` is NULL or a pointer from `akidb_connect` not yet closed.
#[no_mangle]
pub unsafe extern "C" fn akidb_close(client: *mut AkidbClient) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if !client.is_null() {
            // SAFETY: made by Box::into_raw in akidb_connect and not freed yet, by the caller's contract.
            drop(unsafe { Box::from_raw(client) });
        }
    }));
}

/// Sets the most time one call on `client` may take, reconnecting and retrying included (default 60 s); 0: no
/// limit. A call that runs out returns `AKIDB_TIMEOUT` and drops the connection (the next call reconnects).
///
/// # Safety
/// `client` is a pointer from `akidb_connect`.
#[no_mangle]
pub unsafe extern "C" fn akidb_set_timeout_ms(client: *mut AkidbClient, timeout_ms: u32) -> AkidbStatus {
    guard(|| {
        // SAFETY: a live connection by the caller's contract (or NULL, refused).
        let client = unsafe { client_ref(client)? };
        let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms.into()));
        client.connection.set_timeout(timeout);
        Ok(())
    })
}

/// The default embed options: default model and prompt, all dimensions, normal priority, no deadline, the model's
/// normalization, truncation on, cache on.
#[no_mangle]
pub extern "C" fn akidb_embed_options_default() -> AkidbEmbedOptions {
    // Nothing here can panic; catch_unwind keeps the rule "every extern fn" without exceptions to reason about.
    catch_unwind(default_options).unwrap_or_else(|_| default_options())
}

fn default_options() -> AkidbEmbedOptions {
    AkidbEmbedOptions {
        model: std::ptr::null(),
        prompt_name: std::ptr::null(),
        dimensions: 0,
        priority: AkidbPriority::AKIDB_PRIORITY_NORMAL as i32,
        deadline_ms: 0,
        normalize: -1,
        truncate: -1,
        cache: -1,
    }
}

/// Embeds `n_texts` texts into the caller's buffer `out` of `out_len` floats: vector i is at
/// `out[i * dim .. (i + 1) * dim]`, and `*out_dim` receives dim.
///
/// If `out_len < n_texts * dim` the call returns `AKIDB_BUFFER_TOO_SMALL`, writes dim to `*out_dim` and leaves
/// `out` untouched (the request was made: size the buffer from `akidb_info`'s dim, or use `akidb_embed_alloc`).
/// A broken connection (e.g. the daemon restarted) is reconnected and the request retried once.
///
/// # Safety
/// `client` is from `akidb_connect`; `texts` points to `n_texts` NUL-terminated UTF-8 strings (it may be NULL
/// when `n_texts` is 0); `options` is NULL or valid; `out` points to `out_len` writable floats; `out_dim` is NULL
/// or writable. All are borrowed for the call only.
#[no_mangle]
pub unsafe extern "C" fn akidb_embed(
    client: *mut AkidbClient,
    texts: *const *const c_char,
    n_texts: usize,
    options: *const AkidbEmbedOptions,
    out: *mut f32,
    out_len: usize,
    out_dim: *mut usize,
) -> AkidbStatus {
    guard(|| {
        if out.is_null() && out_len > 0 {
            return Err(Failure::invalid("out is NULL"));
        }
        // SAFETY: forwarded caller contract.
        let (flat, dim) = unsafe { embed_flat(client, texts, n_texts, options)? };
        if !out_dim.is_null() {
            // SAFETY: non-NULL and writable by the caller's contract.
            unsafe { *out_dim = dim };
        }
        if flat.len() > out_len {
            return Err(Failure::new(
                AkidbStatus::AKIDB_BUFFER_TOO_SMALL,
                format!(
                    "the reply has {} floats ({n_texts} x {dim}) but the buffer holds {out_len}",
                    flat.len()
                ),
            ));
        }
        if !flat.is_empty() {
            // SAFETY: `out` holds at least out_len >= flat.len() floats and cannot overlap our fresh Vec.
            unsafe { std::ptr::copy_nonoverlapping(flat.as_ptr(), out, flat.len()) };
        }
        Ok(())
    })
}

/// Like `akidb_embed`, but into a buffer the library allocates: `*out` receives `*out_count` × `*out_dim`
/// floats, row-major. The buffer belongs to the caller: release it with `akidb_floats_free` (not `free`). On
/// failure `*out` is set to NULL.
///
/// # Safety
/// As `akidb_embed`; `out`, `out_count` and `out_dim` are valid pointers to write to.
#[no_mangle]
pub unsafe extern "C" fn akidb_embed_alloc(
    client: *mut AkidbClient,
    texts: *const *const c_char,
    n_texts: usize,
    options: *const AkidbEmbedOptions,
    out: *mut *mut f32,
    out_count: *mut usize,
    out_dim: *mut usize,
) -> AkidbStatus {
    guard(|| {
        if out.is_null() || out_count.is_null() || out_dim.is_null() {
            return Err(Failure::invalid("out, out_count and out_dim must not be NULL"));
        }
        // SAFETY: non-NULL and writable by the caller's contract.
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: forwarded caller contract.
        let (flat, dim) = unsafe { embed_flat(client, texts, n_texts, options)? };
        let count = flat.len().checked_div(dim).unwrap_or(0);
        let buffer = floats_into_malloc(&flat)?;
        // SAFETY: the three pointers are non-NULL and writable by the caller's contract.
        unsafe {
            *out = buffer;
            *out_count = count;
            *out_dim = dim;
        }
        Ok(())
    })
}

/// Frees a buffer from `akidb_embed_alloc`. NULL is a no-op.
///
/// # Safety
/// `floats` is NULL or a buffer from `akidb_embed_alloc` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn akidb_floats_free(floats: *mut f32) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if !floats.is_null() {
            // SAFETY: made by malloc in floats_into_malloc and not freed yet, by the caller's contract.
            unsafe { libc::free(floats.cast()) };
        }
    }));
}

/// Asks the daemon for its health and writes it to `*out`.
///
/// # Safety
/// `client` is from `akidb_connect`; `out` is a valid pointer to write to.
#[no_mangle]
pub unsafe extern "C" fn akidb_health(client: *mut AkidbClient, out: *mut AkidbHealth) -> AkidbStatus {
    guard(|| {
        if out.is_null() {
            return Err(Failure::invalid("out is NULL"));
        }
        // SAFETY: a live connection by the caller's contract (or NULL, refused).
        let client = unsafe { client_ref(client)? };
        let health = client.connection.call(async |client| client.health().await)?;
        let state = match health.as_str() {
            "starting" => AkidbHealth::AKIDB_HEALTH_STARTING,
            "ready" => AkidbHealth::AKIDB_HEALTH_READY,
            "degraded" => AkidbHealth::AKIDB_HEALTH_DEGRADED,
            "stopping" => AkidbHealth::AKIDB_HEALTH_STOPPING,
            _ => AkidbHealth::AKIDB_HEALTH_UNKNOWN,
        };
        // SAFETY: non-NULL and writable by the caller's contract.
        unsafe { *out = state };
        Ok(())
    })
}

/// Asks the daemon for its default model and limits and fills `*out`. On success `out->model` and `out->version`
/// are library-owned strings: release them with `akidb_info_free`. On failure `*out` is zeroed.
///
/// # Safety
/// `client` is from `akidb_connect`; `out` is a valid pointer to write to.
#[no_mangle]
pub unsafe extern "C" fn akidb_info(client: *mut AkidbClient, out: *mut AkidbInfo) -> AkidbStatus {
    guard(|| {
        if out.is_null() {
            return Err(Failure::invalid("out is NULL"));
        }
        // SAFETY: non-NULL and writable by the caller's contract.
        unsafe { out.write(AkidbInfo::empty()) };
        // SAFETY: a live connection by the caller's contract (or NULL, refused).
        let client = unsafe { client_ref(client)? };
        let info = client.connection.call(async |client| client.info().await)?;
        let info = AkidbInfo {
            model: c_string(info.model).into_raw(),
            dim: saturate(info.dim),
            max_tokens: saturate(info.max_tokens),
            max_inputs: saturate(info.max_inputs),
            normalize: info.normalize,
            version: c_string(info.version).into_raw(),
        };
        // SAFETY: as above.
        unsafe { out.write(info) };
        Ok(())
    })
}

/// Frees the strings of an `akidb_info` filled by `akidb_info` and sets them to NULL (the struct itself is the
/// caller's). NULL, and a struct already freed, are no-ops.
///
/// # Safety
/// `info` is NULL or points to a struct filled by `akidb_info` (or zeroed).
#[no_mangle]
pub unsafe extern "C" fn akidb_info_free(info: *mut AkidbInfo) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: NULL or valid by the caller's contract.
        let Some(info) = (unsafe { info.as_mut() }) else { return };
        for field in [&mut info.model, &mut info.version] {
            if !field.is_null() {
                // SAFETY: made by CString::into_raw in akidb_info and not freed yet (freed ones are NULL).
                drop(unsafe { CString::from_raw(*field) });
                *field = std::ptr::null_mut();
            }
        }
    }));
}

/// The message of the last call that failed on the calling thread (thread-local; "" before any failure). The
/// string is library-owned and valid until the next failing call on this thread; copy it to keep it.
#[no_mangle]
pub extern "C" fn akidb_last_error_message() -> *const c_char {
    catch_unwind(status::last_error).unwrap_or(c"".as_ptr())
}

/// The name of a status code: the protocol's wire name for the daemon's codes ("unknown_model"), a similar one
/// for the library's ("connect_failed"), "unknown_status" for a value that is none of them. Static storage.
#[no_mangle]
pub extern "C" fn akidb_status_name(status: i32) -> *const c_char {
    catch_unwind(|| match AkidbStatus::from_i32(status) {
        Some(status) => status.name().as_ptr(),
        None => c"unknown_status".as_ptr(),
    })
    .unwrap_or(c"unknown_status".as_ptr())
}

/// The library's version, e.g. "0.1.0" (static storage).
#[no_mangle]
pub extern "C" fn akidb_client_version() -> *const c_char {
    const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(version) => version,
        Err(_) => c"unknown",
    };
    catch_unwind(|| VERSION.as_ptr()).unwrap_or(c"unknown".as_ptr())
}

// === impl AkidbInfo ===

impl AkidbInfo {
    fn empty() -> AkidbInfo {
        AkidbInfo {
            model: std::ptr::null_mut(),
            dim: 0,
            max_tokens: 0,
            max_inputs: 0,
            normalize: false,
            version: std::ptr::null_mut(),
        }
    }
}

// === helpers ===

/// Runs an extern fn's body: catches a panic, records a failure as the thread's last error.
fn guard(body: impl FnOnce() -> Result<(), Failure>) -> AkidbStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => AkidbStatus::AKIDB_OK,
        Ok(Err(failure)) => fail(failure),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            fail(Failure::new(AkidbStatus::AKIDB_PANIC, format!("akidb_client panicked: {what}")))
        }
    }
}

/// # Safety
/// `client` is NULL or a live pointer from `akidb_connect`.
unsafe fn client_ref<'a>(client: *mut AkidbClient) -> Result<&'a AkidbClient, Failure> {
    // SAFETY: by the contract above; only shared access is handed out (the connection has its own lock).
    unsafe { client.as_ref() }.ok_or_else(|| Failure::invalid("client is NULL"))
}

/// Runs an embed call and returns the vectors row-major, with their dimension.
///
/// # Safety
/// As `akidb_embed`.
unsafe fn embed_flat(
    client: *mut AkidbClient,
    texts: *const *const c_char,
    n_texts: usize,
    options: *const AkidbEmbedOptions,
) -> Result<(Vec<f32>, usize), Failure> {
    // SAFETY: forwarded caller contract.
    let client = unsafe { client_ref(client)? };
    // SAFETY: forwarded caller contract.
    let texts = unsafe { read_texts(texts, n_texts)? };
    // SAFETY: NULL or valid by the caller's contract.
    let options = unsafe { options.as_ref() }.copied().unwrap_or_else(default_options);
    // SAFETY: the option strings are NULL or NUL-terminated by the caller's contract.
    let params = unsafe { embed_params(&options)? };
    let embedded = client.connection.call(async |client| client.embed(&texts, &params).await)?;
    let dim = usize::try_from(embedded.reply.dim).map_err(|_| Failure::new(AkidbStatus::AKIDB_DECODE, "dim out of range"))?;
    Ok((embedded.embeddings.concat(), dim))
}

/// # Safety
/// `texts` points to `n_texts` NUL-terminated strings, or is NULL with `n_texts` 0.
unsafe fn read_texts(texts: *const *const c_char, n_texts: usize) -> Result<Vec<String>, Failure> {
    if n_texts == 0 {
        return Ok(Vec::new());
    }
    if texts.is_null() {
        return Err(Failure::invalid("texts is NULL"));
    }
    // SAFETY: `texts` points to n_texts pointers by the caller's contract.
    let pointers = unsafe { std::slice::from_raw_parts(texts, n_texts) };
    pointers
        .iter()
        .enumerate()
        .map(|(idx, &text)| {
            if text.is_null() {
                return Err(Failure::invalid(format!("texts[{idx}] is NULL")));
            }
            // SAFETY: non-NULL and NUL-terminated by the caller's contract.
            utf8(unsafe { CStr::from_ptr(text) }, &format!("texts[{idx}]")).map(str::to_owned)
        })
        .collect()
}

/// # Safety
/// The option's strings are NULL or NUL-terminated.
unsafe fn embed_params(options: &AkidbEmbedOptions) -> Result<EmbedParams, Failure> {
    // SAFETY: forwarded caller contract.
    let model = unsafe { optional_string(options.model, "model")? };
    // SAFETY: forwarded caller contract.
    let prompt_name = unsafe { optional_string(options.prompt_name, "prompt_name")? };
    let priority = match options.priority {
        0 => Priority::Normal,
        1 => Priority::Realtime,
        2 => Priority::Bulk,
        other => return Err(Failure::invalid(format!("priority {other} is not an akidb_priority"))),
    };
    Ok(EmbedParams {
        normalize: tristate(options.normalize, "normalize")?,
        truncate: tristate(options.truncate, "truncate")?,
        dimensions: (options.dimensions > 0).then_some(options.dimensions.into()),
        priority: Some(priority),
        deadline_ms: (options.deadline_ms > 0).then_some(options.deadline_ms.into()),
        prompt_name,
        model,
        cache: tristate(options.cache, "cache")?,
        ..EmbedParams::default()
    })
}

/// # Safety
/// `text` is NULL or NUL-terminated.
unsafe fn optional_string(text: *const c_char, what: &str) -> Result<Option<String>, Failure> {
    if text.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    utf8(unsafe { CStr::from_ptr(text) }, what).map(|s| Some(s.to_owned()))
}

fn utf8<'a>(text: &'a CStr, what: &str) -> Result<&'a str, Failure> {
    text.to_str().map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

fn tristate(value: i32, what: &str) -> Result<Option<bool>, Failure> {
    match value {
        -1 => Ok(None),
        0 => Ok(Some(false)),
        1 => Ok(Some(true)),
        other => Err(Failure::invalid(format!("{what} is {other}; expected -1, 0 or 1"))),
    }
}

fn saturate(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn c_string(text: String) -> CString {
    CString::new(text.replace('\0', " ")).expect("NULs were replaced")
}

/// Copies floats into a `malloc`ed buffer (at least one byte, so never NULL on success), for `akidb_floats_free`.
fn floats_into_malloc(floats: &[f32]) -> Result<*mut f32, Failure> {
    let bytes = std::mem::size_of_val(floats).max(1);
    // SAFETY: malloc has no preconditions; its result is checked for NULL and is aligned for any type.
    let raw = unsafe { libc::malloc(bytes) } as *mut f32;
    if raw.is_null() {
        return Err(Failure::new(AkidbStatus::AKIDB_IO, format!("cannot allocate {bytes} bytes")));
    }
    // SAFETY: `raw` holds `floats.len()` floats and is a fresh allocation, so the two cannot overlap.
    unsafe { std::ptr::copy_nonoverlapping(floats.as_ptr(), raw, floats.len()) };
    Ok(raw)
}

#[cfg(test)]
mod tests {
    /// The committed header is what cbindgen makes of this crate now (`make client-header` refreshes it).
    #[test]
    fn header_is_current() {
        let generated = include_str!(concat!(env!("OUT_DIR"), "/akidb_client.h"));
        let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/akidb_client.h")).unwrap_or_default();
        assert!(
            generated == committed,
            "clients/c/include/akidb_client.h is stale: run `make client-header` and commit it"
        );
    }
}
