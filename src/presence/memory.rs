//! Presence of a single node: every member is local, kept in one map under
//! one lock (every operation is a few map updates, never an `.await`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indexmap::IndexMap;

use super::{Added, BoxFuture, Listing, Member, Presence, PresenceError, Removed, Stats};
use crate::hub::Hub;
use crate::id::ClientId;

/// One group's presence.
#[derive(Debug, Default)]
struct Group {
    /// Members in the order they joined.
    members: IndexMap<ClientId, Member>,
    /// Connections per user.
    users: HashMap<Arc<str>, u64>,
    /// Users whose last connection left, and when that pending leave
    /// lapses (nobody confirmed it: dropped without an event).
    pending: HashMap<Arc<str>, Instant>,
}

/// Presence in this process.
#[derive(Debug)]
pub struct MemoryPresence {
    groups: Mutex<HashMap<Arc<str>, Group>>,
    /// How long a pending leave is kept at most.
    ttl: Duration,
}

impl MemoryPresence {
    /// An empty store whose pending leaves lapse after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            groups: Mutex::default(),
            ttl,
        }
    }

    fn add_now(&self, group: &Arc<str>, member: Member) -> Added {
        let mut groups = lock(&self.groups);
        let g = groups.entry(group.clone()).or_default();
        let user = member.user.clone();
        let new = g.members.insert(member.conn.clone(), member).is_none();
        let first = match (new, user) {
            (false, _) => false,
            (true, None) => true,
            (true, Some(u)) => {
                let n = g.users.entry(u.clone()).or_insert(0);
                *n += 1;
                // Back within the grace: neither a leave nor a join.
                *n == 1 && g.pending.remove(&u).is_none()
            }
        };
        Added {
            first,
            connections: g.members.len() as u64,
        }
    }

    fn remove_now(&self, group: &str, conn: &ClientId, pending: bool) -> Removed {
        let mut groups = lock(&self.groups);
        let Some(g) = groups.get_mut(group) else {
            return Removed {
                last: false,
                connections: 0,
            };
        };
        let last = match g.members.shift_remove(conn) {
            None => false,
            Some(Member { user: None, .. }) => true,
            Some(Member { user: Some(u), .. }) => {
                let n = g.users.get_mut(&u).map_or(0, |n| {
                    *n -= 1;
                    *n
                });
                if n == 0 {
                    g.users.remove(&u);
                    if pending {
                        g.pending.insert(u, Instant::now() + self.ttl);
                    }
                }
                n == 0
            }
        };
        let connections = g.members.len() as u64;
        if g.members.is_empty() && g.pending.is_empty() {
            groups.remove(group);
        }
        Removed { last, connections }
    }
}

