//! Property tests: decoders of network bytes never panic, and what the
//! codec encodes it decodes back, however the bytes are split.

use proptest::prelude::*;
use roomcast::protocol::{self, Data, Request};
use roomcast::ws::decoder::client_frame;
use roomcast::ws::frame::{OP_BINARY, OP_CONTINUATION, OP_TEXT};
use roomcast::ws::{Decoder, Event};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frame_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096),
                                  cuts in proptest::collection::vec(0usize..4096, 0..8)) {
        let mut d = Decoder::new(1024);
        let mut out = Vec::new();
        let mut cuts = cuts;
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut start = 0;
        for c in cuts {
            let c = c.min(bytes.len());
            if c < start { continue; }
            if d.feed(&bytes[start..c], &mut out).is_err() { break; }
            start = c;
        }
        // Nothing decoded is larger than the limit, and the decoder holds no
        // more than the limit plus a control frame.
        for e in &out {
            if let Event::Text(b) | Event::Binary(b) = e { prop_assert!(b.len() <= 1024); }
        }
        prop_assert!(d.buffered() <= 16 * 1024 + 1024);
    }

    #[test]
    fn frame_decoder_survives_mutated_frame_streams(
        frames in proptest::collection::vec((any::<bool>(), 0u8..16, proptest::collection::vec(any::<u8>(), 0..200)), 1..10),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        step in 1usize..64) {
        let mut wire = Vec::new();
        for (fin, op, payload) in &frames {
            wire.extend(client_frame(*fin, *op, [1, 2, 3, 4], payload));
        }
        for (at, byte) in flips {
            let len = wire.len();
            wire[at % len] ^= byte;
        }
        let mut d = Decoder::new(512);
        let mut out = Vec::new();
        for c in wire.chunks(step) {
            match d.feed(c, &mut out) {
                Ok(()) => {}
                Err(e) => {
                    prop_assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                    break;
                }
            }
        }
        for e in &out {
            match e {
                Event::Text(b) => { prop_assert!(b.len() <= 512); prop_assert!(std::str::from_utf8(b).is_ok()); }
                Event::Binary(b) => prop_assert!(b.len() <= 512),
                Event::Ping(b) | Event::Pong(b) => prop_assert!(b.len() <= 125),
                Event::Close(_) => {}
            }
        }
    }

    #[test]
    fn fragmented_messages_round_trip(msgs in proptest::collection::vec(
                                          (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), 1usize..4), 1..6),
                                      mask in any::<[u8; 4]>(),
                                      step in 1usize..97) {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for (text, payload, parts) in &msgs {
            let payload: Vec<u8> = if *text {
                String::from_utf8_lossy(payload).into_owned().into_bytes()
            } else {
                payload.clone()
            };
            let chunk = payload.len().div_ceil(*parts).max(1);
            let pieces: Vec<&[u8]> = if payload.is_empty() { vec![&[][..]] } else { payload.chunks(chunk).collect() };
            for (i, p) in pieces.iter().enumerate() {
                let op = if i == 0 { if *text { OP_TEXT } else { OP_BINARY } } else { OP_CONTINUATION };
                wire.extend(client_frame(i + 1 == pieces.len(), op, mask, p));
            }
            expected.push(if *text { Event::Text(payload.into()) } else { Event::Binary(payload.into()) });
        }
        let mut d = Decoder::new(1 << 20);
        let mut out = Vec::new();
        for c in wire.chunks(step) {
            d.feed(c, &mut out).unwrap();
        }
        prop_assert_eq!(out, expected);
    }

    #[test]
    fn text_protocol_decoder_never_panics(s in ".{0,200}") {
        let _ = protocol::parse_text(&s);
    }

    #[test]
    fn text_protocol_decoder_on_json_shaped_input(kind in prop_oneof!["join", "leave", "publish", "send", "ping", ".{0,8}"],
                                                 group in ".{0,140}", id in prop_oneof![Just("1".to_owned()), Just("\"x\"".to_owned()), Just("null".to_owned()), Just("{}".to_owned())]) {
        let text = format!(r#"{{"type":{},"group":{},"id":{},"data":[1,{{"a":null}}],"to":"5"}}"#,
            serde_json::to_string(&kind).unwrap(), serde_json::to_string(&group).unwrap(), id);
        match protocol::parse_text(&text) {
            Ok(r) => match r.request {
                Request::Join { group, .. } | Request::Leave { group } | Request::Publish { group, .. } => {
                    prop_assert!(protocol::validate_group(&group).is_ok());
                }
                _ => {}
            },
            Err(e) => prop_assert!(!e.message.is_empty()),
        }
    }

    #[test]
    fn binary_protocol_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Request::Publish { group, data: Data::Binary(d) }) = protocol::parse_binary(&bytes) {
            prop_assert!(protocol::validate_group(&group).is_ok());
            prop_assert_eq!(5 + group.len() + d.len(), bytes.len());
        }
    }

    #[test]
    fn published_json_is_delivered_verbatim(n in any::<i64>(), s in ".{0,50}", group in "[a-z]{1,10}") {
        let data = serde_json::json!({"n": n, "s": s, "list": [1, "two", null]}).to_string();
        let from = roomcast::id::ClientId { node: None, conn: 7 };
        let payload = protocol::message_json(Some(&group), None, Some(&from), Some("u"), data.as_bytes());
        let mut d = Decoder::new(1 << 20);
        // Mask the payload as a client would, to reuse the decoder.
        let wire = client_frame(true, OP_TEXT, [9, 8, 7, 6], &payload);
        let mut out = Vec::new();
        d.feed(&wire, &mut out).unwrap();
        let Event::Text(t) = &out[0] else { panic!("text") };
        let v: serde_json::Value = serde_json::from_slice(t).unwrap();
        prop_assert_eq!(&v["group"], &serde_json::json!(group));
        prop_assert_eq!(v["data"].to_string(), data);
    }
}

