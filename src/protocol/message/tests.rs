//! Tests of request checking and response encoding.

use super::*;

fn body(raw: &RawRequest) -> Vec<u8> {
    rmp_serde::to_vec_named(raw).unwrap()
}

fn embed(inputs: &[&str]) -> RawRequest {
    RawRequest {
        id: Some(7),
        op: Some("embed".into()),
        inputs: Some(inputs.iter().map(|s| s.to_string()).collect()),
        ..RawRequest::default()
    }
}

#[test]
fn a_minimal_embed_request_gets_the_defaults() {
    let request = decode_request(&body(&embed(&["hi"])), 8).unwrap();
    assert_eq!(request.id, 7);
    let Op::Embed(embed) = request.op else { panic!() };
    assert_eq!(embed.inputs, vec!["hi"]);
    assert!(embed.truncate);
    assert_eq!(
        (embed.priority, embed.encoding, embed.normalize, embed.dimensions),
        (Priority::Normal, Encoding::F32, None, None)
    );
}

#[test]
fn every_field_is_read() {
    let raw = RawRequest {
        v: Some(1),
        normalize: Some(false),
        truncate: Some(false),
        dimensions: Some(64),
        priority: Some(Priority::Realtime),
        deadline_ms: Some(5),
        encoding: Some(Encoding::Array),
        ..embed(&["a", "b"])
    };
    let Op::Embed(embed) = decode_request(&body(&raw), 8).unwrap().op else {
        panic!()
    };
    assert_eq!(
        (
            embed.normalize,
            embed.truncate,
            embed.dimensions,
            embed.priority,
            embed.deadline_ms,
            embed.encoding
        ),
        (Some(false), false, Some(64), Priority::Realtime, Some(5), Encoding::Array)
    );
}

fn code_of(bytes: &[u8]) -> (u64, ErrorCode) {
    let err = decode_request(bytes, 4).unwrap_err();
    (err.id, err.code)
}

#[test]
fn bad_requests_get_the_right_code_and_id() {
    assert_eq!(
        code_of(&body(&RawRequest {
            v: Some(2),
            ..embed(&["x"])
        })),
        (7, ErrorCode::UnsupportedVersion)
    );
    assert_eq!(
        code_of(&body(&RawRequest {
            op: Some("fly".into()),
            ..embed(&["x"])
        })),
        (7, ErrorCode::UnknownOp)
    );
    assert_eq!(code_of(&body(&embed(&["a", "b", "c", "d", "e"]))), (7, ErrorCode::TooManyInputs));
    assert_eq!(code_of(&body(&embed(&[]))), (7, ErrorCode::InvalidRequest));
    assert_eq!(
        code_of(&body(&RawRequest { id: None, ..embed(&["x"]) })),
        (0, ErrorCode::InvalidRequest)
    );
    assert_eq!(
        code_of(b"\x93\x01\x02\x03"),
        (0, ErrorCode::InvalidRequest),
        "an array is not a map"
    );
    assert_eq!(code_of(b""), (0, ErrorCode::InvalidRequest));
    assert_eq!(code_of(b"\xc1"), (0, ErrorCode::InvalidRequest));
}

#[test]
fn wrong_types_keep_the_id_when_it_is_readable() {
    #[derive(Serialize)]
    struct Wrong {
        id: u64,
        op: &'static str,
        inputs: u64,
    }
    let bytes = rmp_serde::to_vec_named(&Wrong {
        id: 42,
        op: "embed",
        inputs: 3,
    })
    .unwrap();
    assert_eq!(code_of(&bytes), (42, ErrorCode::InvalidRequest));
    #[derive(Serialize)]
    struct WrongPriority {
        id: u64,
        op: &'static str,
        inputs: Vec<&'static str>,
        priority: &'static str,
    }
    let bytes = rmp_serde::to_vec_named(&WrongPriority {
        id: 43,
        op: "embed",
        inputs: vec!["x"],
        priority: "urgent",
    })
    .unwrap();
    assert_eq!(code_of(&bytes), (43, ErrorCode::InvalidRequest));
}

#[test]
fn invalid_utf8_and_deep_nesting_are_invalid_requests() {
    // {"id": 1, "op": "embed", "inputs": [<str8 with invalid UTF-8>]}
    let mut bytes = vec![0x83, 0xa2, b'i', b'd', 0x01, 0xa2, b'o', b'p', 0xa5, b'e', b'm', b'b', b'e', b'd'];
    bytes.extend_from_slice(&[0xa6, b'i', b'n', b'p', b'u', b't', b's', 0x91, 0xa2, 0xff, 0xfe]);
    assert_eq!(code_of(&bytes), (1, ErrorCode::InvalidRequest));
    // {"id": 1, "x": [[[[...]]]]} nested 100 000 deep must not overflow the stack.
    let mut deep = vec![0x82, 0xa2, b'i', b'd', 0x01, 0xa1, b'x'];
    deep.extend(std::iter::repeat_n(0x91u8, 100_000));
    deep.push(0x01);
    let (_, code) = code_of(&deep);
    assert_eq!(code, ErrorCode::InvalidRequest);
}

#[test]
fn responses_are_maps_with_string_keys() {
    let reply = EmbedReply {
        v: 1,
        id: 9,
        ok: true,
        model: "m".into(),
        dim: 2,
        count: 1,
        embeddings: Embeddings::F32(serde_bytes::ByteBuf::from(pack_f32(&[vec![1.0, -2.0]]))),
        tokens: 3,
        truncated: vec![],
        timing_us: Timing::default(),
    };
    let bytes = encode(&reply);
    let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
    let map = value.as_map().unwrap();
    assert!(map.iter().all(|(k, _)| k.is_str()));
    let envelope: Envelope = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!((envelope.id, envelope.ok, envelope.error), (9, true, None));
    let back: EmbedReply = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(back, reply);
    let Embeddings::F32(bin) = back.embeddings else { panic!() };
    assert_eq!(unpack_f32(&bin, 2).unwrap(), vec![vec![1.0, -2.0]]);
}

#[test]
fn status_reply_is_flat_and_round_trips() {
    let reply = StatusReply {
        v: 1,
        id: 3,
        ok: true,
        body: StatusBody {
            status: "ready".into(),
            uptime_s: 1.5,
            ..StatusBody::default()
        },
    };
    let bytes = encode(&reply);
    let back: StatusReply = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(back, reply);
    let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
    assert!(value
        .as_map()
        .unwrap()
        .iter()
        .any(|(k, v)| k.as_str() == Some("status") && v.as_str() == Some("ready")));
}

#[test]
fn error_codes_have_their_wire_names() {
    for code in ErrorCode::ALL {
        let bytes = encode(&ErrorReply::new(1, code, "m"));
        let envelope: Envelope = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(envelope.error.unwrap().code, code);
        let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        assert!(format!("{value}").contains(code.as_str()));
    }
}

proptest::proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = decode_request(&bytes, 16);
    }

    #[test]
    fn requests_round_trip(inputs in proptest::collection::vec(".{0,40}", 1..8), id in 0u64.., rt in proptest::bool::ANY) {
        let raw = RawRequest {
            id: Some(id),
            op: Some("embed".into()),
            inputs: Some(inputs.clone()),
            priority: rt.then_some(Priority::Realtime),
            ..RawRequest::default()
        };
        let request = decode_request(&body(&raw), 16).unwrap();
        proptest::prop_assert_eq!(request.id, id);
        let Op::Embed(embed) = request.op else { panic!() };
        proptest::prop_assert_eq!(embed.inputs, inputs);
    }
}
