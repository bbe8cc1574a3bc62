//! Server metrics: lock-free recording, and their encoding in the
//! Prometheus text format (served at `GET /metrics` by
//! [`crate::http`]).
//!
//! # Why it is shaped this way
//!
//! These counters are bumped on the hottest paths of the server: every read
//! from a socket, every write batch, every publication. prometheus-client's
//! labelled [`Family::get_or_create`] takes a read-write lock on every call,
//! and its `Histogram::observe` takes a mutex. Neither may run per message,
//! so:
//!
//! - Every label combination is created once, in [`Metrics::new`], and its
//!   `Counter` handle (an `Arc` around one atomic) is kept in an array indexed
//!   by the label enums ([`Source`], [`Protocol`], [`Disconnect`],
//!   [`ErrorCode`]). Recording is a relaxed `fetch_add` through that handle;
//!   a family's lock is taken only when a scrape encodes it.
//! - Histograms are our own [`AtomicHistogram`]: fixed buckets of `AtomicU64`
//!   and an integer sum, two relaxed adds per observation, encoded through
//!   prometheus-client's [`EncodeMetric`] like any other metric.
//! - Callers add in bulk: a fan-out adds its recipient count once per
//!   publication (never per recipient), a write adds once per vectored write.
//!
//! [`Metrics`] is also the one source of truth behind `/stats`: its
//! getters read the same atomics, so `/stats` and `/metrics` always agree.
//! This module only records and reads; it knows nothing of the layers that
//! call it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::disconnect::Disconnect;
use crate::limits::Refusal;
use crate::protocol::ErrorCode;

/// Where a message entered the server (label `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A WebSocket client (`/ws` or `/echo`).
    Ws,
    /// The HTTP publish API.
    Api,
}

impl Source {
    /// Every value, in index order.
    pub const ALL: [Self; 2] = [Self::Ws, Self::Api];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Api => "api",
        }
    }
}

/// How a message is encoded (label `protocol`): JSON text or binary.
/// On `/echo`, any text message counts as `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A text message (JSON requests and frames).
    Json,
    /// A binary message.
    Binary,
}

impl Protocol {
    /// Every value, in index order.
    pub const ALL: [Self; 2] = [Self::Json, Self::Binary];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Binary => "binary",
        }
    }

    /// The protocol and payload length of a whole, unmasked server frame,
    /// or `None` for a control frame.
    pub fn of_frame(frame: &[u8]) -> Option<(Self, usize)> {
        let protocol = match frame.first()? & 0x0F {
            0x1 => Self::Json,
            0x2 => Self::Binary,
            _ => return None,
        };
        let header = match frame.get(1)? & 0x7F {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        Some((protocol, frame.len().saturating_sub(header)))
    }
}

/// Every error code, in index order (see [`error_index`]).
const ERROR_CODES: [ErrorCode; 11] = [
    ErrorCode::BadRequest,
    ErrorCode::InvalidGroup,
    ErrorCode::TooManyGroups,
    ErrorCode::UnknownConnection,
    ErrorCode::Internal,
    ErrorCode::RateLimited,
    ErrorCode::NotAllowed,
    ErrorCode::InvalidToken,
    ErrorCode::BrokerUnavailable,
    ErrorCode::NoHistory,
    ErrorCode::NoPresence,
];

/// Position of `code` in [`ERROR_CODES`]. Exhaustive, so a new code does not
/// compile until it has a counter.
fn error_index(code: ErrorCode) -> usize {
    match code {
        ErrorCode::BadRequest => 0,
        ErrorCode::InvalidGroup => 1,
        ErrorCode::TooManyGroups => 2,
        ErrorCode::UnknownConnection => 3,
        ErrorCode::Internal => 4,
        ErrorCode::RateLimited => 5,
        ErrorCode::NotAllowed => 6,
        ErrorCode::InvalidToken => 7,
        ErrorCode::BrokerUnavailable => 8,
        ErrorCode::NoHistory => 9,
        ErrorCode::NoPresence => 10,
    }
}

/// Upper bounds of the fan-out duration histogram, in seconds.
const FANOUT_SECONDS: [f64; 16] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
];