// ---------------------------------------------------------------------------
// Hardening properties: a reference model of the frame decoder, memory and
// close-code bounds on hostile byte streams, JSON value trees and binary
// frames through the protocol decoders, and the error frames they produce.
// ---------------------------------------------------------------------------

use proptest::collection::{btree_map, vec};
use roomcast::protocol::ErrorCode;
use roomcast::ws::ProtocolError;
use roomcast::ws::close::{self, CloseFrame, ClosePayloadError};
use roomcast::ws::frame::{OP_CLOSE, OP_PING, OP_PONG};
use serde_json::{Map, Value};

/// What the decoder may hold beyond the message limit: a control frame in
/// progress (its buffer grows to at most 2 x 125 bytes while it arrives in
/// pieces) plus slack.
///
/// The data message buffer grows by doubling but is capped at the limit,
/// so it never holds more than `max` (fragments of 600 + 400 bytes with a
/// 1024-byte limit once made it hold 1200).
const SLACK: usize = 256;

fn decoder_bound(max: usize) -> usize {
    max + SLACK
}

/// A reference decoder: RFC 6455 as the server applies it, written for
/// clarity over a complete buffer. Returns the events and the error, if
/// the bytes (a prefix of a stream) already break the protocol.
fn model_decode(max: usize, wire: &[u8]) -> (Vec<Event>, Option<ProtocolError>) {
    let mut events = Vec::new();
    // (is text, bytes so far) of the data message in progress.
    let mut msg: Option<(bool, Vec<u8>)> = None;
    let mut rest = wire;
    loop {
        if rest.len() < 2 {
            return (events, None);
        }
        let (b0, b1) = (rest[0], rest[1]);
        let fin = b0 & 0x80 != 0;
        let op = b0 & 0x0F;
        if b0 & 0x70 != 0 {
            return (events, Some(ProtocolError::ReservedBits));
        }
        let control = match op {
            0..=2 => false,
            8..=10 => true,
            op => return (events, Some(ProtocolError::ReservedOpcode(op))),
        };
        if control && !fin {
            return (events, Some(ProtocolError::FragmentedControl));
        }
        if control && b1 & 0x7F > 125 {
            return (events, Some(ProtocolError::ControlTooLong));
        }
        if b1 & 0x80 == 0 {
            return (events, Some(ProtocolError::Unmasked));
        }
        match (op, &msg) {
            (0, None) => return (events, Some(ProtocolError::UnexpectedContinuation)),
            (1 | 2, Some(_)) => return (events, Some(ProtocolError::ExpectedContinuation)),
            _ => {}
        }
        let ext = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let head = 2 + ext + 4;
        if rest.len() < head {
            return (events, None);
        }
        let len = match b1 & 0x7F {
            126 => {
                let l = u16::from_be_bytes([rest[2], rest[3]]) as u64;
                if l < 126 {
                    return (events, Some(ProtocolError::BadLength));
                }
                l
            }
            127 => {
                let l = u64::from_be_bytes(rest[2..10].try_into().unwrap());
                if l >> 63 != 0 || l <= u16::MAX as u64 {
                    return (events, Some(ProtocolError::BadLength));
                }
                l
            }
            l => l as u64,
        };
        if !control {
            let so_far = match (&msg, op) {
                (Some((_, b)), 0) => b.len() as u64,
                _ => 0,
            };
            if so_far + len > max as u64 {
                return (events, Some(ProtocolError::TooBig));
            }
        }
        let mask = [rest[head - 4], rest[head - 3], rest[head - 2], rest[head - 1]];
        let avail = (len as usize).min(rest.len() - head);
        let payload: Vec<u8> = rest[head..head + avail]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        let complete = avail as u64 == len;
        if control {
            if !complete {
                return (events, None);
            }
            match op {
                OP_PING => events.push(Event::Ping(payload.into())),
                OP_PONG => events.push(Event::Pong(payload.into())),
                _ => {
                    let frame = match payload.as_slice() {
                        [] => CloseFrame {
                            code: None,
                            reason: String::new(),
                        },
                        [_] => {
                            return (
                                events,
                                Some(ProtocolError::BadClose(ClosePayloadError::Truncated)),
                            );
                        }
                        [hi, lo, reason @ ..] => {
                            let code = u16::from_be_bytes([*hi, *lo]);
                            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                                let e = ClosePayloadError::InvalidCode(code);
                                return (events, Some(ProtocolError::BadClose(e)));
                            }
                            let Ok(reason) = std::str::from_utf8(reason) else {
                                let e = ClosePayloadError::InvalidReason;
                                return (events, Some(ProtocolError::BadClose(e)));
                            };
                            CloseFrame {
                                code: Some(code),
                                reason: reason.to_owned(),
                            }
                        }
                    };
                    events.push(Event::Close(frame));
                    return (events, None);
                }
            }
        } else {
            if op != 0 {
                msg = Some((op == 1, Vec::new()));
            }
            let (text, buf) = msg.as_mut().unwrap();
            buf.extend_from_slice(&payload);
            // Text fails as soon as the bytes so far cannot become UTF-8.
            if *text
                && let Err(e) = std::str::from_utf8(buf)
                && e.error_len().is_some()
            {
                return (events, Some(ProtocolError::InvalidUtf8));
            }
            if !complete {
                return (events, None);
            }
            if fin {
                let (text, buf) = msg.take().unwrap();
                if text {
                    if std::str::from_utf8(&buf).is_err() {
                        return (events, Some(ProtocolError::InvalidUtf8));
                    }
                    events.push(Event::Text(buf.into()));
                } else {
                    events.push(Event::Binary(buf.into()));
                }
            }
        }
        rest = &rest[head + len as usize..];
    }
}

