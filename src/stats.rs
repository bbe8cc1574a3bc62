//! Server-wide counters, readable at `GET /stats`.
//!
//! [`Stats`] is [`Metrics`](crate::metrics::Metrics) under the name the
//! rest of the server knows it by: one set of relaxed atomics feeds both
//! `/stats` and `/metrics`, so the two always agree. Hot paths add once per
//! read, per write batch or per publication (a fan-out adds its recipient
//! count in one step), never per recipient and never under a lock.

use serde::Serialize;

/// Counters shared by the whole server: the Prometheus metrics, whose
/// [`snapshot`](crate::metrics::Metrics::snapshot) is the `/stats` view.
pub type Stats = crate::metrics::Metrics;

/// A point-in-time copy of the [`Stats`] counters plus the group count, as
/// served in JSON.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
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
    /// Connections closed by the `disconnect` policy.
    pub slow_consumer_disconnects: u64,
}

impl Snapshot {
    /// The seed's one-line format.
    pub fn line(&self) -> String {
        format!(
            "Connections: {} | Messages: {}/{} | Broadcasts: {}",
            self.connections, self.messages_in, self.messages_out, self.broadcasts
        )
    }
}
