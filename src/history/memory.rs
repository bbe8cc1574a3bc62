//! History in this process's memory, for the memory broker: a ring buffer
//! per group, bounded by the group's `history_size` and `history_ttl`, and
//! all of them together by `--history-memory`.
//!
//! The memory broker calls [`MemoryHistory::append`] with a closure that
//! delivers the publication; it runs under the group's stream lock, so
//! members receive offsets in order, and a reader (a recovering join) sees
//! either a publication in history or after its read, never neither.
//!
//! A stream's position and epoch outlive its entries by [`META_TTL`], so
//! that a member who missed nothing can still recover after a quiet spell.
//! Past the memory bound, the streams published to least recently are
//! dropped whole: the next publication starts a new epoch, and members
//! recovering from the old one learn that they cannot.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BoxFuture, Entry, History, HistoryError, Page, Position, new_epoch};
use crate::groups::Features;
use crate::metrics::Metrics;
use crate::publication::Publication;

const SHARDS: usize = 64;
/// How long a stream's position is kept after its last publication.
pub const META_TTL: Duration = Duration::from_secs(24 * 3600);
/// Bytes counted for a stream besides its entries and name.
const STREAM_OVERHEAD: usize = 160;
/// Bytes counted for an entry besides its payload and names.
const ENTRY_OVERHEAD: usize = 96;

#[derive(Debug)]
struct Kept {
    at: Instant,
    size: usize,
    entry: Entry,
}

#[derive(Debug)]
struct Stream {
    epoch: Arc<str>,
    top: u64,
    kept: VecDeque<Kept>,
    /// Bytes counted for this stream (entries, name, overhead).
    bytes: usize,
    last: Instant,
    ttl: Duration,
    /// Taken out of the map (expired or evicted): whoever still holds it
    /// must look the group up again.
    removed: bool,
}

impl Stream {
    /// Drop entries past their TTL or beyond `size`; returns bytes freed.
    fn trim(&mut self, now: Instant, size: usize) -> usize {
        let mut freed = 0;
        while let Some(front) = self.kept.front() {
            if self.kept.len() > size || now.duration_since(front.at) >= self.ttl {
                freed += front.size;
                self.kept.pop_front();
            } else {
                break;
            }
        }
        self.bytes -= freed;
        freed
    }

