//! The machinery every cluster broker shares, whatever carries the bytes
//! (a [`Transport`]: [`super::redis`] or [`super::nats`]).
//!
//! One supervisor task per node keeps a connection to the broker (a
//! [`Link`]) and, while it holds one, runs two loops side by side:
//!
//! - **publishing**: publications wait in one bounded queue, in the order
//!   they were given, and go to the broker in batches (one round trip per
//!   batch; the next batch forms while one is in flight). Each publisher
//!   is answered when the broker took its batch. A session never awaits
//!   this: it keeps reading while its publications are in flight.
//! - **subscribing**: joins and leaves send the group to this loop, which
//!   compares what the hub holds *when it looks* (members or not) with
//!   what is subscribed, and subscribes or unsubscribes accordingly, in
//!   batches. Because it reads the hub's truth rather than replaying
//!   join/leave events, no interleaving of joins and leaves can leave a
//!   group with members and no subscription. A join is answered once its
//!   group's subscription is confirmed.
//!
//! It also pings the broker every half second; an answer missing for
//! [`PING_TIMEOUT`], a failed round trip or a closed connection marks the
//! broker down (`/readyz` 503, `roomcast_broker_up` 0, publications
//! refused with `broker_unavailable`). Then it reconnects with jittered,
//! capped backoff, resubscribes every group that has local members, and
//! sends each of their members a `gap`: they may have missed publications.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::wire::{self, Envelope};
use super::{BoxFuture, Broker, BrokerError, Pending, Publication, Status, Target, deliver_local};
use crate::disconnect::{ApiClose, Disconnect};
use crate::groups::{Features, GroupRules};
use crate::history::{self, Entry, History, HistoryError, Page, Position};
use crate::hub::Hub;
use crate::id::ClientId;
use crate::metrics::Metrics;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the broker is pinged.
pub const PING_EVERY: Duration = Duration::from_millis(500);
/// How long a ping, a batch of publications or a subscription may wait for
/// the broker's answer before the broker counts as down. With the ping
/// interval, a hung broker is noticed within about 2 s.
pub const PING_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a history read may take. Longer than [`PING_TIMEOUT`]: a read
/// is many round trips on NATS (one per publication read), and a slow read
/// says nothing about the broker's health (pings do).
pub const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);
/// Publications waiting for the broker, at most; more are refused.
pub const QUEUE: usize = 65_536;
/// Bytes of publications waiting for the broker, at most; more are
/// refused (65,536 messages of the 64 KiB maximum would be 4 GiB).
pub const QUEUE_BYTES: usize = 64 << 20;
/// Most publications in one round trip.
const BATCH: usize = 512;
/// Most groups in one subscribe or unsubscribe command.
const SUBSCRIBE_BATCH: usize = 1024;
/// Every so often, every subscribed group is checked against the hub (a
/// safety net: sessions report their leaves, but a task that panicked
/// does not).
const SWEEP_EVERY: u32 = 20;
/// Reconnection backoff: from this, doubling, to [`BACKOFF_MAX`], each
/// wait drawn between half and all of it.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A broker channel: what a node subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A group's publications.
    Group(Arc<str>),
    /// Messages for one node's connections (sends, disconnects).
    Node(Arc<str>),
    /// Broadcasts to every connection of every node.
    All,
}

/// One message for the broker: its channel and envelope, and for a group
/// that keeps history, how (the broker appends it and numbers it in the
/// same atomic step as it publishes it).
#[derive(Debug, Clone)]
pub struct Message {
    /// Where it goes.
    pub channel: Channel,
    /// The envelope ([`wire`]).
    pub body: Bytes,
    /// Keep it in the group's history, so.
    pub keep: Option<Features>,
}

/// What a broker keeps of a group's history, as read: raw envelopes.
#[derive(Debug, Clone, Default)]
pub struct RawPage {
    /// The history's epoch.
    pub epoch: String,
    /// Latest offset.
    pub top: u64,
    /// Offset of the oldest publication kept (`top + 1` when none is).
    pub first: u64,
    /// Publications read: offset and envelope, oldest first; one more than
    /// asked for when more follow.
    pub entries: Vec<(u64, Bytes)>,
}

/// Per message of a batch: how many subscribers the broker handed it to,
/// where it tells (`Ok(None)` where it does not), or why the broker refused
/// that one message; `Err` as a whole when the connection failed.
pub type Answers = Result<Vec<Result<Option<u64>, String>>, String>;

/// Called with every message that arrives on a subscribed channel.
pub type OnMessage = Arc<dyn Fn(Bytes) + Send + Sync>;

