//! What a cluster broker carries: one envelope per publication (or remote
//! disconnect), the same bytes for Redis and NATS.
//!
//! ```text
//! 'R' 1 kind flags                       magic, version, kind, flags
//! kind 1 (group):      len:u8 group      the group's name (UTF-8)
//! kind 2 (connection): conn:u64          the connection's id on the receiving node
//! kind 3 (everyone):   -
//! kind 4 (disconnect): conn:u64 code:u16 len:u8 reason
//! flag 2 (from):       len:u8 node conn:u64
//! flag 4 (user):       len:u16 user
//! flag 8 (event):      the payload is a whole server message (JSON text,
//!                      a `joined`/`left` event), delivered as it is
//! the rest:            the payload (JSON text, or bytes when flag 1 is set)
//! ```
//!
//! Integers are little-endian. The receiving node decodes a payload as a
//! view into the message (no copy) and prepares it once for its members.
//! Anything that does not decode is ignored and counted, never trusted:
//! every length is checked against what is there.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::{Payload, Publication, Target};
use crate::disconnect::ApiClose;
use crate::id::{ClientId, ConnId};
use crate::protocol::validate_group;

const MAGIC: u8 = b'R';
const VERSION: u8 = 1;
const KIND_GROUP: u8 = 1;
const KIND_CONN: u8 = 2;
const KIND_ALL: u8 = 3;
const KIND_DISCONNECT: u8 = 4;
const FLAG_BINARY: u8 = 1;
const FLAG_FROM: u8 = 2;
const FLAG_USER: u8 = 4;
const FLAG_EVENT: u8 = 8;

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// A publication, its connection target already local to the receiver
    /// (its `node` is what the receiver passes to `deliver_local`).
    Publication(Publication),
    /// Close a connection of the receiving node.
    Disconnect(ConnId, ApiClose),
}

/// Encode a publication. `Target::Conn` is addressed to the node holding
/// the connection; only its number travels.
pub fn encode_publication(p: &Publication) -> Bytes {
    let payload = p.payload.bytes();
    let mut out = BytesMut::with_capacity(64 + payload.len());
    let mut flags = 0;
    match p.payload {
        Payload::Binary(_) => flags |= FLAG_BINARY,
        Payload::Event(_) => flags |= FLAG_EVENT,
        Payload::Json(_) => {}
    }
    if p.from.is_some() {
        flags |= FLAG_FROM;
    }
    // A user id longer than u16 cannot come from a valid JWT of our size
    // limits; it is cut rather than corrupting the envelope.
    let user = p.user.as_deref().map(|u| truncate(u, usize::from(u16::MAX)));
    if user.is_some() {
        flags |= FLAG_USER;
    }
    let kind = match &p.target {
        Target::Group(_) => KIND_GROUP,
        Target::Conn(_) => KIND_CONN,
        Target::All => KIND_ALL,
    };
    out.put_slice(&[MAGIC, VERSION, kind, flags]);
    match &p.target {
        Target::Group(g) => {
            out.put_u8(g.len() as u8);
            out.put_slice(g.as_bytes());
        }
        Target::Conn(id) => out.put_u64_le(id.conn),
        Target::All => {}
    }
    if let Some(from) = &p.from {
        let node = from.node.as_deref().unwrap_or("");
        out.put_u8(node.len() as u8);
        out.put_slice(node.as_bytes());
        out.put_u64_le(from.conn);
    }
    if let Some(user) = user {
        out.put_u16_le(user.len() as u16);
        out.put_slice(user.as_bytes());
    }
    out.put_slice(payload);
    out.freeze()
}

