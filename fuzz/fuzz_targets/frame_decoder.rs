//! Arbitrary bytes, split into arbitrary chunks, into the frame decoder.
//!
//! Input layout: byte 0 picks the message limit, byte 1 seeds the chunk
//! sizes, the rest is the client's byte stream. Checked on every input:
//! no panic; the decoder never holds more than twice the limit plus a
//! control frame (see `decoder_bound` in tests/properties.rs); failures
//! close with 1002, 1007 or 1009 only; what is decoded respects the
//! limits; and the outcome does not depend on how the bytes were split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::ws::{Decoder, Event, ProtocolError};

/// Message limits worth covering: tiny ones reach TooBig easily, larger
/// ones let fragments and the 16-bit length form through.
const LIMITS: [usize; 8] = [1, 2, 16, 125, 126, 1024, 4096, 65536];

fn decode(
    max: usize,
    wire: &[u8],
    mut next_chunk: impl FnMut() -> usize,
) -> (Vec<Event>, Option<ProtocolError>) {
    let mut d = Decoder::new(max);
    let mut out = Vec::new();
    let mut at = 0;
    let mut error = None;
    while at < wire.len() {
        let n = next_chunk().clamp(1, wire.len() - at);
        let r = d.feed(&wire[at..at + n], &mut out);
        at += n;
        assert!(
            d.buffered() <= max + 256,
            "decoder holds {} bytes with a {max}-byte limit",
            d.buffered()
        );
        if let Err(e) = r {
            assert!(matches!(e.close_code(), 1002 | 1007 | 1009), "{e:?}");
            error = Some(e);
            // A failed decoder ignores whatever follows.
            let n = out.len();
            assert_eq!(d.feed(&wire[at..], &mut out), Ok(()));
            assert_eq!(out.len(), n);
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
    (out, error)
}

fuzz_target!(|data: &[u8]| {
    let [limit, seed, wire @ ..] = data else {
        return;
    };
    let max = LIMITS[*limit as usize % LIMITS.len()];
    // Chunk sizes from a small xorshift: 1..=64 mostly, sometimes large.
    let mut state = u32::from(*seed) | 0x100;
    let chunked = decode(max, wire, || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        if state % 8 == 0 {
            (state >> 8) as usize % 4096
        } else {
            1 + (state >> 8) as usize % 64
        }
    });
    let whole = decode(max, wire, || usize::MAX);
    assert_eq!(chunked, whole, "the outcome depends on how the bytes were split");
});
