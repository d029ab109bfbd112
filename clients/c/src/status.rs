//! Status codes and the thread-local last-error message of the C ABI.
//!
//! Every call returns an [`AkidbStatus`]; on failure it also leaves a message for the calling thread, which
//! `akidb_last_error_message` reads. This module maps the Rust client's [`ClientError`] to those codes in one place.
//! It holds no connection state.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

use akidb::client::{ClientError, ErrorCode};

/// What a call did. `AKIDB_OK` (0) is success; 1..=14 are the daemon's error codes (docs/PROTOCOL.md, "Error
/// codes"); 100 and up are raised by the library itself.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum AkidbStatus {
    /// Success.
    AKIDB_OK = 0,
    /// Daemon: `invalid_request` (e.g. no inputs, a bad field value).
    AKIDB_INVALID_REQUEST = 1,
    /// Daemon: `unsupported_version`.
    AKIDB_UNSUPPORTED_VERSION = 2,
    /// Daemon: `unknown_op`.
    AKIDB_UNKNOWN_OP = 3,
    /// Daemon: `frame_too_large`; the daemon closed the connection (the next call reconnects).
    AKIDB_FRAME_TOO_LARGE = 4,
    /// Daemon: `too_many_inputs` (more than `max_inputs` texts).
    AKIDB_TOO_MANY_INPUTS = 5,
    /// Daemon: `input_too_long` (over the model's max tokens with truncate off).
    AKIDB_INPUT_TOO_LONG = 6,
    /// Daemon: `overloaded` (the class's queue is full, or the thermal state refuses it). Retry later.
    AKIDB_OVERLOADED = 7,
    /// Daemon: `deadline_exceeded` (not done within `deadline_ms`).
    AKIDB_DEADLINE_EXCEEDED = 8,
    /// Daemon: `shutting_down`.
    AKIDB_SHUTTING_DOWN = 9,
    /// Daemon: `permission_denied` (this uid/gid may not connect).
    AKIDB_PERMISSION_DENIED = 10,
    /// Daemon: `unavailable` (still starting, or no device can serve).
    AKIDB_UNAVAILABLE = 11,
    /// Daemon: `unknown_model`.
    AKIDB_UNKNOWN_MODEL = 12,
    /// Daemon: `internal` (it failed while serving the request).
    AKIDB_INTERNAL = 13,
    /// Daemon: a code this library does not know (a newer daemon).
    AKIDB_UNKNOWN_SERVER_CODE = 14,
    /// Client: the socket could not be reached (nothing listening, no such file, no permission).
    AKIDB_CONNECT_FAILED = 100,
    /// Client: the daemon closed the connection before replying (and a reconnect-and-retry failed too).
    AKIDB_CLOSED = 101,
    /// Client: reading or writing the socket failed.
    AKIDB_IO = 102,
    /// Client: a reply could not be decoded.
    AKIDB_DECODE = 103,
    /// Client: an argument is invalid (a NULL pointer, a text that is not UTF-8, a priority out of range).
    AKIDB_INVALID_ARGUMENT = 104,
    /// Client: the caller's buffer is smaller than count × dim floats; the sizes needed were written.
    AKIDB_BUFFER_TOO_SMALL = 105,
    /// Client: no reply within the connection's timeout (`akidb_set_timeout_ms`); the connection is dropped.
    AKIDB_TIMEOUT = 106,
    /// Client: the library failed internally (a Rust panic, caught at the boundary).
    AKIDB_PANIC = 107,
}

/// A failed call: its code and message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: AkidbStatus,
    pub(crate) message: String,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

// === impl AkidbStatus ===

