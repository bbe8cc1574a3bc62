//! What sessions and the HTTP API do with presence: list a member when it
//! joins a group that has presence and unlist it when it leaves, send the
//! group's `joined` and `left` events through the broker (so that they
//! reach members on every node), and answer presence reads.
//!
//! Events are per user where there is one: a user's first connection in
//! the group makes `joined`, its last one leaving makes `left`, but only
//! after `join_leave_grace`: a user back within it (a reconnect, on any
//! node) makes neither. The store decides "first" and "last" from its
//! cluster-wide counts ([`crate::presence`]). A connection without a user
//! is its own member: `joined` when it joins, `left` at once when it
//! leaves (its next connection has another id anyway). A group with more
//! connections than `join_leave_max_members` sends no events: each goes to
//! every member, so a group's event traffic grows with the square of its
//! size.
//!
//! The members of a node that dies are reaped by the first live node that
//! notices (see [`crate::presence`]), which sends their `left` events, with
//! no grace. A node shutting down sends none (see [`remove`]).
//!
//! Events go out after the joining member's `ack`, and the joining member
//! gets its own `joined` too. They carry no offset, are never kept in
//! history, and are not sent back in a recovery.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use tracing::warn;

use crate::broker::{Payload, Publication, Target};
use crate::id::ConnId;
use crate::node::Node;
use crate::presence::{Member, Presence, PresenceError};
use crate::protocol::{self, ErrorCode};
use crate::ws::frame::FramePayload;

/// An event to send once the joining member has its answer: the
/// publication, and whether it is a `joined` (for the metrics).
#[derive(Debug)]
pub struct Event(Publication, bool);

/// The node's presence store, if `group` has presence.
fn store(node: &Node, group: &str) -> Option<Arc<dyn Presence>> {
    node.presence
        .clone()
        .filter(|_| node.rules.presence(group).presence)
}

/// Connection `conn` of this node joined `group` (the hub and the broker
/// have it): list it in presence, with `info` (a JSON object, checked by
/// the caller). Returns the `joined` event to send, when one is due:
/// [`announce`] it after answering the join.
pub async fn add(
    node: &Arc<Node>,
    group: &Arc<str>,
    conn: ConnId,
    user: Option<&Arc<str>>,
    info: Option<&str>,
) -> Result<Option<Event>, PresenceError> {
    let Some(presence) = store(node, group) else {
        return Ok(None);
    };
    let events = node.rules.presence(group).join_leave;
    let id = node.client_id(conn);
    let json = protocol::presence_member(&id, user.map(|u| &**u), &node.name, info);
    let member = Member {
        conn: id.clone(),
        user: user.cloned(),
        json: Bytes::from(json),
    };
    let added = presence.add(group, member, events).await.inspect_err(|_| {
        node.metrics.record_presence_failure();
    })?;
    let due = events && added.first && within_limit(node, added.connections);
    Ok(due.then(|| {
        let e = protocol::presence_event(true, group, &id, user.map(|u| &**u), info);
        event(group, e, true)
    }))
}

/// Send an event to its group's members on every node.
pub fn announce(node: &Node, event: Event) {
    // Nobody waits for the broker's answer: an event that cannot be
    // carried (the broker is down) is lost, like the members' view of the
    // group, which a `gap` tells them about.
    node.metrics.record_presence_event(event.1);
    drop(node.broker.publish(event.0));
}

/// Connection `conn` of this node left `group` (the hub no longer has
/// it): unlist it, and send `left` when due (after the grace for a user).
pub async fn remove(node: &Arc<Node>, group: &Arc<str>, conn: ConnId, user: Option<&Arc<str>>) {
    let Some(presence) = store(node, group) else {
        return;
    };
    let events = node.rules.presence(group).join_leave;
    let grace = node.config.join_leave_grace;
    let pending = events && user.is_some() && !grace.is_zero();
    let id = node.client_id(conn);
    let removed = match presence.remove(group, &id, user, pending, events).await {
        Ok(r) => r,
        Err(e) => {
            node.metrics.record_presence_failure();
            // Its entry expires with its node's refreshes gone.
            warn!(group = %group, conn = %id, error = %e, "cannot remove a member from presence");
            return;
        }
    };
    if !events || !removed.last {
        return;
    }
    let left = || {
        let e = protocol::presence_event(false, group, &id, user.map(|u| &**u), None);
        event(group, e, false)
    };
    let Some(user) = user.filter(|_| pending) else {
        // Counted with the one leaving, as its join was.
        if within_limit(node, removed.connections + 1) {
            announce(node, left());
        }
        return;
    };
    let node2 = node.clone();
    let group2 = group.clone();
    let user = user.clone();
    let event = left();
    node.tracker.spawn(async move {
        // A node shutting down sends no event: its broker stops with it,
        // and its members are reconnecting elsewhere, where a return
        // within the grace is no event anyway. The pending leave lapses
        // with the presence TTL.
        tokio::select! {
            () = tokio::time::sleep(grace) => {}
            () = node2.shutdown.cancelled() => return,
        }
        match presence.confirm_left(&group2, &user).await {
            Ok(Some(connections)) if within_limit(&node2, connections + 1) => announce(&node2, event),
            Ok(_) => {}
            Err(e) => {
                node2.metrics.record_presence_failure();
                warn!(group = %group2, error = %e, "cannot confirm a leave in presence; no left event");
            }
        }
    });
}