/// How to reach one kind of broker.
pub trait Transport: Send + Sync + 'static {
    /// `redis` or `nats`.
    fn kind(&self) -> &'static str;

    /// Whether its links keep history ([`Link::history`]).
    fn keeps_history(&self) -> bool {
        false
    }

    /// Open a connection. Messages on its subscriptions go to `on_message`,
    /// in the order the broker sent them; when the connection is lost the
    /// transport cancels `lost` (and so may anyone else, to drop it).
    fn connect(
        &self,
        on_message: OnMessage,
        lost: CancellationToken,
    ) -> BoxFuture<'_, Result<Arc<dyn Link>, String>>;
}

/// One open connection to a broker.
pub trait Link: Send + Sync + 'static {
    /// Send `batch` in order (see [`Answers`]).
    fn publish<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Answers>;

    /// Read `group`'s history kept as `keep` says: up to `limit` + 1
    /// publications after `since` (or the latest `limit`), with the
    /// position; a history that does not exist yet is created in epoch
    /// `epoch`.
    fn history<'a>(
        &'a self,
        group: &'a str,
        since: Option<u64>,
        limit: usize,
        keep: Features,
        epoch: &'a str,
    ) -> BoxFuture<'a, Result<RawPage, String>> {
        let _ = (group, since, limit, keep, epoch);
        Box::pin(async { Err("this broker keeps no history".to_string()) })
    }

    /// Subscribe to `channels`; completes when the broker confirmed.
    fn subscribe(&self, channels: Vec<Channel>) -> BoxFuture<'_, Result<(), String>>;

    /// Unsubscribe from `channels`.
    fn unsubscribe(&self, channels: Vec<Channel>) -> BoxFuture<'_, Result<(), String>>;

    /// One round trip to the broker.
    fn ping(&self) -> BoxFuture<'_, Result<(), String>>;
}

type Reply = oneshot::Sender<Result<(), BrokerError>>;

/// A message waiting for the broker.
struct Outgoing {
    channel: Channel,
    body: Bytes,
    keep: Option<Features>,
    /// For a direct message: its target (a broker that counts receivers can
    /// tell that no node holds it).
    conn: Option<ClientId>,
    reply: Reply,
    /// Its place in the queue's byte budget, given back when it goes.
    _budget: Budget,
}

/// `n` bytes of the queue's byte count, until dropped.
struct Budget {
    n: usize,
    queued: Arc<AtomicUsize>,
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.n, Ordering::Relaxed);
    }
}

/// What the subscribing loop is asked.
enum SubCommand {
    /// A member joined: subscribe if need be, then answer.
    Ensure(Arc<str>, Reply),
    /// A group may have lost its last member.
    Check(Arc<str>),
}

/// State shared by the broker handle, its supervisor and the receive path.
struct Shared {
    node: Arc<str>,
    kind: &'static str,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    up: AtomicBool,
    /// Why the broker is down (`None` while up).
    error: Mutex<Option<String>>,
    queue: mpsc::Sender<Outgoing>,
    /// Bytes of the messages in `queue` or in flight.
    queued: Arc<AtomicUsize>,
    commands: mpsc::UnboundedSender<SubCommand>,
    /// Groups whose subscription the broker confirmed on the current
    /// connection. Checked before the hub by the subscribing loop, after it
    /// by a join (see [`Shared::check`]).
    subscribed: Mutex<HashSet<Arc<str>>>,
    /// Largest envelope taken from the broker.
    max_envelope: usize,
    /// Which groups keep history.
    rules: Arc<GroupRules>,
    /// The connection while there is one (history is read through it).
    link: Mutex<Option<Arc<dyn Link>>>,
    /// History readers by group, batched.
    reads: Mutex<HashMap<Arc<str>, Reads>>,
}

/// A broker shared by several nodes through a [`Transport`].
pub struct ClusterBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ClusterBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBroker")
            .field("kind", &self.shared.kind)
            .field("node", &self.shared.node)
            .finish_non_exhaustive()
    }
}

impl ClusterBroker {
    /// Start the broker of node `node` on the current runtime: it connects
    /// in the background (down until then) and runs until `shutdown`.
    /// Envelopes over `max_message` bytes of payload (plus headers) are
    /// ignored.
    pub fn start(
        transport: Box<dyn Transport>,
        node: Arc<str>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        max_message: usize,
        rules: Arc<GroupRules>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (queue, queue_rx) = mpsc::channel(QUEUE);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        metrics.set_broker_up(false);
        let shared = Arc::new(Shared {
            node,
            kind: transport.kind(),
            hub,
            metrics,
            up: AtomicBool::new(false),
            error: Mutex::new(Some("not connected yet".into())),
            queue,
            queued: Arc::default(),
            commands,
            subscribed: Mutex::new(HashSet::new()),
            max_envelope: max_message.saturating_add(64 * 1024),
            rules,
            link: Mutex::new(None),
            reads: Mutex::default(),
        });
        let supervisor = Supervisor {
            shared: shared.clone(),
            transport,
            queue: queue_rx,
            commands: commands_rx,
            shutdown,
        };
        tokio::spawn(supervisor.run());
        Arc::new(Self { shared })
    }

