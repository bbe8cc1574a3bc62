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
use axum::http::StatusCode;
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
        .with_state(node)
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
