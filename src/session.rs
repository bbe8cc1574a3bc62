//! One client session: the roomcast protocol (or plain echo) on top of a
//! [`Conn`], the heartbeat, and cleanup when the connection ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::debug;

use crate::auth::Grant;
use crate::broker::{BrokerError, Payload, Publication, Target};
use crate::conn::{Conn, ConnError, Incoming};
use crate::disconnect::Disconnect;
use crate::hub::Hub;
use crate::limits::{MessageBucket, RateVerdict};
use crate::metrics::{CloseReason, Protocol, Source};
use crate::node::Node;
use crate::outbox::Outbox;
use crate::protocol::{self, Data, ErrorCode, Request, RequestError};
use crate::ws::Event;
use crate::ws::close;
use crate::ws::frame::{self, OP_BINARY, OP_PONG, OP_TEXT};

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
    mode: Mode,
    grant: Option<Grant>,
    direct_fd: Option<std::os::fd::RawFd>,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let outbox = node.hub.register(mode == Mode::Protocol);
    let mut conn = Conn::new(
        io,
        outbox.clone(),
        node.config.max_message_size,
        node.stats.clone(),
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
            reason: CloseReason::Aborted,
        },
        mode,
        next_ping: None,
        expires: grant.as_ref().map(|g| Instant::now() + g.remaining()),
        grant,
        rate: (node.config.message_rate > 0)
            .then(|| MessageBucket::new(node.config.message_rate, node.config.message_burst())),
    };
    async move {
        let reason = session.serve().await;
        debug!(conn = session.outbox.id(), ?reason, "connection closed");
        session.cleanup().await;
    }
}