    fn unavailable(&self) -> BrokerError {
        self.shared.unavailable()
    }

    /// Queue `body` for `channel`.
    fn send(&self, channel: Channel, body: Bytes, conn: Option<ClientId>, keep: Option<Features>) -> Pending {
        let refuse = |e| {
            self.shared.metrics.record_broker_publish_failures(1);
            Pending::Ready(Err(e))
        };
        if !self.shared.up.load(Ordering::Acquire) {
            return refuse(self.unavailable());
        }
        let len = body.len();
        if self.shared.queued.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES {
            self.shared.queued.fetch_sub(len, Ordering::Relaxed);
            return refuse(BrokerError::Unavailable(format!(
                "{} MiB of publications are already waiting for the {} broker",
                QUEUE_BYTES >> 20,
                self.shared.kind
            )));
        }
        let (reply, rx) = oneshot::channel();
        let outgoing = Outgoing {
            channel,
            body,
            keep,
            conn,
            reply,
            _budget: Budget {
                n: len,
                queued: self.shared.queued.clone(),
            },
        };
        match self.shared.queue.try_send(outgoing) {
            Ok(()) => Pending::Waiting(rx),
            Err(mpsc::error::TrySendError::Full(_)) => refuse(BrokerError::Unavailable(format!(
                "{} publications are already waiting for the {} broker",
                QUEUE, self.shared.kind
            ))),
            Err(mpsc::error::TrySendError::Closed(_)) => refuse(self.unavailable()),
        }
    }

    fn is_local(&self, id: &ClientId) -> bool {
        id.node.as_deref() == Some(&*self.shared.node)
    }
}

impl Broker for ClusterBroker {
    fn publish(&self, publication: Publication) -> Pending {
        let mut keep = None;
        let (channel, conn) = match &publication.target {
            Target::Group(g) => {
                // Events (joined, left) are never kept.
                keep = Some(self.shared.rules.features(g))
                    .filter(|f| f.history() && !matches!(publication.payload, super::Payload::Event(_)));
                (Channel::Group(g.clone()), None)
            }
            Target::All => (Channel::All, None),
            Target::Conn(id) if self.is_local(id) => {
                // This node holds it: no need for a round trip.
                let node = Some(&*self.shared.node);
                return Pending::Ready(deliver_local(&self.shared.hub, &publication, node, None).map(|_| ()));
            }
            Target::Conn(id) => match &id.node {
                Some(node) => (Channel::Node(node.clone()), Some(id.clone())),
                None => return Pending::Ready(Err(BrokerError::UnknownConnection(id.clone()))),
            },
        };
        self.send(channel, wire::encode_publication(&publication), conn, keep)
    }

    fn disconnect(&self, conn: ClientId, close: ApiClose) -> Pending {
        if self.is_local(&conn) {
            let node = Some(&*self.shared.node);
            return Pending::Ready(super::disconnect_local(&self.shared.hub, &conn, close, node).map(|_| ()));
        }
        let Some(node) = conn.node.clone() else {
            return Pending::Ready(Err(BrokerError::UnknownConnection(conn)));
        };
        let body = wire::encode_disconnect(conn.conn, &close);
        self.send(Channel::Node(node), body, Some(conn), None)
    }

    fn subscribe(&self, group: &Arc<str>) -> Pending {
        if !self.shared.up.load(Ordering::Acquire) {
            return Pending::Ready(Err(self.unavailable()));
        }
        // The hub already lists the new member, so if the group is still
        // subscribed here, the loop has not yet begun to check it (it
        // takes the group out of the set before looking at the hub) and
        // will see the member when it does.
        if lock(&self.shared.subscribed).contains(group) {
            return Pending::Ready(Ok(()));
        }
        let (reply, rx) = oneshot::channel();
        match self
            .shared
            .commands
            .send(SubCommand::Ensure(group.clone(), reply))
        {
            Ok(()) => Pending::Waiting(rx),
            Err(_) => Pending::Ready(Err(self.unavailable())),
        }
    }

    fn unsubscribe(&self, group: &Arc<str>) {
        let _ = self.shared.commands.send(SubCommand::Check(group.clone()));
    }

