//! The local registry: connections by id and groups by name, sharded so that
//! joins, leaves and publishes on different groups rarely meet on a lock.
//!
//! Fan-out takes the group's read lock, pushes the reference-counted frame
//! of one [`Prepared`] message into each member's [`Outbox`] (lock-free) and applies the slow-consumer
//! policy to members whose queue is full. Counters are added once per
//! publication, not once per recipient.
//!
//! Lock order: group shard, then group. No lock is held across an `.await`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use indexmap::IndexMap;

use crate::config::SlowConsumerPolicy;
use crate::disconnect::Disconnect;
use crate::flush::Flusher;
use crate::id::ConnId;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, PushError};
use crate::prepared::{Compression, Encoding, Prepared};

const GROUP_SHARDS: usize = 64;
const CONN_SHARDS: usize = 16;

/// Members of one group, in insertion order, removable in O(1).
#[derive(Debug, Default)]
struct Group {
    members: RwLock<IndexMap<ConnId, Member>>,
    /// Highest offset delivered here (groups with history).
    last: AtomicU64,
    /// The epoch of the group's history as this node last read it.
    epoch: Mutex<Option<Arc<str>>>,
    /// While this node catches up after a broker outage: publications
    /// with offsets are held here instead of delivered (see
    /// [`Hub::hold`]).
    holding: AtomicBool,
    held: Mutex<HeldGroup>,
}

/// Publications held for a whole group while it catches up.
#[derive(Debug, Default)]
struct HeldGroup {
    messages: Vec<(u64, Prepared)>,
    /// More arrived than a member's queue takes: some were dropped.
    overflowed: bool,
}

/// One member of a group.
#[derive(Debug)]
struct Member {
    outbox: Arc<Outbox>,
    /// It joined with the binary protocol: server notices about the group
    /// (`gap`) go to it in binary form.
    binary: bool,
    /// Publications with an offset up to this one are not delivered: the
    /// member got them from history, or joined after them.
    floor: u64,
    /// While the member's join reads history: publications with offsets
    /// that arrived meanwhile, delivered (those above what history gave)
    /// by [`Hub::go_live`].
    pending: Option<Box<Mutex<Held>>>,
}

/// Publications held back for a joining member: offset and frame.
type Held = Vec<(u64, bytes::Bytes)>;

type GroupMap = HashMap<Arc<str>, Arc<Group>>;
/// Connections by id, each with whether it is listed (reachable by id and
/// by broadcast; `/echo` connections are not, but shutdown still closes them).
type ConnMap = HashMap<ConnId, (Arc<Outbox>, bool)>;

/// Settings the hub needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Queue limit in frames per connection.
    pub queue_messages: usize,
    /// Queue limit in bytes per connection.
    pub queue_bytes: usize,
    /// What to do when a member's queue is full.
    pub policy: SlowConsumerPolicy,
    /// Do not deliver a publication back to its publisher.
    pub no_echo: bool,
    /// Flush shards for direct writes (0: none).
    pub flushers: usize,
    /// Payloads at least this long go compressed to deflate connections.
    pub compression_threshold: usize,
    /// zlib level for them.
    pub compression_level: u32,
    /// The first connection id (ids count up from it).
    pub first_id: ConnId,
}

/// Result of a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The interned group name (shared with the hub's map).
    pub name: Arc<str>,
    /// The connection was not a member before.
    pub new_member: bool,
    /// The group did not exist locally before (first local member).
    pub created: bool,
}

/// Outcome counts of one fan-out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Frames queued.
    pub delivered: usize,
    /// Frames skipped under the `drop` policy.
    pub dropped: usize,
    /// Members told to disconnect under the `disconnect` policy.
    pub disconnected: usize,
}

/// Connections and groups of this node.
#[derive(Debug)]
pub struct Hub {
    groups: Box<[Mutex<GroupMap>]>,
    conns: Box<[Mutex<ConnMap>]>,
    hasher: RandomState,
    next_id: AtomicU64,
    config: HubConfig,
    metrics: Arc<Metrics>,
    flusher: Flusher,
    compression: Arc<Compression>,
}