/// [`remove`] in a task of its own, for a session that ends (the node's
/// shutdown waits for it).
pub fn remove_later(node: &Arc<Node>, group: Arc<str>, conn: ConnId, user: Option<Arc<str>>) {
    if store(node, &group).is_none() {
        return;
    }
    let node2 = node.clone();
    node.tracker
        .spawn(async move { remove(&node2, &group, conn, user.as_ref()).await });
}

/// Beat, and send `left` for the members of the dead nodes this node
/// claimed (the store removed them from presence): per user, once, when no
/// connection of the user is left in the group, without a grace (the node
/// is gone, not reconnecting). Called by the server's presence task.
pub async fn reap(node: &Arc<Node>) {
    let Some(presence) = node.presence.clone() else {
        return;
    };
    let reaped = match presence.reap().await {
        Ok(r) => r,
        Err(e) => {
            node.metrics.record_presence_failure();
            crate::warn_limited!(
                crate::logging::LogKind::Broker,
                error = %e,
                "cannot look for dead nodes in presence"
            );
            return;
        }
    };
    if !reaped.is_empty() {
        node.metrics.record_presence_reaped(reaped.len());
        warn!(
            members = reaped.len(),
            "removed the presence of members of a node that stopped beating (it died)"
        );
    }
    let mut told = std::collections::HashSet::new();
    for r in reaped {
        if !r.last || !node.rules.presence(&r.group).join_leave {
            continue;
        }
        if let Some(u) = &r.user
            && !told.insert((r.group.clone(), u.clone()))
        {
            continue;
        }
        if within_limit(node, r.connections + 1) {
            let e = protocol::presence_event(false, &r.group, &r.conn, r.user.as_deref(), None);
            announce(node, event(&r.group, e, false));
        }
    }
}

/// Whether a group of `connections` connections still has events (a
/// join counts the group with the joining connection, a leave with the
/// leaving one, so that a member above the limit has neither).
fn within_limit(node: &Node, connections: u64) -> bool {
    connections <= node.config.join_leave_max_members as u64
}

fn event(group: &Arc<str>, json: Vec<u8>, joined: bool) -> Event {
    let publication = Publication {
        target: Target::Group(group.clone()),
        from: None,
        user: None,
        payload: Payload::Event(Bytes::from(json)),
    };
    Event(publication, joined)
}

/// Why a presence read failed: the error code and message.
pub type ReadError = (ErrorCode, String);

/// The answer to a `presence` request (`stats`: `presence_stats`) for
/// `group`, with `id`: the JSON message.
pub async fn read(
    node: &Node,
    group: &str,
    stats: bool,
    id: Option<&RawValue>,
) -> Result<FramePayload, ReadError> {
    let Some(presence) = store(node, group) else {
        return Err((ErrorCode::NoPresence, format!("group '{group}' has no presence")));
    };
    let name: Arc<str> = Arc::from(group);
    let unavailable = |e: PresenceError| {
        node.metrics.record_presence_failure();
        (ErrorCode::BrokerUnavailable, e.to_string())
    };
    if stats {
        let s = presence.stats(&name).await.map_err(unavailable)?;
        return Ok(protocol::presence_stats_json(id, group, s.connections, s.users));
    }
    let listing = presence
        .list(&name, node.config.max_presence_members)
        .await
        .map_err(unavailable)?;
    Ok(protocol::presence_json(
        id,
        group,
        listing.stats.connections,
        listing.stats.users,
        listing.truncated(),
        listing.members.iter().map(|m| &m[..]),
    ))
}

/// Connections in `group` across the cluster, when it has presence
/// (`None` otherwise, or when the store cannot be read).
pub async fn count(node: &Node, group: &str) -> Option<u64> {
    let presence = store(node, group)?;
    match presence.stats(&Arc::from(group)).await {
        Ok(s) => Some(s.connections),
        Err(_) => {
            node.metrics.record_presence_failure();
            None
        }
    }
}

/// Up to `max_presence_members` connection ids of `group`'s members across
/// the cluster, its connection count, and whether the ids were cut; `None`
/// when the group has no presence. Err: the store cannot be read.
pub async fn connections(
    node: &Node,
    group: &str,
) -> Option<Result<(Vec<String>, u64, bool), PresenceError>> {
    let presence = store(node, group)?;
    let listing = match presence
        .list(&Arc::from(group), node.config.max_presence_members)
        .await
    {
        Ok(l) => l,
        Err(e) => {
            node.metrics.record_presence_failure();
            return Some(Err(e));
        }
    };
    #[derive(serde::Deserialize)]
    struct Conn {
        conn: String,
    }
    let ids = listing
        .members
        .iter()
        .filter_map(|m| serde_json::from_slice::<Conn>(m).ok())
        .map(|c| c.conn)
        .collect();
    Some(Ok((ids, listing.stats.connections, listing.truncated())))
}
