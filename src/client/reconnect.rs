//! `--reconnect`: which ends of a connection are retried, and how long to
//! wait before each attempt.

use std::time::Duration;

use super::ClientError;

/// The wait before the first attempt, before jitter.
pub const FIRST_WAIT: Duration = Duration::from_millis(100);
/// The longest wait between attempts, before jitter.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// A connection that stayed up this long resets the backoff: its loss is
/// news, not the next failure of a server that keeps dropping us.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Whether a connection that ended with `e` is retried. Everything that
/// says the connection is gone is (the socket's end or error, and every
/// close by the server, which the protocol asks clients to answer by
/// reconnecting), except 1002 and 1007: those say this client broke the
/// protocol, and doing it again would get the same close.
pub fn retries(e: &ClientError) -> bool {
    match e {
        ClientError::Lost(_) => true,
        ClientError::Closed { code, .. } => !matches!(code, 1002 | 1007),
        _ => false,
    }
}

/// Whether a failed reconnect attempt is tried again. A server that
/// refuses our credentials (HTTP 401 or 403) will refuse the same ones
/// next time: the token is in the URL, which does not change, so the
/// client stops rather than knock forever. An invalid argument (a
/// `--ca-cert` file gone since the start) is final too.
pub fn retries_attempt(e: &ClientError) -> bool {
    !matches!(e, ClientError::Denied { .. } | ClientError::Usage(_))
}

/// Exponential backoff with jitter: attempt n waits between half and all of
/// `FIRST_WAIT * 2^(n-1)`, capped at `MAX_WAIT`, so that clients dropped
/// together by a restarting server do not all knock at the same moment.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The next attempt's number (from 1) and how long to wait before it.
    pub fn next(&mut self) -> (u32, Duration) {
        self.attempt = self.attempt.saturating_add(1);
        (self.attempt, jittered(ceiling(self.attempt)))
    }

    /// The number of the attempt last handed out (0: none since a reset).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Start again from `FIRST_WAIT`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The wait of attempt `n` before jitter.
fn ceiling(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    FIRST_WAIT.saturating_mul(1 << doublings).min(MAX_WAIT)
}

/// A wait drawn uniformly between half of `d` and `d`.
fn jittered(d: Duration) -> Duration {
    let half = d / 2;
    half + Duration::from_nanos(fastrand::u64(0..=(d - half).as_nanos() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let ms: Vec<u128> = (1..=9).map(|n| ceiling(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(ceiling(u32::MAX), MAX_WAIT);
    }

    #[test]
    fn waits_between_half_and_all() {
        let mut b = Backoff::default();
        for n in 1..=40 {
            let (attempt, wait) = b.next();
            assert_eq!(attempt, n);
            let c = ceiling(n);
            assert!(wait >= c / 2 && wait <= c, "attempt {n}: {wait:?} outside {c:?}");
        }
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.next().0, 1);
    }

    #[test]
    fn what_is_retried() {
        assert!(retries(&ClientError::Lost("reset".into())));
        for code in [1000, 1001, 1005, 1008, 1009, 4000, 4001, 4002, 4003] {
            let e = ClientError::Closed {
                code,
                reason: String::new(),
            };
            assert!(retries(&e), "{code}");
        }
        for code in [1002, 1007] {
            let e = ClientError::Closed {
                code,
                reason: String::new(),
            };
            assert!(!retries(&e), "{code}");
        }
        assert!(!retries(&ClientError::Protocol("x".into())));
        let refused = ClientError::Connect {
            url: "u".into(),
            reason: "refused".into(),
        };
        assert!(retries_attempt(&refused));
        let denied = ClientError::Denied {
            url: "u".into(),
            reason: "HTTP 401".into(),
        };
        assert!(!retries_attempt(&denied));
    }
}
