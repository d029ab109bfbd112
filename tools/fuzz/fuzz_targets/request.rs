//! Fuzzes request decoding: any body gives a request or a request error with a code, never a panic; a decoded
//! embed request respects max_inputs.
#![no_main]

// akidb's protocol module itself, compiled here alone (see Cargo.toml); only part of it is used.
#[allow(dead_code, unused_imports)]
#[path = "../../../src/protocol/mod.rs"]
mod protocol;

use libfuzzer_sys::fuzz_target;
use protocol::message::{decode_request, Op};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request(data, 8) {
        if let Op::Embed(embed) = request.op {
            assert!(!embed.inputs.is_empty() && embed.inputs.len() <= 8);
        }
    }
});
