//! Every way the server ends a connection, as a value with a close code and
//! a reason (documented in `docs/protocol.md`).

use crate::ws::ProtocolError;
use crate::ws::close;

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client closed; the server echoes its code (1000 if none).
    ClientClosed(Option<u16>),
    /// The server is shutting down (1001).
    Shutdown,
    /// The client broke RFC 6455 (1002, 1007 or 1009).
    Protocol(ProtocolError),
    /// The outbound queue was full under the `disconnect` policy (4001).
    SlowConsumer,
    /// Nothing received for the idle timeout (4002).
    IdleTimeout,
    /// Kept sending faster than the message rate (1008).
    RateLimited,
    /// The JWT expired and was not refreshed (4003).
    TokenExpired,
    /// Requested by code, for close requests that arrive through an outbox.
    Other(u16),
}

/// Close code for a slow consumer: reconnect, and read faster.
pub const SLOW_CONSUMER: u16 = 4001;
/// Close code for an idle connection.
pub const IDLE_TIMEOUT: u16 = 4002;
/// Close code when the connection's token expired: reconnect with a new one.
pub const TOKEN_EXPIRED: u16 = 4003;

impl Disconnect {
    /// The close code sent to the client.
    pub fn code(self) -> u16 {
        match self {
            Self::ClientClosed(c) => c.unwrap_or(close::NORMAL),
            Self::Shutdown => close::GOING_AWAY,
            Self::Protocol(e) => e.close_code(),
            Self::SlowConsumer => SLOW_CONSUMER,
            Self::IdleTimeout => IDLE_TIMEOUT,
            Self::RateLimited => close::POLICY_VIOLATION,
            Self::TokenExpired => TOKEN_EXPIRED,
            Self::Other(c) => c,
        }
    }

    /// The close reason sent to the client.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ClientClosed(_) => "",
            Self::Shutdown => "server shutting down",
            Self::Protocol(ProtocolError::TooBig) => "message too big",
            Self::Protocol(e) if e.close_code() == close::INVALID_PAYLOAD => "invalid UTF-8",
            Self::Protocol(_) => "protocol error",
            Self::SlowConsumer => "slow consumer: outbound queue full",
            Self::IdleTimeout => "idle timeout",
            Self::RateLimited => "message rate exceeded",
            Self::TokenExpired => "token expired",
            Self::Other(_) => "",
        }
    }

    /// Interpret a close code that arrived as a request through an outbox.
    pub fn from_request(code: u16) -> Self {
        match code {
            close::GOING_AWAY => Self::Shutdown,
            SLOW_CONSUMER => Self::SlowConsumer,
            IDLE_TIMEOUT => Self::IdleTimeout,
            c => Self::Other(c),
        }
    }

    /// Whether frames already queued should still be written before the
    /// close frame. A slow consumer's backlog is what it could not read, and
    /// a client that closed wants its Close answered promptly (RFC 6455
    /// 5.5.1), so both discard it. Shutdown flushes, as do protocol errors
    /// (replies to the messages that came before the violation).
    pub fn flushes_queue(self) -> bool {
        !matches!(self, Self::SlowConsumer | Self::ClientClosed(_))
    }
}
