//! What fan-out subscribers count: every delivery of the load tool's own
//! publications, checked for order and duplicates and timed, by whichever
//! reader (runtime tasks or epoll threads) reads the subscriber.

use std::sync::atomic::{AtomicU64, Ordering};

use memchr::memmem::Finder;

use super::histogram::Histogram;
use super::now_us;

/// What subscribers count, shared by all of them.
#[derive(Debug, Default)]
pub(super) struct Received {
    pub messages: AtomicU64,
    pub out_of_order: AtomicU64,
    pub duplicates: AtomicU64,
    /// Text frames that were not a delivery of ours.
    pub unexpected: AtomicU64,
    /// Subscribers the server closed (e.g. slow consumer, 4001).
    pub closed: AtomicU64,
    /// When the last delivery arrived ([`now_us`]).
    pub last_us: AtomicU64,
    pub latency: Histogram,
}

static DATA: std::sync::LazyLock<Finder<'static>> = std::sync::LazyLock::new(|| Finder::new(br#""data":""#));

/// The `(publisher, seq, timestamp)` in a delivery's data.
pub(super) fn parse_delivery(text: &[u8]) -> Option<(u64, u64, u64)> {
    let at = DATA.find(text)? + 8;
    let mut fields = text[at..].splitn(4, |&b| b == b':');
    let mut num = || -> Option<u64> { std::str::from_utf8(fields.next()?).ok()?.parse().ok() };
    Some((num()?, num()?, num()?))
}

/// One subscriber's counts not yet added to the shared ones.
#[derive(Debug, Default)]
pub(super) struct Local {
    pub n: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    pub max: u64,
}

impl Local {
    /// Count a text frame: a delivery of ours (latency from its timestamp,
    /// order per publisher) or an unexpected frame. `clock` is the arrival
    /// time of the read it came in, taken on first use.
    pub fn text(&mut self, t: &[u8], clock: &mut Option<u64>, shared: &Received, last_seq: &mut [u64]) {
        match parse_delivery(t) {
            Some((p, seq, ts)) if (p as usize) < last_seq.len() => {
                let latency = clock.get_or_insert_with(now_us).saturating_sub(ts);
                shared.latency.record(latency);
                self.max = self.max.max(latency);
                self.n += 1;
                let last = &mut last_seq[p as usize];
                if seq > *last {
                    *last = seq;
                } else if seq == *last {
                    self.duplicates += 1;
                } else {
                    self.out_of_order += 1;
                }
            }
            _ => self.unexpected += 1,
        }
    }

    pub fn flush(&mut self, shared: &Received) {
        if self.n > 0 {
            shared.messages.fetch_add(self.n, Ordering::Relaxed);
            shared.last_us.fetch_max(now_us(), Ordering::Relaxed);
            shared.latency.note_max(self.max);
        }
        if self.out_of_order + self.duplicates + self.unexpected > 0 {
            shared
                .out_of_order
                .fetch_add(self.out_of_order, Ordering::Relaxed);
            shared.duplicates.fetch_add(self.duplicates, Ordering::Relaxed);
            shared.unexpected.fetch_add(self.unexpected, Ordering::Relaxed);
        }
        *self = Self::default();
    }
}