    fn position(&self) -> Position {
        Position {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }

    fn page(&self, since: Option<u64>, limit: usize) -> Page {
        let first_kept = self.kept.front().map_or(self.top + 1, |k| k.entry.offset);
        let (start, complete) = match since {
            Some(n) => (
                self.kept.partition_point(|k| k.entry.offset <= n),
                n <= self.top && n.saturating_add(1) >= first_kept,
            ),
            None => (self.kept.len().saturating_sub(limit), true),
        };
        let entries: Vec<Entry> = self
            .kept
            .range(start..)
            .take(limit)
            .map(|k| k.entry.clone())
            .collect();
        Page {
            more: self.kept.len() - start > entries.len(),
            entries,
            position: self.position(),
            complete,
        }
    }
}

type Shard = HashMap<Arc<str>, Arc<Mutex<Stream>>>;

/// Every group's history on this node.
#[derive(Debug)]
pub struct MemoryHistory {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    bytes: AtomicUsize,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl MemoryHistory {
    /// Empty history, bounded by `limit` bytes in all.
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            bytes: AtomicUsize::new(0),
            limit,
            metrics,
        })
    }

    fn shard(&self, group: &str) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(group) as usize % SHARDS]
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn add_bytes(&self, n: usize) {
        let total = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        self.metrics.set_history_bytes(total);
    }

    fn sub_bytes(&self, n: usize) {
        if n > 0 {
            let total = self.bytes.fetch_sub(n, Ordering::Relaxed) - n;
            self.metrics.set_history_bytes(total);
        }
    }

    /// The group's stream, created if `create` (else `None` when there is
    /// none).
    fn stream(&self, group: &Arc<str>, create: bool, ttl: Duration) -> Option<Arc<Mutex<Stream>>> {
        let mut shard = lock(self.shard(group));
        if let Some(s) = shard.get(group) {
            return Some(s.clone());
        }
        if !create {
            return None;
        }
        let bytes = STREAM_OVERHEAD + group.len();
        let s = Arc::new(Mutex::new(Stream {
            epoch: new_epoch(),
            top: 0,
            kept: VecDeque::new(),
            bytes,
            last: Instant::now(),
            ttl,
            removed: false,
        }));
        shard.insert(group.clone(), s.clone());
        drop(shard);
        self.add_bytes(bytes);
        self.metrics.history_stream_created();
        Some(s)
    }

    /// Append `p` to `group`'s history (kept as `features` say) and call
    /// `deliver` with its offset while the stream is locked: publications
    /// to one group are delivered in offset order, and a concurrent
    /// [`History::read`] sees each either in history or not yet published.
    pub fn append<R>(
        &self,
        group: &Arc<str>,
        features: Features,
        p: &Publication,
        deliver: impl FnOnce(u64) -> R,
    ) -> R {
        let size = ENTRY_OVERHEAD
            + p.payload.bytes().len()
            + p.user.as_deref().map_or(0, str::len)
            + p.from
                .as_ref()
                .and_then(|f| f.node.as_deref())
                .map_or(0, str::len);
        let (result, freed) = loop {
            let stream = self
                .stream(group, true, features.history_ttl)
                .expect("created when missing");
            let mut s = lock(&stream);
            if s.removed {
                continue;
            }
            let now = Instant::now();
            s.top += 1;
            s.last = now;
            s.ttl = features.history_ttl;
            let offset = s.top;
            s.kept.push_back(Kept {
                at: now,
                size,
                entry: Entry {
                    offset,
                    publication: p.clone(),
                },
            });
            s.bytes += size;
            let freed = s.trim(now, features.history_size);
            let result = deliver(offset);
            break (result, freed);
        };
        self.metrics.history_appended();
        self.add_bytes(size);
        self.sub_bytes(freed);
        if self.bytes() > self.limit {
            self.evict();
        }
        result
    }

    /// Drop the streams published to least recently until the total is
    /// back under nine tenths of the limit.
    fn evict(&self) {
        let mut all: Vec<(Instant, Arc<str>)> = Vec::new();
        for shard in self.shards.iter() {
            for (name, s) in lock(shard).iter() {
                all.push((lock(s).last, name.clone()));
            }
        }
        all.sort_unstable_by_key(|(last, _)| *last);
        let target = self.limit / 10 * 9;
        for (_, name) in all {
            if self.bytes() <= target {
                break;
            }
            self.remove(&name, |_| true);
            self.metrics.history_stream_evicted();
        }
    }

    /// Remove `group`'s stream if `when` says so (checked under its lock).
    fn remove(&self, group: &str, when: impl FnOnce(&Stream) -> bool) {
        let mut shard = lock(self.shard(group));
        let Some(stream) = shard.get(group).cloned() else {
            return;
        };
        let mut s = lock(&stream);
        if !when(&s) {
            return;
        }
        s.removed = true;
        let bytes = s.bytes;
        drop(s);
        shard.remove(group);
        drop(shard);
        self.sub_bytes(bytes);
        self.metrics.history_stream_removed();
    }

    /// Drop expired entries, and streams whose last publication is older
    /// than [`META_TTL`]. Run every few seconds.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let streams: Vec<(Arc<str>, Arc<Mutex<Stream>>)> =
                lock(shard).iter().map(|(n, s)| (n.clone(), s.clone())).collect();
            for (name, stream) in streams {
                let (freed, stale) = {
                    let mut s = lock(&stream);
                    let size = s.kept.len();
                    (s.trim(now, size), now.duration_since(s.last) >= META_TTL)
                };
                self.sub_bytes(freed);
                if stale {
                    self.remove(&name, |s| now.duration_since(s.last) >= META_TTL);
                }
            }
        }
    }

    /// Read synchronously (see [`History::read`]).
    pub fn read_now(&self, group: &Arc<str>, since: Option<u64>, limit: usize) -> Page {
        loop {
            let Some(stream) = self.stream(group, false, Duration::ZERO) else {
                // Never published to (or forgotten): an empty stream in an
                // epoch of its own, created now so that the epoch holds.
                let stream = self
                    .stream(group, true, crate::groups::DEFAULT_HISTORY_TTL)
                    .expect("created");
                let s = lock(&stream);
                if s.removed {
                    continue;
                }
                return s.page(since, limit);
            };
            let mut s = lock(&stream);
            if s.removed {
                continue;
            }
            let now = Instant::now();
            let size = s.kept.len();
            let freed = s.trim(now, size);
            let page = s.page(since, limit);
            drop(s);
            self.sub_bytes(freed);
            return page;
        }
    }
}

