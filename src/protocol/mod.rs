//! The wire protocol, version 1: length-prefixed MessagePack frames over a Unix socket.
//!
//! ```text
//! +----------------------+------------------------------------------+
//! | length: u32, BE      | body: one MessagePack map, `length` bytes |
//! +----------------------+------------------------------------------+
//! ```
//!
//! [`frame`] reads and writes frames with limits and timeouts; [`message`] holds the requests and responses and
//! their validation. docs/PROTOCOL.md is the full contract. This module is shared by the daemon and every client
//! (akictl, the tests, the benchmarks); it knows nothing of actors or ONNX Runtime.

pub mod frame;
pub mod message;

pub use frame::{read_frame, write_frame, FrameError, FrameLimits};
pub use message::{ErrorCode, Priority, Request, RequestError};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// Deepest MessagePack nesting a request may have; the deepest valid request nests 2 levels.
pub const MAX_DEPTH: usize = 16;