impl Hub {
    /// An empty hub.
    pub fn new(config: HubConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            groups: (0..GROUP_SHARDS).map(|_| Mutex::default()).collect(),
            conns: (0..CONN_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            next_id: AtomicU64::new(config.first_id.max(1)),
            flusher: Flusher::new(config.flushers, metrics.clone()),
            compression: Compression::new(
                config.compression_threshold,
                config.compression_level,
                metrics.clone(),
            ),
            config,
            metrics,
        }
    }

    /// How messages are compressed for deflate connections, for
    /// [`Prepared`] messages made for this hub's connections.
    pub fn compression(&self) -> &Arc<Compression> {
        &self.compression
    }

    /// Start the flush shards' tasks on the current runtime; until then
    /// every connection writes from its own task.
    pub fn start_flushers(&self) {
        self.flusher.start();
    }

    fn group_shard(&self, name: &str) -> &Mutex<GroupMap> {
        &self.groups[self.hasher.hash_one(name) as usize % GROUP_SHARDS]
    }

    fn conn_shard(&self, id: ConnId) -> &Mutex<ConnMap> {
        &self.conns[id as usize % CONN_SHARDS]
    }

    /// Register a new connection taking `encoding` and return its outbox
    /// (with a fresh id). An unlisted connection (the `/echo` endpoint) is
    /// counted and closed at shutdown, but cannot be found by id or reached
    /// by a broadcast, so nobody can send to it.
    pub fn register(&self, listed: bool, encoding: Encoding) -> Arc<Outbox> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Outbox::with_shard(
            id,
            self.config.queue_messages,
            self.config.queue_bytes,
            self.flusher.shard_for(id),
            encoding,
        );
        lock(self.conn_shard(id)).insert(id, (outbox.clone(), listed));
        self.metrics.connection_opened();
        outbox
    }

    /// Remove a connection from the registry; call exactly once per
    /// [`Hub::register`], with why the connection ended. The caller has
    /// already left its groups.
    pub fn unregister(&self, id: ConnId, reason: &Disconnect) {
        lock(self.conn_shard(id)).remove(&id);
        self.metrics.connection_closed(reason);
    }

    /// Look up a connection by id.
    pub fn connection(&self, id: ConnId) -> Option<Arc<Outbox>> {
        lock(self.conn_shard(id))
            .get(&id)
            .filter(|(_, listed)| *listed)
            .map(|(o, _)| o.clone())
    }

    /// Add `conn` to `group` (idempotent); `binary`: it joined with the
    /// binary protocol.
    pub fn join(&self, group: &str, conn: &Arc<Outbox>, binary: bool) -> Joined {
        self.join_member(group, conn, binary, false)
    }

    /// Add `conn` to `group` holding back publications that carry an
    /// offset, until [`Hub::go_live`]: a member joining a group with
    /// history, whose join reads the group's position (and what it missed)
    /// after subscribing.
    pub fn join_buffering(&self, group: &str, conn: &Arc<Outbox>, binary: bool) -> Joined {
        self.join_member(group, conn, binary, true)
    }

    /// End the buffering of a [`Hub::join_buffering`], under the group's
    /// lock (no publication is delivered meanwhile): queue `answer` (the
    /// join's reply, if any), then `recovered` (publications from history,
    /// in offset order), then the publications held back above both them
    /// and `position` (the group's offset when the join read it). From then
    /// on the member takes publications as they come, except those it
    /// already has. Returns false when the member is no longer in the
    /// group.
    pub fn go_live(
        &self,
        group: &str,
        id: ConnId,
        answer: Option<bytes::Bytes>,
        recovered: Vec<(u64, bytes::Bytes)>,
        position: u64,
    ) -> bool {
        let Some(g) = lock(self.group_shard(group)).get(group).cloned() else {
            return false;
        };
        let mut members = write(&g.members);
        let Some(member) = members.get_mut(&id) else {
            return false;
        };
        if let Some(answer) = answer {
            member.outbox.push_reply(answer);
        }
        let held = member
            .pending
            .take()
            .map(|p| p.into_inner().unwrap_or_else(|e| e.into_inner()))
            .unwrap_or_default();
        let start = Instant::now();
        let mut out = Fanout::default();
        let mut last = position;
        for (offset, frame) in recovered {
            last = last.max(offset);
            self.offer_frame(&member.outbox, frame, &mut out);
        }
        for (offset, frame) in held {
            if offset > last {
                last = offset;
                self.offer_frame(&member.outbox, frame, &mut out);
            }
        }
        member.floor = last;
        drop(members);
        self.count(&out, start);
        true
    }

    /// Note the position of `group`'s history that a join just read.
    pub fn note_position(&self, group: &str, offset: u64, epoch: &Arc<str>) {
        if let Some(g) = lock(self.group_shard(group)).get(group).cloned() {
            let mut e = lock(&g.epoch);
            if e.as_deref() != Some(&**epoch) {
                // Another epoch: offsets started again.
                g.last.store(offset, Ordering::Relaxed);
                *e = Some(epoch.clone());
            } else {
                g.last.fetch_max(offset, Ordering::Relaxed);
            }
        }
    }

    /// Hold back publications with offsets for every group `keeps` says
    /// keeps history, until [`Hub::catch_up`]: the broker connection was
    /// lost, and when it is back, what was missed must be delivered
    /// before what arrives live.
    pub fn hold(&self, keeps: impl Fn(&str) -> bool) {
        for shard in self.groups.iter() {
            let groups: Vec<(Arc<str>, Arc<Group>)> =
                lock(shard).iter().map(|(n, g)| (n.clone(), g.clone())).collect();
            for (name, g) in groups {
                if keeps(&name) {
                    let _members = write(&g.members);
                    g.holding.store(true, Ordering::Release);
                }
            }
        }
    }

    /// Where this node stands in `group`'s history: the highest offset it
    /// delivered and the epoch, when known.
    pub fn position(&self, group: &str) -> Option<(u64, Arc<str>)> {
        let g = lock(self.group_shard(group)).get(group).cloned()?;
        let epoch = lock(&g.epoch).clone()?;
        Some((g.last.load(Ordering::Relaxed), epoch))
    }

    /// End the hold of `group`: deliver `missed` (publications read from
    /// history after the node's position, in offset order; `None` when
    /// they could not be read or are no longer all kept: members get a
    /// `gap` instead), then the held publications above them, each
    /// member skipping what it has. Returns (members caught up, members
    /// told of a gap).
    pub fn catch_up(&self, group: &str, missed: Option<Vec<(u64, Prepared)>>) -> (usize, usize) {
        let Some(g) = lock(self.group_shard(group)).get(group).cloned() else {
            return (0, 0);
        };
        let mut members = write(&g.members);
        let held = std::mem::take(&mut *lock(&g.held));
        g.holding.store(false, Ordering::Release);
        let missed = missed.filter(|_| !held.overflowed);
        let last = g.last.load(Ordering::Relaxed);
        let start = Instant::now();
        let mut out = Fanout::default();
        let (mut caught_up, mut gaps) = (0, 0);
        let gap = missed.is_none().then(|| {
            (
                Prepared::text(crate::protocol::gap_json(group), &self.compression),
                Prepared::binary(crate::protocol::gap_binary(group), &self.compression),
            )
        });
        let mut top = last;
        for member in members.values_mut() {
            let floor = member.floor.max(last);
            if let Some((json, binary)) = &gap {
                // The gap stands where publications went missing: before
                // those held since.
                self.offer(
                    &member.outbox,
                    if member.binary { binary } else { json },
                    &mut out,
                );
                gaps += 1;
            } else {
                caught_up += 1;
            }
            let mut at = floor;
            let recovered = missed.iter().flatten().filter(|(o, _)| *o > floor);
            let later = held.messages.iter().filter(|(o, _)| *o > floor);
            for (o, message) in recovered.chain(later) {
                if *o <= at {
                    continue;
                }
                at = *o;
                match &member.pending {
                    // Still joining: its join sorts them out by offset.
                    Some(p) => lock(p).push((*o, message.frame(member.outbox.encoding()))),
                    None => self.offer(&member.outbox, message, &mut out),
                }
            }
            top = top.max(at);
        }
        g.last.store(top, Ordering::Relaxed);
        drop(members);
        self.count(&out, start);
        (caught_up, gaps)
    }

    fn join_member(&self, group: &str, conn: &Arc<Outbox>, binary: bool, buffering: bool) -> Joined {
        let mut shard = lock(self.group_shard(group));
        let (name, g, created) = match shard.get_key_value(group) {
            Some((k, g)) => (k.clone(), g.clone(), false),
            None => {
                let name: Arc<str> = Arc::from(group);
                let g = Arc::new(Group::default());
                shard.insert(name.clone(), g.clone());
                self.metrics.group_created();
                (name, g, true)
            }
        };
        let member = Member {
            outbox: conn.clone(),
            binary,
            floor: 0,
            pending: buffering.then(Box::default),
        };
        let new_member = write(&g.members).insert(conn.id(), member).is_none();
        if new_member {
            self.metrics.member_added();
        }
        Joined {
            name,
            new_member,
            created,
        }
    }

    /// Remove connection `id` from `group` (idempotent). Returns
    /// `(was_member, group_removed)`; an empty group is removed at once.
    pub fn leave(&self, group: &str, id: ConnId) -> (bool, bool) {
        let mut shard = lock(self.group_shard(group));
        let Some(g) = shard.get(group).cloned() else {
            return (false, false);
        };
        let mut members = write(&g.members);
        let was_member = members.swap_remove(&id).is_some();
        if was_member {
            self.metrics.member_removed();
        }
        let removed = members.is_empty();
        drop(members);
        if removed {
            shard.remove(group);
            self.metrics.group_removed();
        }
        (was_member, removed)
    }

    /// Number of groups with members.
    pub fn group_count(&self) -> u64 {
        self.metrics.groups()
    }

    /// Members of `group`.
    pub fn member_count(&self, group: &str) -> usize {
        let g = lock(self.group_shard(group)).get(group).cloned();
        g.map_or(0, |g| read(&g.members).len())
    }

    /// Queue `message` for every member of `group` except `from` when echo
    /// is off. One message, prepared once, shared by all. A message with
    /// an `offset` (the group keeps history) is held back for members still
    /// joining, and skipped for members who already have it.
    pub fn fanout(
        &self,
        group: &str,
        message: &Prepared,
        from: Option<ConnId>,
        offset: Option<u64>,
    ) -> Fanout {
        let start = Instant::now();
        let Some(g) = lock(self.group_shard(group)).get(group).cloned() else {
            self.count(&Fanout::default(), start);
            return Fanout::default();
        };
        let skip = if self.config.no_echo { from } else { None };
        let mut out = Fanout::default();
        {
            let members = read(&g.members);
            if let Some(o) = offset {
                if g.holding.load(Ordering::Acquire) {
                    let mut held = lock(&g.held);
                    if held.messages.len() < self.config.queue_messages {
                        held.messages.push((o, message.duplicate()));
                    } else {
                        held.overflowed = true;
                    }
                    drop(held);
                    drop(members);
                    self.count(&out, start);
                    return out;
                }
                g.last.fetch_max(o, Ordering::Relaxed);
            }
            for (&id, member) in members.iter() {
                if Some(id) == skip {
                    continue;
                }
                match offset {
                    Some(o) if o <= member.floor => {}
                    Some(o) if member.pending.is_some() => self.hold_for(member, o, message, &mut out),
                    _ => self.offer(&member.outbox, message, &mut out),
                }
            }
        }
        self.count(&out, start);
        out
    }

    /// Queue `message` for one connection; `None` if it is not connected.
    pub fn send_to(&self, id: ConnId, message: &Prepared) -> Option<Fanout> {
        let start = Instant::now();
        let outbox = self.connection(id)?;
        let mut out = Fanout::default();
        self.offer(&outbox, message, &mut out);
        self.count(&out, start);
        Some(out)
    }

    /// Queue `message` for every connection.
    pub fn broadcast(&self, message: &Prepared) -> Fanout {
        let start = Instant::now();
        let mut out = Fanout::default();
        for shard in self.conns.iter() {
            let conns = lock(shard);
            for (outbox, _) in conns.values().filter(|(_, listed)| *listed) {
                self.offer(outbox, message, &mut out);
            }
        }
        self.count(&out, start);
        out
    }

    /// Ask every connection to close for `reason` after what is queued.
    pub fn close_all(&self, reason: &Disconnect) {
        for shard in self.conns.iter() {
            for (outbox, _) in lock(shard).values() {
                outbox.request_close(reason.clone());
            }
        }
    }

    /// Groups sorted by name, after `after` (exclusive), at most `limit`,
    /// with member counts; also whether more follow. Costs a pass over all
    /// groups, fine for an operator's listing.
    pub fn list_groups(&self, after: Option<&str>, limit: usize) -> (Vec<(Arc<str>, usize)>, bool) {
        let mut all = Vec::new();
        for shard in self.groups.iter() {
            let groups: Vec<(Arc<str>, Arc<Group>)> = lock(shard)
                .iter()
                .filter(|(name, _)| after.is_none_or(|a| &***name > a))
                .map(|(n, g)| (n.clone(), g.clone()))
                .collect();
            all.extend(groups.into_iter().map(|(n, g)| (n, read(&g.members).len())));
        }
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let more = all.len() > limit;
        all.truncate(limit);
        (all, more)
    }

    /// Whether connection `id` is a member of `group` on this node.
    pub fn is_member(&self, group: &str, id: ConnId) -> bool {
        let g = lock(self.group_shard(group)).get(group).cloned();
        g.is_some_and(|g| read(&g.members).contains_key(&id))
    }

    /// Whether `group` has members on this node.
    pub fn has_members(&self, group: &str) -> bool {
        lock(self.group_shard(group)).contains_key(group)
    }

    /// Every group with members on this node.
    pub fn group_names(&self) -> Vec<Arc<str>> {
        let mut names = Vec::new();
        for shard in self.groups.iter() {
            names.extend(lock(shard).keys().cloned());
        }
        names
    }

    /// Tell every member of `group` that it may have missed publications
    /// (`gap`, JSON or binary as it joined); returns how many were told.
    /// Queued like any delivery, so a gap stands where publications went
    /// missing, and under the same slow-consumer policy.
    pub fn gap(&self, group: &str) -> usize {
        let Some(g) = lock(self.group_shard(group)).get(group).cloned() else {
            return 0;
        };
        let json = Prepared::text(crate::protocol::gap_json(group), &self.compression);
        let binary = Prepared::binary(crate::protocol::gap_binary(group), &self.compression);
        let start = Instant::now();
        let mut out = Fanout::default();
        for member in read(&g.members).values() {
            let message = if member.binary { &binary } else { &json };
            self.offer(&member.outbox, message, &mut out);
        }
        self.count(&out, start);
        out.delivered
    }

    /// Ids of the members of `group`, or `None` if it has none.
    pub fn group_members(&self, group: &str) -> Option<Vec<ConnId>> {
        let g = lock(self.group_shard(group)).get(group).cloned()?;
        let ids: Vec<ConnId> = read(&g.members).keys().copied().collect();
        (!ids.is_empty()).then_some(ids)
    }

    /// Hold a publication for a member still joining, within the limit of
    /// its queue (past it, the slow-consumer policy applies).
    fn hold_for(&self, member: &Member, offset: u64, message: &Prepared, out: &mut Fanout) {
        let Some(pending) = &member.pending else {
            return;
        };
        let mut held = lock(pending);
        if held.len() < self.config.queue_messages {
            held.push((offset, message.frame(member.outbox.encoding())));
            return;
        }
        drop(held);
        self.full(&member.outbox, out);
    }

    fn offer(&self, outbox: &Outbox, message: &Prepared, out: &mut Fanout) {
        self.offer_frame(outbox, message.frame(outbox.encoding()), out);
    }

    /// Queue one frame for `outbox`, applying the slow-consumer policy when
    /// its queue is full.
    fn offer_frame(&self, outbox: &Outbox, frame: bytes::Bytes, out: &mut Fanout) {
        match outbox.try_push(frame) {
            Ok(()) => out.delivered += 1,
            Err(PushError::Closing) => {}
            Err(PushError::Full) => self.full(outbox, out),
        }
    }

    /// The slow-consumer policy, for a member whose queue is full.
    fn full(&self, outbox: &Outbox, out: &mut Fanout) {
        match self.config.policy {
            SlowConsumerPolicy::Drop => out.dropped += 1,
            SlowConsumerPolicy::Disconnect => {
                if outbox.request_close(Disconnect::SlowConsumer) {
                    out.disconnected += 1;
                }
            }
        }
    }

    /// Add one publication's outcome and its enqueue time to the counters.
    fn count(&self, out: &Fanout, start: Instant) {
        self.metrics
            .record_fanout(out.delivered, out.dropped, out.disconnected, start.elapsed());
    }
}

