//! Arbitrary UTF-8 text into `protocol::parse_text`, as a text message.
//!
//! Checked: no panic; accepted requests carry valid group names and
//! `data` that is itself valid JSON (it is forwarded verbatim); ids are
//! numbers or strings; every error becomes a well-formed JSON error frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::protocol::{self, Data, Request};
use serde_json::Value;

fn frame_json(frame: &[u8]) -> Value {
    let at = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice(&frame[at..]).expect("server frames carry JSON")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match protocol::parse_text(text) {
        Ok(r) => {
            if let Some(id) = r.id {
                let v: Value = serde_json::from_str(id.get()).expect("id is JSON");
                assert!(v.is_number() || v.is_string(), "id {v}");
                assert_eq!(frame_json(&protocol::ack(id))["type"], "ack");
            }
            match r.request {
                Request::Join { group } | Request::Leave { group } => {
                    assert!(protocol::validate_group(&group).is_ok());
                }
                Request::Publish { group, data } => {
                    assert!(protocol::validate_group(&group).is_ok());
                    let Data::Json(raw) = data else {
                        panic!("a text publish carries JSON")
                    };
                    serde_json::from_str::<&serde_json::value::RawValue>(raw).expect("data is JSON");
                }
                Request::Send { data, .. } => {
                    serde_json::from_str::<&serde_json::value::RawValue>(data).expect("data is JSON");
                }
                _ => {}
            }
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            let v = frame_json(&protocol::error(&e));
            assert_eq!(v["type"], "error");
            assert_eq!(v["code"], e.code.as_str());
        }
    }
});
