//! Streaming decoder of client-to-server frames.
//!
//! The decoder is sans-IO: the session reads whatever the socket has into a
//! scratch buffer and passes it to [`Decoder::feed`]. The decoder keeps only
//! what it must between reads: a partial header (at most 14 bytes), the
//! control frame in progress (at most 125 bytes) and the data message in
//! progress. An idle connection therefore holds no read buffer at all.
//!
//! Payload bytes are copied once, from the scratch buffer into the message
//! buffer, and unmasked there. Text is validated as it arrives, so invalid
//! UTF-8 fails the connection before the rest of the message is read.
//!
//! With permessage-deflate agreed ([`Decoder::with_deflate`]), a message whose
//! first frame has RSV1 set is compressed: its payload bytes are unmasked in
//! a small stack buffer and fed to the inflater as they arrive, so only the
//! inflated message is held, bounded by the same limit.

use bytes::Bytes;

use super::close::{self, CloseCode, CloseFrame, ClosePayloadError};
use super::deflate::{DeflateParams, InflateError, Inflater};
use super::frame::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};
use super::mask::apply_mask;
use super::utf8::Utf8Tracker;

/// A complete unit received from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A text message (valid UTF-8).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A Ping with its payload, to be answered with a Pong.
    Ping(Bytes),
    /// A Pong.
    Pong(Bytes),
    /// A valid Close frame. The decoder ignores everything after it.
    Close(CloseFrame),
}

/// A protocol violation; the connection must be failed with
/// [`ProtocolError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// RSV bits set without a negotiated extension.
    #[error("reserved bits set")]
    ReservedBits,
    /// Opcode 3-7 or 11-15.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// Control frame with FIN clear.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// Control frame payload over 125 bytes.
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    /// Client frame without the mask bit.
    #[error("client frame not masked")]
    Unmasked,
    /// Length not in its shortest form, or a 64-bit length with the top bit set.
    #[error("invalid payload length encoding")]
    BadLength,
    /// Continuation frame with no message in progress.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// New text/binary frame while a fragmented message is in progress.
    #[error("new data frame inside a fragmented message")]
    ExpectedContinuation,
    /// The message would exceed the configured maximum size.
    #[error("message exceeds the maximum size")]
    TooBig,
    /// A text message is not valid UTF-8.
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
    /// A Close payload is malformed.
    #[error("invalid close frame: {0:?}")]
    BadClose(ClosePayloadError),
    /// A compressed (permessage-deflate) message is not valid deflate data.
    #[error("invalid compressed data in a permessage-deflate message")]
    BadCompressed,
}

impl ProtocolError {
    /// The close code to fail the connection with.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::TooBig => close::MESSAGE_TOO_BIG,
            Self::InvalidUtf8 | Self::BadCompressed => close::INVALID_PAYLOAD,
            Self::BadClose(e) => e.close_code(),
            _ => close::PROTOCOL_ERROR,
        }
    }
}

/// Header of the frame whose payload is being read.
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes not yet received.
    remaining: u64,
    /// Payload bytes already received (position in the mask cycle).
    received: usize,
}

/// A data message being assembled from one or more frames.
#[derive(Debug)]
struct Assembly {
    text: bool,
    /// The message's payload (inflated, if compressed).
    buf: Vec<u8>,
    utf8: Utf8Tracker,
    /// RSV1 was set on the first frame: every frame of it is compressed.
    compressed: bool,
    /// Compressed payload bytes announced so far, bounded like `buf` (so
    /// at most the 1 GiB a message limit can be).
    compressed_len: u32,
}

