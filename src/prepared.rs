//! A message prepared once for all its recipients.
//!
//! [`crate::protocol`] encodes what a message says (a payload); this module
//! decides what goes on the wire for each recipient, once per message, not
//! once per recipient. A [`Prepared`] holds the payload and builds, lazily
//! and at most once each, the frames its recipients need:
//!
//! - the plain frame, for recipients without permessage-deflate, for
//!   payloads under the compression threshold, and whenever compressing
//!   would not make the message smaller. It costs no copy: the payload was
//!   written with room for the header in front of it.
//! - a deflated frame (RSV1 set) per server window size that recipients
//!   negotiated: nearly always just the one for window 15. The server always
//!   negotiates `server_no_context_takeover`, so one compression is valid on
//!   every connection with that window.
//!
//! Every recipient's outbox gets a reference-counted clone of the frame for
//! its [`Encoding`]: a broadcast to ten thousand members compresses once
//! (the `roomcast_compressions_total` counter shows it), not ten thousand
//! times as a per-connection compressor would.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::ws::deflate;
use crate::ws::frame::{FramePayload, MAX_HEADER, OP_BINARY, OP_TEXT, write_header};

/// How messages are compressed for recipients that negotiated deflate.
#[derive(Debug)]
pub struct Compression {
    /// Payloads shorter than this go plain.
    threshold: usize,
    /// zlib level, 1 to 9.
    level: u32,
    /// Where compression runs are counted.
    metrics: Arc<Metrics>,
}

impl Compression {
    /// Compress payloads of at least `threshold` bytes at zlib `level`.
    pub fn new(threshold: usize, level: u32, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            threshold,
            level,
            metrics,
        })
    }
}

/// How one connection takes its frames: plain, or permessage-deflate with
/// the largest window the server may compress with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Encoding(u8);

impl Encoding {
    /// Plain frames only.
    pub const PLAIN: Self = Self(0);

    /// permessage-deflate with `server_max_window_bits` (8 to 15). At 8 the
    /// connection still gets plain frames: zlib cannot compress raw
    /// deflate with a 256-byte window, and RFC 7692 lets a server send any
    /// message uncompressed.
    pub fn deflate(server_max_window_bits: u8) -> Self {
        debug_assert!((8..=15).contains(&server_max_window_bits));
        Self(server_max_window_bits)
    }

    /// The server window of a deflate connection, `None` when plain.
    pub fn deflate_window(self) -> Option<u8> {
        (self.0 != 0).then_some(self.0)
    }
}

/// One message, ready for any number of recipients.
#[derive(Debug)]
pub struct Prepared {
    /// The plain frame: header and payload.
    plain: Bytes,
    /// Length of the header in front of the payload in `plain`.
    header: u8,
    /// Text or binary.
    opcode: u8,
    compression: Arc<Compression>,
    /// The deflated frame for window 15, built on first need; `None`
    /// inside: compressing did not make the message smaller.
    deflated: OnceLock<Option<Bytes>>,
    /// Deflated frames for smaller windows (clients that asked for a
    /// `server_max_window_bits`), by window, same rule. Rare: a lock is fine.
    smaller: Mutex<Vec<(u8, Option<Bytes>)>>,
}

impl Prepared {
    /// A text message (the JSON protocol's messages and replies).
    pub fn text(payload: FramePayload, compression: &Arc<Compression>) -> Self {
        Self::new(payload, OP_TEXT, compression)
    }

    /// A binary message (the binary protocol's type-4 deliveries).
    pub fn binary(payload: FramePayload, compression: &Arc<Compression>) -> Self {
        Self::new(payload, OP_BINARY, compression)
    }

    /// A message of `opcode` whose payload is copied from `payload` (an
    /// echo).
    pub fn copy_of(opcode: u8, payload: &[u8], compression: &Arc<Compression>) -> Self {
        let mut p = FramePayload::with_capacity(payload.len());
        p.extend_from_slice(payload);
        Self::new(p, opcode, compression)
    }

    fn new(payload: FramePayload, opcode: u8, compression: &Arc<Compression>) -> Self {
        let len = payload.len();
        let plain = payload.finish(opcode);
        let header = (plain.len() - len) as u8;
        Self {
            plain,
            header,
            opcode,
            compression: compression.clone(),
            deflated: OnceLock::new(),
            smaller: Mutex::new(Vec::new()),
        }
    }

    /// A copy of this message (its payload copied), to keep beyond the
    /// fan-out that made it.
    pub fn duplicate(&self) -> Self {
        Self::copy_of(self.opcode, self.payload(), &self.compression)
    }

    /// The payload, as every recipient's application will read it.
    pub fn payload(&self) -> &[u8] {
        &self.plain[usize::from(self.header)..]
    }