/// One piece of a hostile client's byte stream.
#[derive(Debug, Clone)]
enum Piece {
    /// A masked frame built like a client would (any opcode, either FIN).
    Frame {
        fin: bool,
        opcode: u8,
        mask: [u8; 4],
        payload: Vec<u8>,
    },
    /// A Close frame with a code and reason bytes.
    Close { code: u16, reason: Vec<u8> },
    /// A header announcing any length, masked or not, with no payload.
    Header { b0: u8, len: u64, masked: bool },
    /// A data frame of the limit's size, one byte less or one more.
    AtLimit { text: bool, fin: bool, delta: i8 },
    /// Raw noise.
    Noise(Vec<u8>),
}

impl Piece {
    fn write(&self, max: usize, out: &mut Vec<u8>) {
        match self {
            Piece::Frame {
                fin,
                opcode,
                mask,
                payload,
            } => out.extend(client_frame(*fin, *opcode, *mask, payload)),
            Piece::Close { code, reason } => {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(reason);
                p.truncate(125);
                out.extend(client_frame(true, OP_CLOSE, [7, 7, 7, 7], &p));
            }
            Piece::Header { b0, len, masked } => {
                let m = if *masked { 0x80 } else { 0 };
                out.push(*b0);
                match *len {
                    l if l < 126 => out.push(m | l as u8),
                    l if l <= u16::MAX as u64 => {
                        out.push(m | 126);
                        out.extend_from_slice(&(l as u16).to_be_bytes());
                    }
                    l => {
                        out.push(m | 127);
                        out.extend_from_slice(&l.to_be_bytes());
                    }
                }
                if *masked {
                    out.extend_from_slice(&[1, 2, 3, 4]);
                }
            }
            Piece::AtLimit { text, fin, delta } => {
                let n = (max as isize + *delta as isize).max(0) as usize;
                let op = if *text { OP_TEXT } else { OP_BINARY };
                out.extend(client_frame(*fin, op, [9, 9, 9, 9], &vec![b'x'; n]));
            }
            Piece::Noise(b) => out.extend_from_slice(b),
        }
    }
}

fn payload_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..64),
        3 => ".{0,40}".prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..3000),
        1 => (any::<u8>(), 100usize..3000).prop_map(|(b, n)| vec![b; n]),
    ]
}

