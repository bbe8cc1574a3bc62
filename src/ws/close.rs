//! Close codes (RFC 6455 section 7.4) and the close frame payload.

use bytes::Bytes;

/// A close code as sent on the wire.
pub type CloseCode = u16;

/// Normal closure.
pub const NORMAL: CloseCode = 1000;
/// The endpoint is going away (server shutdown).
pub const GOING_AWAY: CloseCode = 1001;
/// Protocol error.
pub const PROTOCOL_ERROR: CloseCode = 1002;
/// Data inconsistent with the message type (invalid UTF-8 in text).
pub const INVALID_PAYLOAD: CloseCode = 1007;
/// Policy violation.
pub const POLICY_VIOLATION: CloseCode = 1008;
/// Message too big.
pub const MESSAGE_TOO_BIG: CloseCode = 1009;
/// Unexpected condition on the server.
pub const INTERNAL_ERROR: CloseCode = 1011;

/// Whether `code` may appear in a Close frame sent by a peer.
///
/// 1005, 1006 and 1015 are reserved for local use and never go on the wire;
/// 1004 is reserved; anything below 1000 or in 1016..=2999 is unassigned.
/// 3000..=4999 belong to libraries and applications.
pub fn is_valid_on_wire(code: CloseCode) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parsed payload of a Close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code, `None` when the payload was empty (1005 locally).
    pub code: Option<CloseCode>,
    /// The reason text; empty when absent.
    pub reason: String,
}

/// Why a Close payload was rejected, with the close code to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosePayloadError {
    /// One byte: a code needs two (answer 1002).
    Truncated,
    /// A code not allowed on the wire (answer 1002).
    InvalidCode(CloseCode),
    /// The reason is not UTF-8 (answer 1007).
    InvalidReason,
}

impl ClosePayloadError {
    /// Close code to fail the connection with.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::Truncated | Self::InvalidCode(_) => PROTOCOL_ERROR,
            Self::InvalidReason => INVALID_PAYLOAD,
        }
    }
}

/// Parse and validate a Close frame payload (already unmasked).
pub fn parse_close_payload(payload: &[u8]) -> Result<CloseFrame, ClosePayloadError> {
    match payload {
        [] => Ok(CloseFrame {
            code: None,
            reason: String::new(),
        }),
        [_] => Err(ClosePayloadError::Truncated),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_on_wire(code) {
                return Err(ClosePayloadError::InvalidCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ClosePayloadError::InvalidReason)?;
            Ok(CloseFrame {
                code: Some(code),
                reason: reason.to_owned(),
            })
        }
    }
}

/// Encode a complete unmasked Close frame with `code` and `reason`.
///
/// The reason is truncated (at a character boundary) so the payload fits the
/// 125-byte limit of control frames.
pub fn encode_close(code: CloseCode, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut out = Vec::with_capacity(4 + reason.len());
    out.push(0x80 | super::frame::OP_CLOSE);
    out.push((2 + reason.len()) as u8);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_codes() {
        for c in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(is_valid_on_wire(c), "{c}");
        }
        for c in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_on_wire(c), "{c}");
        }
    }

    #[test]
    fn parse_payloads() {
        assert_eq!(parse_close_payload(&[]).unwrap().code, None);
        assert_eq!(parse_close_payload(&[3]), Err(ClosePayloadError::Truncated));
        assert_eq!(
            parse_close_payload(&[0x03, 0xed]),
            Err(ClosePayloadError::InvalidCode(1005))
        );
        let ok = parse_close_payload(b"\x03\xe8bye").unwrap();
        assert_eq!((ok.code, ok.reason.as_str()), (Some(1000), "bye"));
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xff").unwrap_err().close_code(),
            INVALID_PAYLOAD
        );
    }

    #[test]
    fn encode_truncates_reason_at_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let f = encode_close(1001, &reason);
        assert!(f.len() <= 2 + 125);
        let parsed = parse_close_payload(&f[2..]).unwrap();
        assert_eq!(parsed.code, Some(1001));
        assert_eq!(parsed.reason.len(), 122);
    }
}
