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
                Request::Join { group } | Request::Leave { group } | Request::Publish { group, .. } => {
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
        let frame = protocol::message_json(Some(&group), Some(7), data.as_bytes());
        let mut d = Decoder::new(1 << 20);
        // Server frames are unmasked; re-mask the payload as a client would to reuse the decoder.
        let hdr = if frame[1] == 126 { 4 } else { 2 };
        let wire = client_frame(true, OP_TEXT, [9, 8, 7, 6], &frame[hdr..]);
        let mut out = Vec::new();
        d.feed(&wire, &mut out).unwrap();
        let Event::Text(t) = &out[0] else { panic!("text") };
        let v: serde_json::Value = serde_json::from_slice(t).unwrap();
        prop_assert_eq!(&v["group"], &serde_json::json!(group));
        prop_assert_eq!(v["data"].to_string(), data);
    }
}