fn piece() -> impl Strategy<Value = Piece> {
    let opcode = prop_oneof![
        4 => Just(OP_TEXT),
        4 => Just(OP_BINARY),
        4 => Just(OP_CONTINUATION),
        2 => Just(OP_PING),
        1 => Just(OP_PONG),
        1 => 0u8..16,
    ];
    prop_oneof![
        10 => (any::<bool>(), opcode, any::<[u8; 4]>(), payload_bytes()).prop_map(|(fin, opcode, mask, payload)| {
            Piece::Frame { fin, opcode, mask, payload }
        }),
        1 => (prop_oneof![Just(1000u16), Just(1005), Just(4001), any::<u16>()], vec(any::<u8>(), 0..8))
            .prop_map(|(code, reason)| Piece::Close { code, reason }),
        1 => (any::<u8>(), prop_oneof![0u64..200, 126u64..70_000, any::<u64>()], any::<bool>())
            .prop_map(|(b0, len, masked)| Piece::Header { b0, len, masked }),
        1 => (any::<bool>(), any::<bool>(), -1i8..=1).prop_map(|(text, fin, delta)| Piece::AtLimit { text, fin, delta }),
        1 => vec(any::<u8>(), 1..16).prop_map(Piece::Noise),
    ]
}

/// Feed `wire` to `d` in chunks of the given sizes (cycled), checking the
/// invariants after every feed; returns the events and the first error.
fn feed_chunked(
    d: &mut Decoder,
    max: usize,
    wire: &[u8],
    sizes: &[usize],
) -> Result<(Vec<Event>, Option<ProtocolError>), TestCaseError> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    let mut error = None;
    while at < wire.len() {
        let n = sizes[i % sizes.len()].max(1).min(wire.len() - at);
        i += 1;
        let before = out.len();
        let r = d.feed(&wire[at..at + n], &mut out);
        at += n;
        prop_assert!(
            d.buffered() <= decoder_bound(max),
            "decoder holds {} bytes with a {max}-byte limit",
            d.buffered()
        );
        if let Err(e) = r {
            prop_assert!(
                matches!(e.close_code(), 1002 | 1007 | 1009),
                "{e:?} closes with {}",
                e.close_code()
            );
            error = Some(e);
            break;
        }
        if error.is_none() && out[before..].iter().any(|e| matches!(e, Event::Close(_))) {
            // Everything after a Close is ignored.
            let n = out.len();
            prop_assert_eq!(d.feed(&wire[at..], &mut out), Ok(()));
            prop_assert_eq!(out.len(), n);
            break;
        }
    }
    if error.is_some() {
        // A failed decoder stays failed and quiet.
        let n = out.len();
        prop_assert_eq!(d.feed(&wire[at..], &mut out), Ok(()));
        prop_assert_eq!(d.feed(&[0x81, 0x80, 0, 0, 0, 0], &mut out), Ok(()));
        prop_assert_eq!(out.len(), n);
    }
    for e in &out {
        match e {
            Event::Text(b) => {
                prop_assert!(b.len() <= max);
                prop_assert!(std::str::from_utf8(b).is_ok());
            }
            Event::Binary(b) => prop_assert!(b.len() <= max),
            Event::Ping(b) | Event::Pong(b) => prop_assert!(b.len() <= 125),
            Event::Close(c) => prop_assert!(c.code.is_none_or(close::is_valid_on_wire)),
        }
    }
    Ok((out, error))
}

/// Leaves of JSON trees: every scalar kind, strings with escapes and
/// non-ASCII, extreme numbers.
fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        json_string().prop_map(Value::String),
    ]
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ".{0,24}",
        1 => "[\\x00-\\x1f\"\\\\/\u{7f}-\u{9f}\u{2028}\u{fffd}😀]{0,8}",
        1 => Just(String::new()),
    ]
}

/// Arbitrary JSON trees (a few levels deep).
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(json_string(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Group names: valid ones, and ones breaking each rule.
fn group_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_.:/-]{1,20}",
        2 => "[^\\p{Cc}]{1,40}",
        1 => Just(String::new()),
        1 => "[a-z]{129,140}",
        1 => "[é]{64,70}",
        1 => "[a-z]{0,5}[\\x00-\\x1f\u{7f}\u{85}][a-z]{0,5}",
    ]
}

/// A field of a request: absent, the intended kind of value, or any JSON.
fn field<S: Strategy<Value = Value> + 'static>(intended: S) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        4 => intended.prop_map(Some),
        1 => json_value().prop_map(Some),
    ]
}

