//! `GET /stats`: the main counters in one line (the seed's format) or, with
//! `?format=json` or `Accept: application/json`, as a JSON [`Snapshot`].
//! A view of [`crate::metrics::Metrics`]: it reads the same atomics as
//! `/metrics`, so the two always agree.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::node::Node;

/// A point-in-time copy of the main counters, as served in JSON.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// Open connections.
    pub connections: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Groups with at least one member.
    pub groups: u64,
    /// Messages received: WebSocket data messages and HTTP API publishes.
    pub messages_in: u64,
    /// Frames sent.
    pub messages_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Publications fanned out.
    pub broadcasts: u64,
    /// Deliveries queued by fan-out.
    pub deliveries: u64,
    /// Deliveries dropped by the `drop` policy.
    pub dropped: u64,
    /// Connections closed as slow consumers: by the `disconnect` policy,
    /// or by the write timeout.
    pub slow_consumer_disconnects: u64,
}

impl Snapshot {
    /// The counters of `node` now.
    pub fn of(node: &Node) -> Self {
        let m = &node.metrics;
        Self {
            connections: m.connections(),
            connections_total: m.connections_total(),
            groups: node.hub.group_count(),
            messages_in: m.messages_received(),
            messages_out: m.frames_sent(),
            bytes_in: m.bytes_received(),
            bytes_out: m.bytes_sent(),
            broadcasts: m.fanouts(),
            deliveries: m.deliveries(),
            dropped: m.dropped(),
            slow_consumer_disconnects: m.slow_consumer_disconnects(),
        }
    }

    /// The seed's one-line format.
    pub fn line(&self) -> String {
        format!(
            "Connections: {} | Messages: {}/{} | Broadcasts: {}",
            self.connections, self.messages_in, self.messages_out, self.broadcasts
        )
    }
}

/// The JSON of `/stats`: the node's name, then the counters.
#[derive(Serialize)]
struct Named<'a> {
    node: &'a str,
    /// `memory`, `redis` or `nats`.
    broker: &'static str,
    broker_up: bool,
    #[serde(flatten)]
    snapshot: Snapshot,
}

/// `GET /stats`.
pub async fn stats(State(node): State<Arc<Node>>, headers: HeaderMap, req: Request) -> Response {
    let snap = Snapshot::of(&node);
    let wants_json = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "format=json"))
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        let status = node.broker.status();
        axum::Json(Named {
            node: &node.name,
            broker: status.kind,
            broker_up: status.up,
            snapshot: snap,
        })
        .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            snap.line() + "\n",
        )
            .into_response()
    }
}
