//! The server side of the opening handshake (RFC 6455 section 4.2).

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method, Version, header};
use sha1::{Digest, Sha1};

use super::deflate::{self, DeflateParams};

/// GUID appended to the client's key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request was refused (answered with HTTP 400 or 426).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not a GET.
    #[error("WebSocket handshake requires GET")]
    Method,
    /// HTTP/1.0 or HTTP/2.
    #[error("WebSocket handshake requires HTTP/1.1")]
    Version,
    /// No `Upgrade: websocket` or no `Connection: upgrade`.
    #[error("missing 'Upgrade: websocket' and 'Connection: upgrade' headers")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("unsupported Sec-WebSocket-Version (only 13)")]
    WsVersion,
    /// `Sec-WebSocket-Key` missing or not 16 bytes of base64.
    #[error("missing or invalid Sec-WebSocket-Key")]
    Key,
    /// The request has a body (`Content-Length` other than 0, or
    /// `Transfer-Encoding`): the bytes after the head would be taken for
    /// frames, or frames for body.
    #[error("a WebSocket handshake request must not have a body")]
    Body,
}

/// What one opening handshake agreed on: written into the 101 response,
/// then handed to the session, which sets the connection up accordingly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// The subprotocol selected (`Sec-WebSocket-Protocol`), if any; chosen
    /// by the caller, which knows which protocols it speaks.
    pub subprotocol: Option<String>,
    /// permessage-deflate and its parameters, when the client offered it,
    /// the server allows it and an offer could be honoured.
    pub deflate: Option<DeflateParams>,
}

impl Negotiated {
    /// Write the headers of the 101 response: `Upgrade`, `Connection`,
    /// `Sec-WebSocket-Accept` and what was negotiated.
    pub fn write_response_headers(&self, h: &mut HeaderMap) {
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&self.accept).expect("base64 is a valid header value"),
        );
        if let Some(p) = self
            .subprotocol
            .as_deref()
            .and_then(|p| HeaderValue::from_str(p).ok())
        {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        if let Some(d) = &self.deflate {
            h.insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(&d.response_header()).expect("extension parameters are tokens"),
            );
        }
    }
}

/// Check an upgrade request; on success return what can be negotiated
/// from the request alone (no subprotocol yet): the accept key and, with
/// `compression`, permessage-deflate (a malformed or unacceptable offer is
/// declined, never an error).
pub fn accept(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    compression: bool,
) -> Result<Negotiated, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::Method);
    }
    if version != Version::HTTP_11 {
        return Err(HandshakeError::Version);
    }
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    let body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if body {
        return Err(HandshakeError::Body);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(HandshakeError::WsVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::Key)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| HandshakeError::Key)?;
    if decoded.len() != 16 {
        return Err(HandshakeError::Key);
    }
    let deflate = if compression && !broken_deflate(headers) {
        deflate::negotiate(
            headers
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .map(HeaderValue::as_bytes),
        )
    } else {
        None
    };
    Ok(Negotiated {
        accept: accept_key(key.as_bytes()),
        subprotocol: None,
        deflate,
    })
}

/// Safari 15.0 to 15.3 (macOS and iOS) offer permessage-deflate but fail
/// on compressed messages from the server (a WebKit bug fixed in 15.4),
/// so they get no extension, as uWebSockets does for them.
fn broken_deflate(headers: &HeaderMap) -> bool {
    let Some(ua) = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    ua.contains("Safari/")
        && ua.match_indices("Version/15.").any(|(at, m)| {
            let rest = &ua.as_bytes()[at + m.len()..];
            matches!(rest.first(), Some(b'0'..=b'3')) && !rest.get(1).is_some_and(u8::is_ascii_digit)
        })
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn safari_15_0_to_15_3_gets_no_deflate() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        h.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            "permessage-deflate; client_max_window_bits".parse().unwrap(),
        );
        let deflate = |ua: Option<&str>| {
            let mut h = h.clone();
            if let Some(ua) = ua {
                h.insert(header::USER_AGENT, ua.parse().unwrap());
            }
            accept(&Method::GET, Version::HTTP_11, &h, true)
                .unwrap()
                .deflate
                .is_some()
        };
        let safari = |v: &str| {
            format!(
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 \
                 (KHTML, like Gecko) Version/{v} Safari/605.1.15"
            )
        };
        for broken in ["15.0", "15.1", "15.2", "15.3", "15.3.1"] {
            assert!(!deflate(Some(&safari(broken))), "{broken}");
        }
        for fine in ["15.4", "15.10", "16.0", "14.1"] {
            assert!(deflate(Some(&safari(fine))), "{fine}");
        }
        assert!(deflate(None));
        assert!(deflate(Some(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
        )));
    }

    #[test]
    fn rejects_bad_requests() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(header::SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        assert!(accept(&Method::GET, Version::HTTP_11, &h, true).is_ok());
        assert_eq!(
            accept(&Method::POST, Version::HTTP_11, &h, true),
            Err(HandshakeError::Method)
        );
        assert_eq!(
            accept(&Method::GET, Version::HTTP_10, &h, true),
            Err(HandshakeError::Version)
        );
        let mut bad = h.clone();
        bad.insert(header::SEC_WEBSOCKET_KEY, "c2hvcnQ=".parse().unwrap());
        assert_eq!(
            accept(&Method::GET, Version::HTTP_11, &bad, true),
            Err(HandshakeError::Key)
        );
        let mut bad = h.clone();
        bad.insert(header::SEC_WEBSOCKET_VERSION, "8".parse().unwrap());
        assert_eq!(
            accept(&Method::GET, Version::HTTP_11, &bad, true),
            Err(HandshakeError::WsVersion)
        );
        let mut bad = h;
        bad.remove(header::UPGRADE);
        assert_eq!(
            accept(&Method::GET, Version::HTTP_11, &bad, true),
            Err(HandshakeError::NotUpgrade)
        );
    }
}