/// Parse a small or medium unmasked server text frame into JSON.
fn server_json(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).expect("server messages are JSON")
}

/// The same JSON value, read from two texts by the same parser (numbers
/// compare equal although float parsing may not round-trip exactly).
fn same_json(a: &str, b: &str) -> bool {
    serde_json::from_str::<Value>(a).ok() == serde_json::from_str::<Value>(b).ok()
}

/// The `id` of a server frame's JSON, as the raw text sent.
fn echoed_id(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: Option<&'a serde_json::value::RawValue>,
    }
    let v: Id<'_> = serde_json::from_slice(payload).expect("server messages are JSON");
    v.id.map(|raw| raw.get().to_owned())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    /// The decoder agrees with the reference model on hostile frame
    /// streams, however the bytes are split, stays within its memory bound,
    /// only ever fails with 1002, 1007 or 1009, and is quiet afterwards.
    #[test]
    fn frame_decoder_matches_the_model(pieces in vec(piece(), 1..12),
                                       flips in vec((any::<usize>(), any::<u8>()), 0..3),
                                       max in prop_oneof![1usize..64, 64usize..4096],
                                       sizes in vec(1usize..400, 1..16)) {
        let mut wire = Vec::new();
        for p in &pieces {
            p.write(max, &mut wire);
        }
        for (at, byte) in flips {
            if !wire.is_empty() {
                let len = wire.len();
                wire[at % len] ^= byte;
            }
        }
        let (events, error) = model_decode(max, &wire);
        let mut d = Decoder::new(max);
        let (got, got_error) = feed_chunked(&mut d, max, &wire, &sizes)?;
        prop_assert_eq!(got_error, error);
        prop_assert_eq!(got, events);
        // In one piece, the same outcome.
        let mut whole = Decoder::new(max);
        let (got, got_error) = feed_chunked(&mut whole, max, &wire, &[wire.len().max(1)])?;
        prop_assert_eq!(got_error, error);
        prop_assert_eq!(got.len(), model_decode(max, &wire).0.len());
    }

    /// Arbitrary bytes in arbitrary chunks: no panic, bounded memory, only
    /// the three protocol close codes.
    #[test]
    fn frame_decoder_on_noise_in_any_chunks(bytes in vec(any::<u8>(), 0..4096),
                                            max in 1usize..2048,
                                            sizes in vec(1usize..64, 1..8)) {
        let mut d = Decoder::new(max);
        let (events, error) = feed_chunked(&mut d, max, &bytes, &sizes)?;
        let (model_events, model_error) = model_decode(max, &bytes);
        prop_assert_eq!(error, model_error);
        prop_assert_eq!(events, model_events);
    }

    /// Messages built to push the buffer: fragments of every size up to the
    /// limit, control frames split mid-payload, never more than the bound.
    #[test]
    fn decoder_memory_stays_bounded_while_a_message_is_assembled(
        max in prop_oneof![Just(1024usize), Just(4096), Just(64 * 1024), 100usize..20_000],
        first in 1usize..20_000,
        more in vec(1usize..20_000, 0..8),
        ping_every in 1usize..4,
        step in prop_oneof![1usize..16, 100usize..2000, Just(16 * 1024)]) {
        let mut wire = Vec::new();
        let mut total = 0;
        let sizes: Vec<usize> = std::iter::once(first).chain(more).collect();
        for (i, &n) in sizes.iter().enumerate() {
            // Keep within the limit so the message is accepted.
            let n = n.min(max - total);
            total += n;
            let last = i + 1 == sizes.len() || total == max;
            let op = if i == 0 { OP_BINARY } else { OP_CONTINUATION };
            wire.extend(client_frame(last, op, [3, 1, 4, 1], &vec![0xA5; n]));
            if i % ping_every == 0 {
                wire.extend(client_frame(true, OP_PING, [2, 7, 1, 8], &[0x55; 125]));
            }
            if last {
                break;
            }
        }
        let mut d = Decoder::new(max);
        let (events, error) = feed_chunked(&mut d, max, &wire, &[step])?;
        prop_assert_eq!(error, None);
        prop_assert!(events.contains(&Event::Binary(vec![0xA5; total].into())));
        // Nothing but a control frame's 125 bytes is kept once the message is out.
        prop_assert!(d.buffered() <= 125, "{} bytes held after the message", d.buffered());
        prop_assert!(!d.in_message());
    }

    /// JSON value trees wrapped in request objects: `parse_text` never
    /// panics, accepts exactly the valid requests and returns their fields
    /// unchanged (`data` as the very JSON text sent), and every error names
    /// the right code and becomes a well-formed error frame echoing the id.
    #[test]
    fn json_requests_round_trip(kind in field(prop_oneof![
                                    Just("join"), Just("leave"), Just("publish"), Just("send"), Just("ping"),
                                    Just("Join"), Just("subscribe")].prop_map(Value::from)),
                                group in field(group_name().prop_map(Value::String)),
                                id in field(prop_oneof![any::<i64>().prop_map(Value::from),
                                                        json_string().prop_map(Value::String)]),
                                to in field(prop_oneof![any::<u64>().prop_map(|n| Value::String(n.to_string())),
                                                        json_string().prop_map(Value::String)]),
                                data in field(json_value()),
                                extra in btree_map("[a-z_]{1,8}", json_value(), 0..3),
                                pretty in any::<bool>()) {
        let mut obj = Map::new();
        for (k, v) in extra {
            obj.insert(k, v);
        }
        for (k, v) in [("type", &kind), ("group", &group), ("id", &id), ("to", &to), ("data", &data)] {
            match v {
                Some(v) => { obj.insert(k.to_owned(), v.clone()); }
                None => { obj.remove(k); }
            }
        }
        let text = if pretty {
            serde_json::to_string_pretty(&Value::Object(obj)).unwrap()
        } else {
            serde_json::to_string(&Value::Object(obj)).unwrap()
        };
        // The expected outcome, in the order the protocol checks fields.
        let id_ok = match &id {
            None => true,
            Some(v) => v.is_number() || v.is_string(),
        };
        let str_of = |v: &Option<Value>| v.as_ref().and_then(Value::as_str).map(str::to_owned);
        let group_check = || -> Result<String, ErrorCode> {
            let g = str_of(&group).ok_or(ErrorCode::BadRequest)?;
            protocol::validate_group(&g).map_err(|_| ErrorCode::InvalidGroup)?;
            Ok(g)
        };
        let expected: Result<(), ErrorCode> = if !id_ok {
            Err(ErrorCode::BadRequest)
        } else {
            match str_of(&kind).as_deref() {
                Some("join" | "leave") => group_check().map(drop),
                Some("publish") => group_check().and_then(|_| data.as_ref().map(drop).ok_or(ErrorCode::BadRequest)),
                Some("send") => str_of(&to).map(drop).ok_or(ErrorCode::BadRequest)
                    .and_then(|_| data.as_ref().map(drop).ok_or(ErrorCode::BadRequest)),
                Some("ping") => Ok(()),
                _ => Err(ErrorCode::BadRequest),
            }
        };
        match protocol::parse_text(&text) {
            Ok(r) => {
                prop_assert_eq!(expected, Ok(()), "accepted: {}", text);
                match (&r.id, &id) {
                    // Scalars print the same in compact and pretty form.
                    (Some(raw), Some(v)) => prop_assert_eq!(raw.get(), v.to_string()),
                    (None, None) => {}
                    (got, want) => prop_assert!(false, "id {:?} for {:?}", got, want),
                }
                let want_data = data.as_ref().map(|v| v.to_string());
                match r.request {
                    Request::Join { group: g, .. } | Request::Leave { group: g } => {
                        prop_assert_eq!(Some(g.into_owned()), str_of(&group));
                    }
                    Request::Publish { group: g, data: Data::Json(raw) } => {
                        prop_assert_eq!(Some(g.into_owned()), str_of(&group));
                        let want = want_data.unwrap();
                        if pretty {
                            prop_assert!(same_json(raw, &want), "{} vs {}", raw, want);
                        } else {
                            prop_assert_eq!(raw, want.as_str());
                        }
                    }
                    Request::Send { to: t, data: raw } => {
                        prop_assert_eq!(Some(t.into_owned()), str_of(&to));
                        prop_assert!(same_json(raw, &want_data.unwrap()));
                    }
                    Request::Ping => prop_assert_eq!(str_of(&kind), Some("ping".to_owned())),
                    other => prop_assert!(false, "unexpected request {:?}", other),
                }
                if let Some(raw) = r.id {
                    let ack = protocol::ack(raw);
                    let v = server_json(&ack);
                    prop_assert_eq!(&v["type"], "ack");
                    prop_assert_eq!(echoed_id(&ack), Some(raw.get().to_owned()));
                }
            }
            Err(e) => {
                prop_assert_eq!(Err(e.code), expected, "{}: {}", text, e.message);
                prop_assert!(!e.message.is_empty());
                let v = server_json(&protocol::error(&e));
                prop_assert_eq!(&v["type"], "error");
                prop_assert_eq!(&v["code"], e.code.as_str());
                prop_assert_eq!(v["message"].as_str(), Some(&*e.message));
                // The id is echoed byte for byte, or not at all.
                prop_assert_eq!(echoed_id(&protocol::error(&e)), e.id.map(|raw| raw.get().to_owned()));
                if id_ok && id.is_some() {
                    // A readable id is echoed with every later error.
                    prop_assert!(e.id.is_some(), "id lost: {}", text);
                }
            }
        }
    }

    /// Any JSON value that is not an object, and any object text cut short
    /// or nested past serde_json's recursion limit, is a `bad_request`.
    #[test]
    fn json_non_requests_are_bad_requests(v in json_value(), cut in any::<prop::sample::Index>(),
                                          depth in 0usize..600) {
        let text = v.to_string();
        if !v.is_object() {
            let e = protocol::parse_text(&text).unwrap_err();
            prop_assert_eq!(e.code, ErrorCode::BadRequest);
        }
        let req = serde_json::json!({"type": "publish", "group": "g", "data": v}).to_string();
        let mut at = cut.index(req.len());
        while !req.is_char_boundary(at) {
            at -= 1;
        }
        let e = protocol::parse_text(&req[..at]).unwrap_err();
        prop_assert_eq!(e.code, ErrorCode::BadRequest);
        // Deep nesting: no stack overflow, and what is accepted is intact.
        let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let deep = format!(r#"{{"type":"publish","group":"g","data":{nested}}}"#);
        match protocol::parse_text(&deep) {
            Ok(r) => prop_assert_eq!(r.request, Request::Publish { group: "g".into(), data: Data::Json(&nested) }),
            Err(e) => {
                prop_assert_eq!(e.code, ErrorCode::BadRequest);
                prop_assert!(depth >= 100, "depth {} refused: {}", depth, e.message);
            }
        }
    }

    /// Ids are echoed byte for byte (docs/protocol.md, "The id rule"),
    /// including numbers no f64 holds and strings with escapes.
    #[test]
    fn ids_are_echoed_verbatim(id in prop_oneof![
                                   "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,5})?",
                                   "\"([a-z]|\\\\u00[4-7][0-9a-f]|\\\\[nt\"/\\\\]){0,12}\"",
                               ],
                               kind in prop_oneof![Just("ping"), Just("join"), Just("bogus")]) {
        let text = format!(r#"{{"type":"{kind}","group":"g","id":{id}}}"#);
        let r = protocol::parse_text(&text);
        let reply = match r {
            Ok(r) => {
                prop_assert_eq!(r.id.map(|raw| raw.get()), Some(id.as_str()));
                if kind == "ping" { protocol::pong(r.id) } else { protocol::ack(r.id.unwrap()) }
            }
            Err(e) => {
                prop_assert_eq!(kind, "bogus");
                protocol::error(&e)
            }
        };
        prop_assert_eq!(echoed_id(&reply), Some(id));
    }

    /// Binary requests: valid frames decode to exactly what was encoded;
    /// invalid group names are `invalid_group`; every error is a frame of
    /// JSON.
    #[test]
    fn binary_requests_round_trip(kind in prop_oneof![Just(1u32), Just(2), Just(3), any::<u32>()],
                                  group in group_name(),
                                  data in vec(any::<u8>(), 0..300),
                                  cut in any::<prop::sample::Index>()) {
        let mut frame = kind.to_le_bytes().to_vec();
        if kind == protocol::BIN_PUBLISH {
            frame.push(group.len().min(255) as u8);
            frame.extend_from_slice(&group.as_bytes()[..group.len().min(255)]);
            frame.extend_from_slice(&data);
        } else {
            frame.extend_from_slice(group.as_bytes());
        }
        let valid_group = protocol::validate_group(&group).is_ok();
        match protocol::parse_binary(&frame) {
            Ok(r) => {
                prop_assert!(valid_group);
                match (kind, r) {
                    (1, Request::Join { group: g, .. }) | (2, Request::Leave { group: g }) => prop_assert_eq!(g, group.as_str()),
                    (3, Request::Publish { group: g, data: Data::Binary(d) }) => {
                        prop_assert_eq!(g, group.as_str());
                        prop_assert_eq!(d, data.as_slice());
                    }
                    (k, r) => prop_assert!(false, "type {} decoded as {:?}", k, r),
                }
            }
            Err(e) => {
                let want = if !(1..=3).contains(&kind) { ErrorCode::BadRequest } else { ErrorCode::InvalidGroup };
                prop_assert!(!valid_group || want == ErrorCode::BadRequest);
                prop_assert_eq!(e.code, want);
                let v = server_json(&protocol::error(&e));
                prop_assert_eq!(&v["code"], e.code.as_str());
            }
        }
        // Cut short anywhere: never a panic, and a publish never reads past the end.
        let short = &frame[..cut.index(frame.len())];
        if let Ok(Request::Publish { group: g, data: Data::Binary(d) }) = protocol::parse_binary(short) {
            prop_assert_eq!(5 + g.len() + d.len(), short.len());
        }
    }
}

// ---- permessage-deflate (RFC 7692) ----

use flate2::{Decompress, FlushDecompress};
use roomcast::ws::deflate::{self, DeflateParams};

/// Payloads from noise to very compressible: runs, repeated short units,
/// repeated text, JSON.
fn deflate_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => vec(any::<u8>(), 0..2000),
        1 => (any::<u8>(), 1usize..20_000).prop_map(|(b, n)| vec![b; n]),
        2 => (vec(any::<u8>(), 1..16), 1usize..500).prop_map(|(u, n)| u.repeat(n)),
        2 => (".{0,300}", 1usize..6).prop_map(|(s, n)| s.repeat(n).into_bytes()),
        2 => vec(json_value(), 0..20).prop_map(|v| serde_json::to_vec(&v).expect("JSON")),
    ]
}

