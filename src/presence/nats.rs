//! Presence in NATS JetStream: one stream, `ROOMCAST_PRESENCE`, on
//! subjects `roomcast.p.>`, kept in memory, with at most one message per
//! subject and a `max_age` of twice `presence_ttl`.
//!
//! | subject | message |
//! |---------|---------|
//! | `roomcast.p.<G>.c.<U>.<conn>` | a member: its JSON object |
//! | `roomcast.p.<G>.l.<U>` | a pending leave of user `<U>` |
//! | `roomcast.p.n.<node>` | a node's beat: `alive`, or `dead` once claimed |
//!
//! `<G>` is the group's name in unpadded base64url (as for the broker's
//! subjects), `<U>` the user's token: `u` and the first 16 hex digits of
//! the SHA-1 of its id (a fixed-size token whatever the id; distinct users
//! share one with a chance of 2^-64), `_` for a connection without a user,
//! and `<conn>` the connection id (`NODE.NUMBER`, its dots as further
//! tokens).
//!
//! Expiry: each node publishes its beat every sixth of the TTL and its
//! members' entries again every third of it (with one message per subject,
//! the new one replaces the old). A beat older than two thirds of the TTL
//! (by the server's clock: the time of a beat just published) is a dead
//! node's: the first node whose publish expecting that beat's sequence
//! succeeds claims it, and removes the node's members (their subjects end
//! in the node's name). JetStream itself removes messages older than
//! `max_age`, twice the TTL: what is left when no live node is there to
//! reap. NATS 2.9 has no per-message TTL; every node must run with the
//! same `presence_ttl` (the last node to start sets the stream's age
//! limit).
//!
//! Counts come from the stream's subject list for a filter (one request;
//! the answer names every subject, about 100 bytes per member), which is
//! why `presence_stats` on NATS grows with the group, unlike Redis's
//! `HLEN`. A user's count is the subject list of its own filter. Writes are
//! not one atomic step as in Redis: a pending leave is claimed by a
//! publish that expects the marker's sequence, so two nodes never both
//! send the same `left`; two connections of one user joining on two nodes
//! in the same instant may both count each other (no `joined`) — the next
//! listing still shows both.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use sha1::Digest as _;

use super::{Added, BoxFuture, Listing, Local, Member, Presence, PresenceError, Reaped, Removed, Stats};
use crate::hub::Hub;
use crate::id::ClientId;

/// The stream's name.
const STREAM: &str = "ROOMCAST_PRESENCE";
/// How long a connection attempt may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Entries read at once when listing.
const CONCURRENCY: usize = 64;

/// `group`'s token.
fn group_token(group: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(group.as_bytes())
}

/// `user`'s token (`_`: none).
fn user_token(user: Option<&str>) -> String {
    match user {
        None => "_".into(),
        Some(u) => {
            let digest = sha1::Sha1::digest(u.as_bytes());
            let mut t = String::with_capacity(17);
            t.push('u');
            for b in &digest[..8] {
                t.push_str(&format!("{b:02x}"));
            }
            t
        }
    }
}

fn member_subject(group: &str, user: Option<&str>, conn: &ClientId) -> String {
    format!("roomcast.p.{}.c.{}.{conn}", group_token(group), user_token(user))
}

fn pending_subject(group: &str, user: &str) -> String {
    format!("roomcast.p.{}.l.{}", group_token(group), user_token(Some(user)))
}

/// Presence in a NATS server (or cluster) with JetStream.
pub struct NatsPresence {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    ttl: Duration,
    /// This node's name (its beat).
    node: Arc<str>,
    /// This process, among the lives of a node name (random per start).
    instance: String,
    local: Local,
    /// The JetStream context and stream, once connected.
    state: tokio::sync::Mutex<Option<(jetstream::Context, stream::Stream)>>,
}

impl std::fmt::Debug for NatsPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPresence")
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

impl NatsPresence {
    /// A store on the NATS servers of `url` (as `--broker` gives them:
    /// checked by the configuration already) whose entries expire after
    /// `ttl` unless refreshed. It connects on first use.
    pub fn new(url: &str, ttl: Duration, node: Arc<str>) -> Self {
        Self {
            inner: Arc::new(Inner {
                url: url.to_string(),
                ttl,
                node,
                instance: format!("{:016x}", fastrand::u64(..)),
                local: Local::default(),
                state: tokio::sync::Mutex::new(None),
            }),
        }
    }
}

