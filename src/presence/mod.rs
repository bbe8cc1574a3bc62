//! Presence: who is in each group that has it, across the whole cluster,
//! and the counts that `joined` and `left` events are decided by.
//!
//! As in centrifuge, presence stands beside the broker, not inside it: the
//! broker carries publications (and the events), presence keeps a store of
//! members. Each node writes the entries of its own members and nothing
//! else; a store keeps, per group, every member's entry (the JSON object
//! presence lists: connection id, user, node, info), how many connections
//! each user has, and *pending leaves*: a user whose last connection left
//! less than the grace ago, whose `left` event waits in case it comes back.
//!
//! - [`memory`]: this process's maps (the memory broker).
//! - [`redis`]: a hash and a sorted set of expiry times per group, changed
//!   only by Lua scripts (one atomic step each).
//! - [`nats`]: a JetStream stream with one subject per member and the
//!   stream's `max_age` as the expiry.
//!
//! In a cluster each node beats (writes that it is alive) every sixth of
//! `presence_ttl` and refreshes its entries every third of it. A node
//! whose beat is older than two thirds of the TTL is dead: the first live
//! node to notice claims it (one claim succeeds, whichever nodes try),
//! removes its members and returns them ([`Presence::reap`]), so that
//! `left` events are sent for them; the members of a node that dies
//! (SIGKILL, power loss) leave presence within `presence_ttl`. Entries
//! also expire on their own at twice the TTL, should no node be left to
//! reap them. Entries are written from [`Local`], the node's own list,
//! which the refresher walks.

pub mod memory;
pub mod nats;
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::hub::Hub;
use crate::id::ClientId;

pub use memory::MemoryPresence;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One member of a group, as this node writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its connection.
    pub conn: ClientId,
    /// Its user (JWT `sub`), if it has one.
    pub user: Option<Arc<str>>,
    /// The JSON object presence lists for it
    /// ([`crate::protocol::presence_member`]).
    pub json: Bytes,
}

/// What adding a member means for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Added {
    /// The member is new to the group as a user (its user had no other
    /// connection there and no pending leave), or as a connection without
    /// a user: a `joined` event is due.
    pub first: bool,
    /// Connections in the group now (0 when not asked for).
    pub connections: u64,
}

/// What removing a member means for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// No connection of the member's user is left in the group (or the
    /// member had no user and was there): a `left` event is due, after the
    /// grace for a user (a pending leave was recorded when asked).
    pub last: bool,
    /// Connections in the group now (0 when not asked for).
    pub connections: u64,
}

/// A group's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections (members) in the group, on every node.
    pub connections: u64,
    /// Distinct users among them (connections without a user are not
    /// counted here).
    pub users: u64,
}

/// A group's members as listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Each member's JSON object, at most the limit asked for.
    pub members: Vec<Bytes>,
    /// The whole group's counts.
    pub stats: Stats,
}

impl Listing {
    /// The limit left members out.
    pub fn truncated(&self) -> bool {
        (self.members.len() as u64) < self.stats.connections
    }
}

/// A member of a dead node, removed by [`Presence::reap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Its group.
    pub group: Arc<str>,
    /// Its connection.
    pub conn: ClientId,
    /// Its user, if it had one.
    pub user: Option<Arc<str>>,
    /// No connection of its user is left in the group (or it had no user).
    pub last: bool,
    /// Connections in the group after the removal.
    pub connections: u64,
}

/// Why presence could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The store (Redis, NATS) is down or did not answer.
    #[error("presence unavailable: {0}")]
    Unavailable(String),
}