/// Encode a disconnect for connection `conn` of the receiving node.
pub fn encode_disconnect(conn: ConnId, close: &ApiClose) -> Bytes {
    let reason = truncate(&close.reason, 123);
    let mut out = BytesMut::with_capacity(16 + reason.len());
    out.put_slice(&[MAGIC, VERSION, KIND_DISCONNECT, 0]);
    out.put_u64_le(conn);
    out.put_u16_le(close.code);
    out.put_u8(reason.len() as u8);
    out.put_slice(reason.as_bytes());
    out.freeze()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decode an envelope that arrived at node `node` (its name; `None` on a
/// single node); `None` if it is not one.
pub fn decode(message: &Bytes, node: Option<&Arc<str>>) -> Option<Envelope> {
    let mut r = Reader { buf: message, at: 0 };
    let [magic, version, kind, flags] = r.array::<4>()?;
    if magic != MAGIC
        || version != VERSION
        || flags & !(FLAG_BINARY | FLAG_FROM | FLAG_USER | FLAG_EVENT) != 0
        || flags & (FLAG_BINARY | FLAG_EVENT) == (FLAG_BINARY | FLAG_EVENT)
    {
        return None;
    }
    let local = |conn| ClientId {
        node: node.cloned(),
        conn,
    };
    let target = match kind {
        KIND_GROUP => {
            let len = r.u8()?;
            let g = r.str(usize::from(len))?;
            validate_group(g).ok()?;
            Target::Group(Arc::from(g))
        }
        KIND_CONN => Target::Conn(local(r.u64()?)),
        KIND_ALL => Target::All,
        KIND_DISCONNECT => {
            let conn = r.u64()?;
            let code = u16::from_le_bytes(r.array::<2>()?);
            let len = r.u8()?;
            let reason = r.str(usize::from(len))?;
            if r.at != message.len() || !(code == 1000 || (3000..=4999).contains(&code)) || len > 123 {
                return None;
            }
            return Some(Envelope::Disconnect(
                conn,
                ApiClose {
                    code,
                    reason: reason.into(),
                },
            ));
        }
        _ => return None,
    };
    let from = if flags & FLAG_FROM != 0 {
        let len = r.u8()?;
        let node = r.str(usize::from(len))?;
        let conn = r.u64()?;
        Some(ClientId {
            node: (!node.is_empty()).then(|| Arc::from(node)),
            conn,
        })
    } else {
        None
    };
    let user = if flags & FLAG_USER != 0 {
        let len = u16::from_le_bytes(r.array::<2>()?);
        Some(Arc::from(r.str(usize::from(len))?))
    } else {
        None
    };
    let data = message.slice(r.at..);
    let payload = if flags & FLAG_BINARY != 0 {
        Payload::Binary(data)
    } else {
        // JSON text goes into frames verbatim: it must at least be UTF-8
        // (the publishing node checked it is JSON).
        std::str::from_utf8(&data).ok()?;
        if flags & FLAG_EVENT != 0 {
            Payload::Event(data)
        } else {
            Payload::Json(data)
        }
    };
    Some(Envelope::Publication(Publication {
        target,
        from,
        user,
        payload,
    }))
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array::<8>()?))
    }

    fn str(&mut self, n: usize) -> Option<&'a str> {
        std::str::from_utf8(self.take(n)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> Arc<str> {
        Arc::from("n-2")
    }

    #[test]
    fn publications_round_trip() {
        let from = ClientId {
            node: Some(Arc::from("web.1")),
            conn: 7,
        };
        let cases = [
            Publication {
                target: Target::Group(Arc::from("chat:é *>.")),
                from: Some(from.clone()),
                user: Some(Arc::from("alice")),
                payload: Payload::Json(Bytes::from_static(br#"{"a":1}"#)),
            },
            Publication {
                target: Target::Conn(ClientId {
                    node: Some(node()),
                    conn: 99,
                }),
                from: None,
                user: None,
                payload: Payload::Binary(Bytes::from_static(b"\0\xff")),
            },
            Publication {
                target: Target::All,
                from: Some(from),
                user: None,
                payload: Payload::Json(Bytes::from_static(b"null")),
            },
            Publication {
                target: Target::Group(Arc::from("g")),
                from: None,
                user: None,
                payload: Payload::Event(Bytes::from_static(br#"{"type":"left"}"#)),
            },
        ];
        for p in cases {
            let decoded = decode(&encode_publication(&p), Some(&node()));
            assert_eq!(decoded, Some(Envelope::Publication(p)));
        }
        let close = ApiClose {
            code: 4100,
            reason: "bye".into(),
        };
        assert_eq!(
            decode(&encode_disconnect(5, &close), None),
            Some(Envelope::Disconnect(5, close))
        );
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            &b""[..],
            b"R",
            b"X\x01\x03\x00null",
            b"R\x02\x03\x00null",
            b"R\x01\x09\x00",
            b"R\x01\x03\x80null",
            b"R\x01\x01\x00\x05ab",
            b"R\x01\x01\x00\x00x",
            b"R\x01\x03\x00\xff\xfe",
            b"R\x01\x04\x00\x01\0\0\0\0\0\0\0\xe8\x03\x01",
            b"R\x01\x04\x00\x01\0\0\0\0\0\0\0\x01\x00\x00",
            // An event is JSON text: never with the binary flag.
            b"R\x01\x03\x09{}",
        ] {
            assert_eq!(decode(&Bytes::copy_from_slice(bad), None), None, "{bad:?}");
        }
    }

    proptest! {
        /// Any bytes at all: decoding never panics, and what decodes
        /// encodes back to the same bytes.
        #[test]
        fn any_bytes_decode_safely(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut v = vec![MAGIC, VERSION];
            v.extend_from_slice(&bytes);
            let message = Bytes::from(v);
            if let Some(Envelope::Publication(p)) = decode(&message, None) {
                prop_assert_eq!(encode_publication(&p), message);
            }
        }
    }
}
