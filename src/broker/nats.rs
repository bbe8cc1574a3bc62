//! The NATS transport: core NATS subjects, on the maintained `async-nats`
//! crate.
//!
//! One client connection per node carries publications, subscriptions and
//! what arrives on them. A group's subject is `roomcast.g.` and its name in
//! unpadded base64url: NATS subjects split on `.`, treat `*` and `>` as
//! wildcards and may not hold spaces, while group names may contain all of
//! them (and any other non-control character); base64url's alphabet is
//! none of those, and distinct names give distinct subjects. A node's own
//! subject is `roomcast.node.NAME` (node names are letters, digits, `_`,
//! `-` and single dots), the broadcast subject `roomcast.all`.
//!
//! Core NATS confirms nothing, but one server processes one connection's
//! messages in order: after a batch of publications (or a subscription)
//! the link publishes a probe on a subject of its own and waits for it to
//! come back, which proves the server has processed everything before it.
//!
//! History (groups whose rule keeps it) lives in JetStream: one stream per
//! distinct `history_size`/`history_ttl` pair, `ROOMCAST_H_<key>` with
//! subjects `roomcast.h.<key>.<base64url name>`, `max_msgs_per_subject` the
//! size and `max_age` the TTL. A publication to such a group is a JetStream
//! publish, acknowledged once stored; the stream *republishes* each stored
//! message to `roomcast.r.<key>.<base64url name>` with its stream sequence
//! in a header, in sequence order, and nodes subscribe to that subject
//! (plain core NATS) for the group's live traffic. So offsets (the stream
//! sequence: increasing per group, not consecutive, since groups share a
//! stream), order of delivery and history agree, as with Redis's script.
//! The epoch is the stream's creation time: a stream deleted and created
//! again starts a new one. History reads use direct gets (`allow_direct`).
//!
//! async-nats reconnects by itself; roomcast does that in its own loop
//! instead (it must know, to resubscribe and send gaps), so any
//! disconnection, and a slow-consumer event (the client dropped
//! messages), ends the link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event, ServerAddr, Subscriber};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::SelectAll;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::BoxFuture;
use super::cluster::{Answers, CONNECT_TIMEOUT, Channel, Link, Message, OnMessage, RawPage, Transport};
use crate::groups::{Features, GroupRules};

/// Connects to a NATS server or cluster.
pub struct NatsTransport {
    servers: Vec<ServerAddr>,
    credentials: Credentials,
    node: Arc<str>,
    rules: Arc<GroupRules>,
}

#[derive(Clone)]
enum Credentials {
    None,
    UserPassword(String, String),
    Token(String),
}