impl Inner {
    async fn state(&self) -> Result<(jetstream::Context, stream::Stream), PresenceError> {
        let mut slot = self.state.lock().await;
        if let Some(s) = &*slot {
            return Ok(s.clone());
        }
        let (servers, options) = connect_options(&self.url).map_err(PresenceError::Unavailable)?;
        let client = options
            .connection_timeout(TIMEOUT)
            .connect(servers)
            .await
            .map_err(unavailable)?;
        let js = jetstream::new(client);
        let config = stream::Config {
            name: STREAM.into(),
            subjects: vec!["roomcast.p.>".into()],
            max_messages_per_subject: 1,
            max_age: 2 * self.ttl,
            storage: stream::StorageType::Memory,
            ..Default::default()
        };
        let mut stream = js
            .get_or_create_stream(config.clone())
            .await
            .map_err(unavailable)?;
        let current = stream.info().await.map_err(unavailable)?.config.clone();
        if current.max_age != 2 * self.ttl {
            js.update_stream(config).await.map_err(unavailable)?;
            stream = js.get_stream(STREAM).await.map_err(unavailable)?;
        }
        *slot = Some((js.clone(), stream.clone()));
        Ok((js, stream))
    }

    /// Forget the connection after a failure: the next call connects again.
    async fn reset(&self) {
        *self.state.lock().await = None;
    }

    async fn checked<T>(&self, r: Result<T, PresenceError>) -> Result<T, PresenceError> {
        if r.is_err() {
            self.reset().await;
        }
        r
    }

    /// Publish `payload` on `subject` and wait for JetStream's ack.
    async fn put(&self, subject: String, payload: Bytes) -> Result<u64, PresenceError> {
        let (js, _) = self.state().await?;
        let r = async {
            let ack = js.publish(subject, payload).await.map_err(unavailable)?;
            Ok(ack.await.map_err(unavailable)?.sequence)
        }
        .await;
        self.checked(r).await
    }

    /// Remove every message on `subject`.
    async fn purge(&self, subject: String) -> Result<(), PresenceError> {
        let (_, stream) = self.state().await?;
        let r = stream
            .purge()
            .filter(subject)
            .await
            .map(|_| ())
            .map_err(unavailable);
        self.checked(r).await
    }

    /// The subjects matching `filter`.
    async fn subjects(&self, filter: String) -> Result<Vec<String>, PresenceError> {
        let (_, stream) = self.state().await?;
        let r = async {
            let info = stream.info_with_subjects(filter).await.map_err(unavailable)?;
            info.map_ok(|(s, _)| s).try_collect().await.map_err(unavailable)
        }
        .await;
        self.checked(r).await
    }

    /// The sequence of the message on `subject`, if there is one.
    async fn last_sequence(&self, subject: &str) -> Result<Option<u64>, PresenceError> {
        Ok(self.last_message(subject).await?.map(|m| m.sequence))
    }