/// Lock a mutex, ignoring poisoning: every critical section here leaves the
/// maps consistent (inserts and removes only), so a panic elsewhere must not
/// take the whole hub down with it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(payload: &[u8]) -> Prepared {
        let mut p = crate::ws::frame::FramePayload::with_capacity(payload.len());
        p.extend_from_slice(payload);
        Prepared::text(p, &Compression::new(256, 1, Arc::default()))
    }

    fn hub(policy: SlowConsumerPolicy, no_echo: bool) -> Hub {
        let cfg = HubConfig {
            queue_messages: 2,
            queue_bytes: 1 << 20,
            policy,
            no_echo,
            flushers: 0,
            compression_threshold: 256,
            compression_level: 1,
            first_id: 1,
        };
        Hub::new(cfg, Arc::default())
    }

    #[test]
    fn join_leave_are_idempotent_and_groups_vanish() {
        let h = hub(SlowConsumerPolicy::Disconnect, false);
        let a = h.register(true, Encoding::PLAIN);
        let b = h.register(true, Encoding::PLAIN);
        assert_ne!(a.id(), b.id());
        let j = h.join("g", &a, false);
        assert!(j.new_member && j.created);
        let j = h.join("g", &a, false);
        assert!(!j.new_member && !j.created);
        assert!(!h.join("g", &b, false).created);
        assert_eq!((h.group_count(), h.member_count("g")), (1, 2));
        assert_eq!(h.leave("g", a.id()), (true, false));
        assert_eq!(h.leave("g", a.id()), (false, false));
        assert_eq!(h.leave("g", b.id()), (true, true));
        assert_eq!((h.group_count(), h.member_count("g")), (0, 0));
        assert_eq!(h.leave("nope", 1), (false, false));
    }

    #[test]
    fn fanout_shares_one_frame_and_applies_policies() {
        for policy in [SlowConsumerPolicy::Drop, SlowConsumerPolicy::Disconnect] {
            let h = hub(policy, false);
            let a = h.register(true, Encoding::PLAIN);
            let b = h.register(true, Encoding::PLAIN);
            h.join("g", &a, false);
            h.join("g", &b, false);
            let frame = text(b"xx");
            assert_eq!(h.fanout("g", &frame, Some(a.id()), None).delivered, 2);
            // Drain a only; b is slow.
            let mut batch = Vec::new();
            a.pop_batch(&mut batch, 10, 100);
            assert!(
                batch
                    .iter()
                    .all(|f| f.as_ptr() == frame.frame(Encoding::PLAIN).as_ptr()),
                "same bytes, no copy"
            );
            a.written(batch.len(), 4 * batch.len());
            h.fanout("g", &frame, None, None);
            let out = h.fanout("g", &frame, None, None);
            match policy {
                SlowConsumerPolicy::Drop => {
                    assert_eq!(
                        out,
                        Fanout {
                            delivered: 1,
                            dropped: 1,
                            disconnected: 0
                        }
                    );
                    assert_eq!(b.close_requested(), None);
                }
                SlowConsumerPolicy::Disconnect => {
                    assert_eq!(
                        out,
                        Fanout {
                            delivered: 1,
                            dropped: 0,
                            disconnected: 1
                        }
                    );
                    assert_eq!(b.close_requested(), Some(&Disconnect::SlowConsumer));
                    // Counted once even though more frames are refused.
                    assert_eq!(h.send_to(b.id(), &frame).unwrap(), Fanout::default());
                }
            }
        }
    }

    #[test]
    fn no_echo_skips_the_publisher() {
        let h = hub(SlowConsumerPolicy::Drop, true);
        let a = h.register(true, Encoding::PLAIN);
        let b = h.register(true, Encoding::PLAIN);
        h.join("g", &a, false);
        h.join("g", &b, false);
        assert_eq!(h.fanout("g", &text(b"x"), Some(a.id()), None).delivered, 1);
        assert_eq!((a.len(), b.len()), (0, 1));
        assert!(h.send_to(999, &text(b"")).is_none());
        assert_eq!(h.send_to(a.id(), &text(b"")).unwrap().delivered, 1);
        h.unregister(a.id(), &Disconnect::Eof);
        assert!(h.connection(a.id()).is_none());
    }
}
