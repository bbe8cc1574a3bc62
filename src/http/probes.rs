//! Probes for operators and orchestrators: `GET /healthz` (the process
//! answers), `GET /readyz` (it takes new work) and `GET /metrics` (every
//! counter in the Prometheus text format).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::node::Node;

/// 200 while the process runs.
pub async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(serde_json::json!({ "status": "ok" }))).into_response()
}

/// 200 while serving; 503 `shutting_down` once shutdown has begun, and
/// 503 `broker_unavailable` (naming the broker) while a cluster broker is
/// down: a load balancer then sends new clients to nodes that can serve
/// them.
pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.shutdown.is_cancelled() {
        return super::shutting_down();
    }
    let broker = node.broker.status();
    if !broker.up {
        let why = broker.error.unwrap_or_default();
        let body = serde_json::json!({
            "status": "not_ready",
            "error": {
                "code": "broker_unavailable",
                "message": format!("the {} broker is down: {why}", broker.kind),
            },
            "broker": { "kind": broker.kind, "up": false },
        });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "status": "ready", "broker": { "kind": broker.kind, "up": true } })),
    )
        .into_response()
}

/// Every metric, Prometheus text format 0.0.4.
pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        node.metrics.encode(),
    )
        .into_response()
}