impl AkidbStatus {
    /// The code's name: the wire name for the daemon's codes (`"unknown_model"`), a similar one for the others.
    pub(crate) fn name(self) -> &'static std::ffi::CStr {
        match self {
            AkidbStatus::AKIDB_OK => c"ok",
            AkidbStatus::AKIDB_INVALID_REQUEST => c"invalid_request",
            AkidbStatus::AKIDB_UNSUPPORTED_VERSION => c"unsupported_version",
            AkidbStatus::AKIDB_UNKNOWN_OP => c"unknown_op",
            AkidbStatus::AKIDB_FRAME_TOO_LARGE => c"frame_too_large",
            AkidbStatus::AKIDB_TOO_MANY_INPUTS => c"too_many_inputs",
            AkidbStatus::AKIDB_INPUT_TOO_LONG => c"input_too_long",
            AkidbStatus::AKIDB_OVERLOADED => c"overloaded",
            AkidbStatus::AKIDB_DEADLINE_EXCEEDED => c"deadline_exceeded",
            AkidbStatus::AKIDB_SHUTTING_DOWN => c"shutting_down",
            AkidbStatus::AKIDB_PERMISSION_DENIED => c"permission_denied",
            AkidbStatus::AKIDB_UNAVAILABLE => c"unavailable",
            AkidbStatus::AKIDB_UNKNOWN_MODEL => c"unknown_model",
            AkidbStatus::AKIDB_INTERNAL => c"internal",
            AkidbStatus::AKIDB_UNKNOWN_SERVER_CODE => c"unknown",
            AkidbStatus::AKIDB_CONNECT_FAILED => c"connect_failed",
            AkidbStatus::AKIDB_CLOSED => c"closed",
            AkidbStatus::AKIDB_IO => c"io",
            AkidbStatus::AKIDB_DECODE => c"decode",
            AkidbStatus::AKIDB_INVALID_ARGUMENT => c"invalid_argument",
            AkidbStatus::AKIDB_BUFFER_TOO_SMALL => c"buffer_too_small",
            AkidbStatus::AKIDB_TIMEOUT => c"timeout",
            AkidbStatus::AKIDB_PANIC => c"panic",
        }
    }

    /// The code with this value, if any (C may pass any int).
    pub(crate) fn from_i32(value: i32) -> Option<AkidbStatus> {
        const ALL: [AkidbStatus; 23] = [
            AkidbStatus::AKIDB_OK,
            AkidbStatus::AKIDB_INVALID_REQUEST,
            AkidbStatus::AKIDB_UNSUPPORTED_VERSION,
            AkidbStatus::AKIDB_UNKNOWN_OP,
            AkidbStatus::AKIDB_FRAME_TOO_LARGE,
            AkidbStatus::AKIDB_TOO_MANY_INPUTS,
            AkidbStatus::AKIDB_INPUT_TOO_LONG,
            AkidbStatus::AKIDB_OVERLOADED,
            AkidbStatus::AKIDB_DEADLINE_EXCEEDED,
            AkidbStatus::AKIDB_SHUTTING_DOWN,
            AkidbStatus::AKIDB_PERMISSION_DENIED,
            AkidbStatus::AKIDB_UNAVAILABLE,
            AkidbStatus::AKIDB_UNKNOWN_MODEL,
            AkidbStatus::AKIDB_INTERNAL,
            AkidbStatus::AKIDB_UNKNOWN_SERVER_CODE,
            AkidbStatus::AKIDB_CONNECT_FAILED,
            AkidbStatus::AKIDB_CLOSED,
            AkidbStatus::AKIDB_IO,
            AkidbStatus::AKIDB_DECODE,
            AkidbStatus::AKIDB_INVALID_ARGUMENT,
            AkidbStatus::AKIDB_BUFFER_TOO_SMALL,
            AkidbStatus::AKIDB_TIMEOUT,
            AkidbStatus::AKIDB_PANIC,
        ];
        ALL.into_iter().find(|status| *status as i32 == value)
    }

    fn of_server(code: ErrorCode) -> AkidbStatus {
        match code {
            ErrorCode::InvalidRequest => AkidbStatus::AKIDB_INVALID_REQUEST,
            ErrorCode::UnsupportedVersion => AkidbStatus::AKIDB_UNSUPPORTED_VERSION,
            ErrorCode::UnknownOp => AkidbStatus::AKIDB_UNKNOWN_OP,
            ErrorCode::FrameTooLarge => AkidbStatus::AKIDB_FRAME_TOO_LARGE,
            ErrorCode::TooManyInputs => AkidbStatus::AKIDB_TOO_MANY_INPUTS,
            ErrorCode::InputTooLong => AkidbStatus::AKIDB_INPUT_TOO_LONG,
            ErrorCode::Overloaded => AkidbStatus::AKIDB_OVERLOADED,
            ErrorCode::DeadlineExceeded => AkidbStatus::AKIDB_DEADLINE_EXCEEDED,
            ErrorCode::ShuttingDown => AkidbStatus::AKIDB_SHUTTING_DOWN,
            ErrorCode::PermissionDenied => AkidbStatus::AKIDB_PERMISSION_DENIED,
            ErrorCode::Unavailable => AkidbStatus::AKIDB_UNAVAILABLE,
            ErrorCode::UnknownModel => AkidbStatus::AKIDB_UNKNOWN_MODEL,
            ErrorCode::Internal => AkidbStatus::AKIDB_INTERNAL,
            ErrorCode::Unknown => AkidbStatus::AKIDB_UNKNOWN_SERVER_CODE,
        }
    }
}

