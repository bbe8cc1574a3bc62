//! Every HTTP route of a node, and the one JSON error shape they share:
//! `{"error":{"code":..,"message":..}}`.
//!
//! - [`upgrade`]: `GET /ws` and `GET /echo`, the WebSocket upgrades that
//!   hand the socket to a [`crate::session`].
//! - [`api`]: the server API under `/api` for application backends.
//! - [`probes`]: `/healthz`, `/readyz` and the Prometheus `/metrics`.
//! - [`stats`]: `/stats`, a summary of the metrics in one line or JSON.

pub mod api;
pub mod probes;
pub mod stats;
pub mod upgrade;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Version, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::node::Node;

/// The router for one node.
pub fn router(node: Arc<Node>) -> Router {
    let mut r = Router::new()
        .route("/ws", get(upgrade::ws_protocol))
        .route("/stats", get(stats::stats))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
        .nest("/api", api::router(node.clone()));
    if !node.config.disable_echo_endpoint {
        r = r.route("/echo", get(upgrade::ws_echo));
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(node.clone(), check_head))
        .with_state(node)
}

/// Checks of the request head that every route shares:
///
/// - its size against `max_header_size` (431). hyper's buffer limit bounds
///   what an unfinished head can hold, but a complete head that arrives in
///   one read may pass it by up to a read's size, so the cap is applied
///   exactly here;
/// - RFC 9112 section 3.2: 400 to an HTTP/1.1 request without a `Host`
///   header, and to any request with more than one or an invalid one.
async fn check_head(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let max = node.config.max_header_size;
    if head_size(&req) > max {
        return error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header_too_large",
            &format!("the request line and headers exceed {max} bytes"),
        );
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let problem = match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == Version::HTTP_11 => Some("an HTTP/1.1 request needs a Host header"),
        (Some(_), Some(_)) => Some("more than one Host header"),
        (Some(h), None) if !valid_host(h.as_bytes()) => Some("invalid Host header"),
        _ => None,
    };
    match problem {
        Some(message) => error(StatusCode::BAD_REQUEST, "bad_host", message),
        None => next.run(req).await,
    }
}

/// About the bytes of `req`'s head on the wire: request line, headers.
fn head_size(req: &Request) -> usize {
    let uri = req.uri();
    // Origin form (`/path?query`) on the wire; an absolute form adds its
    // scheme and authority.
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + 11;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + headers + 2
}

/// `uri-host [ ":" port ]`, or empty (RFC 9110 section 7.2).
fn valid_host(h: &[u8]) -> bool {
    h.is_empty()
        || std::str::from_utf8(h)
            .ok()
            .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
            .is_some_and(|a| !a.as_str().contains('@'))
}

/// A JSON error response.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

/// The answer to anything while the server drains its connections.
pub fn shutting_down() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "server is shutting down",
    )
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