    fn status(&self) -> Status {
        let up = self.shared.up.load(Ordering::Acquire);
        Status {
            kind: self.shared.kind,
            up,
            error: if up {
                None
            } else {
                lock(&self.shared.error).clone()
            },
        }
    }
}

/// Readers of one group's history: while a read is running, new readers
/// wait for the next one, which starts after they all asked (so after
/// their subscriptions were in place), and serves them all with one read
/// from the lowest offset asked. A crowd of clients recovering the same
/// group at once (a node restarted) costs a few reads, not one each.
#[derive(Default)]
struct Reads {
    running: bool,
    next: Vec<Reader>,
}

/// One waiting reader.
struct Reader {
    since: Option<u64>,
    limit: usize,
    reply: oneshot::Sender<Result<Page, HistoryError>>,
}

/// One read, decoded, to be cut into each reader's page.
struct Decoded {
    /// Entries after the lowest offset asked, oldest first.
    entries: Vec<Entry>,
    /// More followed them.
    cut: bool,
    top: u64,
    /// Everything after offset `n` is kept when `n + 1 >= first`.
    first: u64,
    epoch: Arc<str>,
}

impl Decoded {
    /// The page of a reader that asked for `limit` after `since`.
    fn page(&self, since: Option<u64>, limit: usize) -> Page {
        let after: Vec<Entry> = match since {
            Some(n) => self
                .entries
                .iter()
                .filter(|e| e.offset > n)
                .take(limit + 1)
                .cloned()
                .collect(),
            None => {
                let skip = self.entries.len().saturating_sub(limit);
                self.entries[skip..].to_vec()
            }
        };
        let more = after.len() > limit || (since.is_some() && self.cut);
        let mut entries = after;
        entries.truncate(limit);
        Page {
            entries,
            position: Position {
                offset: self.top,
                epoch: self.epoch.clone(),
            },
            complete: since.is_none_or(|n| n <= self.top && n.saturating_add(1) >= self.first),
            more,
        }
    }
}

impl History for ClusterBroker {
    fn read(
        &self,
        group: &Arc<str>,
        since: Option<u64>,
        limit: usize,
    ) -> history::BoxFuture<'static, Result<Page, HistoryError>> {
        let shared = self.shared.clone();
        let group = group.clone();
        Box::pin(async move { shared.read_history(&group, since, limit).await })
    }
}

impl Shared {
    /// Read `group`'s history: one read of a batch (see [`Reads`]).
    async fn read_history(
        self: &Arc<Self>,
        group: &Arc<str>,
        since: Option<u64>,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        let (reply, rx) = oneshot::channel();
        let start = {
            let mut reads = lock(&self.reads);
            let waiting = reads.entry(group.clone()).or_default();
            waiting.next.push(Reader { since, limit, reply });
            !std::mem::replace(&mut waiting.running, true)
        };
        if start {
            tokio::spawn(self.clone().run_reads(group.clone()));
        }
        rx.await
            .unwrap_or_else(|_| Err(HistoryError::Unavailable("the history read was dropped".into())))
    }