impl Presence for MemoryPresence {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn add(
        &self,
        group: &Arc<str>,
        member: Member,
        _count: bool,
    ) -> BoxFuture<'static, Result<Added, PresenceError>> {
        let added = self.add_now(group, member);
        Box::pin(async move { Ok(added) })
    }

    fn remove(
        &self,
        group: &Arc<str>,
        conn: &ClientId,
        _user: Option<&Arc<str>>,
        pending: bool,
        _count: bool,
    ) -> BoxFuture<'static, Result<Removed, PresenceError>> {
        let removed = self.remove_now(group, conn, pending);
        Box::pin(async move { Ok(removed) })
    }

    fn confirm_left(
        &self,
        group: &Arc<str>,
        user: &Arc<str>,
    ) -> BoxFuture<'static, Result<Option<u64>, PresenceError>> {
        let mut groups = lock(&self.groups);
        let confirmed = groups.get_mut(group).and_then(|g| {
            g.pending
                .remove(user)
                .filter(|_| !g.users.contains_key(user))
                .map(|_| g.members.len() as u64)
        });
        if groups
            .get(group)
            .is_some_and(|g| g.members.is_empty() && g.pending.is_empty())
        {
            groups.remove(group);
        }
        Box::pin(async move { Ok(confirmed) })
    }

    fn list(&self, group: &Arc<str>, limit: usize) -> BoxFuture<'static, Result<Listing, PresenceError>> {
        let groups = lock(&self.groups);
        let listing = groups.get(group).map_or_else(Listing::default, |g| Listing {
            members: g.members.values().take(limit).map(|m| m.json.clone()).collect(),
            stats: stats_of(g),
        });
        Box::pin(async move { Ok(listing) })
    }

    fn stats(&self, group: &Arc<str>) -> BoxFuture<'static, Result<Stats, PresenceError>> {
        let stats = lock(&self.groups)
            .get(group)
            .map_or_else(Stats::default, stats_of);
        Box::pin(async move { Ok(stats) })
    }

    fn refresh(&self, hub: Arc<Hub>) -> BoxFuture<'static, ()> {
        let now = Instant::now();
        let mut groups = lock(&self.groups);
        groups.retain(|name, g| {
            let gone: Vec<ClientId> = g
                .members
                .keys()
                .filter(|c| !hub.is_member(name, c.conn))
                .cloned()
                .collect();
            for conn in gone {
                if let Some(Member { user: Some(u), .. }) = g.members.shift_remove(&conn) {
                    let n = g.users.get_mut(&u).map_or(0, |n| {
                        *n -= 1;
                        *n
                    });
                    if n == 0 {
                        g.users.remove(&u);
                    }
                }
            }
            g.pending.retain(|_, until| *until > now);
            !(g.members.is_empty() && g.pending.is_empty())
        });
        Box::pin(async {})
    }

    fn reap(&self) -> BoxFuture<'static, Result<Vec<super::Reaped>, PresenceError>> {
        // One node: none other to die.
        Box::pin(async { Ok(Vec::new()) })
    }
}

fn stats_of(g: &Group) -> Stats {
    Stats {
        connections: g.members.len() as u64,
        users: g.users.len() as u64,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(conn: u64, user: Option<&str>) -> Member {
        Member {
            conn: ClientId { node: None, conn },
            user: user.map(Arc::from),
            json: bytes::Bytes::from(format!(r#"{{"conn":"{conn}"}}"#)),
        }
    }

    #[tokio::test]
    async fn users_join_once_and_leave_after_their_last_connection() {
        let p = MemoryPresence::new(Duration::from_secs(30));
        let g: Arc<str> = "g".into();
        let ann: Arc<str> = "ann".into();
        assert!(p.add(&g, member(1, Some("ann")), true).await.unwrap().first);
        let second = p.add(&g, member(2, Some("ann")), true).await.unwrap();
        assert_eq!((second.first, second.connections), (false, 2));
        assert!(p.add(&g, member(3, None), true).await.unwrap().first);
        assert_eq!(
            p.stats(&g).await.unwrap(),
            Stats {
                connections: 3,
                users: 1
            }
        );
        let l = p.list(&g, 2).await.unwrap();
        assert_eq!((l.members.len(), l.truncated()), (2, true));
        let c = |n| ClientId { node: None, conn: n };
        assert!(!p.remove(&g, &c(1), Some(&ann), true, true).await.unwrap().last);
        assert!(p.remove(&g, &c(2), Some(&ann), true, true).await.unwrap().last);
        // Back within the grace: no joined, and the pending leave is gone.
        assert!(!p.add(&g, member(4, Some("ann")), true).await.unwrap().first);
        assert_eq!(p.confirm_left(&g, &ann).await.unwrap(), None);
        assert!(p.remove(&g, &c(4), Some(&ann), true, true).await.unwrap().last);
        assert_eq!(p.confirm_left(&g, &ann).await.unwrap(), Some(1));
        assert_eq!(p.confirm_left(&g, &ann).await.unwrap(), None, "once");
        assert!(p.remove(&g, &c(3), None, true, true).await.unwrap().last);
        assert!(lock(&p.groups).is_empty());
    }
}
