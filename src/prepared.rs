//! A message prepared once for all its recipients.
//!
//! [`crate::protocol`] encodes what a message says (a payload); this module
//! decides what goes on the wire for each recipient, once per message, not
//! once per recipient. A [`Prepared`] holds the payload and the frames built
//! from it, and every recipient's outbox gets a reference-counted clone of
//! the frame it needs: nothing is encoded per recipient.
//!
//! The plain frame costs no copy: the payload was written with room for the
//! header in front of it, and the header is put there when the message is
//! prepared.

use bytes::Bytes;

use crate::ws::frame::{FramePayload, OP_BINARY, OP_TEXT};

/// One message, ready for any number of recipients.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The plain (uncompressed) frame: header and payload.
    plain: Bytes,
    /// Length of the header in front of the payload in `plain`.
    header: u8,
}

impl Prepared {
    /// A text message (the JSON protocol's messages and replies).
    pub fn text(payload: FramePayload) -> Self {
        Self::new(payload, OP_TEXT)
    }

    /// A binary message (the binary protocol's type-4 deliveries).
    pub fn binary(payload: FramePayload) -> Self {
        Self::new(payload, OP_BINARY)
    }

    fn new(payload: FramePayload, opcode: u8) -> Self {
        let len = payload.len();
        let plain = payload.finish(opcode);
        let header = (plain.len() - len) as u8;
        Self { plain, header }
    }

    /// The payload, as every recipient's application will read it.
    pub fn payload(&self) -> &[u8] {
        &self.plain[usize::from(self.header)..]
    }

    /// The frame for one recipient: a reference-counted clone, no copy.
    pub fn frame(&self) -> Bytes {
        self.plain.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_frame_shares_the_payload_buffer() {
        let mut p = FramePayload::with_capacity(300);
        p.extend_from_slice(&[b'x'; 300]);
        let m = Prepared::text(p);
        assert_eq!(&m.frame()[..4], &[0x81, 126, 1, 44]);
        assert_eq!(m.payload(), &[b'x'; 300][..]);
        assert_eq!(m.frame().as_ptr(), m.frame().as_ptr(), "one buffer, shared");
        let b = Prepared::binary(FramePayload::with_capacity(0));
        assert_eq!(&b.frame()[..], &[0x82, 0]);
    }
}
