//! The typed configuration of `roomcast serve`.
//!
//! One struct holds every setting with its default. Today it is filled from
//! command-line flags; the TOML file and `ROOMCAST_*` environment layers land
//! in the same struct.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// What to do with a member whose outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowConsumerPolicy {
    /// Close the connection with code 4001 so the client reconnects.
    Disconnect,
    /// Skip the message for that member only (counted as dropped).
    Drop,
}

/// Settings of the server.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Largest WebSocket message accepted from a client, in bytes (sum of
    /// its fragments); larger ones close the connection with 1009.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_message_size: usize,

    /// How often the server pings each client on /ws (0s: never).
    #[arg(long, value_name = "DUR", default_value = "25s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Close a connection (code 4002) when nothing, not even a pong, has
    /// arrived for this long (0s: never).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Outbound queue limit per connection, in frames.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub queue_messages: usize,

    /// Outbound queue limit per connection, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    pub queue_bytes: usize,

    /// What happens when a client's outbound queue is full: `disconnect`
    /// closes it with code 4001, `drop` skips the message for that client.
    #[arg(long, value_enum, default_value_t = SlowConsumerPolicy::Disconnect)]
    pub slow_consumer: SlowConsumerPolicy,

    /// Most groups one connection may be in at once.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_groups_per_connection: usize,

    /// On SIGINT/SIGTERM, how long to wait for queued messages to be written
    /// and clients to acknowledge the close before exiting anyway.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Do not deliver a publication back to the connection that published it.
    #[arg(long)]
    pub no_echo: bool,

    /// Do not serve the plain echo endpoint at /echo (used for conformance).
    #[arg(long)]
    pub disable_echo_endpoint: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_message_size: 64 * 1024,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            queue_messages: 1024,
            queue_bytes: 1024 * 1024,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            max_groups_per_connection: 128,
            drain_timeout: Duration::from_secs(10),
            no_echo: false,
            disable_echo_endpoint: false,
        }
    }
}

/// A setting that cannot work, named.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting '{key}': {message}")]
pub struct ConfigError {
    /// The offending key (flag name without dashes).
    pub key: &'static str,
    /// Why.
    pub message: String,
}

/// Longest accepted duration setting: far beyond any sensible value, and
/// small enough that deadlines computed from it never overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Largest message size accepted as a setting (1 GiB).
const MAX_MESSAGE_LIMIT: usize = 1 << 30;

impl Config {
    /// Reject combinations that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, message: &str| {
            Err(ConfigError {
                key,
                message: message.to_owned(),
            })
        };
        if self.max_message_size == 0 || self.max_message_size > MAX_MESSAGE_LIMIT {
            return err("max-message-size", "must be between 1 and 1073741824 bytes");
        }
        if self.queue_messages == 0 {
            return err("queue-messages", "must be at least 1");
        }
        if self.queue_bytes == 0 {
            return err("queue-bytes", "must be at least 1");
        }
        if self.max_groups_per_connection == 0 {
            return err("max-groups-per-connection", "must be at least 1");
        }
        for (key, d) in [
            ("ping-interval", self.ping_interval),
            ("idle-timeout", self.idle_timeout),
            ("drain-timeout", self.drain_timeout),
        ] {
            if d > MAX_DURATION {
                return err(key, "must be at most 24h");
            }
        }
        if !self.idle_timeout.is_zero()
            && !self.ping_interval.is_zero()
            && self.ping_interval >= self.idle_timeout
        {
            return err(
                "ping-interval",
                "must be shorter than idle-timeout, or clients that only answer pings time out",
            );
        }
        Ok(())
    }

    /// The ping interval, `None` when pings are off.
    pub fn ping(&self) -> Option<Duration> {
        (!self.ping_interval.is_zero()).then_some(self.ping_interval)
    }

    /// The idle timeout, `None` when off.
    pub fn idle(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }
}

/// Parse `25s`, `500ms`, `1m 30s` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 25s, 500ms, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn rejects_unworkable_settings() {
        let c = Config {
            ping_interval: Duration::from_secs(60),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "ping-interval");
        let c = Config {
            queue_messages: 0,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "queue-messages");
        assert!(parse_duration("500ms").is_ok());
        assert!(parse_duration("soon").is_err());
    }
}
