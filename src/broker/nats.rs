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
//! async-nats reconnects by itself; roomcast does that in its own loop
//! instead (it must know, to resubscribe and send gaps), so any
//! disconnection, and a slow-consumer event (the client dropped
//! messages), ends the link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::{Client, ConnectOptions, Event, ServerAddr, Subscriber};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::SelectAll;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::BoxFuture;
use super::cluster::{Answers, CONNECT_TIMEOUT, Channel, Link, Message, OnMessage, Transport};

/// Connects to a NATS server or cluster.
pub struct NatsTransport {
    servers: Vec<ServerAddr>,
    credentials: Credentials,
    node: Arc<str>,
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
    pub fn new(url: &str, node: Arc<str>) -> Result<Self, String> {
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

/// The subject of `c`.
pub fn subject(c: &Channel) -> String {
    match c {
        Channel::Group(g) => format!(
            "roomcast.g.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(g.as_bytes())
        ),
        Channel::Node(n) => format!("roomcast.node.{n}"),
        Channel::All => "roomcast.all".into(),
    }
}

impl Transport for NatsTransport {
    fn kind(&self) -> &'static str {
        "nats"
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
            let (control, control_rx) = mpsc::unbounded_channel();
            let probes = Arc::new(Probes::default());
            tokio::spawn(read(probe, control_rx, on_message, probes.clone(), lost.clone()));
            let link = NatsLink {
                client,
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
            Some(m) = streams.next(), if !streams.is_empty() => on_message(m.payload),
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

struct NatsLink {
    client: Client,
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
            for Message { channel, body, .. } in batch {
                if max > 0 && body.len() > max {
                    answers.push(Err(format!(
                        "{} bytes are more than the NATS server's max_payload ({max})",
                        body.len()
                    )));
                    continue;
                }
                self.client
                    .publish(subject(channel), body.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                answers.push(Ok(None));
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
                    .subscribe(subject(&channel))
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
}

impl Drop for NatsLink {
    fn drop(&mut self) {
        self.lost.cancel();
    }
}
