//! Every way a connection ends, as one value: the close code and reason
//! sent to the client (if any), and the label it is counted under in the
//! metrics (`roomcast_connections_closed_total{reason}`). Documented in
//! `docs/protocol.md`.
//!
//! Whoever ends a connection, its own task or anyone else through its
//! outbox (the slow-consumer policy, shutdown, the HTTP API), says why
//! with a [`Disconnect`]; nothing downstream re-derives the reason from a
//! bare code.

use crate::ws::ProtocolError;
use crate::ws::close;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// The client closed; the server echoes its code (1000 if none).
    ClientClosed(Option<u16>),
    /// The server is shutting down (1001).
    Shutdown,
    /// The client broke RFC 6455 (1002, 1007 or 1009).
    Protocol(ProtocolError),
    /// The outbound queue was full under the `disconnect` policy (4001).
    SlowConsumer,
    /// The outbound backlog made no write progress for the write timeout,
    /// whatever the client sent meanwhile (4001, counted as a slow
    /// consumer).
    WriteStalled,
    /// Nothing received for the idle timeout (4002).
    IdleTimeout,
    /// Kept sending faster than the message rate (1008).
    RateLimited,
    /// The JWT expired and was not refreshed (4003).
    TokenExpired,
    /// Closed through the HTTP API with the caller's code and reason
    /// (boxed: every connection holds a `Disconnect`, and this is the only
    /// large variant).
    Api(Box<ApiClose>),
    /// The socket failed (reset, broken pipe): no Close frame.
    SocketError,
    /// The client closed TCP without a close handshake: no Close frame.
    Eof,
    /// The session ended without reaching any of the above (its task was
    /// dropped: a panic, or the process exiting after the drain timeout).
    Aborted,
}

/// What `/api/disconnect` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClose {
    /// 1000 or 3000..=4999.
    pub code: u16,
    /// At most 123 bytes, sent in the Close frame.
    pub reason: Box<str>,
}

/// Close code for a slow consumer: reconnect, and read faster.
pub const SLOW_CONSUMER: u16 = 4001;
/// Close code for an idle connection.
pub const IDLE_TIMEOUT: u16 = 4002;
/// Close code when the connection's token expired: reconnect with a new one.
pub const TOKEN_EXPIRED: u16 = 4003;
/// Close code used by `/api/disconnect` when the caller gives none.
pub const API_DISCONNECT: u16 = 4000;

impl Disconnect {
    /// Every metrics label, in [`Disconnect::index`] order.
    pub const LABELS: [&'static str; 11] = [
        "client_closed",
        "shutdown",
        "protocol_error",
        "slow_consumer",
        "idle_timeout",
        "api",
        "socket_error",
        "eof",
        "rate_limited",
        "token_expired",
        "aborted",
    ];

    /// Position of this reason's label in [`Disconnect::LABELS`].
    pub fn index(&self) -> usize {
        match self {
            Self::ClientClosed(_) => 0,
            Self::Shutdown => 1,
            Self::Protocol(_) => 2,
            Self::SlowConsumer | Self::WriteStalled => 3,
            Self::IdleTimeout => 4,
            Self::Api(_) => 5,
            Self::SocketError => 6,
            Self::Eof => 7,
            Self::RateLimited => 8,
            Self::TokenExpired => 9,
            Self::Aborted => 10,
        }
    }

    /// The metrics label (`reason="..."`).
    pub fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// Whether the server sends a Close frame for this reason (not when
    /// the socket is already gone).
    pub fn sends_close(&self) -> bool {
        !matches!(self, Self::SocketError | Self::Eof | Self::Aborted)
    }

    /// The close code sent to the client.
    pub fn code(&self) -> u16 {
        match self {
            Self::ClientClosed(c) => c.unwrap_or(close::NORMAL),
            Self::Shutdown => close::GOING_AWAY,
            Self::Protocol(e) => e.close_code(),
            Self::SlowConsumer | Self::WriteStalled => SLOW_CONSUMER,
            Self::IdleTimeout => IDLE_TIMEOUT,
            Self::RateLimited => close::POLICY_VIOLATION,
            Self::TokenExpired => TOKEN_EXPIRED,
            Self::Api(a) => a.code,
            Self::SocketError | Self::Eof | Self::Aborted => close::INTERNAL_ERROR,
        }
    }

    /// The close reason sent to the client.
    pub fn reason(&self) -> &str {
        match self {
            Self::ClientClosed(_) => "",
            Self::Shutdown => "server shutting down",
            Self::Protocol(ProtocolError::TooBig) => "message too big",
            Self::Protocol(e) if e.close_code() == close::INVALID_PAYLOAD => "invalid UTF-8",
            Self::Protocol(_) => "protocol error",
            Self::SlowConsumer => "slow consumer: outbound queue full",
            Self::WriteStalled => "slow consumer: not reading",
            Self::IdleTimeout => "idle timeout",
            Self::RateLimited => "message rate exceeded",
            Self::TokenExpired => "token expired",
            Self::Api(a) => &a.reason,
            Self::SocketError | Self::Eof | Self::Aborted => "",
        }
    }

    /// Whether frames already queued should still be written before the
    /// close frame. A slow consumer's backlog is what it could not read, and
    /// a client that closed wants its Close answered promptly (RFC 6455
    /// 5.5.1), so both discard it. Shutdown flushes, as do protocol errors
    /// (replies to the messages that came before the violation) and API
    /// closes ("after what is already queued").
    pub fn flushes_queue(&self) -> bool {
        !matches!(
            self,
            Self::SlowConsumer | Self::WriteStalled | Self::ClientClosed(_)
        )
    }

    /// Whether this counts as a slow-consumer disconnect in the metrics.
    pub fn is_slow_consumer(&self) -> bool {
        matches!(self, Self::SlowConsumer | Self::WriteStalled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_their_indexes() {
        let all = [
            Disconnect::ClientClosed(None),
            Disconnect::Shutdown,
            Disconnect::Protocol(ProtocolError::TooBig),
            Disconnect::SlowConsumer,
            Disconnect::IdleTimeout,
            Disconnect::Api(Box::new(ApiClose {
                code: 4000,
                reason: "".into(),
            })),
            Disconnect::SocketError,
            Disconnect::Eof,
            Disconnect::RateLimited,
            Disconnect::TokenExpired,
            Disconnect::Aborted,
        ];
        for (i, d) in all.iter().enumerate() {
            assert_eq!(d.index(), i, "{d:?}");
        }
        assert_eq!(Disconnect::SlowConsumer.label(), "slow_consumer");
        assert_eq!(Disconnect::WriteStalled.label(), "slow_consumer");
        assert_eq!(Disconnect::WriteStalled.code(), SLOW_CONSUMER);
        assert_eq!(Disconnect::Protocol(ProtocolError::InvalidUtf8).code(), 1007);
        let api = Disconnect::Api(Box::new(ApiClose {
            code: 4100,
            reason: "bye".into(),
        }));
        assert_eq!((api.code(), api.reason()), (4100, "bye"));
    }
}