/// Upper bounds of the outbox depth histogram, in frames.
const OUTBOX_FRAMES: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// A histogram that records without a lock: fixed buckets of `AtomicU64`
/// and an integer sum. An observation is two relaxed adds (its bucket and
/// the sum); the count is the sum of the buckets, so `_count` always equals
/// the `+Inf` bucket. Cloning shares the histogram.
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds as exposed (`le`), ascending.
    bounds: Box<[f64]>,
    /// The same bounds in recorded units.
    limits: Box<[u64]>,
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    /// Sum of observations, in recorded units.
    sum: AtomicU64,
    /// Recorded units per exposed unit (1e9 for nanoseconds as seconds).
    scale: f64,
}

impl AtomicHistogram {
    /// A histogram with upper bounds `bounds` (ascending, in the exposed
    /// unit) over integer observations in units of `1 / scale` of it.
    pub fn new(bounds: &[f64], scale: f64) -> Self {
        assert!(bounds.is_sorted(), "histogram bounds must ascend");
        Self {
            inner: Arc::new(HistogramInner {
                bounds: bounds.into(),
                limits: bounds.iter().map(|b| (b * scale).round() as u64).collect(),
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0),
                scale,
            }),
        }
    }

    /// Record one observation of `v` recorded units.
    #[inline]
    pub fn observe(&self, v: u64) {
        let h = &*self.inner;
        let i = h.limits.partition_point(|&limit| limit < v);
        h.buckets[i].fetch_add(1, Relaxed);
        h.sum.fetch_add(v, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Sum of the observations, in the exposed unit.
    pub fn sum(&self) -> f64 {
        self.inner.sum.load(Relaxed) as f64 / self.inner.scale
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &*self.inner;
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(h.buckets.iter().map(|b| b.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|&(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(
            self.sum(),
            count,
            &buckets,
            None::<&std::collections::HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// What one write put on a socket, added to the counters in one step.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    /// Bytes written, frame headers included.
    pub bytes: u64,
    /// Frames completed (data and control).
    pub frames: u64,
    /// Data frames completed, by [`Protocol`] index.
    messages: [u64; 2],
    /// Their payload bytes, by [`Protocol`] index.
    payload: [u64; 2],
}

impl Written {
    /// A write of `bytes` bytes; frames are added with [`Written::frame`].
    pub fn new(bytes: usize) -> Self {
        Self {
            bytes: bytes as u64,
            ..Self::default()
        }
    }

    /// Account one completed frame, as classified by [`Protocol::of_frame`].
    #[inline]
    pub fn frame(&mut self, kind: Option<(Protocol, usize)>) {
        self.frames += 1;
        if let Some((p, len)) = kind {
            self.messages[p as usize] += 1;
            self.payload[p as usize] += len as u64;
        }
    }
}

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Every metric of the server, with the registry that encodes them.
/// Recording methods take no lock (see the module docs).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    groups: Gauge,
    memberships: Gauge,
    opened: Counter,
    /// By [`Disconnect::index`].
    closed: [Counter; Disconnect::LABELS.len()],
    /// By [`Source`], then [`Protocol`] index.
    messages_in: [[Counter; 2]; 2],
    payload_in: [[Counter; 2]; 2],
    /// By [`Protocol`] index.
    messages_out: [Counter; 2],
    payload_out: [Counter; 2],
    socket_bytes_in: Counter,
    socket_bytes_out: Counter,
    socket_frames_out: Counter,
    fanouts: Counter,
    deliveries: Counter,
    dropped: Counter,
    slow_consumer_disconnects: Counter,
    /// By [`Refusal::index`].
    refused: [Counter; Refusal::ALL.len()],
    /// By [`error_index`].
    errors: [Counter; ERROR_CODES.len()],
    fanout_seconds: AtomicHistogram,
    outbox_depth: AtomicHistogram,
    compressions: Counter,
    compression_input: Counter,
    compression_output: Counter,
    inflated_messages: Counter,
    broker_up: Gauge,
    broker_reconnects: Counter,
    broker_published: Counter,
    broker_publish_failures: Counter,
    broker_received: Counter,
    broker_undecodable: Counter,
    gaps: Counter,
    history_bytes: Gauge,
    history_streams: Gauge,
    history_appended: Counter,
    history_evictions: Counter,
    recoveries: Counter,
    recovery_failures: Counter,
    gaps_recovered: Counter,
    /// `joined`, `left` events sent.
    presence_events: [Counter; 2],
    presence_reaped: Counter,
    presence_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric and create every label combination.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("roomcast");
        let r = &mut registry;

        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let family1 = |r: &mut Registry, name: &str, help: &str| {
            let f = Family::<Labels1, Counter>::default();
            r.register(name, help, f.clone());
            f
        };
        let family2 = |r: &mut Registry, name: &str, help: &str| {
            let f = Family::<Labels2, Counter>::default();
            r.register(name, help, f.clone());
            f
        };
        let by_source_protocol = |f: &Family<Labels2, Counter>| {
            Source::ALL.map(|s| {
                Protocol::ALL
                    .map(|p| f.get_or_create_owned(&[("source", s.as_str()), ("protocol", p.as_str())]))
            })
        };
        let by_protocol = |f: &Family<Labels1, Counter>| {
            Protocol::ALL.map(|p| f.get_or_create_owned(&[("protocol", p.as_str())]))
        };

        let connections = gauge(r, "connections", "WebSocket connections open now (/ws and /echo)");
        let groups = gauge(r, "groups", "Groups with at least one member");
        let memberships = gauge(
            r,
            "group_memberships",
            "Group memberships: (connection, group) pairs",
        );
        let opened = counter(
            r,
            "connections_opened",
            "WebSocket connections accepted since start",
        );
        let closed = family1(r, "connections_closed", "WebSocket connections ended, by reason");
        let closed = Disconnect::LABELS.map(|c| closed.get_or_create_owned(&[("reason", c)]));
        let messages_in = family2(
            r,
            "messages_received",
            "Messages received: WebSocket data messages and HTTP API publishes",
        );
        let messages_in = by_source_protocol(&messages_in);
        let payload_in = family2(
            r,
            "received_payload_bytes",
            "Payload bytes of the messages received, without WebSocket framing",
        );
        let payload_in = by_source_protocol(&payload_in);
        let messages_out = family1(
            r,
            "messages_sent",
            "Data frames written to WebSocket clients: deliveries, replies, echoes",
        );
        let messages_out = by_protocol(&messages_out);
        let payload_out = family1(
            r,
            "sent_payload_bytes",
            "Payload bytes of the data frames written, without WebSocket framing",
        );
        let payload_out = by_protocol(&payload_out);
        let socket_bytes_in = counter(
            r,
            "websocket_received_bytes",
            "Bytes read from WebSocket connections, framing included",
        );
        let socket_bytes_out = counter(
            r,
            "websocket_sent_bytes",
            "Bytes written to WebSocket connections, framing included",
        );
        let socket_frames_out = counter(
            r,
            "websocket_sent_frames",
            "Frames written to WebSocket clients, data and control",
        );
        let fanouts = counter(
            r,
            "fanouts",
            "Publications fanned out to a group, one connection or everyone",
        );
        let deliveries = counter(
            r,
            "fanout_deliveries",
            "Frames queued by fan-out, one per recipient",
        );
        let dropped = counter(
            r,
            "slow_consumer_dropped",
            "Deliveries dropped because the recipient's queue was full (drop policy)",
        );
        let slow_consumer_disconnects = counter(
            r,
            "slow_consumer_disconnects",
            "Connections closed as slow consumers: their queue was full (disconnect policy), \
             or their backlog made no write progress for the write timeout",
        );
        let refused = family1(
            r,
            "connections_refused",
            "WebSocket upgrades refused by the admission limits, by reason",
        );
        let refused = Refusal::ALL.map(|x| refused.get_or_create_owned(&[("reason", x.as_str())]));
        let errors = family1(r, "errors_sent", "Error replies sent to clients, by code");
        let errors = ERROR_CODES.map(|c| errors.get_or_create_owned(&[("code", c.as_str())]));
        let fanout_seconds = AtomicHistogram::new(&FANOUT_SECONDS, 1e9);
        r.register(
            "fanout_duration_seconds",
            "Time one publication spent queueing into all its local recipients",
            fanout_seconds.clone(),
        );
        let compressions = counter(
            r,
            "compressions",
            "permessage-deflate compression runs: one per message and window size, \
             however many recipients share the compressed frame",
        );
        let compression_input = counter(
            r,
            "compression_input_bytes",
            "Payload bytes given to the permessage-deflate compressor",
        );
        let compression_output = counter(
            r,
            "compression_output_bytes",
            "Payload bytes that came out of those runs (the input again when \
             compressing did not make it smaller and the message went plain)",
        );
        let inflated_messages = counter(
            r,
            "inflated_messages",
            "Compressed (permessage-deflate) messages received from clients and inflated",
        );
        let broker_up = gauge(
            r,
            "broker_up",
            "1 while this node's broker takes publications and holds its subscriptions \
             (always 1 with the in-memory broker), 0 while it is down",
        );
        broker_up.set(1);
        let broker_reconnects = counter(
            r,
            "broker_reconnects",
            "Broker connections re-established after a loss (each followed by gaps)",
        );
        let broker_published = counter(
            r,
            "broker_published",
            "Messages this node handed to a cluster broker and the broker took",
        );
        let broker_publish_failures = counter(
            r,
            "broker_publish_failures",
            "Publications refused because the broker was down, did not answer, or \
             its queue on this node was full (each answered with an error)",
        );
        let broker_received = counter(
            r,
            "broker_received",
            "Messages this node received from a cluster broker",
        );
        let broker_undecodable = counter(
            r,
            "broker_undecodable",
            "Messages from the broker that were not roomcast envelopes, or too large (ignored)",
        );
        let gaps = counter(
            r,
            "gaps",
            "gap messages sent to members: their group's subscription was interrupted",
        );
        let history_bytes = gauge(
            r,
            "history_bytes",
            "Bytes of history kept in this process (memory broker: payloads and bookkeeping)",
        );
        let history_streams = gauge(
            r,
            "history_streams",
            "Groups whose history (or at least its position) this process keeps (memory broker)",
        );
        let history_appended = counter(
            r,
            "history_appended",
            "Publications this node appended to a group's history",
        );
        let history_evictions = counter(
            r,
            "history_evictions",
            "Groups whose whole history was dropped to stay under --history-memory \
             (their epoch changes)",
        );
        let gaps_recovered = counter(
            r,
            "gaps_recovered",
            "Members of groups with history that missed publications while this node's \
             broker connection was down and got them from history instead of a gap",
        );
        let recoveries = counter(
            r,
            "recoveries",
            "Joins with recover that got every missed publication",
        );
        let recovery_failures = counter(
            r,
            "recovery_failures",
            "Joins with recover that could not get what they missed (other epoch, \
             publications no longer kept): answered recovered:false",
        );
        let presence_events = family1(
            r,
            "presence_events",
            "joined and left events this node sent to a group's members, by kind",
        );
        let presence_events = ["joined", "left"].map(|k| presence_events.get_or_create_owned(&[("kind", k)]));
        let presence_reaped = counter(
            r,
            "presence_reaped",
            "Members of dead nodes this node removed from presence",
        );
        let presence_failures = counter(
            r,
            "presence_failures",
            "Presence reads and writes that failed (the store was down or did not answer)",
        );
        let outbox_depth = AtomicHistogram::new(&OUTBOX_FRAMES, 1.0);
        r.register(
            "outbox_depth_frames",
            "Frames in a connection's outbound queue when its writer takes a batch",
            outbox_depth.clone(),
        );

        Self {
            registry,
            connections,
            groups,
            memberships,
            opened,
            closed,
            messages_in,
            payload_in,
            messages_out,
            payload_out,
            socket_bytes_in,
            socket_bytes_out,
            socket_frames_out,
            fanouts,
            deliveries,
            dropped,
            slow_consumer_disconnects,
            refused,
            errors,
            fanout_seconds,
            outbox_depth,
            compressions,
            compression_input,
            compression_output,
            inflated_messages,
            broker_up,
            broker_reconnects,
            broker_published,
            broker_publish_failures,
            broker_received,
            broker_undecodable,
            gaps,
            history_bytes,
            history_streams,
            history_appended,
            history_evictions,
            recoveries,
            recovery_failures,
            gaps_recovered,
            presence_events,
            presence_reaped,
            presence_failures,
        }
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// A WebSocket connection was accepted.
    pub fn connection_opened(&self) {
        self.connections.inc();
        self.opened.inc();
    }

    /// A WebSocket connection ended for `reason`.
    pub fn connection_closed(&self, reason: &Disconnect) {
        self.connections.dec();
        self.closed[reason.index()].inc();
    }

    /// A group got its first member.
    pub fn group_created(&self) {
        self.groups.inc();
    }

    /// A group lost its last member.
    pub fn group_removed(&self) {
        self.groups.dec();
    }

    /// A connection joined a group it was not in.
    pub fn member_added(&self) {
        self.memberships.inc();
    }

    /// A connection left a group it was in.
    pub fn member_removed(&self) {
        self.memberships.dec();
    }

    /// Open connections now.
    pub fn connections(&self) -> u64 {
        self.connections.get().max(0) as u64
    }

    /// Groups with members now.
    pub fn groups(&self) -> u64 {
        self.groups.get().max(0) as u64
    }

    /// Group memberships now.
    pub fn memberships(&self) -> u64 {
        self.memberships.get().max(0) as u64
    }

    /// A message of `bytes` payload bytes arrived from `source`: a WebSocket
    /// data message, or a publish through the HTTP API.
    #[inline]
    pub fn record_message_in(&self, source: Source, protocol: Protocol, bytes: usize) {
        self.messages_in[source as usize][protocol as usize].inc();
        self.payload_in[source as usize][protocol as usize].inc_by(bytes as u64);
    }

    /// A publish of `bytes` bytes arrived through the HTTP API; `binary`
    /// for a binary payload. Shorthand for [`Metrics::record_message_in`]
    /// with [`Source::Api`].
    #[inline]
    pub fn api_publishes(&self, binary: bool, bytes: usize) {
        let protocol = if binary { Protocol::Binary } else { Protocol::Json };
        self.record_message_in(Source::Api, protocol, bytes);
    }

    /// `bytes` were read from a WebSocket connection.
    #[inline]
    pub fn record_socket_read(&self, bytes: usize) {
        self.socket_bytes_in.inc_by(bytes as u64);
    }

    /// One write to a WebSocket connection finished `w`.
    #[inline]
    pub fn record_written(&self, w: &Written) {
        self.socket_bytes_out.inc_by(w.bytes);
        if w.frames > 0 {
            self.socket_frames_out.inc_by(w.frames);
        }
        for p in Protocol::ALL {
            let i = p as usize;
            if w.messages[i] > 0 {
                self.messages_out[i].inc_by(w.messages[i]);
                self.payload_out[i].inc_by(w.payload[i]);
            }
        }
    }

    /// One publication was fanned out, taking `elapsed`: `delivered`
    /// frames queued, `dropped` skipped under the `drop` policy,
    /// `disconnected` members told to close under the `disconnect` policy.
    #[inline]
    pub fn record_fanout(&self, delivered: usize, dropped: usize, disconnected: usize, elapsed: Duration) {
        self.fanouts.inc();
        if delivered > 0 {
            self.deliveries.inc_by(delivered as u64);
        }
        if dropped > 0 {
            self.dropped.inc_by(dropped as u64);
        }
        if disconnected > 0 {
            self.slow_consumer_disconnects.inc_by(disconnected as u64);
        }
        self.fanout_seconds
            .observe(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// A connection is closed because its backlog made no write progress
    /// for the write timeout (a slow consumer, whatever the policy).
    pub fn record_write_stalled(&self) {
        self.slow_consumer_disconnects.inc();
    }

    /// One compression run took `input` payload bytes and gave `output`
    /// (the frame sent; `input` when compressing did not help).
    pub fn record_compression(&self, input: usize, output: usize) {
        self.compressions.inc();
        self.compression_input.inc_by(input as u64);
        self.compression_output.inc_by(output as u64);
    }

    /// `n` compressed client messages were inflated.
    pub fn record_inflated(&self, n: u64) {
        self.inflated_messages.inc_by(n);
    }

    /// Compression runs so far.
    pub fn compressions(&self) -> u64 {
        self.compressions.get()
    }

    /// Compressed client messages inflated so far.
    pub fn inflated_messages(&self) -> u64 {
        self.inflated_messages.get()
    }

    /// The broker went up (`true`) or down.
    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.set(i64::from(up));
    }

    /// Whether the broker is up, as last set.
    pub fn broker_up(&self) -> bool {
        self.broker_up.get() != 0
    }

    /// A lost broker connection was re-established.
    pub fn record_broker_reconnect(&self) {
        self.broker_reconnects.inc();
    }

    /// Broker connections re-established so far.
    pub fn broker_reconnects(&self) -> u64 {
        self.broker_reconnects.get()
    }

    /// The broker took `n` messages.
    pub fn record_broker_published(&self, n: usize) {
        self.broker_published.inc_by(n as u64);
    }

    /// `n` publications were refused for want of a broker.
    pub fn record_broker_publish_failures(&self, n: usize) {
        self.broker_publish_failures.inc_by(n as u64);
    }

    /// A message arrived from the broker; `decoded` tells whether it was one.
    pub fn record_broker_received(&self, decoded: bool) {
        self.broker_received.inc();
        if !decoded {
            self.broker_undecodable.inc();
        }
    }

    /// Bytes of history kept now.
    pub fn set_history_bytes(&self, bytes: usize) {
        self.history_bytes.set(bytes as i64);
    }

    /// Bytes of history kept, as last set.
    pub fn history_bytes(&self) -> u64 {
        self.history_bytes.get().max(0) as u64
    }

    /// A group's history stream was created.
    pub fn history_stream_created(&self) {
        self.history_streams.inc();
    }

    /// A group's history stream was removed.
    pub fn history_stream_removed(&self) {
        self.history_streams.dec();
    }

    /// A stream was dropped to bound memory.
    pub fn history_stream_evicted(&self) {
        self.history_evictions.inc();
    }

    /// A publication was appended to history.
    pub fn history_appended(&self) {
        self.history_appended.inc();
    }

    /// A `joined` (`true`) or `left` event sent.
    pub fn record_presence_event(&self, joined: bool) {
        self.presence_events[usize::from(!joined)].inc();
    }

    /// `n` members of dead nodes removed from presence.
    pub fn record_presence_reaped(&self, n: usize) {
        self.presence_reaped.inc_by(n as u64);
    }

    /// A presence read or write failed.
    pub fn record_presence_failure(&self) {
        self.presence_failures.inc();
    }

    /// `n` members caught up from history after a broker outage.
    pub fn record_gaps_recovered(&self, n: usize) {
        self.gaps_recovered.inc_by(n as u64);
    }

    /// A recovering join: `recovered` or not.
    pub fn record_recovery(&self, recovered: bool) {
        if recovered {
            self.recoveries.inc();
        } else {
            self.recovery_failures.inc();
        }
    }

    /// `n` gap messages were queued for members.
    pub fn record_gaps(&self, n: usize) {
        self.gaps.inc_by(n as u64);
    }

    /// Gap messages sent so far.
    pub fn gaps(&self) -> u64 {
        self.gaps.get()
    }

    /// An upgrade was refused by the admission limits.
    pub fn record_refused(&self, refusal: Refusal) {
        self.refused[refusal.index()].inc();
    }

    /// An `error` frame with `code` was sent to a client.
    #[inline]
    pub fn record_error_sent(&self, code: ErrorCode) {
        self.errors[error_index(code)].inc();
    }

    /// A connection's writer found `frames` frames queued when it took a batch.
    #[inline]
    pub fn observe_outbox_depth(&self, frames: usize) {
        self.outbox_depth.observe(frames as u64);
    }

    /// The fan-out duration histogram.
    pub fn fanout_seconds(&self) -> &AtomicHistogram {
        &self.fanout_seconds
    }

    /// The outbox depth histogram.
    pub fn outbox_depth(&self) -> &AtomicHistogram {
        &self.outbox_depth
    }

    /// Connections accepted since start.
    pub fn connections_total(&self) -> u64 {
        self.opened.get()
    }

    /// Messages received (WebSocket data messages and HTTP API publishes).
    pub fn messages_received(&self) -> u64 {
        self.messages_in.iter().flatten().map(Counter::get).sum()
    }

    /// Frames written to clients, data and control.
    pub fn frames_sent(&self) -> u64 {
        self.socket_frames_out.get()
    }

    /// Bytes read from WebSocket connections.
    pub fn bytes_received(&self) -> u64 {
        self.socket_bytes_in.get()
    }

    /// Bytes written to WebSocket connections.
    pub fn bytes_sent(&self) -> u64 {
        self.socket_bytes_out.get()
    }

    /// Publications fanned out.
    pub fn fanouts(&self) -> u64 {
        self.fanouts.get()
    }

    /// Deliveries queued by fan-out.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.get()
    }

    /// Deliveries dropped by the `drop` policy.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Connections closed by the `disconnect` policy.
    pub fn slow_consumer_disconnects(&self) -> u64 {
        self.slow_consumer_disconnects.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_indexes_match_their_lists() {
        for (i, c) in ERROR_CODES.iter().enumerate() {
            assert_eq!(error_index(*c), i);
        }
        for (i, p) in Protocol::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i);
        }
        for (i, s) in Source::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
    }

    #[test]
    fn histogram_buckets_are_inclusive_and_count_is_their_sum() {
        let h = AtomicHistogram::new(&[1.0, 10.0], 1.0);
        for v in [0, 1, 2, 10, 11, 1000] {
            h.observe(v);
        }
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum(), 1024.0);
        let m = Metrics::new();
        m.outbox_depth.observe(3);
        let text = m.encode();
        assert!(
            text.contains("roomcast_outbox_depth_frames_bucket{le=\"2\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("roomcast_outbox_depth_frames_bucket{le=\"4\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("roomcast_outbox_depth_frames_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("roomcast_outbox_depth_frames_count 1\n"), "{text}");
        assert!(text.contains("roomcast_outbox_depth_frames_sum 3"), "{text}");
    }

    #[test]
    fn nanoseconds_are_exposed_as_seconds() {
        let m = Metrics::new();
        m.record_fanout(0, 0, 0, Duration::from_micros(3));
        assert_eq!(m.fanout_seconds.count(), 1);
        assert!((m.fanout_seconds.sum() - 3e-6).abs() < 1e-12);
        let text = m.encode();
        assert!(
            text.contains("roomcast_fanout_duration_seconds_count 1\n"),
            "{text}"
        );
        assert!(text.contains("roomcast_fanouts_total 1\n"), "{text}");
    }

    #[test]
    fn every_label_combination_is_exposed_from_the_start() {
        let text = Metrics::new().encode();
        for r in Disconnect::LABELS {
            let line = format!("roomcast_connections_closed_total{{reason=\"{r}\"}} 0\n");
            assert!(text.contains(&line), "{line} in {text}");
        }
        for c in ERROR_CODES {
            let line = format!("roomcast_errors_sent_total{{code=\"{}\"}} 0\n", c.as_str());
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(text.contains("roomcast_messages_received_total{source=\"api\",protocol=\"binary\"} 0\n"));
    }

    #[test]
    fn frames_are_classified_by_opcode_and_payload_length() {
        assert_eq!(
            Protocol::of_frame(&[0x81, 2, b'{', b'}']),
            Some((Protocol::Json, 2))
        );
        let mut big = vec![0x82, 126, 1, 0];
        big.resize(4 + 256, 0);
        assert_eq!(Protocol::of_frame(&big), Some((Protocol::Binary, 256)));
        assert_eq!(Protocol::of_frame(&[0x89, 0]), None);
        let mut w = Written::default();
        w.frame(Protocol::of_frame(&big));
        w.frame(None);
        assert_eq!((w.frames, w.messages, w.payload), (2, [0, 1], [0, 256]));
    }
}