impl NatsTransport {
    /// A transport for `url`: `nats://[user:password@|token@]host:port`,
    /// or several such URLs separated by commas (one NATS cluster; the
    /// credentials of the first that has some apply).
    pub fn new(url: &str, node: Arc<str>, rules: Arc<GroupRules>) -> Result<Self, String> {
        let mut servers = Vec::new();
        let mut credentials = Credentials::None;
        for part in url.split(',').map(str::trim) {
            let parsed = url::Url::parse(part).map_err(|e| format!("'{part}': {e}"))?;
            if !matches!(parsed.scheme(), "nats" | "tls") {
                return Err(format!("'{part}': the scheme must be nats:// or tls://"));
            }
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(format!("'{part}': no host"));
            }
            let decode = |s: &str| {
                percent_decode(s).ok_or_else(|| format!("'{part}': bad percent-encoding in the credentials"))
            };
            if matches!(credentials, Credentials::None) && !parsed.username().is_empty() {
                let user = decode(parsed.username())?;
                credentials = match parsed.password() {
                    Some(p) => Credentials::UserPassword(user, decode(p)?),
                    None => Credentials::Token(user),
                };
            }
            let mut bare = parsed.clone();
            let _ = bare.set_username("");
            let _ = bare.set_password(None);
            let addr: ServerAddr = bare.as_str().parse().map_err(|e| format!("'{part}': {e}"))?;
            servers.push(addr);
        }
        if servers.is_empty() {
            return Err("no server".into());
        }
        Ok(Self {
            servers,
            credentials,
            node,
            rules,
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A group name as one subject token.
fn token(group: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(group.as_bytes())
}

/// The subject of `c`: for a group with history, where its stream
/// republishes what it stored.
pub fn subject(c: &Channel, rules: &GroupRules) -> String {
    match c {
        Channel::Group(g) => {
            let f = rules.features(g);
            if f.history() {
                format!("roomcast.r.{}.{}", stream_key(&f), token(g))
            } else {
                format!("roomcast.g.{}", token(g))
            }
        }
        Channel::Node(n) => format!("roomcast.node.{n}"),
        Channel::All => "roomcast.all".into(),
    }
}

/// Names a history stream by how it keeps: the same on every node, and
/// different for a different size or TTL (FNV-1a, 8 hex digits).
pub fn stream_key(f: &Features) -> String {
    let text = format!("{}/{}", f.history_size, f.history_ttl.as_millis());
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// The subject a publication to `group` (kept as `f`) is stored under.
fn history_subject(group: &str, f: &Features) -> String {
    format!("roomcast.h.{}.{}", stream_key(f), token(group))
}

/// The JetStream stream for groups kept as `f`.
fn stream_config(f: &Features) -> stream::Config {
    let key = stream_key(f);
    stream::Config {
        name: format!("ROOMCAST_H_{key}"),
        subjects: vec![format!("roomcast.h.{key}.>")],
        max_messages_per_subject: i64::try_from(f.history_size).unwrap_or(i64::MAX),
        max_age: f.history_ttl,
        allow_direct: true,
        republish: Some(stream::Republish {
            source: format!("roomcast.h.{key}.>"),
            destination: format!("roomcast.r.{key}.>"),
            headers_only: false,
        }),
        ..Default::default()
    }
}

impl Transport for NatsTransport {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn keeps_history(&self) -> bool {
        true
    }

    fn connect(
        &self,
        on_message: OnMessage,
        lost: CancellationToken,
    ) -> BoxFuture<'_, Result<Arc<dyn Link>, String>> {
        Box::pin(async move {
            let on_event = lost.clone();
            let mut options = ConnectOptions::new()
                .connection_timeout(CONNECT_TIMEOUT)
                .max_reconnects(Some(1))
                .subscription_capacity(1 << 16)
                .event_callback(move |event| {
                    let lost = on_event.clone();
                    async move {
                        if matches!(
                            event,
                            Event::Disconnected | Event::Closed | Event::SlowConsumer(_)
                        ) {
                            lost.cancel();
                        }
                    }
                });
            options = match self.credentials.clone() {
                Credentials::None => options,
                Credentials::UserPassword(u, p) => options.user_and_password(u, p),
                Credentials::Token(t) => options.token(t),
            };
            let client = options
                .connect(self.servers.clone())
                .await
                .map_err(|e| e.to_string())?;
            let probe_subject = format!("roomcast.sync.{}.{:016x}", self.node, fastrand::u64(..));
            let probe = client
                .subscribe(probe_subject.clone())
                .await
                .map_err(|e| e.to_string())?;
            // History streams, created (or brought to these settings).
            let js = jetstream::new(client.clone());
            let mut streams = HashMap::new();
            for f in self.rules.history_features() {
                let config = stream_config(&f);
                js.create_or_update_stream(config.clone()).await.map_err(|e| {
                    format!(
                        "cannot create JetStream stream {} for history (is JetStream enabled: nats-server -js?): {e}",
                        config.name
                    )
                })?;
                let stream = js.get_stream(&config.name).await.map_err(|e| e.to_string())?;
                streams.insert(stream_key(&f), stream);
            }
            let (control, control_rx) = mpsc::unbounded_channel();
            let probes = Arc::new(Probes::default());
            tokio::spawn(read(probe, control_rx, on_message, probes.clone(), lost.clone()));
            let link = NatsLink {
                client,
                js,
                streams,
                rules: self.rules.clone(),
                control,
                probe_subject,
                probes,
                lost,
            };
            link.sync().await?;
            let link: Arc<dyn Link> = Arc::new(link);
            Ok(link)
        })
    }
}

/// Probes sent and not yet back, by sequence number.
#[derive(Default)]
struct Probes {
    next: AtomicU64,
    waiting: Mutex<Vec<(u64, oneshot::Sender<()>)>>,
}

impl Probes {
    /// Probe `seq` came back: it and every earlier one are answered.
    fn arrived(&self, seq: u64) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mut i = 0;
        while i < waiting.len() {
            if waiting[i].0 <= seq {
                let (_, reply) = waiting.swap_remove(i);
                let _ = reply.send(());
            } else {
                i += 1;
            }
        }
    }
}

enum Control {
    Add(Channel, Subscriber),
    Remove(Channel),
}

/// The link's reader: every subscription's messages to `on_message`,
/// probes to their waiters, until the link is lost.
async fn read(
    mut probe: Subscriber,
    mut control: mpsc::UnboundedReceiver<Control>,
    on_message: OnMessage,
    probes: Arc<Probes>,
    lost: CancellationToken,
) {
    let mut streams = SelectAll::new();
    let mut stops: HashMap<Channel, CancellationToken> = HashMap::new();
    loop {
        tokio::select! {
            () = lost.cancelled() => break,
            c = control.recv() => match c {
                Some(Control::Add(channel, subscriber)) => {
                    let stop = CancellationToken::new();
                    streams.push(Box::pin(subscriber.take_until(stop.clone().cancelled_owned())));
                    if let Some(old) = stops.insert(channel, stop) {
                        old.cancel();
                    }
                }
                Some(Control::Remove(channel)) => {
                    if let Some(stop) = stops.remove(&channel) {
                        stop.cancel();
                    }
                }
                None => break,
            },
            Some(m) = streams.next(), if !streams.is_empty() => on_message(with_offset(m)),
            m = probe.next() => match m {
                Some(m) => {
                    if let Some(seq) = std::str::from_utf8(&m.payload).ok().and_then(|s| s.parse().ok()) {
                        probes.arrived(seq);
                    }
                }
                None => break,
            },
        }
    }
    lost.cancel();
}

/// A message as the cluster broker takes it: one republished by a history
/// stream carries its sequence (the offset) in a header, which goes in front
/// as `H<offset>:` (see [`super::cluster::split_offset`]).
fn with_offset(m: async_nats::Message) -> Bytes {
    let seq = m
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Sequence"))
        .and_then(|v| v.as_str().parse::<u64>().ok());
    match seq {
        Some(seq) => {
            let mut out = format!("H{seq}:").into_bytes();
            out.extend_from_slice(&m.payload);
            Bytes::from(out)
        }
        None => m.payload,
    }
}

struct NatsLink {
    client: Client,
    js: jetstream::Context,
    /// History streams by [`stream_key`].
    streams: HashMap<String, stream::Stream>,
    rules: Arc<GroupRules>,
    control: mpsc::UnboundedSender<Control>,
    probe_subject: String,
    probes: Arc<Probes>,
    lost: CancellationToken,
}

impl NatsLink {
    /// One round trip through the server, after everything sent before.
    async fn sync(&self) -> Result<(), String> {
        let seq = self.probes.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.probes
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((seq, tx));
        self.client
            .publish(self.probe_subject.clone(), Bytes::from(seq.to_string()))
            .await
            .map_err(|e| e.to_string())?;
        self.client.flush().await.map_err(|e| e.to_string())?;
        tokio::select! {
            r = rx => r.map_err(|_| "the probe was not answered".to_string()),
            () = self.lost.cancelled() => Err("connection lost".into()),
        }
    }
}

impl Link for NatsLink {
    fn publish<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Answers> {
        Box::pin(async move {
            let max = self.client.server_info().max_payload;
            let mut answers = Vec::with_capacity(batch.len());
            // Stored publications: acknowledged by JetStream, awaited
            // after the whole batch went out.
            let mut acks = Vec::new();
            for (i, Message { channel, body, keep }) in batch.iter().enumerate() {
                if max > 0 && body.len() > max {
                    answers.push(Err(format!(
                        "{} bytes are more than the NATS server's max_payload ({max})",
                        body.len()
                    )));
                    continue;
                }
                match (keep, channel) {
                    (Some(f), Channel::Group(g)) => {
                        let ack = self
                            .js
                            .publish(history_subject(g, f), body.clone())
                            .await
                            .map_err(|e| e.to_string())?;
                        acks.push((i, ack));
                    }
                    _ => {
                        self.client
                            .publish(subject(channel, &self.rules), body.clone())
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
                answers.push(Ok(None));
            }
            for (i, ack) in acks {
                if let Err(e) = ack.await {
                    answers[i] = Err(format!("JetStream did not store it: {e}"));
                }
            }
            self.sync().await?;
            Ok(answers)
        })
    }

    fn subscribe(&self, channels: Vec<Channel>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            for channel in channels {
                let subscriber = self
                    .client
                    .subscribe(subject(&channel, &self.rules))
                    .await
                    .map_err(|e| e.to_string())?;
                self.control
                    .send(Control::Add(channel, subscriber))
                    .map_err(|_| "the reader ended".to_string())?;
            }
            self.sync().await
        })
    }

    fn unsubscribe(&self, channels: Vec<Channel>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            for channel in channels {
                // Dropping the subscriber unsubscribes it.
                self.control
                    .send(Control::Remove(channel))
                    .map_err(|_| "the reader ended".to_string())?;
            }
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.sync())
    }

    fn history<'a>(
        &'a self,
        group: &'a str,
        since: Option<u64>,
        limit: usize,
        keep: Features,
        _epoch: &'a str,
    ) -> BoxFuture<'a, Result<RawPage, String>> {
        Box::pin(async move {
            let stream = self
                .streams
                .get(&stream_key(&keep))
                .ok_or_else(|| format!("no history stream for group '{group}'"))?;
            read_history(stream, &history_subject(group, &keep), since, limit, &keep).await
        })
    }
}

