//! Logging setup, and a limiter for log lines that one misbehaving client
//! or a network storm could repeat thousands of times a second.
//!
//! Each kind of per-connection error is logged at most once per interval
//! (a minute by default); the next line that gets through says how many
//! were suppressed in between. The check is two relaxed atomics, so it is
//! cheap enough to sit on error paths of hot loops.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Install the global subscriber. `filter` (flag or config) wins over
/// `RUST_LOG`, which wins over `info`.
pub fn init(format: LogFormat, filter: Option<&str>) {
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // Logs go to stderr: stdout stays free for command output.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Kinds of repeated error, each limited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// Reading or writing a client socket failed.
    SocketError = 0,
    /// A client broke RFC 6455.
    ProtocolViolation = 1,
    /// Accepting a TCP connection failed (often: out of file descriptors).
    AcceptError = 2,
    /// An HTTP connection or upgrade failed.
    HttpError = 3,
    /// A message from the cluster broker was not a roomcast envelope.
    Broker = 4,
}

const KINDS: usize = 5;

/// At most one line per kind per interval.
#[derive(Debug)]
pub struct LogLimiter {
    interval_ms: u64,
    start: Instant,
    /// Milliseconds since `start` of the last line let through, plus one
    /// (0 means never).
    last: [AtomicU64; KINDS],
    suppressed: [AtomicU64; KINDS],
}

impl LogLimiter {
    /// A limiter letting one line per kind through every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval_ms: interval.as_millis() as u64,
            start: Instant::now(),
            last: Default::default(),
            suppressed: Default::default(),
        }
    }

    /// Whether a line of `kind` may be logged now; if so, returns how many
    /// were suppressed since the last one.
    pub fn allow(&self, kind: LogKind) -> Option<u64> {
        self.allow_at(kind, self.start.elapsed().as_millis() as u64 + 1)
    }

    fn allow_at(&self, kind: LogKind, now: u64) -> Option<u64> {
        let k = kind as usize;
        let last = self.last[k].load(Relaxed);
        if last != 0 && now < last + self.interval_ms {
            self.suppressed[k].fetch_add(1, Relaxed);
            return None;
        }
        // One winner per interval even when several threads race here.
        if self.last[k]
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_err()
        {
            self.suppressed[k].fetch_add(1, Relaxed);
            return None;
        }
        Some(self.suppressed[k].swap(0, Relaxed))
    }
}

/// The process-wide limiter used by the server (one line per kind per minute).
pub fn limiter() -> &'static LogLimiter {
    static LIMITER: std::sync::OnceLock<LogLimiter> = std::sync::OnceLock::new();
    LIMITER.get_or_init(|| LogLimiter::new(Duration::from_secs(60)))
}

/// Log a warning of `kind` through the process-wide limiter.
#[macro_export]
macro_rules! warn_limited {
    ($kind:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $crate::logging::limiter().allow($kind) {
            tracing::warn!(suppressed, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_with_a_count_of_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(60));
        assert_eq!(l.allow_at(LogKind::SocketError, 1), Some(0));
        for t in 2..100 {
            assert_eq!(l.allow_at(LogKind::SocketError, t), None);
        }
        // Another kind is independent.
        assert_eq!(l.allow_at(LogKind::ProtocolViolation, 50), Some(0));
        assert_eq!(l.allow_at(LogKind::SocketError, 59_999), None);
        assert_eq!(l.allow_at(LogKind::SocketError, 60_001), Some(99));
        assert_eq!(l.allow_at(LogKind::SocketError, 60_002), None);
    }
}
