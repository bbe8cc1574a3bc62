//! Server-wide counters, readable at `GET /stats`.
//!
//! Plain relaxed atomics: hot paths add once per read, per write batch or per
//! publish (a fan-out adds its recipient count in one step), never per
//! recipient and never under a lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Counters shared by the whole server.
#[derive(Debug, Default)]
pub struct Stats {
    /// Open WebSocket connections (both endpoints).
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Data messages received from clients.
    pub messages_in: AtomicU64,
    /// Frames written to clients (deliveries, replies, control frames).
    pub messages_out: AtomicU64,
    /// Bytes read from WebSocket clients.
    pub bytes_in: AtomicU64,
    /// Bytes written to WebSocket clients.
    pub bytes_out: AtomicU64,
    /// Publications fanned out to a group, a connection or everyone.
    pub broadcasts: AtomicU64,
    /// Frames queued for delivery by fan-out (one per recipient).
    pub deliveries: AtomicU64,
    /// Deliveries skipped because a queue was full (`drop` policy).
    pub dropped: AtomicU64,
    /// Connections closed because their queue was full (`disconnect` policy).
    pub slow_consumer_disconnects: AtomicU64,
}

/// A point-in-time copy of [`Stats`] plus the group count, as served in JSON.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// Open connections.
    pub connections: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Groups with at least one member.
    pub groups: u64,
    /// Data messages received.
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

impl Stats {
    /// Add `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Copy every counter.
    pub fn snapshot(&self, groups: u64) -> Snapshot {
        Snapshot {
            connections: self.connections.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            groups,
            messages_in: self.messages_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            broadcasts: self.broadcasts.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            slow_consumer_disconnects: self.slow_consumer_disconnects.load(Relaxed),
        }
    }
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
