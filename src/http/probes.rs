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

/// 200 while serving; 503 `shutting_down` once shutdown has begun.
pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.shutdown.is_cancelled() {
        return super::shutting_down();
    }
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "status": "ready" })),
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