/// Streaming frame decoder for one connection.
#[derive(Debug)]
pub struct Decoder {
    /// Largest accepted message (sum of its fragments), in bytes.
    max_message: usize,
    /// Header bytes received so far; 14 is the largest masked header.
    hdr: [u8; 14],
    hdr_len: u8,
    /// The frame whose payload is being read, if the header is complete.
    frame: Option<FrameHead>,
    /// Control frame payload (at most 125 bytes).
    control: Vec<u8>,
    /// Data message in progress.
    message: Option<Assembly>,
    /// A Close was received or an error occurred: ignore further input.
    done: bool,
    /// permessage-deflate parameters, if the handshake agreed to them.
    deflate: Option<DeflateParams>,
    /// zlib state, made on the first compressed message; between messages
    /// kept only if the client keeps its context (no
    /// `client_no_context_takeover`).
    inflater: Option<Box<Inflater>>,
    /// Compressed messages completed since the last [`Decoder::take_inflated`].
    inflated: u32,
}

impl Decoder {
    /// A decoder accepting messages up to `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self::with_deflate(max_message, None)
    }

    /// A decoder accepting messages up to `max_message` bytes (inflated
    /// size, and compressed size too), with permessage-deflate if `deflate`
    /// is the outcome of the handshake. Without it RSV1 is a violation.
    pub fn with_deflate(max_message: usize, deflate: Option<DeflateParams>) -> Self {
        Self {
            max_message,
            hdr: [0; 14],
            hdr_len: 0,
            frame: None,
            control: Vec::new(),
            message: None,
            done: false,
            deflate,
            inflater: None,
            inflated: 0,
        }
    }

    /// How many compressed messages were inflated since the last call (for
    /// a metrics counter).
    pub fn take_inflated(&mut self) -> u64 {
        u64::from(std::mem::take(&mut self.inflated))
    }

    /// Whether a data message is partially received (a reader that is
    /// otherwise idle should not be considered idle then).
    pub fn in_message(&self) -> bool {
        self.message.is_some() || self.frame.is_some() || self.hdr_len > 0
    }

    /// Bytes held for a message in progress, plus the inflater's state if
    /// one is held (see [`super::deflate::inflater_heap`]).
    pub fn buffered(&self) -> usize {
        self.message.as_ref().map_or(0, |m| m.buf.capacity())
            + self.control.capacity()
            + self.inflater.as_ref().map_or(0, |i| i.memory())
    }

    /// Consume `input`, pushing every completed event to `out`.
    ///
    /// After a `Close` event or an error the decoder ignores further input.
    pub fn feed(&mut self, mut input: &[u8], out: &mut impl Extend<Event>) -> Result<(), ProtocolError> {
        while !input.is_empty() && !self.done {
            match self.frame {
                None => self.read_header(&mut input, out)?,
                Some(_) => self.read_payload(&mut input, out)?,
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: ProtocolError) -> Result<(), ProtocolError> {
        self.done = true;
        self.message = None;
        self.inflater = None;
        Err(e)
    }

    /// Accumulate header bytes; when the header is complete, validate it.
    fn read_header(&mut self, input: &mut &[u8], out: &mut impl Extend<Event>) -> Result<(), ProtocolError> {
        let have = self.hdr_len as usize;
        let need = if have < 2 {
            2
        } else {
            2 + match self.hdr[1] & 0x7F {
                126 => 2,
                127 => 8,
                _ => 0,
            } + if self.hdr[1] & 0x80 != 0 { 4 } else { 0 }
        };
        let take = (need - have).min(input.len());
        self.hdr[have..have + take].copy_from_slice(&input[..take]);
        *input = &input[take..];
        self.hdr_len += take as u8;
        if (self.hdr_len as usize) < need {
            return Ok(());
        }
        if need == 2 {
            // Validate what the first two bytes say before reading more.
            // (Every valid client frame has a mask key, so more follows.)
            return match self.check_first_bytes() {
                Ok(()) => Ok(()),
                Err(e) => self.fail(e),
            };
        }
        if let Err(e) = self.start_frame() {
            return self.fail(e);
        }
        self.hdr_len = 0;
        if self.frame.is_some_and(|f| f.remaining == 0) {
            // An empty frame is complete without further input.
            self.read_payload(&mut &[][..], out)?;
        }
        Ok(())
    }

    /// Checks that need only the first two header bytes.
    fn check_first_bytes(&self) -> Result<(), ProtocolError> {
        let (b0, b1) = (self.hdr[0], self.hdr[1]);
        let opcode = b0 & 0x0F;
        // RSV1 marks a compressed message on its first frame only (RFC 7692
        // section 6.1); RSV2/RSV3 stay reserved.
        let rsv1_ok = self.deflate.is_some() && matches!(opcode, OP_TEXT | OP_BINARY);
        if b0 & 0x30 != 0 || (b0 & 0x40 != 0 && !rsv1_ok) {
            return Err(ProtocolError::ReservedBits);
        }
        let fin = b0 & 0x80 != 0;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(ProtocolError::FragmentedControl);
                }
                if b1 & 0x7F > 125 {
                    return Err(ProtocolError::ControlTooLong);
                }
            }
            op => return Err(ProtocolError::ReservedOpcode(op)),
        }
        if b1 & 0x80 == 0 {
            return Err(ProtocolError::Unmasked);
        }
        match (opcode, &self.message) {
            (OP_CONTINUATION, None) => Err(ProtocolError::UnexpectedContinuation),
            (OP_TEXT | OP_BINARY, Some(_)) => Err(ProtocolError::ExpectedContinuation),
            _ => Ok(()),
        }
    }

    /// The header is complete: decode the length and mask, start the payload.
    fn start_frame(&mut self) -> Result<(), ProtocolError> {
        let b0 = self.hdr[0];
        let opcode = b0 & 0x0F;
        let (len, at) = match self.hdr[1] & 0x7F {
            126 => {
                let l = u16::from_be_bytes([self.hdr[2], self.hdr[3]]) as u64;
                if l < 126 {
                    return Err(ProtocolError::BadLength);
                }
                (l, 4)
            }
            127 => {
                let l = u64::from_be_bytes(self.hdr[2..10].try_into().expect("8 bytes"));
                if l >> 63 != 0 || l <= u16::MAX as u64 {
                    return Err(ProtocolError::BadLength);
                }
                (l, 10)
            }
            l => (l as u64, 2),
        };
        let mask: [u8; 4] = self.hdr[at..at + 4].try_into().expect("4 bytes");
        if opcode < OP_CLOSE {
            let so_far = self.message.as_ref().map_or(0, |m| {
                if m.compressed {
                    u64::from(m.compressed_len)
                } else {
                    m.buf.len() as u64
                }
            });
            if so_far.saturating_add(len) > self.max_message as u64 {
                return Err(ProtocolError::TooBig);
            }
            if opcode != OP_CONTINUATION {
                let compressed = b0 & 0x40 != 0;
                self.message = Some(Assembly {
                    text: opcode == OP_TEXT,
                    // Grow with what arrives, not with what the header claims;
                    // the inflater sizes its output itself.
                    buf: if compressed {
                        Vec::new()
                    } else {
                        Vec::with_capacity((len as usize).min(16 * 1024))
                    },
                    utf8: Utf8Tracker::default(),
                    compressed,
                    compressed_len: 0,
                });
                if compressed && self.inflater.is_none() {
                    let params = self.deflate.as_ref().expect("RSV1 accepted only with deflate");
                    self.inflater = Some(Box::new(Inflater::for_params(params)));
                }
            }
            let m = self.message.as_mut().expect("data frame has a message");
            // Within the limit (checked above), which is at most 1 GiB.
            m.compressed_len += len as u32;
        } else {
            self.control.clear();
        }
        self.frame = Some(FrameHead {
            opcode,
            fin: b0 & 0x80 != 0,
            mask,
            remaining: len,
            received: 0,
        });
        Ok(())
    }

    fn read_payload(&mut self, input: &mut &[u8], out: &mut impl Extend<Event>) -> Result<(), ProtocolError> {
        let mut f = self.frame.expect("frame in progress");
        let n = (f.remaining.min(input.len() as u64)) as usize;
        let (chunk, rest) = input.split_at(n);
        *input = rest;
        if f.opcode >= OP_CLOSE {
            let start = self.control.len();
            self.control.extend_from_slice(chunk);
            apply_mask(&mut self.control[start..], f.mask, f.received);
        } else if self.message.as_ref().is_some_and(|m| m.compressed) {
            if let Err(e) = self.inflate_chunk(chunk, f) {
                return self.fail(e);
            }
        } else {
            let m = self.message.as_mut().expect("data frame has a message");
            let start = m.buf.len();
            // Grow by doubling, but never past the message limit: a message
            // in progress holds at most `max_message` bytes.
            let needed = start + chunk.len();
            if needed > m.buf.capacity() {
                let target = (m.buf.capacity() * 2)
                    .max(needed)
                    .min(self.max_message.max(needed));
                m.buf.reserve_exact(target - start);
            }
            m.buf.extend_from_slice(chunk);
            apply_mask(&mut m.buf[start..], f.mask, f.received);
            if m.text && m.utf8.extend(&m.buf).is_err() {
                return self.fail(ProtocolError::InvalidUtf8);
            }
        }
        f.received += n;
        f.remaining -= n as u64;
        if f.remaining > 0 {
            self.frame = Some(f);
            return Ok(());
        }
        self.frame = None;
        match f.opcode {
            OP_PING => out.extend(Some(Event::Ping(Bytes::copy_from_slice(&self.control)))),
            OP_PONG => out.extend(Some(Event::Pong(Bytes::copy_from_slice(&self.control)))),
            OP_CLOSE => match close::parse_close_payload(&self.control) {
                Ok(c) => {
                    self.done = true;
                    self.message = None;
                    out.extend(Some(Event::Close(c)));
                }
                Err(e) => return self.fail(ProtocolError::BadClose(e)),
            },
            _ if f.fin => {
                let mut m = self.message.take().expect("data frame has a message");
                if m.compressed {
                    let inflater = self
                        .inflater
                        .as_mut()
                        .expect("compressed message has an inflater");
                    let r = inflater.finish(&mut m.buf, self.max_message);
                    if m.text && m.utf8.extend(&m.buf).is_err() {
                        return self.fail(ProtocolError::InvalidUtf8);
                    }
                    if let Err(e) = r {
                        return self.fail(inflate_error(e));
                    }
                    if self.deflate.is_some_and(|p| p.client_no_context_takeover) {
                        self.inflater = None;
                    }
                    self.inflated = self.inflated.saturating_add(1);
                }
                if m.text {
                    if !m.utf8.is_complete(m.buf.len()) {
                        return self.fail(ProtocolError::InvalidUtf8);
                    }
                    out.extend(Some(Event::Text(Bytes::from(m.buf))));
                } else {
                    out.extend(Some(Event::Binary(Bytes::from(m.buf))));
                }
            }
            _ => {}
        }
        if self.control.capacity() > 125 {
            self.control = Vec::new();
        }
        Ok(())
    }

    /// Unmask `chunk` (payload bytes of frame `f` from position
    /// `f.received`) on the stack and inflate it into the message.
    fn inflate_chunk(&mut self, chunk: &[u8], f: FrameHead) -> Result<(), ProtocolError> {
        let m = self.message.as_mut().expect("data frame has a message");
        let inflater = self
            .inflater
            .as_mut()
            .expect("compressed message has an inflater");
        let mut scratch = [0u8; 1024];
        let mut offset = f.received;
        for piece in chunk.chunks(scratch.len()) {
            let s = &mut scratch[..piece.len()];
            s.copy_from_slice(piece);
            apply_mask(s, f.mask, offset);
            offset += piece.len();
            let r = inflater.inflate(s, &mut m.buf, self.max_message);
            // Invalid text inflated before an error is reported first, so
            // the error does not depend on how the input was split.
            if m.text && m.utf8.extend(&m.buf).is_err() {
                return Err(ProtocolError::InvalidUtf8);
            }
            r.map_err(inflate_error)?;
        }
        Ok(())
    }
}

