//! The WebSocket endpoints, `GET /ws` and `GET /echo`: check the handshake,
//! apply the admission limits and authentication, answer 101 with what was
//! negotiated, and hand the socket to a session task.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::future::Either;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::error;
use crate::auth::{self, AuthError, Grant};
use crate::config::Switch;
use crate::limits::{Permit, Refusal};
use crate::node::Node;
use crate::session::{self, Mode, Opening};
use crate::ws::handshake::{self, HandshakeError};

/// `GET /ws`: the roomcast protocol.
pub async fn ws_protocol(State(node): State<Arc<Node>>, req: Request) -> Response {
    upgrade(node, req, Mode::Protocol)
}

/// `GET /echo`: plain echo (for conformance suites).
pub async fn ws_echo(State(node): State<Arc<Node>>, req: Request) -> Response {
    upgrade(node, req, Mode::Echo)
}

/// Answer the handshake with 101 and hand the socket to a session task.
fn upgrade(node: Arc<Node>, mut req: Request, mode: Mode) -> Response {
    let compression = node.config.compression == Switch::On;
    let mut negotiated = match handshake::accept(req.method(), req.version(), req.headers(), compression) {
        Ok(n) => n,
        Err(e) => return handshake_error(e),
    };
    if node.shutdown.is_cancelled() {
        return super::shutting_down();
    }
    let permit = match admit(&node, &req) {
        Ok(p) => p,
        Err(refusal) => {
            node.metrics.record_refused(refusal);
            return refusal_response(refusal);
        }
    };
    let grant = match authenticate(&node, &req) {
        Ok((grant, subprotocol)) => {
            negotiated.subprotocol = subprotocol;
            grant
        }
        Err(e) => {
            node.metrics.record_refused(Refusal::Unauthorized);
            return unauthorized(&e);
        }
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_handshake",
            "connection cannot be upgraded",
        );
    };
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    negotiated.write_response_headers(res.headers_mut());
    let opening = Opening {
        mode,
        grant,
        negotiated,
    };
    let tracker = node.tracker.clone();
    tracker.spawn(async move {
        // The connection's slot in the limits, held until the session ends.
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                crate::warn_limited!(crate::logging::LogKind::HttpError, error = %e, "upgrade failed");
                return;
            }
        };
        match start_session(node, upgraded, opening) {
            Some(session) => session.await,
            None => debug!("upgraded connection is neither TCP nor TLS over TCP"),
        }
    });
    res
}

/// Start the session on an upgraded connection; `None` if its IO type is
/// not one that `server` gives hyper (plain TCP, or TLS over TCP).
///
/// Each IO type gets its own session type, so plain connections carry
/// nothing of TLS. The plain TCP session runs inline in the connection's
/// task; the TLS one is boxed: its stream is several times larger, and
/// inline it would size every connection's task for TLS. (A sync function,
/// so the downcast results never live in the task's future.)
fn start_session(
    node: Arc<Node>,
    upgraded: Upgraded,
    opening: Opening,
) -> Option<Either<impl Future<Output = ()>, Pin<Box<impl Future<Output = ()>>>>> {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let early = early_bytes(parts.read_buf);
            let io = parts.io.into_inner();
            let fd = std::os::fd::AsRawFd::as_raw_fd(&io);
            return Some(Either::Left(session::run(node, io, early, opening, Some(fd))));
        }
        Err(upgraded) => upgraded,
    };
    let parts = upgraded
        .downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>()
        .ok()?;
    let early = early_bytes(parts.read_buf);
    let io = parts.io.into_inner();
    Some(Either::Right(Box::pin(session::run(
        node, io, early, opening, None,
    ))))
}

/// The bytes the client sent after its handshake request, in an allocation
/// of their own. hyper hands them over as a view into its whole read buffer
/// (8 KiB or more), which the session would otherwise keep alive for the
/// life of the connection, even when the view is empty.
fn early_bytes(read_buf: Bytes) -> Bytes {
    if read_buf.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&read_buf)
    }
}

/// Verify the client's token when auth is configured (401 with a JSON body
/// otherwise); also pick the subprotocol to answer with.
fn authenticate(node: &Node, req: &Request) -> Result<(Option<Grant>, Option<String>), AuthError> {
    let Some(verifier) = &node.auth else {
        // No auth: select `roomcast` if offered, so browsers that offer it
        // accept the handshake.
        let offered = req
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == auth::PROTOCOL);
        return Ok((None, offered.then(|| auth::PROTOCOL.to_owned())));
    };
    let presented = auth::presented(req.uri().query(), req.headers()).ok_or(AuthError::Missing)?;
    let grant = verifier.verify(&presented.token)?;
    Ok((Some(grant), presented.protocol))
}

fn unauthorized(e: &AuthError) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string());
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Apply the admission limits; a refusal is a cheap JSON response with
/// `Retry-After` where waiting helps.
fn admit(node: &Arc<Node>, req: &Request) -> Result<Permit, Refusal> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let limits = &node.limits;
    limits.check_origin(req.headers())?;
    let ip = limits.client_ip(peer, req.headers());
    limits.admit(ip).inspect_err(|&refusal| {
        limits.note_refusal(ip, refusal);
    })
}

/// The cheap JSON answer to a refused upgrade, with `Retry-After` where
/// waiting helps.
fn refusal_response(refusal: Refusal) -> Response {
    let (status, retry, message) = refusal_parts(refusal);
    let mut r = error(status, refusal.as_str(), message);
    if let Some(secs) = retry {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// Status, `Retry-After` seconds (where waiting helps) and message of the
/// answer to a refused connection.
pub fn refusal_parts(refusal: Refusal) -> (StatusCode, Option<u64>, &'static str) {
    match refusal {
        Refusal::ServerFull => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(5),
            "the server is at its connection limit",
        ),
        Refusal::TooManyFromIp => (
            StatusCode::TOO_MANY_REQUESTS,
            Some(5),
            "too many connections from this address",
        ),
        Refusal::ConnectRate { retry_after } => (
            StatusCode::TOO_MANY_REQUESTS,
            Some(retry_after.as_secs().max(1)),
            "connecting too fast from this address",
        ),
        Refusal::Origin => (StatusCode::FORBIDDEN, None, "origin not allowed"),
        Refusal::Unauthorized => (StatusCode::UNAUTHORIZED, None, "unauthorized"),
    }
}

/// The whole HTTP/1.1 response to a connection refused at accept, before
/// its request was read (written raw: it gets no hyper connection).
pub fn early_refusal(refusal: Refusal) -> Vec<u8> {
    let (status, retry, message) = refusal_parts(refusal);
    let body = serde_json::json!({ "error": { "code": refusal.as_str(), "message": message } }).to_string();
    let retry = retry.map_or(String::new(), |s| format!("retry-after: {s}\r\n"));
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n{retry}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

fn handshake_error(e: HandshakeError) -> Response {
    match e {
        HandshakeError::WsVersion => {
            let mut r = error(StatusCode::UPGRADE_REQUIRED, "bad_handshake", &e.to_string());
            r.headers_mut()
                .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            r
        }
        HandshakeError::NotUpgrade => {
            let mut r = error(StatusCode::UPGRADE_REQUIRED, "bad_handshake", &e.to_string());
            r.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            r
        }
        _ => error(StatusCode::BAD_REQUEST, "bad_handshake", &e.to_string()),
    }
}
