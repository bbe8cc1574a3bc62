//! HTTP routes: the WebSocket endpoints (`/ws`, `/echo`), `/stats` and
//! `/healthz`. Every error is JSON: `{"error":{"code":..,"message":..}}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::node::Node;
use crate::session::{self, Mode};
use crate::ws::handshake::{self, HandshakeError};

/// The router for one node.
pub fn router(node: Arc<Node>) -> Router {
    let mut r = Router::new()
        .route("/ws", get(ws_protocol))
        .route("/stats", get(stats))
        .route("/healthz", get(healthz))
        .merge(crate::metrics::routes())
        .nest("/api", crate::api::router(node.clone()));
    if !node.config.disable_echo_endpoint {
        r = r.route("/echo", get(ws_echo));
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(node)
}

/// A JSON error response.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(serde_json::json!({ "status": "ok" }))).into_response()
}

async fn stats(State(node): State<Arc<Node>>, headers: HeaderMap, req: Request) -> Response {
    let snap = node.stats.snapshot(node.hub.group_count());
    let wants_json = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "format=json"))
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        axum::Json(snap).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            snap.line() + "\n",
        )
            .into_response()
    }
}

async fn ws_protocol(State(node): State<Arc<Node>>, req: Request) -> Response {
    upgrade(node, req, Mode::Protocol)
}

async fn ws_echo(State(node): State<Arc<Node>>, req: Request) -> Response {
    upgrade(node, req, Mode::Echo)
}

/// Answer the handshake with 101 and hand the socket to a session task.
fn upgrade(node: Arc<Node>, mut req: Request, mode: Mode) -> Response {
    let accept = match handshake::accept(req.method(), req.version(), req.headers()) {
        Ok(a) => a,
        Err(e) => return handshake_error(e),
    };
    if node.shutdown.is_cancelled() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server is shutting down",
        );
    }
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_handshake",
            "connection cannot be upgraded",
        );
    };
    let tracker = node.tracker.clone();
    tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                crate::warn_limited!(crate::logging::LogKind::HttpError, error = %e, "upgrade failed");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => session::run(node, parts.io.into_inner(), parts.read_buf, mode).await,
            Err(_) => debug!("upgraded connection is not a TCP stream"),
        }
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    res
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