fn inflate_error(e: InflateError) -> ProtocolError {
    match e {
        InflateError::TooBig => ProtocolError::TooBig,
        InflateError::Corrupt => ProtocolError::BadCompressed,
    }
}

/// Mask and frame `payload` as a client would; for tests and fuzzing.
pub fn client_frame(fin: bool, opcode: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + payload.len());
    super::frame::append_client_frame(&mut out, fin, opcode, mask, payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: [u8; 4] = [1, 2, 3, 4];

    fn decode_all(max: usize, bytes: &[u8], step: usize) -> (Vec<Event>, Result<(), ProtocolError>) {
        let mut d = Decoder::new(max);
        let mut out = Vec::new();
        for chunk in bytes.chunks(step.max(1)) {
            if let Err(e) = d.feed(chunk, &mut out) {
                return (out, Err(e));
            }
        }
        (out, Ok(()))
    }

    #[test]
    fn single_frames_any_chunking() {
        let mut wire = client_frame(true, OP_TEXT, M, "héllo".as_bytes());
        wire.extend(client_frame(true, OP_BINARY, M, &[0u8; 300]));
        wire.extend(client_frame(true, OP_PING, M, b"p"));
        wire.extend(client_frame(true, OP_BINARY, M, &vec![9u8; 70_000]));
        for step in [1, 2, 3, 7, 64, 100_000] {
            let (ev, r) = decode_all(1 << 20, &wire, step);
            r.unwrap();
            assert_eq!(ev.len(), 4, "step {step}");
            assert_eq!(ev[0], Event::Text(Bytes::from("héllo")));
            assert_eq!(ev[1], Event::Binary(Bytes::from(vec![0u8; 300])));
            assert_eq!(ev[2], Event::Ping(Bytes::from_static(b"p")));
            assert_eq!(ev[3], Event::Binary(Bytes::from(vec![9u8; 70_000])));
        }
    }

    #[test]
    fn fragments_with_interleaved_control() {
        let mut wire = client_frame(false, OP_TEXT, M, b"ab");
        wire.extend(client_frame(true, OP_PING, M, b""));
        wire.extend(client_frame(false, OP_CONTINUATION, M, b"cd"));
        wire.extend(client_frame(true, OP_CONTINUATION, M, b"ef"));
        let (ev, r) = decode_all(100, &wire, 1);
        r.unwrap();
        assert_eq!(
            ev,
            vec![Event::Ping(Bytes::new()), Event::Text(Bytes::from("abcdef"))]
        );
    }

    #[test]
    fn violations_and_their_codes() {
        let cases: Vec<(Vec<u8>, ProtocolError, u16)> = vec![
            (
                vec![0x81 | 0x40, 0x80, 0, 0, 0, 0],
                ProtocolError::ReservedBits,
                1002,
            ),
            (
                vec![0x83, 0x80, 0, 0, 0, 0],
                ProtocolError::ReservedOpcode(3),
                1002,
            ),
            (
                vec![0x09, 0x80, 0, 0, 0, 0],
                ProtocolError::FragmentedControl,
                1002,
            ),
            (vec![0x89, 0xFE, 0, 200], ProtocolError::ControlTooLong, 1002),
            (vec![0x81, 0x00], ProtocolError::Unmasked, 1002),
            (
                vec![0x80, 0x80, 0, 0, 0, 0],
                ProtocolError::UnexpectedContinuation,
                1002,
            ),
            (vec![0x82, 0xFE, 0, 5, 0, 0, 0, 0], ProtocolError::BadLength, 1002),
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
                ProtocolError::BadLength,
                1002,
            ),
            (
                client_frame(true, OP_TEXT, M, &[0xff]),
                ProtocolError::InvalidUtf8,
                1007,
            ),
            (
                client_frame(true, OP_BINARY, M, &[0; 11]),
                ProtocolError::TooBig,
                1009,
            ),
            (
                client_frame(true, OP_CLOSE, M, &[3]),
                ProtocolError::BadClose(ClosePayloadError::Truncated),
                1002,
            ),
        ];
        for (wire, err, code) in cases {
            let (_, r) = decode_all(10, &wire, 100);
            assert_eq!(r, Err(err), "{wire:?}");
            assert_eq!(err.close_code(), code);
        }
        let mut wire = client_frame(false, OP_TEXT, M, b"a");
        wire.extend(client_frame(true, OP_TEXT, M, b"b"));
        assert_eq!(
            decode_all(10, &wire, 1).1,
            Err(ProtocolError::ExpectedContinuation)
        );
    }

    #[test]
    fn too_big_is_detected_from_the_header_alone() {
        let mut d = Decoder::new(10);
        let mut out = Vec::new();
        // Header announcing 1 MiB; no payload sent yet.
        let hdr = [0x82, 0xFF, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4];
        assert_eq!(d.feed(&hdr, &mut out), Err(ProtocolError::TooBig));
        // Fragments adding up past the limit.
        let mut wire = client_frame(false, OP_BINARY, M, &[0; 6]);
        wire.extend(client_frame(true, OP_CONTINUATION, M, &[0; 6]));
        assert_eq!(decode_all(10, &wire, 100).1, Err(ProtocolError::TooBig));
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_ends() {
        let wire = client_frame(true, OP_TEXT, M, b"ok\xce\xba\xed\xa0\x80 and much more text");
        let mut d = Decoder::new(1000);
        let mut out = Vec::new();
        // Only the first 6 + 7 bytes: header plus "ok", kappa, and a surrogate start.
        assert_eq!(d.feed(&wire[..6 + 7], &mut out), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn a_message_in_progress_holds_at_most_the_limit() {
        let mut d = Decoder::new(1024);
        let mut wire = client_frame(false, OP_BINARY, M, &[0; 600]);
        wire.extend(client_frame(false, OP_CONTINUATION, M, &[0; 400]));
        let mut out = Vec::new();
        for c in wire.chunks(7) {
            d.feed(c, &mut out).unwrap();
        }
        assert!(d.buffered() <= 1024, "{}", d.buffered());
    }

    #[test]
    fn close_ends_decoding() {
        let mut wire = client_frame(true, OP_CLOSE, M, b"\x03\xe8bye");
        wire.extend(client_frame(true, OP_TEXT, M, b"ignored"));
        let (ev, r) = decode_all(100, &wire, 3);
        r.unwrap();
        assert_eq!(
            ev,
            vec![Event::Close(CloseFrame {
                code: Some(1000),
                reason: "bye".into()
            })]
        );
    }

    mod deflate {
        use super::*;
        use crate::ws::deflate::{DeflateParams, compress, inflater_heap};
        const INFLATER_HEAP: usize = inflater_heap(15);
        use flate2::{Compress, Compression, FlushCompress};

        const KEEP: DeflateParams = DeflateParams {
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            client_no_context_takeover: false,
        };
        const RESET: DeflateParams = DeflateParams {
            client_no_context_takeover: true,
            ..KEEP
        };

        /// A client frame with RSV1 set.
        fn rsv1_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
            let mut f = client_frame(fin, opcode, M, payload);
            f[0] |= 0x40;
            f
        }

        fn decode(
            params: DeflateParams,
            max: usize,
            wire: &[u8],
            step: usize,
        ) -> (Vec<Event>, Result<(), ProtocolError>, Decoder) {
            let mut d = Decoder::with_deflate(max, Some(params));
            let mut out = Vec::new();
            for chunk in wire.chunks(step.max(1)) {
                if let Err(e) = d.feed(chunk, &mut out) {
                    return (out, Err(e), d);
                }
            }
            (out, Ok(()), d)
        }

        fn text() -> String {
            r#"{"type":"publish","group":"room","data":{"text":"héllo"}}"#.repeat(30)
        }

        #[test]
        fn compressed_single_frame() {
            let t = text();
            let z = compress(t.as_bytes(), 15, 6).unwrap();
            let mut wire = rsv1_frame(true, OP_TEXT, &z);
            wire.extend(client_frame(true, OP_BINARY, M, b"plain"));
            for step in [1, 5, 1000, 1 << 20] {
                let (ev, r, mut d) = decode(RESET, 1 << 16, &wire, step);
                r.unwrap();
                assert_eq!(
                    ev,
                    vec![
                        Event::Text(Bytes::from(t.clone())),
                        Event::Binary(Bytes::from("plain"))
                    ]
                );
                assert_eq!(d.take_inflated(), 1);
                assert_eq!(d.take_inflated(), 0);
                // No context takeover: nothing is held between messages.
                assert_eq!(d.buffered(), 0);
            }
        }

        #[test]
        fn compressed_fragments_with_interleaved_ping() {
            let t = text();
            let z = compress(t.as_bytes(), 15, 6).unwrap();
            let (a, rest) = z.split_at(z.len() / 3);
            let (b, c) = rest.split_at(rest.len() / 2);
            let mut wire = rsv1_frame(false, OP_TEXT, a);
            wire.extend(client_frame(true, OP_PING, M, b"p"));
            wire.extend(client_frame(false, OP_CONTINUATION, M, b));
            wire.extend(client_frame(true, OP_CONTINUATION, M, c));
            for step in [1, 3, 64, 1 << 20] {
                let (ev, r, _) = decode(KEEP, 1 << 16, &wire, step);
                r.unwrap();
                assert_eq!(
                    ev,
                    vec![
                        Event::Ping(Bytes::from_static(b"p")),
                        Event::Text(Bytes::from(t.clone()))
                    ]
                );
            }
            // An empty compressed message, and one that is the single 00 byte.
            let mut wire = rsv1_frame(true, OP_BINARY, b"");
            wire.extend(rsv1_frame(true, OP_TEXT, &[0]));
            let (ev, r, _) = decode(KEEP, 10, &wire, 1);
            r.unwrap();
            assert_eq!(ev, vec![Event::Binary(Bytes::new()), Event::Text(Bytes::new())]);
        }

        #[test]
        fn rsv1_where_it_is_not_allowed() {
            let z = compress(text().as_bytes(), 15, 6).unwrap();
            // On a continuation frame.
            let mut wire = rsv1_frame(false, OP_TEXT, &z[..4]);
            wire.extend(rsv1_frame(true, OP_CONTINUATION, &z[4..]));
            assert_eq!(
                decode(KEEP, 1 << 16, &wire, 7).1,
                Err(ProtocolError::ReservedBits)
            );
            // On control frames.
            for op in [OP_PING, OP_PONG, OP_CLOSE] {
                let wire = rsv1_frame(true, op, b"");
                assert_eq!(decode(KEEP, 100, &wire, 7).1, Err(ProtocolError::ReservedBits));
            }
            // RSV2 and RSV3 even with deflate.
            for bit in [0x20, 0x10] {
                let mut wire = client_frame(true, OP_TEXT, M, b"a");
                wire[0] |= bit;
                assert_eq!(decode(KEEP, 100, &wire, 7).1, Err(ProtocolError::ReservedBits));
            }
            // Without deflate, RSV1 stays a violation.
            let wire = rsv1_frame(true, OP_TEXT, &z);
            assert_eq!(
                decode_all(1 << 16, &wire, 100).1,
                Err(ProtocolError::ReservedBits)
            );
            assert_eq!(ProtocolError::ReservedBits.close_code(), 1002);
        }

        #[test]
        fn zip_bomb_is_too_big_at_the_limit() {
            // 64 KiB of compressed zeros inflate to about 64 MiB.
            let mut c = Compress::new_with_window_bits(Compression::new(9), false, 15);
            let zeros = vec![0u8; 1 << 20];
            // A full flush byte-aligns and forgets the history, so copies of
            // one compressed MiB concatenate into a valid stream (cheaply).
            let mut one = Vec::with_capacity(1 << 12);
            c.compress_vec(&zeros, &mut one, FlushCompress::Full).unwrap();
            let z = one.repeat((64 << 10) / one.len() + 1);
            let limit = 1 << 16;
            let wire = rsv1_frame(true, OP_BINARY, &z[..limit.min(z.len())]);
            let mut d = Decoder::with_deflate(limit, Some(KEEP));
            let mut out = Vec::new();
            let mut err = None;
            for chunk in wire.chunks(512) {
                if let Err(e) = d.feed(chunk, &mut out) {
                    err = Some(e);
                    break;
                }
                assert!(
                    d.buffered() <= limit + 1 + INFLATER_HEAP + 256,
                    "{}",
                    d.buffered()
                );
            }
            assert_eq!(err, Some(ProtocolError::TooBig));
            assert_eq!(ProtocolError::TooBig.close_code(), 1009);
            assert!(out.is_empty());
            // The compressed size is bounded too, from the header alone.
            let wire = rsv1_frame(true, OP_BINARY, &[0; 11]);
            assert_eq!(decode(KEEP, 10, &wire, 100).1, Err(ProtocolError::TooBig));
        }

        #[test]
        fn corrupt_data_closes_with_1007() {
            let wire = rsv1_frame(true, OP_BINARY, &[0xff, 0xff, 0xff, 0xff]);
            let (_, r, d) = decode(KEEP, 100, &wire, 100);
            assert_eq!(r, Err(ProtocolError::BadCompressed));
            assert_eq!(ProtocolError::BadCompressed.close_code(), 1007);
            assert_eq!(d.buffered(), 0);
            // Compressed text that inflates to invalid UTF-8, found in the
            // inflated bytes before the frame ends.
            let mut bad = b"ok \xff".to_vec();
            bad.extend(std::iter::repeat_n(b'a', 5000));
            let z = compress(&bad, 15, 6).unwrap();
            let wire = rsv1_frame(true, OP_TEXT, &z);
            let mut d = Decoder::with_deflate(100_000, Some(KEEP));
            assert_eq!(
                d.feed(&wire[..wire.len() - 1], &mut Vec::new()),
                Err(ProtocolError::InvalidUtf8)
            );
        }

        #[test]
        fn context_takeover_across_messages() {
            // A client that keeps its compression context: the second
            // message is mostly a back-reference into the first.
            let t = text();
            let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
            let mut wire = Vec::new();
            let mut second_len = 0;
            for _ in 0..2 {
                let mut z = Vec::with_capacity(4096);
                c.compress_vec(t.as_bytes(), &mut z, FlushCompress::Sync).unwrap();
                assert!(z.ends_with(&[0, 0, 0xff, 0xff]));
                z.truncate(z.len() - 4);
                second_len = z.len();
                wire.extend(rsv1_frame(true, OP_TEXT, &z));
            }
            assert!(
                second_len < 40,
                "the second message refers back: {second_len} bytes"
            );
            let (ev, r, mut d) = decode(KEEP, 1 << 16, &wire, 13);
            r.unwrap();
            assert_eq!(ev, vec![Event::Text(Bytes::from(t.clone())); 2]);
            assert_eq!(d.take_inflated(), 2);
            // The context is kept between messages, and counted.
            assert!(d.buffered() >= inflater_heap(9));
            // Resetting after each message cannot decode the second one.
            let (ev, r, _) = decode(RESET, 1 << 16, &wire, 13);
            assert_eq!(ev.len(), 1);
            assert_eq!(r, Err(ProtocolError::BadCompressed));
        }

        #[test]
        fn no_inflater_until_a_compressed_message() {
            let wire = client_frame(true, OP_TEXT, M, b"plain");
            let (ev, r, mut d) = decode(KEEP, 100, &wire, 100);
            r.unwrap();
            assert_eq!(ev.len(), 1);
            assert!(d.inflater.is_none());
            assert_eq!(d.buffered(), 0);
            assert_eq!(d.take_inflated(), 0);
        }
    }
}
