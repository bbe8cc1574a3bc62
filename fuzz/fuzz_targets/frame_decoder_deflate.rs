//! Arbitrary bytes, split into arbitrary chunks, into a frame decoder with
//! permessage-deflate agreed.
//!
//! Input layout: byte 0 picks the message limit, byte 1 seeds the chunk
//! sizes, byte 2 the agreed parameters (bits 0-2: client window 8..=15,
//! bit 3: client_no_context_takeover, bit 4: first compress the rest as
//! one valid RSV1 text frame, so inflation is reached with valid streams
//! too), the rest is the client's byte stream. Checked on every input: no
//! panic; the decoder never holds more than the limit plus one inflater
//! plus a control frame; failures close with 1002, 1007 or 1009 only;
//! what is decoded respects the limit; and the outcome does not depend on
//! how the bytes were split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::ws::decoder::client_frame;
use roomcast::ws::deflate::{self, DeflateParams, inflater_heap};
use roomcast::ws::frame::OP_TEXT;
use roomcast::ws::{Decoder, Event, ProtocolError};

/// Message limits worth covering: tiny ones reach TooBig easily, larger
/// ones let fragments, the 16-bit length form and real inflation through.
const LIMITS: [usize; 8] = [1, 2, 16, 125, 126, 1024, 4096, 65536];

fn decode(
    max: usize,
    params: DeflateParams,
    wire: &[u8],
    mut next_chunk: impl FnMut() -> usize,
) -> (Vec<Event>, Option<ProtocolError>, u64) {
    let mut d = Decoder::with_deflate(max, Some(params));
    let mut out = Vec::new();
    let mut at = 0;
    let mut error = None;
    while at < wire.len() {
        let n = next_chunk().clamp(1, wire.len() - at);
        let r = d.feed(&wire[at..at + n], &mut out);
        at += n;
        assert!(
            d.buffered() <= max + 1 + inflater_heap(15) + 1024,
            "decoder holds {} bytes with a {max}-byte limit",
            d.buffered()
        );
        if let Err(e) = r {
            assert!(matches!(e.close_code(), 1002 | 1007 | 1009), "{e:?}");
            error = Some(e);
            // A failed decoder ignores whatever follows, and holds nothing.
            let n = out.len();
            assert_eq!(d.feed(&wire[at..], &mut out), Ok(()));
            assert_eq!(out.len(), n);
            assert!(d.buffered() <= 256);
            break;
        }
    }
    for e in &out {
        match e {
            Event::Text(b) => {
                assert!(b.len() <= max);
                assert!(std::str::from_utf8(b).is_ok());
            }
            Event::Binary(b) => assert!(b.len() <= max),
            Event::Ping(b) | Event::Pong(b) => assert!(b.len() <= 125),
            Event::Close(c) => assert!(c.code.is_none_or(roomcast::ws::close::is_valid_on_wire)),
        }
    }
    (out, error, d.take_inflated())
}

fuzz_target!(|data: &[u8]| {
    let [limit, seed, flags, rest @ ..] = data else {
        return;
    };
    let max = LIMITS[*limit as usize % LIMITS.len()];
    let params = DeflateParams {
        server_max_window_bits: 15,
        client_max_window_bits: 8 + (flags & 7),
        client_no_context_takeover: flags & 8 != 0,
    };
    let mut wire = Vec::new();
    if flags & 16 != 0 {
        let text = String::from_utf8_lossy(rest);
        if let Some(z) = deflate::compress(text.as_bytes(), params.client_max_window_bits.max(9), 6) {
            wire = client_frame(true, OP_TEXT, [1, 2, 3, 4], &z);
            wire[0] |= 0x40;
        }
    }
    wire.extend_from_slice(rest);
    // Chunk sizes from a small xorshift: 1..=64 mostly, sometimes large.
    let mut state = u32::from(*seed) | 0x100;
    let chunked = decode(max, params, &wire, || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        if state % 8 == 0 {
            (state >> 8) as usize % 4096
        } else {
            1 + (state >> 8) as usize % 64
        }
    });
    let whole = decode(max, params, &wire, || usize::MAX);
    assert_eq!(chunked, whole, "the outcome depends on how the bytes were split");
});