/// A presence store.
pub trait Presence: Send + Sync + 'static {
    /// `memory`, `redis` or `nats`.
    fn kind(&self) -> &'static str;

    /// Add `member` to `group` (and to this node's [`Local`] list, so that
    /// it is refreshed). `count`: also count the group's connections.
    fn add(
        &self,
        group: &Arc<str>,
        member: Member,
        count: bool,
    ) -> BoxFuture<'static, Result<Added, PresenceError>>;

    /// Remove connection `conn` (of `user`) from `group`. `pending`: when
    /// it was its user's last connection there, record a pending leave
    /// (cleared by the user's next join, or by [`Presence::confirm_left`]).
    /// `count`: also count the group's connections.
    fn remove(
        &self,
        group: &Arc<str>,
        conn: &ClientId,
        user: Option<&Arc<str>>,
        pending: bool,
        count: bool,
    ) -> BoxFuture<'static, Result<Removed, PresenceError>>;

    /// After the grace: if `user`'s pending leave of `group` is still
    /// there (the user did not come back), clear it and return the group's
    /// connection count: the caller sends the `left` event. `None` when
    /// the user came back, or another node already confirmed.
    fn confirm_left(
        &self,
        group: &Arc<str>,
        user: &Arc<str>,
    ) -> BoxFuture<'static, Result<Option<u64>, PresenceError>>;

    /// Up to `limit` members of `group`, and its counts.
    fn list(&self, group: &Arc<str>, limit: usize) -> BoxFuture<'static, Result<Listing, PresenceError>>;

    /// `group`'s counts.
    fn stats(&self, group: &Arc<str>) -> BoxFuture<'static, Result<Stats, PresenceError>>;

    /// Periodic work (every third of `presence_ttl`): drop this node's
    /// entries whose connection is no longer in the group on `hub` (a
    /// session that ended without removing them), and refresh the others
    /// in the store so that they do not expire.
    fn refresh(&self, hub: Arc<Hub>) -> BoxFuture<'static, ()>;

    /// Periodic work (every sixth of `presence_ttl`): note this node alive,
    /// then claim the nodes whose last beat is older than two thirds of the
    /// TTL, remove their members and return them.
    fn reap(&self) -> BoxFuture<'static, Result<Vec<Reaped>, PresenceError>>;
}

/// This node's own members, by group: what the refresher writes again.
#[derive(Debug, Default)]
pub struct Local {
    groups: Mutex<HashMap<Arc<str>, HashMap<ClientId, Member>>>,
}

impl Local {
    /// Note `member` of `group`.
    pub fn insert(&self, group: &Arc<str>, member: Member) {
        lock(&self.groups)
            .entry(group.clone())
            .or_default()
            .insert(member.conn.clone(), member);
    }

    /// Forget `conn` in `group`; returns whether it was there.
    pub fn remove(&self, group: &str, conn: &ClientId) -> bool {
        let mut groups = lock(&self.groups);
        let Some(members) = groups.get_mut(group) else {
            return false;
        };
        let was = members.remove(conn).is_some();
        if members.is_empty() {
            groups.remove(group);
        }
        was
    }

    /// Whether `conn` is still noted in `group`.
    pub fn contains(&self, group: &str, conn: &ClientId) -> bool {
        lock(&self.groups)
            .get(group)
            .is_some_and(|m| m.contains_key(conn))
    }

    /// The connections noted in `group`.
    pub fn conns(&self, group: &str) -> Vec<ClientId> {
        lock(&self.groups)
            .get(group)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every noted member: `(group, member)`.
    pub fn snapshot(&self) -> Vec<(Arc<str>, Member)> {
        lock(&self.groups)
            .iter()
            .flat_map(|(g, members)| members.values().map(|m| (g.clone(), m.clone())))
            .collect()
    }

    /// Take out the members whose connection is no longer in their group
    /// on `hub`, and return them.
    pub fn take_gone(&self, hub: &Hub) -> Vec<(Arc<str>, Member)> {
        let mut gone = Vec::new();
        let mut groups = lock(&self.groups);
        groups.retain(|g, members| {
            members.retain(|conn, m| {
                let here = hub.is_member(g, conn.conn);
                if !here {
                    gone.push((g.clone(), m.clone()));
                }
                here
            });
            !members.is_empty()
        });
        gone
    }
}

/// How often a node beats and looks for dead nodes: a sixth of the TTL
/// (its entries are refreshed every other beat, a third of the TTL).
pub fn beat_every(ttl: Duration) -> Duration {
    ttl / 6
}

/// How old a node's last beat may be before it counts as dead: two thirds
/// of the TTL (three missed beats), so that a dead node is found within
/// five sixths of the TTL, and its members unlisted within the TTL.
pub fn alive_for(ttl: Duration) -> Duration {
    ttl * 2 / 3
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