    /// Serve the readers of `group` batch after batch, until none waits.
    async fn run_reads(self: Arc<Self>, group: Arc<str>) {
        loop {
            let batch = {
                let mut reads = lock(&self.reads);
                let Some(waiting) = reads.get_mut(&group) else {
                    return;
                };
                if waiting.next.is_empty() {
                    reads.remove(&group);
                    return;
                }
                std::mem::take(&mut waiting.next)
            };
            // Reads of the latest entries are rare (history requests
            // without `since`): each its own.
            let (latest, after): (Vec<Reader>, Vec<Reader>) =
                batch.into_iter().partition(|r| r.since.is_none());
            for r in latest {
                let page = self
                    .read_once(&group, None, r.limit)
                    .await
                    .map(|raw| raw.page(None, r.limit));
                let _ = r.reply.send(page);
            }
            if after.is_empty() {
                continue;
            }
            let since = after.iter().filter_map(|r| r.since).min();
            let limit = after.iter().map(|r| r.limit).max().unwrap_or(0);
            match self.read_once(&group, since, limit).await {
                Ok(raw) => {
                    for r in after {
                        let _ = r.reply.send(Ok(raw.page(r.since, r.limit)));
                    }
                }
                Err(e) => {
                    for r in after {
                        let _ = r.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// One read through the current connection, decoded.
    async fn read_once(
        &self,
        group: &Arc<str>,
        since: Option<u64>,
        limit: usize,
    ) -> Result<Decoded, HistoryError> {
        let link = lock(&self.link)
            .clone()
            .filter(|_| self.up.load(Ordering::Acquire))
            .ok_or_else(|| HistoryError::Unavailable(self.unavailable().to_string()))?;
        let keep = self.rules.features(group);
        let epoch = history::new_epoch();
        let raw = timeout(HISTORY_TIMEOUT, link.history(group, since, limit, keep, &epoch))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {HISTORY_TIMEOUT:?}")))
            .map_err(|e| HistoryError::Unavailable(format!("{} broker: {e}", self.kind)))?;
        let cut = raw.entries.len() > limit;
        let mut entries = Vec::with_capacity(raw.entries.len().min(limit));
        for (offset, body) in raw.entries.into_iter().take(limit) {
            match wire::decode(&body, Some(&self.node)) {
                Some(Envelope::Publication(publication)) => entries.push(Entry { offset, publication }),
                _ => {
                    return Err(HistoryError::Unavailable(format!(
                        "the {} broker's history of '{group}' holds something that is not a publication at offset {offset}",
                        self.kind
                    )));
                }
            }
        }
        Ok(Decoded {
            entries,
            cut,
            top: raw.top,
            first: raw.first,
            epoch: raw.epoch.into(),
        })
    }

    /// A message from the broker: deliver it to this node's members.
    fn receive(&self, message: Bytes) {
        // A publication to a group with history comes with its offset:
        // `H<offset>:` before the envelope.
        let (offset, body) = split_offset(&message);
        let envelope = (body.len() <= self.max_envelope)
            .then(|| wire::decode(&body, Some(&self.node)))
            .flatten();
        self.metrics.record_broker_received(envelope.is_some());
        match envelope {
            Some(Envelope::Publication(p)) => {
                // An unknown connection here is a send to one that has
                // gone: nothing to deliver, nobody waiting to be told.
                let _ = deliver_local(&self.hub, &p, Some(&self.node), offset);
            }
            Some(Envelope::Disconnect(conn, close)) => {
                if let Some(outbox) = self.hub.connection(conn) {
                    outbox.request_close(Disconnect::Api(Box::new(close)));
                }
            }
            None => crate::warn_limited!(
                crate::logging::LogKind::Broker,
                bytes = message.len(),
                "ignored a message from the {} broker that is not a roomcast envelope",
                self.kind
            ),
        }
    }

    /// The error for a request while the broker is down.
    fn unavailable(&self) -> BrokerError {
        let why = lock(&self.error)
            .clone()
            .unwrap_or_else(|| "not connected".into());
        BrokerError::Unavailable(format!("{} broker is down: {why}", self.kind))
    }

    fn set_up(&self) {
        *lock(&self.error) = None;
        self.up.store(true, Ordering::Release);
        self.metrics.set_broker_up(true);
    }

    fn set_down(&self, why: String) {
        let was_up = self.up.swap(false, Ordering::AcqRel);
        self.metrics.set_broker_up(false);
        lock(&self.subscribed).clear();
        if was_up {
            warn!(broker = self.kind, error = %why, "broker connection lost: publications are refused until it is back");
        }
        *lock(&self.error) = Some(why);
    }

    /// Look at `group` again: subscribed or not, as the hub says now.
    /// Returns whether it must be subscribed (`Some(true)`), unsubscribed
    /// (`Some(false)`) or is right as it is.
    fn check(&self, group: &Arc<str>) -> Option<bool> {
        // Out of the set first, then the hub: a join that found it in the
        // set had already put its member in the hub, and is seen here.
        let was = lock(&self.subscribed).remove(group);
        let wanted = self.hub.has_members(group);
        match (was, wanted) {
            (true, true) => {
                lock(&self.subscribed).insert(group.clone());
                None
            }
            (true, false) => Some(false),
            (false, true) => Some(true),
            (false, false) => None,
        }
    }
}

/// Owns the connection to the broker; see the module docs.
struct Supervisor {
    shared: Arc<Shared>,
    transport: Box<dyn Transport>,
    queue: mpsc::Receiver<Outgoing>,
    commands: mpsc::UnboundedReceiver<SubCommand>,
    shutdown: CancellationToken,
}

impl Supervisor {
    async fn run(mut self) {
        let kind = self.shared.kind;
        let mut attempt: u32 = 0;
        let mut connected_before = false;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let lost = CancellationToken::new();
            let shared = self.shared.clone();
            let on_message: OnMessage = Arc::new(move |m| shared.receive(m));
            let connected =
                match timeout(CONNECT_TIMEOUT, self.transport.connect(on_message, lost.clone())).await {
                    Ok(Ok(link)) => self.resubscribe(&*link).await.map(|()| link),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
                };
            let link = match connected {
                Ok(link) => link,
                Err(e) => {
                    lost.cancel();
                    if attempt == 0 || attempt.is_power_of_two() {
                        warn!(broker = kind, error = %e, attempt, "cannot reach the broker; retrying");
                    }
                    self.shared.set_down(e);
                    attempt = attempt.saturating_add(1);
                    if !self.wait_down(backoff(attempt)).await {
                        return;
                    }
                    continue;
                }
            };
            *lock(&self.shared.link) = Some(link.clone());
            self.shared.set_up();
            if connected_before {
                self.shared.metrics.record_broker_reconnect();
                let mut told = 0;
                let mut history = Vec::new();
                for group in self.shared.hub.group_names() {
                    if self.shared.rules.features(&group).history() {
                        history.push(group);
                    } else {
                        told += self.shared.hub.gap(&group);
                    }
                }
                self.shared.metrics.record_gaps(told);
                info!(
                    broker = kind,
                    gaps = told,
                    catching_up = history.len(),
                    "broker connection back: groups resubscribed, members told of the gap \
                     (groups with history catch up from it)"
                );
                tokio::spawn(catch_up(self.shared.clone(), history));
            } else {
                info!(broker = kind, node = %self.shared.node, "connected to the broker");
            }
            connected_before = true;
            attempt = 0;
            let why = {
                let shared = &self.shared;
                let publishing = publish_loop(shared, &*link, &mut self.queue, &lost);
                let subscribing = subscribe_loop(shared, &*link, &mut self.commands, &lost);
                tokio::select! {
                    (a, b) = async { tokio::join!(publishing, subscribing) } => a.or(b),
                    () = self.shutdown.cancelled() => {
                        lost.cancel();
                        return;
                    }
                }
            };
            lost.cancel();
            *lock(&self.shared.link) = None;
            drop(link);
            // From now until the catch-up after the reconnection, what
            // arrives for groups with history waits behind what was missed.
            let rules = self.shared.rules.clone();
            self.shared.hub.hold(|g| rules.features(g).history());
            self.shared
                .set_down(why.unwrap_or_else(|| "connection lost".into()));
            if !self.wait_down(backoff(0)).await {
                return;
            }
        }
    }

    /// Subscribe this node's own channels and every group with local
    /// members; on success they are in the subscribed set.
    async fn resubscribe(&self, link: &dyn Link) -> Result<(), String> {
        let own = vec![Channel::Node(self.shared.node.clone()), Channel::All];
        within(link.subscribe(own)).await?;
        let groups = self.shared.hub.group_names();
        for chunk in groups.chunks(SUBSCRIBE_BATCH) {
            let channels = chunk.iter().cloned().map(Channel::Group).collect();
            within(link.subscribe(channels)).await?;
        }
        lock(&self.shared.subscribed).extend(groups);
        Ok(())
    }

    /// While down: refuse whatever arrives, for `wait`. Returns `false`
    /// when shutdown began.
    async fn wait_down(&mut self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return true,
                () = self.shutdown.cancelled() => return false,
                Some(o) = self.queue.recv() => {
                    self.shared.metrics.record_broker_publish_failures(1);
                    let _ = o.reply.send(Err(self.unavailable()));
                }
                Some(c) = self.commands.recv() => {
                    if let SubCommand::Ensure(_, reply) = c {
                        let _ = reply.send(Err(self.unavailable()));
                    }
                }
            }
        }
    }

    fn unavailable(&self) -> BrokerError {
        self.shared.unavailable()
    }
}

/// Split `H<offset>:` off a message from the broker (a publication to a
/// group with history); other messages have no offset.
pub fn split_offset(message: &Bytes) -> (Option<u64>, Bytes) {
    if message.first() != Some(&b'H') {
        return (None, message.clone());
    }
    let Some(colon) = message.iter().take(22).position(|&b| b == b':') else {
        return (None, message.clone());
    };
    let offset = std::str::from_utf8(&message[1..colon])
        .ok()
        .and_then(|d| d.parse::<u64>().ok());
    match offset {
        Some(o) => (Some(o), message.slice(colon + 1..)),
        None => (None, message.clone()),
    }
}

/// After a reconnection: read what each group with history missed here,
/// since the last offset this node delivered, and deliver it before what
/// arrived since; a group whose missed publications are no longer all kept
/// (or cannot be read) gets a `gap` instead.
async fn catch_up(shared: Arc<Shared>, groups: Vec<Arc<str>>) {
    let (mut recovered, mut gaps) = (0, 0);
    for group in groups {
        let keep = shared.rules.features(&group);
        let missed = match shared.hub.position(&group) {
            Some((last, epoch)) => match shared.read_history(&group, Some(last), keep.history_size).await {
                Ok(page) if page.recovers(last, &epoch) => Some(
                    page.entries
                        .iter()
                        .map(|e| {
                            (
                                e.offset,
                                super::prepare(&shared.hub, &e.publication, Some(e.offset)),
                            )
                        })
                        .collect(),
                ),
                Ok(_) => None,
                Err(e) => {
                    warn!(broker = shared.kind, group = %group, error = %e, "cannot read history to catch up; members get a gap");
                    None
                }
            },
            None => None,
        };
        let (r, g) = shared.hub.catch_up(&group, missed);
        recovered += r;
        gaps += g;
    }
    shared.metrics.record_gaps(gaps);
    shared.metrics.record_gaps_recovered(recovered);
    info!(
        broker = shared.kind,
        recovered, gaps, "caught up groups with history after the broker came back"
    );
}

/// Wait for `f` at most [`PING_TIMEOUT`].
async fn within<T>(f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    timeout(PING_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {PING_TIMEOUT:?}")))
}

/// Send queued publications in batches until the link fails (returns
/// why) or is dropped.
async fn publish_loop(
    shared: &Shared,
    link: &dyn Link,
    queue: &mut mpsc::Receiver<Outgoing>,
    lost: &CancellationToken,
) -> Option<String> {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(BATCH);
    let mut wire: Vec<Message> = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            () = lost.cancelled() => return None,
            n = queue.recv_many(&mut batch, BATCH) => if n == 0 { return None },
        }
        wire.extend(batch.iter().map(|o| Message {
            channel: o.channel.clone(),
            body: o.body.clone(),
            keep: o.keep,
        }));
        let result = within(link.publish(&wire)).await;
        wire.clear();
        match result {
            Ok(answers) => {
                let mut taken = 0;
                for (o, answer) in batch
                    .drain(..)
                    .zip(answers.into_iter().chain(std::iter::repeat(Ok(None))))
                {
                    let reply = match (answer, o.conn) {
                        (Ok(Some(0)), Some(conn)) => Err(BrokerError::UnknownConnection(conn)),
                        (Ok(_), _) => {
                            taken += 1;
                            Ok(())
                        }
                        (Err(e), _) => {
                            shared.metrics.record_broker_publish_failures(1);
                            Err(BrokerError::Unavailable(e))
                        }
                    };
                    let _ = o.reply.send(reply);
                }
                shared.metrics.record_broker_published(taken);
            }
            Err(e) => {
                shared.metrics.record_broker_publish_failures(batch.len());
                for o in batch.drain(..) {
                    let _ = o.reply.send(Err(BrokerError::Unavailable(format!(
                        "{} broker failed: {e}",
                        shared.kind
                    ))));
                }
                lost.cancel();
                return Some(e);
            }
        }
    }
}

/// Keep subscriptions matching the hub, and ping, until the link fails
/// (returns why) or is dropped.
async fn subscribe_loop(
    shared: &Shared,
    link: &dyn Link,
    commands: &mut mpsc::UnboundedReceiver<SubCommand>,
    lost: &CancellationToken,
) -> Option<String> {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u32 = 0;
    let mut batch = Vec::with_capacity(SUBSCRIBE_BATCH);
    loop {
        tokio::select! {
            biased;
            () = lost.cancelled() => return None,
            _ = tick.tick() => {
                if let Err(e) = within(link.ping()).await {
                    lost.cancel();
                    return Some(e);
                }
                ticks = ticks.wrapping_add(1);
                if !ticks.is_multiple_of(SWEEP_EVERY) {
                    continue;
                }
                let all: Vec<Arc<str>> = lock(&shared.subscribed).iter().cloned().collect();
                batch.extend(all.into_iter().map(SubCommand::Check));
            }
            n = commands.recv_many(&mut batch, SUBSCRIBE_BATCH) => if n == 0 { return None },
        }
        let mut to_subscribe: Vec<Arc<str>> = Vec::new();
        let mut to_unsubscribe: Vec<Arc<str>> = Vec::new();
        let mut waiting: Vec<Reply> = Vec::new();
        let mut seen: HashSet<Arc<str>> = HashSet::new();
        for command in batch.drain(..) {
            let (group, reply) = match command {
                SubCommand::Ensure(g, reply) => (g, Some(reply)),
                SubCommand::Check(g) => (g, None),
            };
            if seen.insert(group.clone()) {
                match shared.check(&group) {
                    Some(true) => to_subscribe.push(group),
                    Some(false) => to_unsubscribe.push(group),
                    None => {}
                }
            }
            waiting.extend(reply);
        }
        if !to_unsubscribe.is_empty() {
            let channels = to_unsubscribe.into_iter().map(Channel::Group).collect();
            if let Err(e) = within(link.unsubscribe(channels)).await {
                fail(shared, waiting, &e);
                lost.cancel();
                return Some(e);
            }
        }
        if !to_subscribe.is_empty() {
            let channels = to_subscribe.iter().cloned().map(Channel::Group).collect();
            if let Err(e) = within(link.subscribe(channels)).await {
                fail(shared, waiting, &e);
                lost.cancel();
                return Some(e);
            }
            lock(&shared.subscribed).extend(to_subscribe);
        }
        for reply in waiting {
            let _ = reply.send(Ok(()));
        }
    }
}

fn fail(shared: &Shared, waiting: Vec<Reply>, e: &str) {
    for reply in waiting {
        let _ = reply.send(Err(BrokerError::Unavailable(format!(
            "{} broker failed: {e}",
            shared.kind
        ))));
    }
}

/// The wait before reconnection attempt `attempt` (0: right after a loss).
fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_MIN.saturating_mul(1 << attempt.min(16)).min(BACKOFF_MAX);
    full.mul_f64(0.5 + fastrand::f64() * 0.5)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Payload;

