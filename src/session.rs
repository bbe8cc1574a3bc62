//! One client session: the roomcast protocol (or plain echo) on top of a
//! [`Conn`], the heartbeat, and cleanup when the connection ends.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::debug;

use crate::auth::Grant;
use crate::broker::{BrokerError, Payload, Pending, Publication, Target};
use crate::conn::{Conn, ConnError, Incoming};
use crate::disconnect::Disconnect;
use crate::hub::Hub;
use crate::id::ClientId;
use crate::limits::{MessageBucket, RateVerdict};
use crate::metrics::{Protocol, Source};
use crate::node::Node;
use crate::outbox::Outbox;
use crate::prepared::{Encoding, Prepared};
use crate::protocol::{self, Data, ErrorCode, Request, RequestError};
use crate::roster;
use crate::ws::Event;
use crate::ws::close;
use crate::ws::frame::{self, FramePayload, OP_BINARY, OP_PONG, OP_TEXT};
use crate::ws::handshake::Negotiated;
use serde_json::value::RawValue;

/// Which endpoint the client connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `/ws`: the roomcast protocol.
    Protocol,
    /// `/echo`: every message comes back unchanged; nothing unsolicited.
    Echo,
}

/// How long to wait for the client's Close after ours, at most.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// An empty Ping frame, shared by every heartbeat.
static PING: [u8; 2] = [0x89, 0x00];

/// What the upgrade established for a new session.
#[derive(Debug)]
pub struct Opening {
    /// Which endpoint.
    pub mode: Mode,
    /// What the client's token allows (`None`: auth is off).
    pub grant: Option<Grant>,
    /// What the handshake negotiated.
    pub negotiated: Negotiated,
}

/// Run a session on an upgraded stream until it ends.
/// `early` holds bytes the client sent right after its handshake.
/// `direct_fd` is the descriptor of `io` when it is a plain TCP stream:
/// the hub's flush shards may then write to it (see [`crate::flush`]).
///
/// The connection is registered when this is called; the future returned
/// runs the session. It holds only the session (arguments of an `async fn`
/// would stay in every connection's future for its whole life).
pub fn run<S>(
    node: Arc<Node>,
    io: S,
    early: Bytes,
    opening: Opening,
    direct_fd: Option<std::os::fd::RawFd>,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Opening {
        mode,
        grant,
        negotiated,
    } = opening;
    let encoding = negotiated
        .deflate
        .map_or(Encoding::PLAIN, |d| Encoding::deflate(d.server_max_window_bits));
    let outbox = node.hub.register(mode == Mode::Protocol, encoding);
    let mut conn = Conn::new(
        io,
        outbox.clone(),
        node.config.max_message_size,
        negotiated.deflate,
        node.metrics.clone(),
    );
    if let Some(fd) = direct_fd {
        conn.enable_direct_writes(fd);
    }
    // Events and errors come out of the session's first `Conn::next`.
    conn.feed(&early);
    drop(early);
    let mut session = Session {
        node: node.clone(),
        conn,
        outbox: outbox.clone(),
        membership: Membership {
            hub: node.hub.clone(),
            outbox,
            groups: Vec::new(),
            reason: Disconnect::Aborted,
        },
        mode,
        next_ping: None,
        expires: grant.as_ref().and_then(|g| g.deadline(Instant::now())),
        grant,
        rate: (node.config.message_rate > 0)
            .then(|| MessageBucket::new(node.config.message_rate, node.config.message_burst())),
    };
    async move {
        if let Some(reason) = session.serve().await {
            // Boxed: the close handshake's state would otherwise be laid
            // out in every connection's task for its whole life.
            Box::pin(session.close(reason)).await;
        }
        debug!(conn = session.outbox.id(), reason = ?session.membership.reason, "connection closed");
        session.cleanup().await;
    }
}