    /// The message on `subject`, if there is one.
    async fn last_message(
        &self,
        subject: &str,
    ) -> Result<Option<async_nats::jetstream::message::StreamMessage>, PresenceError> {
        let (_, stream) = self.state().await?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => {
                self.reset().await;
                Err(unavailable(e))
            }
        }
    }

    async fn count(&self, group: &str) -> Result<u64, PresenceError> {
        let filter = format!("roomcast.p.{}.c.>", group_token(group));
        Ok(self.subjects(filter).await?.len() as u64)
    }

    async fn user_connections(&self, group: &str, user: &str) -> Result<usize, PresenceError> {
        let filter = format!("roomcast.p.{}.c.{}.>", group_token(group), user_token(Some(user)));
        Ok(self.subjects(filter).await?.len())
    }

    async fn add(&self, group: &str, member: &Member, count: bool) -> Result<Added, PresenceError> {
        let user = member.user.as_deref();
        let subject = member_subject(group, user, &member.conn);
        // Already listed (a rejoin): written again, nothing new.
        let again = self.last_sequence(&subject).await?.is_some();
        self.put(subject, member.json.clone()).await?;
        let first = match user {
            _ if again => false,
            None => true,
            Some(u) => {
                let pending = pending_subject(group, u);
                // It lapses after the TTL (the stream keeps it twice as
                // long); its age by this machine's clock against the
                // server's stamp, where a skew of a second does not matter.
                let lapsed = |m: &async_nats::jetstream::message::StreamMessage| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as i128);
                    now - m.time.unix_timestamp_nanos() > self.ttl.as_nanos() as i128
                };
                if self.last_message(&pending).await?.is_some_and(|m| !lapsed(&m)) {
                    // Back within the grace: neither a leave nor a join.
                    self.purge(pending).await?;
                    false
                } else {
                    self.user_connections(group, u).await? == 1
                }
            }
        };
        let connections = if count { self.count(group).await? } else { 0 };
        Ok(Added { first, connections })
    }

    async fn remove(
        &self,
        group: &str,
        conn: &ClientId,
        user: Option<&str>,
        pending: bool,
        count: bool,
    ) -> Result<Removed, PresenceError> {
        self.purge(member_subject(group, user, conn)).await?;
        let last = match user {
            None => true,
            Some(u) => {
                let gone = self.user_connections(group, u).await? == 0;
                if gone && pending {
                    self.put(pending_subject(group, u), Bytes::from_static(b"pending"))
                        .await?;
                }
                gone
            }
        };
        let connections = if count { self.count(group).await? } else { 0 };
        Ok(Removed { last, connections })
    }

    async fn confirm_left(&self, group: &str, user: &str) -> Result<Option<u64>, PresenceError> {
        let subject = pending_subject(group, user);
        let Some(seq) = self.last_sequence(&subject).await? else {
            return Ok(None);
        };
        if self.user_connections(group, user).await? > 0 {
            return Ok(None);
        }
        // Claim it: only one publish expecting the marker's sequence
        // succeeds, whichever nodes try.
        let (js, _) = self.state().await?;
        let claim = PublishMessage::build()
            .payload(Bytes::from_static(b"confirmed"))
            .expected_last_subject_sequence(seq);
        let claimed = match js.send_publish(subject.clone(), claim).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if !claimed {
            return Ok(None);
        }
        self.purge(subject).await?;
        Ok(Some(self.count(group).await?))
    }

    async fn list(&self, group: &str, limit: usize) -> Result<Listing, PresenceError> {
        let filter = format!("roomcast.p.{}.c.>", group_token(group));
        let subjects = self.subjects(filter).await?;
        let stats = stats_of(&subjects);
        let (_, stream) = self.state().await?;
        let reads = futures_util::stream::iter(subjects.into_iter().take(limit))
            .map(|s| {
                let stream = stream.clone();
                async move { stream.get_last_raw_message_by_subject(&s).await }
            })
            .buffered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut members = Vec::with_capacity(reads.len());
        for r in reads {
            match r {
                Ok(m) => members.push(m.payload),
                // Expired or removed since the subjects were listed.
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => {
                    self.reset().await;
                    return Err(unavailable(e));
                }
            }
        }
        Ok(Listing { members, stats })
    }

    /// Beat, claim the dead nodes, and remove their members.
    async fn reap(&self) -> Result<Vec<Reaped>, PresenceError> {
        let own = format!("roomcast.p.n.{}", self.node);
        let beat = format!("alive:{}", self.instance);
        // Another process beat under this name: this node's previous life
        // (a crash, then a restart under the same name).
        let restarted = self
            .last_message(&own)
            .await?
            .is_some_and(|m| m.payload.starts_with(b"alive:") && m.payload != beat.as_bytes());
        self.put(own.clone(), Bytes::from(beat)).await?;
        // The server's clock: the time it stamped on that beat.
        let Some(now) = self.last_message(&own).await?.map(|m| m.time) else {
            return Ok(Vec::new());
        };
        let alive = super::alive_for(self.ttl);
        let mut dead = Vec::new();
        for subject in self.subjects("roomcast.p.n.>".into()).await? {
            if subject == own {
                continue;
            }
            let Some(beat) = self.last_message(&subject).await? else {
                continue;
            };
            let age = now - beat.time;
            if !beat.payload.starts_with(b"alive:") || age.whole_milliseconds() <= alive.as_millis() as i128 {
                continue;
            }
            let (js, _) = self.state().await?;
            let claim = PublishMessage::build()
                .payload(Bytes::from_static(b"dead"))
                .expected_last_subject_sequence(beat.sequence);
            let claimed = match js.send_publish(subject.clone(), claim).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if claimed && let Some(node) = subject.strip_prefix("roomcast.p.n.") {
                dead.push(node.to_string());
            }
        }
        let mut reaped = Vec::new();
        if restarted {
            let node = self.node.to_string();
            reaped.extend(self.purge_node(&node, true).await?);
        }
        for node in dead {
            reaped.extend(self.purge_node(&node, false).await?);
        }
        Ok(reaped)
    }

    /// Remove `node`'s members (but this node's own current ones when
    /// `own`), and return them.
    async fn purge_node(&self, node: &str, own: bool) -> Result<Vec<Reaped>, PresenceError> {
        let mut reaped = Vec::new();
        let mut by_group: std::collections::HashMap<Arc<str>, Vec<Gone>> = std::collections::HashMap::new();
        for subject in self.subjects(format!("roomcast.p.*.c.*.{node}.*")).await? {
            let Some(group) = subject
                .split('.')
                .nth(2)
                .and_then(|g| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(g).ok())
                .and_then(|g| String::from_utf8(g).ok())
            else {
                continue;
            };
            let Some(m) = self.last_message(&subject).await? else {
                continue;
            };
            #[derive(serde::Deserialize)]
            struct Entry {
                conn: String,
                user: Option<String>,
            }
            let Some((conn, user)) = serde_json::from_slice::<Entry>(&m.payload)
                .ok()
                .and_then(|e| Some((ClientId::parse(&e.conn)?, e.user)))
            else {
                continue;
            };
            if own && self.local.contains(&group, &conn) {
                continue;
            }
            self.purge(subject).await?;
            by_group
                .entry(group.into())
                .or_default()
                .push((conn, user.map(Into::into)));
        }
        for (group, members) in by_group {
            let connections = self.count(&group).await?;
            for (conn, user) in members {
                let last = match &user {
                    None => true,
                    Some(u) => self.user_connections(&group, u).await? == 0,
                };
                reaped.push(Reaped {
                    group: group.clone(),
                    conn,
                    user,
                    last,
                    connections,
                });
            }
        }
        Ok(reaped)
    }

    async fn refresh(&self, hub: &Hub) {
        for (group, m) in self.local.take_gone(hub) {
            let _ = self
                .purge(member_subject(&group, m.user.as_deref(), &m.conn))
                .await;
        }
        let Ok((js, _)) = self.state().await else {
            return;
        };
        let all = self.local.snapshot();
        let acks = futures_util::stream::iter(all)
            .map(|(group, m)| {
                let js = js.clone();
                let subject = member_subject(&group, m.user.as_deref(), &m.conn);
                async move {
                    // Still a member when its turn comes (a leave after the
                    // snapshot must not be written back).
                    if !self.local.contains(&group, &m.conn) {
                        return Ok::<(), async_nats::jetstream::context::PublishError>(());
                    }
                    js.publish(subject.clone(), m.json.clone()).await?.await?;
                    // A leave that purged the entry while it was being
                    // written: purged again, or it would stay.
                    if !self.local.contains(&group, &m.conn) {
                        let _ = self.purge(subject).await;
                    }
                    Ok(())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        if let Some(Err(e)) = acks.into_iter().find(Result::is_err) {
            crate::warn_limited!(
                crate::logging::LogKind::Broker,
                error = %e,
                "cannot refresh presence in NATS; entries expire unless a later refresh works"
            );
            self.reset().await;
        }
    }
}

/// The servers of `url` (one or several comma-separated `nats://` or
/// `tls://` URLs, as `--broker` takes them) and the options carrying the
/// first credentials found (the broker's transport reads them the same
/// way).
fn connect_options(url: &str) -> Result<(Vec<async_nats::ServerAddr>, async_nats::ConnectOptions), String> {
    let mut servers = Vec::new();
    let mut options = async_nats::ConnectOptions::new();
    let mut credentials = false;
    for part in url.split(',').map(str::trim) {
        let mut parsed = url::Url::parse(part).map_err(|e| e.to_string())?;
        if !credentials && !parsed.username().is_empty() {
            credentials = true;
            let user = percent_decode(parsed.username()).ok_or("bad percent-encoding in the credentials")?;
            options = match parsed.password() {
                Some(p) => {
                    let p = percent_decode(p).ok_or("bad percent-encoding in the credentials")?;
                    options.user_and_password(user, p)
                }
                None => options.token(user),
            };
        }
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        servers.push(parsed.as_str().parse().map_err(|e| format!("{e}"))?);
    }
    Ok((servers, options))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A dead node's member, as its entry named it: connection and user.
type Gone = (ClientId, Option<Arc<str>>);

/// Counts from a group's member subjects: connections, and distinct user
/// tokens (`_`, no user, not counted).
fn stats_of(subjects: &[String]) -> Stats {
    let mut users = std::collections::HashSet::new();
    for s in subjects {
        // roomcast.p.<G>.c.<U>.<conn...>
        if let Some(u) = s.split('.').nth(4).filter(|u| *u != "_") {
            users.insert(u);
        }
    }
    Stats {
        connections: subjects.len() as u64,
        users: users.len() as u64,
    }
}

fn unavailable(e: impl std::fmt::Display) -> PresenceError {
    PresenceError::Unavailable(format!("nats: {e}"))
}

impl Presence for NatsPresence {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn add(
        &self,
        group: &Arc<str>,
        member: Member,
        count: bool,
    ) -> BoxFuture<'static, Result<Added, PresenceError>> {
        let inner = self.inner.clone();
        let group = group.clone();
        inner.local.insert(&group, member.clone());
        Box::pin(async move { inner.add(&group, &member, count).await })
    }

    fn remove(
        &self,
        group: &Arc<str>,
        conn: &ClientId,
        user: Option<&Arc<str>>,
        pending: bool,
        count: bool,
    ) -> BoxFuture<'static, Result<Removed, PresenceError>> {
        let inner = self.inner.clone();
        let group = group.clone();
        let conn = conn.clone();
        let user = user.cloned();
        inner.local.remove(&group, &conn);
        Box::pin(async move { inner.remove(&group, &conn, user.as_deref(), pending, count).await })
    }

    fn confirm_left(
        &self,
        group: &Arc<str>,
        user: &Arc<str>,
    ) -> BoxFuture<'static, Result<Option<u64>, PresenceError>> {
        let inner = self.inner.clone();
        let group = group.clone();
        let user = user.clone();
        Box::pin(async move { inner.confirm_left(&group, &user).await })
    }

    fn list(&self, group: &Arc<str>, limit: usize) -> BoxFuture<'static, Result<Listing, PresenceError>> {
        let inner = self.inner.clone();
        let group = group.clone();
        Box::pin(async move { inner.list(&group, limit).await })
    }

    fn stats(&self, group: &Arc<str>) -> BoxFuture<'static, Result<Stats, PresenceError>> {
        let inner = self.inner.clone();
        let group = group.clone();
        Box::pin(async move {
            let filter = format!("roomcast.p.{}.c.>", group_token(&group));
            Ok(stats_of(&inner.subjects(filter).await?))
        })
    }

    fn refresh(&self, hub: Arc<Hub>) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.refresh(&hub).await })
    }

    fn reap(&self) -> BoxFuture<'static, Result<Vec<Reaped>, PresenceError>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.reap().await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_valid_tokens() {
        let conn = ClientId::parse("web.1.42").unwrap();
        let s = member_subject("chat room.*>", Some("ann@example.com"), &conn);
        assert!(s.starts_with("roomcast.p.Y2hhdCByb29tLio-.c.u"), "{s}");
        assert!(s.ends_with(".web.1.42"), "{s}");
        assert!(!s.contains(' ') && !s.contains('*') && !s.contains('>'));
        assert_eq!(user_token(Some("x")).len(), 17);
        let subjects = [
            member_subject("g", Some("a"), &conn),
            member_subject("g", Some("a"), &ClientId::parse("n.1").unwrap()),
            member_subject("g", None, &ClientId::parse("n.2").unwrap()),
        ];
        assert_eq!(
            stats_of(&subjects),
            Stats {
                connections: 3,
                users: 1
            }
        );
    }
}