    /// The frame for a recipient taking `encoding`: a reference-counted
    /// clone of a frame built at most once per kind.
    pub fn frame(&self, encoding: Encoding) -> Bytes {
        let Some(window) = encoding.deflate_window() else {
            return self.plain.clone();
        };
        if window < 9 || self.payload().len() < self.compression.threshold {
            return self.plain.clone();
        }
        let deflated = if window == 15 {
            self.deflated.get_or_init(|| self.compress(15)).clone()
        } else {
            let mut smaller = self.smaller.lock().unwrap_or_else(|e| e.into_inner());
            match smaller.iter().find(|(w, _)| *w == window) {
                Some((_, f)) => f.clone(),
                None => {
                    let f = self.compress(window);
                    smaller.push((window, f.clone()));
                    f
                }
            }
        };
        deflated.unwrap_or_else(|| self.plain.clone())
    }

    /// One compression run: the deflated frame, or `None` when it would
    /// not be smaller than the plain one.
    fn compress(&self, window: u8) -> Option<Bytes> {
        let payload = self.payload();
        let compressed = deflate::compress(payload, window, self.compression.level);
        let sent = compressed.as_ref().map_or(payload.len(), Vec::len);
        self.compression.metrics.record_compression(payload.len(), sent);
        let compressed = compressed?;
        let mut header = [0u8; MAX_HEADER];
        let n = write_header(&mut header, self.opcode, true, compressed.len());
        let mut frame = Vec::with_capacity(n + compressed.len());
        frame.extend_from_slice(&header[MAX_HEADER - n..]);
        frame.extend_from_slice(&compressed);
        Some(Bytes::from(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compression(threshold: usize) -> (Arc<Compression>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        (Compression::new(threshold, 1, metrics.clone()), metrics)
    }

    fn text(payload: &[u8], c: &Arc<Compression>) -> Prepared {
        let mut p = FramePayload::with_capacity(payload.len());
        p.extend_from_slice(payload);
        Prepared::text(p, c)
    }

    fn inflate(frame: &[u8], window: u8) -> Vec<u8> {
        let at = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let mut input = frame[at..].to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut d = flate2::Decompress::new_with_window_bits(false, window);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
            .unwrap();
        out
    }

    #[test]
    fn the_plain_frame_shares_the_payload_buffer() {
        let (c, _) = compression(256);
        let m = text(&[b'x'; 300], &c);
        assert_eq!(&m.frame(Encoding::PLAIN)[..4], &[0x81, 126, 1, 44]);
        assert_eq!(m.payload(), &[b'x'; 300][..]);
        assert_eq!(
            m.frame(Encoding::PLAIN).as_ptr(),
            m.frame(Encoding::PLAIN).as_ptr()
        );
        let b = Prepared::binary(FramePayload::with_capacity(0), &c);
        assert_eq!(&b.frame(Encoding::deflate(15))[..], &[0x82, 0]);
    }

    #[test]
    fn one_compression_per_window_shared_by_every_recipient() {
        let (c, metrics) = compression(256);
        let payload = br#"{"type":"message","data":"hello hello hello hello"}"#.repeat(20);
        let m = text(&payload, &c);
        let frames: Vec<Bytes> = (0..1000).map(|_| m.frame(Encoding::deflate(15))).collect();
        assert_eq!(
            metrics.compressions(),
            1,
            "a thousand recipients, one compression"
        );
        assert!(frames.iter().all(|f| f.as_ptr() == frames[0].as_ptr()));
        assert_eq!(frames[0][0], 0xC1, "FIN, RSV1, text");
        assert!(frames[0].len() < payload.len() / 4);
        assert_eq!(inflate(&frames[0], 15), payload);
        // Another window is another run, once; plain costs none.
        let f11 = m.frame(Encoding::deflate(11));
        m.frame(Encoding::deflate(11));
        m.frame(Encoding::PLAIN);
        assert_eq!(metrics.compressions(), 2);
        assert_eq!(inflate(&f11, 11), payload);
        // Window 8 cannot be produced: plain.
        assert_eq!(m.frame(Encoding::deflate(8))[0], 0x81);
    }

    #[test]
    fn small_or_incompressible_payloads_go_plain() {
        let (c, metrics) = compression(256);
        let small = text(&[b'a'; 255], &c);
        assert_eq!(small.frame(Encoding::deflate(15))[0], 0x81);
        assert_eq!(metrics.compressions(), 0, "under the threshold: not even tried");
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                // xorshift64: no structure for deflate to find.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let m = Prepared::binary(
            {
                let mut p = FramePayload::with_capacity(noise.len());
                p.extend_from_slice(&noise);
                p
            },
            &c,
        );
        let f = m.frame(Encoding::deflate(15));
        assert!(f[0] == 0x82 && f[4..] == noise[..], "plain, unchanged");
        m.frame(Encoding::deflate(15));
        assert_eq!(metrics.compressions(), 1, "tried once, remembered");
    }
}