/// Why a request failed: the code and message of its `error` reply (the
/// request's id is added by the caller).
type Failure = (ErrorCode, Cow<'static, str>);

struct Session<S> {
    node: Arc<Node>,
    conn: Conn<S>,
    outbox: Arc<Outbox>,
    /// Groups this connection is in; undone when the session ends.
    membership: Membership,
    mode: Mode,
    next_ping: Option<Instant>,
    /// What the client's token allows (`None`: auth is off).
    grant: Option<Grant>,
    /// When the token expires; the connection closes then (4003).
    expires: Option<Instant>,
    /// Message rate of this connection (`None`: unlimited). Not applied on
    /// `/echo`, whose replies TCP backpressure already bounds.
    rate: Option<MessageBucket>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// The main loop, until the connection is to close (`Some`: with that
    /// reason, handshake to follow) or has ended (`None`: the socket is
    /// gone, its reason left in the membership).
    async fn serve(&mut self) -> Option<Disconnect> {
        if self.node.shutdown.is_cancelled() {
            // Shutdown began while this connection was being upgraded.
            self.outbox.request_close(Disconnect::Shutdown);
        }
        if self.mode == Mode::Protocol {
            self.reply(protocol::welcome(&self.node.client_id(self.outbox.id())));
            self.next_ping = self.node.config.ping().map(|p| Instant::now() + p);
        }
        self.arm_timer();
        loop {
            let incoming = match self.conn.next().await {
                Ok(i) => i,
                Err(ConnError::Protocol(e)) => {
                    crate::warn_limited!(
                        crate::logging::LogKind::ProtocolViolation,
                        conn = self.outbox.id(),
                        error = %e,
                        "client broke the protocol; closing with {}",
                        e.close_code()
                    );
                    return Some(Disconnect::Protocol(e));
                }
                Err(ConnError::Io(e)) => {
                    crate::warn_limited!(
                        crate::logging::LogKind::SocketError,
                        conn = self.outbox.id(),
                        error = %e,
                        "socket error"
                    );
                    self.membership.reason = Disconnect::SocketError;
                    return None;
                }
            };
            match incoming {
                Incoming::Event(Event::Close(frame)) => {
                    // Answer with the client's code (1000 if it sent none).
                    return Some(Disconnect::ClientClosed(frame.code));
                }
                Incoming::Event(Event::Ping(payload)) => {
                    self.outbox.push_control(frame::encode(OP_PONG, &payload));
                }
                Incoming::Event(Event::Pong(_)) => {}
                Incoming::Event(Event::Text(text)) => {
                    if let Some(reason) = self.on_message(Protocol::Json, text).await {
                        return Some(reason);
                    }
                }
                Incoming::Event(Event::Binary(bin)) => {
                    if let Some(reason) = self.on_message(Protocol::Binary, bin).await {
                        return Some(reason);
                    }
                }
                Incoming::CloseRequested(reason) => return Some(reason),
                // The write timeout starts now: make sure the timer fires
                // when it runs out.
                Incoming::Stalled => self.arm_timer(),
                Incoming::Timer => {
                    if let Some(reason) = self.heartbeat() {
                        return Some(reason);
                    }
                }
                Incoming::Eof => {
                    self.membership.reason = Disconnect::Eof;
                    return None;
                }
            }
        }
    }

    /// A data message from the client: echo it, or serve it as a request
    /// within the message rate. Returns a reason to close, if any.
    async fn on_message(&mut self, kind: Protocol, message: Bytes) -> Option<Disconnect> {
        self.node
            .metrics
            .record_message_in(Source::Ws, kind, message.len());
        if self.mode == Mode::Echo {
            // One queue entry per frame: entries are whole frames (see conn.rs).
            let opcode = match kind {
                Protocol::Json => OP_TEXT,
                Protocol::Binary => OP_BINARY,
            };
            let echo = Prepared::copy_of(opcode, &message, self.node.hub.compression());
            self.outbox.push_reply(echo.frame(self.outbox.encoding()));
            return None;
        }
        match self.rate_check() {
            // Boxed: the request handler's state is most of this future,
            // and an idle connection's task should not carry it.
            RateVerdict::Allow => Box::pin(self.on_request(kind, message)).await,
            RateVerdict::Reject => {
                // Keep the id of a readable text request in the error.
                let id = match kind {
                    Protocol::Json => std::str::from_utf8(&message)
                        .ok()
                        .and_then(|s| protocol::parse_text(s).ok())
                        .and_then(|r| r.id),
                    Protocol::Binary => None,
                };
                self.reply_error(&RequestError {
                    id,
                    code: ErrorCode::RateLimited,
                    message: "message rate exceeded; slow down".into(),
                });
            }
            RateVerdict::Close => return Some(Disconnect::RateLimited),
        }
        None
    }

    /// Parse one request (JSON in a text message, the binary form in a
    /// binary one), serve it and reply: `ack` when it had an id, `error`
    /// when it failed. Payloads stay views into `message`: no copy.
    async fn on_request(&mut self, kind: Protocol, message: Bytes) {
        let parsed = match kind {
            Protocol::Json => {
                let text = std::str::from_utf8(&message).expect("the decoder validated UTF-8");
                protocol::parse_text(text).map(|r| (r.id, r.request))
            }
            Protocol::Binary => protocol::parse_binary(&message).map(|r| (None, r)),
        };
        let (id, request) = match parsed {
            Ok(p) => p,
            Err(e) => return self.reply_error(&e),
        };
        let result = match request {
            Request::Join { group, recover, info } => {
                let binary = kind == Protocol::Binary;
                if let Err(f) = self.check_info(info) {
                    return answer(&self.node, &self.outbox, id, Err(f));
                }
                match self.join(&group, binary, recover.as_ref(), info, id).await {
                    // Answered already, in its place before recovered and
                    // held-back publications.
                    Ok((true, _)) => return,
                    Ok((false, event)) => {
                        answer(&self.node, &self.outbox, id, Ok(()));
                        // After the ack: the joining member's own `joined`
                        // comes after its answer.
                        if let Some(e) = event {
                            roster::announce(&self.node, e);
                        }
                        return;
                    }
                    Err(f) => Err(f),
                }
            }
            Request::Presence { group } => match self.presence(&group, false, id).await {
                Ok(()) => return,
                Err(f) => Err(f),
            },
            Request::PresenceStats { group } => match self.presence(&group, true, id).await {
                Ok(()) => return,
                Err(f) => Err(f),
            },
            Request::History { group, since, limit } => {
                match self
                    .history(&group, since, limit, kind == Protocol::Binary, id)
                    .await
                {
                    Ok(()) => return,
                    Err(f) => Err(f),
                }
            }
            Request::Leave { group } => {
                if let Some(name) = self.leave(&group) {
                    roster::remove(&self.node, &name, self.outbox.id(), self.user()).await;
                }
                Ok(())
            }
            Request::Publish { group, data } => {
                let payload = match data {
                    Data::Json(raw) => Payload::Json(message.slice_ref(raw.as_bytes())),
                    Data::Binary(raw) => Payload::Binary(message.slice_ref(raw)),
                };
                match self.publish(&group, payload) {
                    Ok(pending) => return self.answer_when_taken(id, pending, None),
                    Err(f) => Err(f),
                }
            }
            Request::Send { to, data } => {
                let payload = Payload::Json(message.slice_ref(data.as_bytes()));
                match ClientId::parse(&to) {
                    Some(target) => {
                        let pending = self.publish_to(Target::Conn(target), payload);
                        return self.answer_when_taken(id, pending, Some(&to));
                    }
                    None => Err(unknown_connection(&to)),
                }
            }
            Request::Refresh { token } => self.refresh(&token).await,
            Request::Ping => {
                self.reply(protocol::pong(id));
                return;
            }
        };
        answer(&self.node, &self.outbox, id, result);
    }

    /// Answer a publication (or send to `to`) once the broker has taken
    /// it. The session does not wait: with a cluster broker the answer
    /// comes from a small task while the session goes on reading, and
    /// publications pipeline (the broker keeps their order).
    fn answer_when_taken(&self, id: Option<&RawValue>, pending: Pending, to: Option<&str>) {
        match pending {
            Pending::Ready(r) => answer(&self.node, &self.outbox, id, r.map_err(|e| broker_failure(e, to))),
            Pending::Waiting(_) => {
                let node = self.node.clone();
                let outbox = self.outbox.clone();
                let id: Option<Box<RawValue>> = id.map(ToOwned::to_owned);
                let to: Option<Box<str>> = to.map(Into::into);
                tokio::spawn(async move {
                    let r = pending.wait().await;
                    answer(
                        &node,
                        &outbox,
                        id.as_deref(),
                        r.map_err(|e| broker_failure(e, to.as_deref())),
                    );
                });
            }
        }
    }

    /// `join`: become a member, subscribing the node to the group's
    /// publications if it is not yet; answered once the subscription is in
    /// place, so that whatever is published after the ack arrives.
    ///
    /// In a group with history the member is held back while the join reads
    /// the group's position (and, with `recover`, what the member missed):
    /// the answer carries the position, the recovered publications follow
    /// it, then what was published meanwhile, each once, in offset order.
    /// Returns whether it answered already (a history group's join).
    ///
    /// In a group with presence the member is listed (with `info`) before
    /// the answer; a `joined` event that is due is returned, to be sent
    /// after the answer (a history group's join sends it itself).
    async fn join(
        &mut self,
        group: &str,
        binary: bool,
        recover: Option<&protocol::Recover<'_>>,
        info: Option<&str>,
        id: Option<&RawValue>,
    ) -> Result<(bool, Option<roster::Event>), Failure> {
        self.may_join(group)?;
        let features = self.node.rules.features(group);
        let history = self.node.history.clone().filter(|_| features.history());
        if self.membership.groups.iter().any(|g| **g == *group) && history.is_none() {
            return Ok((false, None));
        }
        if self.membership.groups.iter().any(|g| **g == *group) {
            // Already a member: leave and join again, so that a recovering
            // rejoin gets what it asks for.
            self.leave(group);
        }
        let max = self.node.config.max_groups_per_connection;
        if self.membership.groups.len() >= max {
            return Err((
                ErrorCode::TooManyGroups,
                format!("a connection may be in at most {max} groups").into(),
            ));
        }
        let Some(history) = history else {
            // Listed before waiting, so that the group is left however the
            // session ends.
            let name = self.node.hub.join(group, &self.outbox, binary).name;
            self.membership.groups.push(name.clone());
            if let Err(e) = self.node.broker.subscribe(&name).wait().await {
                self.leave(&name);
                return Err(broker_failure(e, None));
            }
            let event = self.list_in_presence(&name, info).await?;
            return Ok((false, event));
        };
        let name = self.node.hub.join_buffering(group, &self.outbox, binary).name;
        self.membership.groups.push(name.clone());
        if let Err(e) = self.node.broker.subscribe(&name).wait().await {
            self.leave(&name);
            return Err(broker_failure(e, None));
        }
        let event = self.list_in_presence(&name, info).await?;
        let limit = if recover.is_some() {
            features.history_size
        } else {
            0
        };
        let page = match history.read(&name, recover.map(|r| r.offset), limit).await {
            Ok(p) => p,
            Err(e) => {
                self.leave(&name);
                roster::remove(&self.node, &name, self.outbox.id(), self.user()).await;
                return Err((ErrorCode::BrokerUnavailable, e.to_string().into()));
            }
        };
        // What is replayed goes through the member's queue: more than the
        // queue takes cannot be recovered (the client reloads instead).
        let fits = page.entries.len() <= self.node.config.queue_messages
            && page
                .entries
                .iter()
                .map(|e| e.publication.payload.bytes().len())
                .sum::<usize>()
                <= self.node.config.queue_bytes;
        let recovered = recover.map(|r| fits && page.recovers(r.offset, &r.epoch));
        if let Some(r) = recovered {
            self.node.metrics.record_recovery(r);
        }
        let encoding = self.outbox.encoding();
        let c = self.node.hub.compression();
        let answer = if binary {
            let p = protocol::joined_binary(&name, page.position.offset, &page.position.epoch, recovered);
            Some(Prepared::binary(p, c).frame(encoding))
        } else {
            id.map(|id| {
                let p = protocol::join_ack(id, page.position.offset, &page.position.epoch, recovered);
                Prepared::text(p, c).frame(encoding)
            })
        };
        let frames: Vec<(u64, Bytes)> = if recovered == Some(true) {
            page.entries
                .iter()
                .map(|e| {
                    let message = crate::broker::prepare(&self.node.hub, &e.publication, Some(e.offset));
                    (e.offset, message.frame(encoding))
                })
                .collect()
        } else {
            Vec::new()
        };
        self.node
            .hub
            .note_position(&name, page.position.offset, &page.position.epoch);
        if !self
            .node
            .hub
            .go_live(&name, self.outbox.id(), answer, frames, page.position.offset)
        {
            self.leave(&name);
            roster::remove(&self.node, &name, self.outbox.id(), self.user()).await;
            return Err((
                ErrorCode::Internal,
                "the connection left the group while joining".into(),
            ));
        }
        if let Some(e) = event {
            roster::announce(&self.node, e);
        }
        Ok((true, None))
    }

    /// The user of this connection (JWT `sub`), if it has one.
    fn user(&self) -> Option<&Arc<str>> {
        self.grant.as_ref().and_then(|g| g.user.as_ref())
    }

    /// A join's `info`: at most `max_presence_info_size` bytes of JSON.
    fn check_info(&self, info: Option<&str>) -> Result<(), Failure> {
        let max = self.node.config.max_presence_info_size;
        match info {
            Some(i) if i.len() > max => Err((
                ErrorCode::BadRequest,
                format!("field 'info' is longer than {max} bytes").into(),
            )),
            _ => Ok(()),
        }
    }

    /// List this connection in `name`'s presence, if the group has it
    /// (the hub and the broker have the member already); on failure it
    /// leaves the group again. Returns the `joined` event to send, if due.
    async fn list_in_presence(
        &mut self,
        name: &Arc<str>,
        info: Option<&str>,
    ) -> Result<Option<roster::Event>, Failure> {
        let user = self.user().cloned();
        match roster::add(&self.node, name, self.outbox.id(), user.as_ref(), info).await {
            Ok(event) => Ok(event),
            Err(e) => {
                self.leave(name);
                roster::remove(&self.node, name, self.outbox.id(), user.as_ref()).await;
                Err((ErrorCode::BrokerUnavailable, e.to_string().into()))
            }
        }
    }

    /// `presence` (`stats`: `presence_stats`): the group's members (or
    /// counts) across the cluster, for a connection allowed to join it;
    /// answered whether or not it had an id.
    async fn presence(&mut self, group: &str, stats: bool, id: Option<&RawValue>) -> Result<(), Failure> {
        self.may_join(group)?;
        let payload = roster::read(&self.node, group, stats, id)
            .await
            .map_err(|(code, m)| (code, m.into()))?;
        self.reply(payload);
        Ok(())
    }

    /// Whether the token allows joining (or reading the history of) `group`.
    fn may_join(&self, group: &str) -> Result<(), Failure> {
        if self.grant.as_ref().is_some_and(|g| !g.join.allows(group)) {
            return Err((
                ErrorCode::NotAllowed,
                format!("your token does not allow joining '{group}'").into(),
            ));
        }
        Ok(())
    }

    /// `history`: read a group's kept publications, answered with one
    /// `history` message (or binary page) whether or not it had an id.
    async fn history(
        &mut self,
        group: &str,
        since: Option<u64>,
        limit: Option<usize>,
        binary: bool,
        id: Option<&RawValue>,
    ) -> Result<(), Failure> {
        self.may_join(group)?;
        let features = self.node.rules.features(group);
        let Some(history) = self.node.history.clone().filter(|_| features.history()) else {
            return Err((
                ErrorCode::NoHistory,
                format!("group '{group}' keeps no history").into(),
            ));
        };
        let name: Arc<str> = Arc::from(group);
        let limit = limit
            .unwrap_or(protocol::MAX_HISTORY_LIMIT)
            .min(features.history_size);
        let page = history
            .read(&name, since, limit)
            .await
            .map_err(|e| (ErrorCode::BrokerUnavailable, e.to_string().into()))?;
        let payload = crate::history::answer(&name, &page, binary, id);
        let c = self.node.hub.compression();
        let message = if binary {
            Prepared::binary(payload, c)
        } else {
            Prepared::text(payload, c)
        };
        self.outbox.push_reply(message.frame(self.outbox.encoding()));
        Ok(())
    }

    /// `leave` (idempotent): out of the hub; returns the group's name
    /// when the connection was a member (presence is the caller's).
    fn leave(&mut self, group: &str) -> Option<Arc<str>> {
        let pos = self.membership.groups.iter().position(|g| **g == *group)?;
        let name = self.membership.groups.swap_remove(pos);
        self.leave_hub(&name);
        Some(name)
    }

    /// `publish`: hand the payload to the broker for every member.
    fn publish(&self, group: &str, payload: Payload) -> Result<Pending, Failure> {
        if self.grant.as_ref().is_some_and(|g| !g.publish.allows(group)) {
            return Err((
                ErrorCode::NotAllowed,
                format!("your token does not allow publishing to '{group}'").into(),
            ));
        }
        // Share the interned name when this connection is a member.
        let name = self
            .membership
            .groups
            .iter()
            .find(|g| ***g == *group)
            .cloned()
            .unwrap_or_else(|| Arc::from(group));
        Ok(self.publish_to(Target::Group(name), payload))
    }

    /// `refresh`: replace the token with a newer one for the same user.
    /// Groups the new token no longer allows are left, each with a `left`
    /// frame before the `ack`.
    async fn refresh(&mut self, token: &str) -> Result<(), Failure> {
        let Some(verifier) = self.node.auth.clone() else {
            return Err((
                ErrorCode::BadRequest,
                "authentication is not enabled on this server".into(),
            ));
        };
        let new = verifier
            .verify(token)
            .map_err(|e| (ErrorCode::InvalidToken, e.to_string().into()))?;
        let current = self.grant.as_ref().and_then(|g| g.user.clone());
        if new.user != current {
            return Err((ErrorCode::NotAllowed, "the new token is for another user".into()));
        }
        let revoked: Vec<Arc<str>> = self
            .membership
            .groups
            .iter()
            .filter(|g| !new.join.allows(g))
            .cloned()
            .collect();
        for group in revoked {
            self.leave(&group);
            roster::remove(&self.node, &group, self.outbox.id(), self.user()).await;
            self.reply(protocol::left(&group, "the new token does not allow this group"));
        }
        self.expires = new.deadline(Instant::now());
        self.grant = Some(new);
        self.arm_timer();
        Ok(())
    }

    /// Close from our side with `reason`, and wait (bounded) for the
    /// client; the reason is kept for the metrics.
    async fn close(&mut self, reason: Disconnect) {
        // The task writes the rest itself, Close included.
        self.conn.stop_direct_writes();
        // Refuse further fan-out first, so nothing lands behind the Close.
        // (A reason requested by someone else is already in place.)
        self.outbox.request_close(reason.clone());
        if !reason.flushes_queue() {
            self.outbox.discard();
        }
        self.outbox
            .push_reply(close::encode_close(reason.code(), reason.reason()));
        let wait = match reason {
            Disconnect::Shutdown => self.node.config.drain_timeout,
            _ => CLOSE_WAIT,
        };
        let client_started = matches!(reason, Disconnect::ClientClosed(_));
        self.membership.reason = reason;
        self.conn.finish(Instant::now() + wait, !client_started).await;
    }

    /// Ping when due; close when the client has been silent too long, or
    /// has not taken any of its backlog for the write timeout.
    fn heartbeat(&mut self) -> Option<Disconnect> {
        let now = Instant::now();
        if self.expires.is_some_and(|e| now >= e) {
            return Some(Disconnect::TokenExpired);
        }
        if self.stall_deadline().is_some_and(|d| now >= d) {
            self.node.metrics.record_write_stalled();
            return Some(Disconnect::WriteStalled);
        }
        if let Some(idle) = self.node.config.idle()
            && now >= self.conn.last_seen() + idle
        {
            return Some(Disconnect::IdleTimeout);
        }
        if let (Some(due), Some(every)) = (self.next_ping, self.node.config.ping())
            && now >= due
        {
            self.outbox.push_control(Bytes::from_static(&PING));
            self.next_ping = Some(now + every);
        }
        self.arm_timer();
        None
    }

    /// When a stalled backlog runs out of write timeout, if it is stalled.
    fn stall_deadline(&self) -> Option<Instant> {
        let since = self.conn.stalled_since()?;
        Some(since + self.node.config.write_stall()?)
    }

    fn arm_timer(&mut self) {
        let idle = self.node.config.idle().map(|d| self.conn.last_seen() + d);
        let deadline = [idle, self.next_ping, self.expires, self.stall_deadline()]
            .into_iter()
            .flatten()
            .min();
        if let Some(d) = deadline {
            self.conn.set_timer(d);
        }
    }

    fn rate_check(&mut self) -> RateVerdict {
        self.rate
            .as_mut()
            .map_or(RateVerdict::Allow, MessageBucket::check)
    }

    fn reply_error(&self, e: &RequestError<'_>) {
        reply_error(&self.node, &self.outbox, e);
    }

    /// Queue a message the connection owes its own client.
    fn reply(&self, payload: FramePayload) {
        reply(&self.node, &self.outbox, payload);
    }

    fn publish_to(&self, target: Target, payload: Payload) -> Pending {
        let publication = Publication {
            target,
            from: Some(self.node.client_id(self.outbox.id())),
            user: self.grant.as_ref().and_then(|g| g.user.clone()),
            payload,
        };
        self.node.broker.publish(publication)
    }

    /// Leave `name` in the hub, telling the broker when the node may have
    /// lost its last member.
    fn leave_hub(&self, name: &Arc<str>) {
        let (_, removed) = self.node.hub.leave(name, self.outbox.id());
        if removed {
            self.node.broker.unsubscribe(name);
        }
    }

    /// Leave every group, telling the broker about groups that became
    /// empty; [`Membership`]'s drop then unregisters.
    async fn cleanup(&mut self) {
        let user = self.user().cloned();
        for name in std::mem::take(&mut self.membership.groups) {
            self.leave_hub(&name);
            roster::remove_later(&self.node, name, self.outbox.id(), user.clone());
        }
        self.outbox.discard();
    }
}

/// Queue a message connection `outbox` owes its own client (compressed
/// for it when it negotiated deflate and the message is long enough).
fn reply(node: &Node, outbox: &Outbox, payload: FramePayload) {
    let message = Prepared::text(payload, node.hub.compression());
    outbox.push_reply(message.frame(outbox.encoding()));
}

fn reply_error(node: &Node, outbox: &Outbox, e: &RequestError<'_>) {
    node.metrics.record_error_sent(e.code);
    reply(node, outbox, protocol::error(e));
}

/// The reply to a request with `id`: `ack` when it had an id and
/// succeeded, `error` when it failed.
fn answer(node: &Node, outbox: &Outbox, id: Option<&RawValue>, result: Result<(), Failure>) {
    match result {
        Ok(()) => {
            if let Some(id) = id {
                reply(node, outbox, protocol::ack(id));
            }
        }
        Err((code, message)) => reply_error(node, outbox, &RequestError { id, code, message }),
    }
}

fn unknown_connection(to: &str) -> Failure {
    (
        ErrorCode::UnknownConnection,
        format!("no connection with id '{to}'").into(),
    )
}

/// The error reply for a broker failure (`to`: the target of a send).
fn broker_failure(e: BrokerError, to: Option<&str>) -> Failure {
    match e {
        BrokerError::UnknownConnection(id) => unknown_connection(to.unwrap_or(&id.to_string())),
        BrokerError::Unavailable(m) => (ErrorCode::BrokerUnavailable, m.into()),
    }
}

/// A connection's place in the hub. Dropping it leaves every group still
/// listed and unregisters the connection, so a session that ends in any way,
/// even by a panic, leaves nothing behind in the hub.
struct Membership {
    hub: Arc<Hub>,
    outbox: Arc<Outbox>,
    /// Groups this connection is in (names shared with the hub).
    groups: Vec<Arc<str>>,
    /// Why the session ended, counted when it is unregistered; stays
    /// `Aborted` if the session task is dropped before it ends.
    reason: Disconnect,
}

impl Drop for Membership {
    fn drop(&mut self) {
        for name in self.groups.drain(..) {
            self.hub.leave(&name, self.outbox.id());
        }
        self.hub.unregister(self.outbox.id(), &self.reason);
    }
}

#[cfg(test)]
mod tests {
    /// An idle connection's memory is mostly these three values (see
    /// docs/BENCHMARKS.md): a change that grows them should say so, not
    /// slip in. Bounds a little above today's sizes (release: 720, 192,
    /// 128 bytes; debug builds lay the future out a little larger).
    #[tokio::test]
    async fn an_idle_connection_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let node = crate::node::Node::new(crate::config::Config::default());
        let opening = super::Opening {
            mode: super::Mode::Protocol,
            grant: None,
            negotiated: crate::ws::handshake::Negotiated {
                accept: String::new(),
                subprotocol: None,
                deflate: None,
            },
        };
        let session = super::run(node, c, bytes::Bytes::new(), opening, None);
        let sizes = (
            std::mem::size_of_val(&session),
            std::mem::size_of::<crate::outbox::Outbox>(),
            std::mem::size_of::<crate::ws::Decoder>(),
        );
        assert!(
            sizes.0 <= 768 && sizes.1 <= 192 && sizes.2 <= 128,
            "session future, outbox, decoder: {sizes:?}"
        );
    }
}