// === impl Failure ===

impl Failure {
    pub(crate) fn new(status: AkidbStatus, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(AkidbStatus::AKIDB_INVALID_ARGUMENT, message)
    }

    /// Whether the connection must be dropped after this failure (the next call reconnects).
    pub(crate) fn breaks_connection(&self) -> bool {
        !matches!(
            self.status,
            AkidbStatus::AKIDB_OK
                | AkidbStatus::AKIDB_INVALID_ARGUMENT
                | AkidbStatus::AKIDB_BUFFER_TOO_SMALL
                | AkidbStatus::AKIDB_INVALID_REQUEST
                | AkidbStatus::AKIDB_TOO_MANY_INPUTS
                | AkidbStatus::AKIDB_INPUT_TOO_LONG
                | AkidbStatus::AKIDB_OVERLOADED
                | AkidbStatus::AKIDB_DEADLINE_EXCEEDED
                | AkidbStatus::AKIDB_UNAVAILABLE
                | AkidbStatus::AKIDB_UNKNOWN_MODEL
                | AkidbStatus::AKIDB_INTERNAL
                | AkidbStatus::AKIDB_UNKNOWN_OP
                | AkidbStatus::AKIDB_UNSUPPORTED_VERSION
        )
    }

    /// Whether the failure says the connection was found broken before any reply, so that one reconnect and
    /// retry is safe (every op is idempotent).
    pub(crate) fn is_broken_pipe(&self) -> bool {
        matches!(self.status, AkidbStatus::AKIDB_CLOSED | AkidbStatus::AKIDB_IO)
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        let status = match &error {
            ClientError::Connect { .. } => AkidbStatus::AKIDB_CONNECT_FAILED,
            ClientError::Io(_) => AkidbStatus::AKIDB_IO,
            ClientError::Frame(_) => AkidbStatus::AKIDB_IO,
            ClientError::Closed => AkidbStatus::AKIDB_CLOSED,
            ClientError::Decode(_) => AkidbStatus::AKIDB_DECODE,
            ClientError::Server { code, .. } => AkidbStatus::of_server(*code),
        };
        Failure::new(status, error.to_string())
    }
}

/// Records `failure` as the calling thread's last error and returns its code.
pub(crate) fn fail(failure: Failure) -> AkidbStatus {
    let message = CString::new(failure.message.replace('\0', " ")).expect("NULs were replaced");
    LAST_ERROR.with(|last| *last.borrow_mut() = message);
    failure.status
}

/// The calling thread's last error message (empty before the first failure).
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}