/// What a served request still needs.
enum Reply {
    /// An `ack` (if the request had an id).
    Ack,
    /// Nothing: the handler already replied (pong).
    Sent,
}

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
    /// The main loop; returns why the connection ended, after the close
    /// handshake (if any) is done.
    async fn serve(&mut self) -> Option<Disconnect> {
        if self.node.shutdown.is_cancelled() {
            // Shutdown began while this connection was being upgraded.
            self.outbox.request_close(close::GOING_AWAY);
        }
        if self.mode == Mode::Protocol {
            self.outbox.push_reply(protocol::welcome(self.outbox.id()));
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
                    return self.close(Disconnect::Protocol(e)).await;
                }
                Err(ConnError::Io(e)) => {
                    self.membership.reason = CloseReason::SocketError;
                    crate::warn_limited!(
                        crate::logging::LogKind::SocketError,
                        conn = self.outbox.id(),
                        error = %e,
                        "socket error"
                    );
                    return None;
                }
            };
            match incoming {
                Incoming::Event(Event::Close(frame)) => {
                    // Answer with the client's code (1000 if it sent none).
                    return self.close(Disconnect::ClientClosed(frame.code)).await;
                }
                Incoming::Event(Event::Ping(payload)) => {
                    self.outbox.push_control(frame::encode(OP_PONG, &payload));
                }
                Incoming::Event(Event::Pong(_)) => {}
                Incoming::Event(Event::Text(text)) => {
                    self.node
                        .stats
                        .record_message_in(Source::Ws, Protocol::Json, text.len());
                    match self.mode {
                        Mode::Echo => self.echo(OP_TEXT, text),
                        Mode::Protocol => match self.rate_check() {
                            // Boxed: the request handler's state is most of
                            // this future, and an idle connection's task
                            // should not carry it.
                            RateVerdict::Allow => Box::pin(self.on_text(text)).await,
                            RateVerdict::Reject => self.reject_text(&text),
                            RateVerdict::Close => return self.close(Disconnect::RateLimited).await,
                        },
                    }
                }
                Incoming::Event(Event::Binary(bin)) => {
                    self.node
                        .stats
                        .record_message_in(Source::Ws, Protocol::Binary, bin.len());
                    match self.mode {
                        Mode::Echo => self.echo(OP_BINARY, bin),
                        Mode::Protocol => match self.rate_check() {
                            RateVerdict::Allow => Box::pin(self.on_binary(bin)).await,
                            RateVerdict::Reject => self.reply_error(&rate_limited(None)),
                            RateVerdict::Close => return self.close(Disconnect::RateLimited).await,
                        },
                    }
                }
                Incoming::CloseRequested(code) => {
                    // A request that came with a reason text is the HTTP
                    // API's, whatever its code; the rest are the server's own.
                    let reason = match self.outbox.close_reason() {
                        Some(_) => Disconnect::Other(code),
                        None => Disconnect::from_request(code),
                    };
                    return self.close(reason).await;
                }
                Incoming::Timer => {
                    if let Some(reason) = self.heartbeat() {
                        return self.close(reason).await;
                    }
                }
                Incoming::Eof => {
                    self.membership.reason = CloseReason::Eof;
                    return None;
                }
            }
        }
    }

    /// Close from our side with `reason`, and wait (bounded) for the client.
    async fn close(&mut self, reason: Disconnect) -> Option<Disconnect> {
        self.membership.reason = reason.into();
        // The task writes the rest itself, Close included.
        self.conn.stop_direct_writes();
        // Refuse further fan-out first, so nothing lands behind the Close.
        self.outbox.request_close(reason.code());
        if !reason.flushes_queue() {
            self.outbox.discard();
        }
        let text = match reason {
            Disconnect::Other(_) => self.outbox.close_reason().unwrap_or(""),
            _ => reason.reason(),
        };
        self.outbox.push_reply(close::encode_close(reason.code(), text));
        let wait = match reason {
            Disconnect::Shutdown => self.node.config.drain_timeout,
            _ => CLOSE_WAIT,
        };
        let client_started = matches!(reason, Disconnect::ClientClosed(_));
        self.conn.finish(Instant::now() + wait, !client_started).await;
        Some(reason)
    }

    /// Ping when due; close when the client has been silent too long.
    fn heartbeat(&mut self) -> Option<Disconnect> {
        let now = Instant::now();
        if self.expires.is_some_and(|e| now >= e) {
            return Some(Disconnect::TokenExpired);
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

    fn arm_timer(&mut self) {
        let idle = self.node.config.idle().map(|d| self.conn.last_seen() + d);
        let deadline = match (idle, self.next_ping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let deadline = match (deadline, self.expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(d) = deadline {
            self.conn.set_timer(d);
        }
    }

    fn rate_check(&mut self) -> RateVerdict {
        self.rate
            .as_mut()
            .map_or(RateVerdict::Allow, MessageBucket::check)
    }

    /// Answer a text request refused by the rate limit, keeping its id.
    fn reject_text(&self, text: &Bytes) {
        let s = std::str::from_utf8(text).unwrap_or("");
        let id = protocol::parse_text(s).ok().and_then(|r| r.id);
        self.reply_error(&rate_limited(id));
    }

    fn echo(&mut self, opcode: u8, payload: Bytes) {
        // One queue entry per frame: entries are whole frames (see conn.rs).
        self.outbox.push_reply(frame::encode(opcode, &payload));
    }

    fn reply_error(&self, e: &RequestError<'_>) {
        self.node.stats.record_error_sent(e.code);
        self.outbox.push_reply(protocol::error(e));
    }

    fn reply_ok(&self, id: Option<&RawValue>) {
        if let Some(id) = id {
            self.outbox.push_reply(protocol::ack(id));
        }
    }

    async fn on_text(&mut self, text: Bytes) {
        let s = std::str::from_utf8(&text).expect("the decoder validated UTF-8");
        match protocol::parse_text(s) {
            Ok(req) => {
                let id = req.id;
                match self.handle(req.request, &text, id).await {
                    Ok(Reply::Ack) => self.reply_ok(id),
                    Ok(Reply::Sent) => {}
                    Err(e) => self.reply_error(&e),
                }
            }
            Err(e) => self.reply_error(&e),
        }
    }

    async fn on_binary(&mut self, bin: Bytes) {
        let result = match protocol::parse_binary(&bin) {
            Ok(req) => self.handle(req, &bin, None).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.reply_error(&e);
        }
    }

    /// Serve one request. `frame` is the message the request borrows from,
    /// so payloads can be shared without a copy.
    async fn handle<'a>(
        &mut self,
        req: Request<'_>,
        frame: &Bytes,
        id: Option<&'a RawValue>,
    ) -> Result<Reply, RequestError<'a>> {
        let err = |code, message: String| RequestError {
            id,
            code,
            message: message.into(),
        };
        match req {
            Request::Join { group } => {
                if self.grant.as_ref().is_some_and(|g| !g.join.allows(&group)) {
                    return Err(err(
                        ErrorCode::NotAllowed,
                        format!("your token does not allow joining '{group}'"),
                    ));
                }
                if !self.membership.groups.iter().any(|g| **g == *group) {
                    let max = self.node.config.max_groups_per_connection;
                    if self.membership.groups.len() >= max {
                        return Err(err(
                            ErrorCode::TooManyGroups,
                            format!("a connection may be in at most {max} groups"),
                        ));
                    }
                    let joined = self.node.hub.join(&group, &self.outbox);
                    if joined.created
                        && let Err(e) = self.node.broker.subscribe(joined.name.clone()).await
                    {
                        self.leave_group(&joined.name).await;
                        return Err(err(ErrorCode::Internal, e.to_string()));
                    }
                    self.membership.groups.push(joined.name);
                }
                Ok(())
            }
            Request::Leave { group } => {
                if let Some(pos) = self.membership.groups.iter().position(|g| **g == *group) {
                    let name = self.membership.groups.swap_remove(pos);
                    self.leave_group(&name).await;
                }
                Ok(())
            }
            Request::Publish { group, data } => {
                if self.grant.as_ref().is_some_and(|g| !g.publish.allows(&group)) {
                    return Err(err(
                        ErrorCode::NotAllowed,
                        format!("your token does not allow publishing to '{group}'"),
                    ));
                }
                let name = self
                    .membership
                    .groups
                    .iter()
                    .find(|g| ***g == *group)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(&*group));
                let payload = match data {
                    Data::Json(raw) => Payload::Json(frame.slice_ref(raw.as_bytes())),
                    Data::Binary(raw) => Payload::Binary(frame.slice_ref(raw)),
                };
                self.publish(Target::Group(name), payload)
                    .await
                    .map_err(|e| err(ErrorCode::Internal, e.to_string()))
            }
            Request::Send { to, data } => {
                let unknown = || {
                    err(
                        ErrorCode::UnknownConnection,
                        format!("no connection with id '{to}'"),
                    )
                };
                let target: u64 = to.parse().map_err(|_| unknown())?;
                match self
                    .publish(
                        Target::Conn(target),
                        Payload::Json(frame.slice_ref(data.as_bytes())),
                    )
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(BrokerError::UnknownConnection(_)) => Err(unknown()),
                    Err(e) => Err(err(ErrorCode::Internal, e.to_string())),
                }
            }
            Request::Refresh { token } => {
                let Some(verifier) = self.node.auth.clone() else {
                    return Err(err(
                        ErrorCode::BadRequest,
                        "authentication is not enabled on this server".into(),
                    ));
                };
                let new = verifier
                    .verify(&token)
                    .map_err(|e| err(ErrorCode::InvalidToken, e.to_string()))?;
                let current = self.grant.as_ref().and_then(|g| g.user.clone());
                if new.user != current {
                    return Err(err(
                        ErrorCode::NotAllowed,
                        "the new token is for another user".into(),
                    ));
                }
                self.expires = Some(Instant::now() + new.remaining());
                self.grant = Some(new);
                self.arm_timer();
                Ok(())
            }
            Request::Ping => {
                self.outbox.push_reply(protocol::pong(id));
                return Ok(Reply::Sent);
            }
        }
        .map(|()| Reply::Ack)
    }

    async fn publish(&self, target: Target, payload: Payload) -> Result<(), BrokerError> {
        let publication = Publication {
            target,
            from: Some(self.outbox.id()),
            user: self.grant.as_ref().and_then(|g| g.user.clone()),
            payload,
        };
        self.node.broker.publish(publication).await.map(|_| ())
    }

    async fn leave_group(&self, name: &Arc<str>) {
        let (_, removed) = self.node.hub.leave(name, self.outbox.id());
        if removed && let Err(e) = self.node.broker.unsubscribe(name.clone()).await {
            debug!(group = %name, error = %e, "broker unsubscribe failed");
        }
    }

    /// Leave every group, telling the broker about groups that became
    /// empty; [`Membership`]'s drop then unregisters.
    async fn cleanup(&mut self) {
        for name in std::mem::take(&mut self.membership.groups) {
            self.leave_group(&name).await;
        }
        self.outbox.discard();
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
    reason: CloseReason,
}

impl Drop for Membership {
    fn drop(&mut self) {
        for name in self.groups.drain(..) {
            self.hub.leave(&name, self.outbox.id());
        }
        self.hub.unregister(self.outbox.id(), self.reason);
    }
}

fn rate_limited(id: Option<&RawValue>) -> RequestError<'_> {
    RequestError {
        id,
        code: ErrorCode::RateLimited,
        message: "message rate exceeded; slow down".into(),
    }
}