impl History for MemoryHistory {
    fn read(
        &self,
        group: &Arc<str>,
        since: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Page, HistoryError>> {
        let page = self.read_now(group, since, limit);
        Box::pin(async move { Ok(page) })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publication::{Payload, Target};

    fn publication(n: u32) -> Publication {
        Publication {
            target: Target::Group("g".into()),
            from: None,
            user: None,
            payload: Payload::Json(format!("{n}").into()),
        }
    }

    fn features(size: usize) -> Features {
        Features {
            history_size: size,
            history_ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn offsets_count_up_and_the_ring_keeps_the_latest() {
        let h = MemoryHistory::new(1 << 20, Arc::default());
        let g: Arc<str> = "g".into();
        let empty = h.read_now(&g, Some(0), 10);
        assert_eq!(
            (empty.position.offset, empty.complete, empty.entries.len()),
            (0, true, 0)
        );
        for n in 1..=5 {
            assert_eq!(h.append(&g, features(3), &publication(n), |o| o), u64::from(n));
        }
        let p = h.read_now(&g, Some(2), 10);
        assert_eq!(p.position.epoch, empty.position.epoch, "the epoch held");
        let offsets: Vec<u64> = p.entries.iter().map(|e| e.offset).collect();
        assert_eq!((offsets, p.complete, p.more), (vec![3, 4, 5], true, false));
        assert!(p.recovers(2, &empty.position.epoch));
        let p = h.read_now(&g, Some(1), 10);
        assert!(!p.complete, "offset 2 is no longer kept");
        assert!(!p.recovers(1, &empty.position.epoch));
        let p = h.read_now(&g, Some(3), 1);
        assert_eq!((p.entries[0].offset, p.more), (4, true));
        assert!(!h.read_now(&g, Some(9), 10).complete, "an offset from the future");
        assert!(!h.read_now(&g, Some(5), 10).recovers(5, "other"));
        let p = h.read_now(&g, None, 2);
        let offsets: Vec<u64> = p.entries.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![4, 5]);
        assert!(h.read_now(&g, Some(5), 0).recovers(5, &p.position.epoch));
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_stalest_streams() {
        let metrics = Arc::new(Metrics::default());
        let h = MemoryHistory::new(1 << 20, metrics);
        let big = Publication {
            payload: Payload::Binary(vec![0; 100_000].into()),
            ..publication(0)
        };
        let old: Arc<str> = "old".into();
        let epoch = h.read_now(&old, None, 0).position.epoch;
        h.append(&old, features(100), &big, |_| ());
        for i in 0..30 {
            let g: Arc<str> = format!("g{i}").into();
            h.append(&g, features(100), &big, |_| ());
            assert!(h.bytes() <= 1 << 20, "{}", h.bytes());
        }
        let p = h.read_now(&old, Some(1), 10);
        assert_ne!(p.position.epoch, epoch, "evicted: a new epoch");
        assert!(!p.recovers(1, &epoch));
    }

    #[test]
    fn entries_expire() {
        let h = MemoryHistory::new(1 << 20, Arc::default());
        let g: Arc<str> = "g".into();
        let f = Features {
            history_size: 10,
            history_ttl: Duration::from_millis(1),
        };
        h.append(&g, f, &publication(1), |_| ());
        std::thread::sleep(Duration::from_millis(5));
        h.sweep();
        let p = h.read_now(&g, Some(0), 10);
        assert_eq!((p.position.offset, p.entries.len(), p.complete), (1, 0, false));
        assert!(
            h.read_now(&g, Some(1), 10).complete,
            "a member who missed nothing still recovers"
        );
    }
}
