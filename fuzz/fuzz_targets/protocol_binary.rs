//! Arbitrary bytes into `protocol::parse_binary`, as a binary message.
//!
//! Checked: no panic; accepted requests carry valid group names; a publish
//! splits the frame exactly (type, length byte, group, payload) and its
//! delivery frame carries the same group and payload; every error becomes
//! a well-formed JSON error frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::protocol::{self, Data, Request};

fuzz_target!(|frame: &[u8]| {
    match protocol::parse_binary(frame) {
        Ok(Request::Join { group, .. } | Request::Leave { group }) => {
            assert!(protocol::validate_group(&group).is_ok());
            assert_eq!(4 + group.len(), frame.len());
        }
        Ok(Request::Publish { group, data }) => {
            assert!(protocol::validate_group(&group).is_ok());
            let Data::Binary(d) = data else {
                panic!("a binary publish carries bytes")
            };
            assert_eq!(5 + group.len() + d.len(), frame.len());
            let out = protocol::message_binary(&group, None, d);
            // The delivery is: type 4, group length, group, payload.
            assert_eq!(out.len(), 5 + group.len() + d.len());
            let tail = &out[..];
            assert_eq!(&tail[..4], &protocol::BIN_MESSAGE.to_le_bytes());
            assert_eq!(tail[4] as usize, group.len());
            assert_eq!(&tail[5..5 + group.len()], group.as_bytes());
            assert_eq!(&tail[5 + group.len()..], d);
        }
        Ok(other) => panic!("binary frames cannot decode to {other:?}"),
        Err(e) => {
            assert!(e.id.is_none());
            let out = protocol::error(&e);
            let v: serde_json::Value = serde_json::from_slice(&out).expect("error messages are JSON");
            assert_eq!(v["code"], e.code.as_str());
        }
    }
});
