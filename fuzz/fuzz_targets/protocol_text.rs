//! Arbitrary UTF-8 text into `protocol::parse_text`, as a text message.
//!
//! Checked: no panic; accepted requests carry valid group names and
//! `data` that is itself valid JSON (it is forwarded verbatim); ids are
//! numbers or strings; every error becomes a well-formed JSON error frame.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use roomcast::protocol::{self, Data, Request};
use serde_json::value::RawValue;

/// The top-level fields of a server message's JSON object, as raw JSON
/// text. (Raw, not `serde_json::Value`: an id like `1e999` is valid JSON
/// that the server echoes verbatim, but `Value` cannot hold it.)
fn frame_fields(payload: &[u8]) -> HashMap<String, String> {
    let text = std::str::from_utf8(payload).expect("server messages are UTF-8");
    let fields: HashMap<String, &RawValue> =
        serde_json::from_str(text).expect("server frames carry a JSON object");
    fields.into_iter().map(|(k, v)| (k, v.get().to_owned())).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match protocol::parse_text(text) {
        Ok(r) => {
            if let Some(id) = r.id {
                let first = id.get().as_bytes()[0];
                assert!(
                    first == b'"' || first == b'-' || first.is_ascii_digit(),
                    "id {}",
                    id.get()
                );
                let ack = frame_fields(&protocol::ack(id));
                assert_eq!(ack["type"], r#""ack""#);
                assert_eq!(ack["id"], id.get(), "the id is echoed verbatim");
            }
            match r.request {
                Request::Join { group, .. } | Request::Leave { group } => {
                    assert!(protocol::validate_group(&group).is_ok());
                }
                Request::Publish { group, data } => {
                    assert!(protocol::validate_group(&group).is_ok());
                    let Data::Json(raw) = data else {
                        panic!("a text publish carries JSON")
                    };
                    serde_json::from_str::<&RawValue>(raw).expect("data is JSON");
                }
                Request::Send { data, .. } => {
                    serde_json::from_str::<&RawValue>(data).expect("data is JSON");
                }
                _ => {}
            }
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            let v = frame_fields(&protocol::error(&e));
            assert_eq!(v["type"], r#""error""#);
            assert_eq!(v["code"], format!("\"{}\"", e.code.as_str()));
            assert_eq!(v.get("id").map(String::as_str), e.id.map(RawValue::get));
        }
    }
});