    /// A broker that connects, confirms subscriptions and pings, and never
    /// answers a publication.
    struct Silent;

    impl Transport for Silent {
        fn kind(&self) -> &'static str {
            "silent"
        }

        fn connect(
            &self,
            _: OnMessage,
            _: CancellationToken,
        ) -> BoxFuture<'_, Result<Arc<dyn Link>, String>> {
            Box::pin(async {
                let link: Arc<dyn Link> = Arc::new(Silent);
                Ok(link)
            })
        }
    }

    impl Link for Silent {
        fn publish<'a>(&'a self, _: &'a [Message]) -> BoxFuture<'a, Answers> {
            Box::pin(std::future::pending())
        }

        fn subscribe(&self, _: Vec<Channel>) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }

        fn unsubscribe(&self, _: Vec<Channel>) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }

        fn ping(&self) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
    }

    /// Publications waiting for a broker that does not answer are bounded
    /// in bytes (not only in number): past the budget they are refused at
    /// once, and every one taken is answered (here: refused) when the
    /// broker is given up.
    #[tokio::test]
    async fn the_queue_to_the_broker_is_bounded_in_bytes() {
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::new(
            crate::hub::HubConfig {
                queue_messages: 16,
                queue_bytes: 1 << 20,
                policy: crate::config::SlowConsumerPolicy::Drop,
                no_echo: false,
                flushers: 0,
                compression_threshold: 256,
                compression_level: 1,
                first_id: 1,
            },
            metrics.clone(),
        ));
        let stop = CancellationToken::new();
        let broker = ClusterBroker::start(
            Box::new(Silent),
            Arc::from("n"),
            hub,
            metrics,
            1 << 20,
            Arc::new(GroupRules::none()),
            stop.clone(),
        );
        while !broker.status().up {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let body = Bytes::from(vec![b'1'; 64 * 1024]);
        let mut waiting = Vec::new();
        let mut refused = 0;
        for _ in 0..(QUEUE_BYTES / body.len() + 100) {
            let p = Publication {
                target: Target::Group(Arc::from("g")),
                from: None,
                user: None,
                payload: Payload::Json(body.clone()),
            };
            match broker.publish(p) {
                Pending::Waiting(rx) => waiting.push(rx),
                Pending::Ready(Err(BrokerError::Unavailable(m))) => {
                    assert!(m.contains("MiB"), "{m}");
                    refused += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(refused >= 100, "refused {refused}");
        assert!(waiting.len() * body.len() <= QUEUE_BYTES);
        // The silent broker is given up after PING_TIMEOUT: every taken
        // publication is answered, none acknowledged.
        for rx in waiting {
            let r = Pending::Waiting(rx).wait().await;
            assert!(matches!(r, Err(BrokerError::Unavailable(_))), "{r:?}");
        }
        assert_eq!(broker.shared.queued.load(Ordering::Relaxed), 0);
        stop.cancel();
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        for attempt in 0..40 {
            let b = backoff(attempt);
            let full = BACKOFF_MIN.saturating_mul(1 << attempt.min(16)).min(BACKOFF_MAX);
            assert!(b >= full / 2 && b <= full, "{attempt}: {b:?}");
        }
        assert!(backoff(30) <= BACKOFF_MAX);
    }

    #[test]
    fn offsets_are_split_off_history_publications() {
        let m = Bytes::from_static(b"H42:R\x01rest");
        assert_eq!(split_offset(&m), (Some(42), Bytes::from_static(b"R\x01rest")));
        for plain in [&b"R\x01x"[..], b"H:R", b"Hx:R", b"H123", b""] {
            let m = Bytes::copy_from_slice(plain);
            assert_eq!(split_offset(&m), (None, m.clone()), "{plain:?}");
        }
    }
}