/// Inflate a permessage-deflate payload with a plain zlib stream, not ours.
fn inflate_independently(z: &[u8], window_bits: u8) -> Vec<u8> {
    let mut d = Decompress::new_with_window_bits(false, window_bits);
    let mut input = z.to_vec();
    input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    let mut out = Vec::with_capacity(4096);
    loop {
        let at = d.total_in() as usize;
        d.decompress_vec(&input[at..], &mut out, FlushDecompress::Sync)
            .expect("valid deflate");
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn compressed_messages_inflate_back(payload in deflate_payload(),
                                        mask in any::<[u8; 4]>(),
                                        cuts in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
                                        sizes in vec(1usize..3000, 1..4),
                                        keep_context in any::<bool>(),
                                        at_limit in any::<bool>()) {
        prop_assert_eq!(deflate::compress(&payload, 8, 6), None);
        for w in 9..=15u8 {
            for level in [1, 6, 9] {
                let Some(z) = deflate::compress(&payload, w, level) else {
                    let run = payload.len() >= 64 && payload.iter().all(|&c| c == payload[0]);
                    prop_assert!(!run, "a run of {} bytes did not compress", payload.len());
                    continue;
                };
                prop_assert!(z.len() < payload.len());
                prop_assert_eq!(&inflate_independently(&z, w), &payload);
                if level != 6 {
                    continue;
                }
                // Through the decoder, as up to three masked client frames
                // with RSV1 on the first, in arbitrary chunks; the limit is
                // the payload's size, or one byte less.
                let (a, b) = (cuts.0.index(z.len() + 1), cuts.1.index(z.len() + 1));
                let (a, b) = (a.min(b), a.max(b));
                let text = std::str::from_utf8(&payload).is_ok();
                let op = if text { OP_TEXT } else { OP_BINARY };
                let mut wire = client_frame(a == z.len(), op, mask, &z[..a]);
                wire[0] |= 0x40;
                if a < z.len() {
                    wire.extend(client_frame(b == z.len(), OP_CONTINUATION, mask, &z[a..b]));
                    if b < z.len() {
                        wire.extend(client_frame(true, OP_CONTINUATION, mask, &z[b..]));
                    }
                }
                let max = if at_limit { payload.len() } else { payload.len() - 1 };
                let params = DeflateParams {
                    server_max_window_bits: 15,
                    client_max_window_bits: w,
                    client_no_context_takeover: !keep_context,
                };
                let mut d = Decoder::with_deflate(max, Some(params));
                let mut out = Vec::new();
                let mut result = Ok(());
                let mut at = 0;
                let mut i = 0;
                while at < wire.len() && result.is_ok() {
                    let n = sizes[i % sizes.len()].min(wire.len() - at);
                    i += 1;
                    result = d.feed(&wire[at..at + n], &mut out);
                    at += n;
                    prop_assert!(d.buffered() <= max + 1 + deflate::inflater_heap(15) + 1024,
                        "decoder holds {} bytes with a {max}-byte limit", d.buffered());
                }
                if at_limit {
                    prop_assert_eq!(result, Ok(()));
                    let want = if text { Event::Text(payload.clone().into()) } else { Event::Binary(payload.clone().into()) };
                    prop_assert_eq!(out, vec![want]);
                    prop_assert_eq!(d.take_inflated(), 1);
                } else {
                    prop_assert_eq!(result, Err(ProtocolError::TooBig));
                    prop_assert!(out.is_empty());
                }
            }
        }
    }
}
