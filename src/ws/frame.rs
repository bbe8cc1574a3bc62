//! Encoding of server-to-client frames.
//!
//! Server frames are never masked, so an encoded frame is the same bytes on
//! every socket: the hub encodes a broadcast once into a [`Bytes`] and every
//! recipient's queue holds a reference-counted clone of it.
//!
//! [`FramePayload`] writes the payload first into a buffer with room for the
//! largest header in front, then places the header right before the payload,
//! so building a frame copies the payload at most once. The RSV1 bit is a
//! parameter so that a pre-compressed permessage-deflate frame can be built the
//! same way.

use bytes::Bytes;

/// Continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// Largest header of an unmasked frame: 2 bytes plus a 64-bit length.
pub const MAX_HEADER: usize = 10;

/// Write the header of a final (FIN) unmasked frame into `out`, right-aligned,
/// and return how many bytes it takes.
pub fn write_header(out: &mut [u8; MAX_HEADER], opcode: u8, rsv1: bool, len: usize) -> usize {
    let b0 = 0x80 | if rsv1 { 0x40 } else { 0 } | (opcode & 0x0F);
    let n = if len < 126 {
        out[8] = b0;
        out[9] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[6] = b0;
        out[7] = 126;
        out[8..10].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[0] = b0;
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    debug_assert!(n <= MAX_HEADER);
    n
}

/// Append a frame as a client sends it (masked with `mask`, as RFC 6455
/// requires of clients) to `out`. The server never sends these; the load
/// tool, the tests and the fuzz targets do.
pub fn append_client_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, mask: [u8; 4], payload: &[u8]) {
    let len = payload.len();
    out.push(if fin { 0x80 } else { 0 } | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    super::mask::apply_mask(&mut out[start..], mask, 0);
}

/// A complete final frame with `payload` copied after the header.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut f = FramePayload::with_capacity(payload.len());
    f.extend_from_slice(payload);
    f.finish(opcode)
}

/// A payload under construction, with room for the frame header in front.
#[derive(Debug)]
pub struct FramePayload {
    buf: Vec<u8>,
}

impl FramePayload {
    /// An empty payload expecting about `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(MAX_HEADER + capacity);
        buf.resize(MAX_HEADER, 0);
        Self { buf }
    }

    /// Append bytes to the payload.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Append one byte to the payload.
    pub fn push(&mut self, byte: u8) {
        self.buf.push(byte);
    }

    /// Payload length so far.
    pub fn len(&self) -> usize {
        self.buf.len() - MAX_HEADER
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Finish as a FIN frame with `opcode`; no further copy of the payload.
    pub fn finish(self, opcode: u8) -> Bytes {
        self.finish_with(opcode, false)
    }

    /// Finish with an explicit RSV1 bit (set for a compressed message).
    pub fn finish_with(mut self, opcode: u8, rsv1: bool) -> Bytes {
        let len = self.len();
        let mut h = [0u8; MAX_HEADER];
        let n = write_header(&mut h, opcode, rsv1, len);
        let start = MAX_HEADER - n;
        self.buf[start..MAX_HEADER].copy_from_slice(&h[start..]);
        Bytes::from(self.buf).slice(start..)
    }
}

impl std::ops::Deref for FramePayload {
    type Target = [u8];

    /// The payload written so far.
    fn deref(&self) -> &[u8] {
        &self.buf[MAX_HEADER..]
    }
}

impl std::io::Write for FramePayload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths() {
        for (len, hdr) in [(0usize, 2usize), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let f = encode(OP_BINARY, &vec![7u8; len]);
            assert_eq!(f.len(), len + hdr, "len {len}");
            assert_eq!(f[0], 0x82);
            match hdr {
                2 => assert_eq!(f[1] as usize, len),
                4 => {
                    assert_eq!(f[1], 126);
                    assert_eq!(u16::from_be_bytes([f[2], f[3]]) as usize, len);
                }
                _ => {
                    assert_eq!(f[1], 127);
                    assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize, len);
                }
            }
            assert!(f[hdr..].iter().all(|&b| b == 7));
        }
    }

    #[test]
    fn rsv1_header() {
        let mut p = FramePayload::with_capacity(3);
        p.extend_from_slice(b"abc");
        let f = p.finish_with(OP_TEXT, true);
        assert_eq!(&f[..], b"\xc1\x03abc");
        assert_eq!(&encode(OP_TEXT, &[0; 300])[..4], &[0x81, 126, 1, 44]);
    }
}