/// From how many stream sequences between the offset asked and the
/// group's last a read streams through an ordered consumer rather than
/// direct gets.
const CONSUMER_READ: u64 = 32;

/// Whether a direct get found nothing (as opposed to failing).
fn not_found(e: &jetstream::stream::DirectGetError) -> bool {
    matches!(e.kind(), jetstream::stream::DirectGetErrorKind::NotFound)
}

/// Read one group's history from its stream (see [`Link::history`]).
///
/// Offsets are stream sequences, so whether everything after an offset is
/// still kept is decided from what the stream keeps: trimming (by age
/// across the stream, by count within a subject) always takes the oldest
/// first, so the history after `n` is complete when nothing of the group
/// came after it, when a publication of the group at or before it is still
/// kept, or when the stream dropped nothing after it and the group is below
/// its size limit. That holds for every offset from some threshold on,
/// returned as [`RawPage::first`].
async fn read_history(
    stream: &stream::Stream,
    subject: &str,
    since: Option<u64>,
    limit: usize,
    keep: &Features,
) -> Result<RawPage, String> {
    let mut stream = stream.clone();
    let info = stream.info().await.map_err(|e| e.to_string())?.clone();
    let epoch = format!("{:x}", info.created.unix_timestamp_nanos());
    let last = match stream.direct_get_last_for_subject(subject).await {
        Ok(m) => Some(m.sequence),
        Err(e) if not_found(&e) => None,
        Err(e) => return Err(e.to_string()),
    };
    let first = match stream.direct_get_first_for_subject(subject).await {
        Ok(m) => Some(m.sequence),
        Err(e) if not_found(&e) => None,
        Err(e) => return Err(e.to_string()),
    };
    // A group with nothing kept stands where the stream does: whatever it
    // gets next has a higher sequence.
    let top = last.unwrap_or(info.state.last_sequence);
    // Everything after offset n is kept when n reaches the lowest of: the
    // group's last offset (nothing came after), its first kept offset (the
    // rest after it is kept too), and, when the group is under its size
    // limit, where the stream's trimming stopped.
    let trimmed_to = info.state.first_sequence.saturating_sub(1);
    let mut threshold = match (last, first) {
        (None, _) => trimmed_to,
        (Some(l), f) => l.min(f.unwrap_or(u64::MAX)),
    };
    if trimmed_to < threshold {
        let mut counts = stream
            .info_with_subjects(subject)
            .await
            .map_err(|e| e.to_string())?;
        let mut n = 0;
        while let Some(c) = counts.next().await {
            n += c.map_err(|e| e.to_string())?.1;
        }
        if n < keep.history_size {
            threshold = trimmed_to;
        }
    }
    let mut page = RawPage {
        epoch,
        top,
        first: threshold.saturating_add(1),
        entries: Vec::new(),
    };
    if limit == 0 || first.is_none() {
        return Ok(page);
    }
    // The latest `limit`: walk from the first kept, keeping the tail.
    let (mut at, want) = match since {
        Some(s) => (s.saturating_add(1), limit + 1),
        None => (first.unwrap_or(0), usize::MAX),
    };
    let mut entries = std::collections::VecDeque::new();
    if top.saturating_sub(at) >= CONSUMER_READ {
        // Many to read: one ordered consumer streams them, instead of a
        // round trip each.
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject.to_string(),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: at },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        while entries.len() < want {
            let Some(m) = messages.next().await else { break };
            let m = m.map_err(|e| e.to_string())?;
            let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
            if seq > top {
                break;
            }
            entries.push_back((seq, m.payload.clone()));
            if since.is_none() && entries.len() > limit {
                entries.pop_front();
            }
            if seq == top {
                break;
            }
        }
        page.entries = entries.into();
        return Ok(page);
    }
    while entries.len() < want {
        match stream.direct_get_next_for_subject(subject, Some(at)).await {
            // Only up to the position read above: what comes later is live
            // traffic (and would keep a read of a busy group chasing it).
            Ok(m) if m.sequence > top => break,
            Ok(m) => {
                at = m.sequence + 1;
                entries.push_back((m.sequence, m.payload));
                if since.is_none() && entries.len() > limit {
                    entries.pop_front();
                }
            }
            Err(e) if not_found(&e) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    page.entries = entries.into();
    Ok(page)
}

impl Drop for NatsLink {
    fn drop(&mut self) {
        self.lost.cancel();
    }
}
