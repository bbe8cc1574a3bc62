//! Presence in Redis: five keys per group, changed only by Lua scripts so
//! that each operation is one atomic step whichever node runs it.
//!
//! | key | type | holds |
//! |-----|------|-------|
//! | `roomcast:p:{G}` | hash | connection id → the member's JSON object |
//! | `roomcast:px:{G}` | sorted set | connection id, scored by its expiry (ms, Redis's clock) |
//! | `roomcast:pu:{G}` | hash | user → its connections in the group |
//! | `roomcast:pc:{G}` | hash | connection id → its user (connections with one) |
//! | `roomcast:pl:{G}` | sorted set | users with a pending leave, scored by when it lapses |
//!
//! Nodes: `roomcast:pn:{nodes}` (sorted set: node → its last beat, ms),
//! `roomcast:pi:{nodes}` (hash: node → the process beating under its name,
//! to tell a restart under the same name; one Redis Cluster slot with the
//! beats, as the beat script uses both) and `roomcast:pg:NODE` (set: the
//! groups where the node has members). A node found dead is taken out of
//! the beats by one script (so only one live node claims it), and its
//! members are removed from each of its groups by another, which returns
//! them for `left` events.
//!
//! Every group script first removes the entries whose expiry (twice the
//! TTL: a safety net for a cluster left without live nodes) has passed,
//! adjusting the user counts.
//! Counts are `HLEN`s: `presence_stats` costs the same for ten members or a
//! million. The keys of a group expire `presence_ttl` after the last write,
//! so an abandoned group leaves nothing behind; the braces put them in one
//! Redis Cluster slot. Times come from Redis's `TIME`, so the nodes' clocks
//! do not matter.
//!
//! The store has its own connection (from the broker URL), apart from the
//! broker's, reconnected on the next call after a failure.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use super::{Added, BoxFuture, Listing, Local, Member, Presence, PresenceError, Reaped, Removed, Stats};
use crate::hub::Hub;
use crate::id::ClientId;

/// Drops expired entries; the start of every script. KEYS: the five keys.
const SWEEP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, c in ipairs(expired) do
  redis.call('HDEL', KEYS[1], c)
  local u = redis.call('HGET', KEYS[4], c)
  if u then
    redis.call('HDEL', KEYS[4], c)
    if redis.call('HINCRBY', KEYS[3], u, -1) <= 0 then redis.call('HDEL', KEYS[3], u) end
  end
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
"#;

/// Add a member. ARGV: connection id, JSON, user ('' for none), TTL (ms).
/// Returns {first, connections}.
const ADD: &str = r#"
local ttl = tonumber(ARGV[4])
local new = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
local first = 0
if new == 1 then
  if ARGV[3] == '' then
    first = 1
  else
    redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
    if redis.call('HINCRBY', KEYS[3], ARGV[3], 1) == 1 and redis.call('ZREM', KEYS[5], ARGV[3]) == 0 then
      first = 1
    end
  end
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
return {first, redis.call('HLEN', KEYS[1])}
"#;

/// Push a member's expiry back, if it is still there. ARGV: connection id,
/// TTL (ms). Returns 1, or 0 when it is gone (expired).
const REFRESH: &str = r#"
local ttl = tonumber(ARGV[2])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
return 1
"#;

/// Remove a member. ARGV: connection id, pending ('1': record a pending
/// leave for a user's last connection), TTL (ms). Returns {last,
/// connections}.
const REMOVE: &str = r#"
local ttl = tonumber(ARGV[3])
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local last = 0
local u = redis.call('HGET', KEYS[4], ARGV[1])
if u then
  redis.call('HDEL', KEYS[4], ARGV[1])
  if redis.call('HINCRBY', KEYS[3], u, -1) <= 0 then
    redis.call('HDEL', KEYS[3], u)
    last = 1
    if ARGV[2] == '1' then
      redis.call('ZADD', KEYS[5], now + ttl, u)
      redis.call('PEXPIRE', KEYS[5], ttl)
    end
  end
elseif removed == 1 then
  last = 1
end
return {last, redis.call('HLEN', KEYS[1])}
"#;

/// Confirm a pending leave. ARGV: user. Returns {1, connections} when this
/// call cleared it and the user has no connection, {0, 0} otherwise.
const CONFIRM: &str = r#"
if redis.call('ZREM', KEYS[5], ARGV[1]) == 1 and redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then
  return {1, redis.call('HLEN', KEYS[1])}
end
return {0, 0}
"#;

/// List members. ARGV: limit. Returns {connections, users, {json...}}.
const LIST: &str = r#"
local n = redis.call('HLEN', KEYS[1])
local limit = tonumber(ARGV[1])
local out = {}
if n <= limit then
  out = redis.call('HVALS', KEYS[1])
else
  local seen = {}
  local cursor = '0'
  repeat
    local r = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', 256)
    cursor = r[1]
    local kv = r[2]
    for i = 2, #kv, 2 do
      if #out < limit and not seen[kv[i - 1]] then
        seen[kv[i - 1]] = true
        out[#out + 1] = kv[i]
      end
    end
  until cursor == '0' or #out >= limit
end
return {n, redis.call('HLEN', KEYS[3]), out}
"#;

/// Count. Returns {connections, users}.
const STATS: &str = r#"
return {redis.call('HLEN', KEYS[1]), redis.call('HLEN', KEYS[3])}
"#;

/// Remove a dead node's members. ARGV: the pattern of its connection ids
/// (`NODE.*`), then connection ids to keep (a restarted node's own).
/// Returns {connections, {conn, user ('' for none), last, ...}}.
const PURGE: &str = r#"
local keep = {}
for i = 2, #ARGV do keep[ARGV[i]] = true end
local out = {}
local cursor = '0'
repeat
  local r = redis.call('HSCAN', KEYS[1], cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  local kv = r[2]
  for i = 1, #kv, 2 do
    local c = kv[i]
    if not keep[c] and redis.call('HDEL', KEYS[1], c) == 1 then
      redis.call('ZREM', KEYS[2], c)
      local u = redis.call('HGET', KEYS[4], c)
      local last = 1
      if u then
        redis.call('HDEL', KEYS[4], c)
        if redis.call('HINCRBY', KEYS[3], u, -1) <= 0 then
          redis.call('HDEL', KEYS[3], u)
        else
          last = 0
        end
      else
        u = ''
      end
      out[#out + 1] = c
      out[#out + 1] = u
      out[#out + 1] = last
    end
  end
until cursor == '0'
return {redis.call('HLEN', KEYS[1]), out}
"#;

/// Beat, and claim the dead nodes. KEYS: `roomcast:pn:{nodes}`,
/// `roomcast:pi:{nodes}` (hash: node → the process that beats under its name). ARGV: this node,
/// how old a beat may be (ms), most nodes to claim, this process's
/// instance. Returns {restarted, {nodes claimed}}: `restarted` is 1 when
/// another process beat under this node's name before (this node's
/// previous life, whose members are to be reaped); a claimed node is taken
/// out of the set, so no other caller gets it.
const BEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prev = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[1], now, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0, tonumber(ARGV[3]))
for _, n in ipairs(dead) do
  redis.call('ZREM', KEYS[1], n)
  redis.call('HDEL', KEYS[2], n)
end
local restarted = 0
if prev and prev ~= ARGV[4] then restarted = 1 end
return {restarted, dead}
"#;

/// Every script, the group scripts with the sweep in front: (name, code).
fn scripts() -> [(Script, String); 8] {
    [
        (Script::Add, ADD),
        (Script::Refresh, REFRESH),
        (Script::Remove, REMOVE),
        (Script::Confirm, CONFIRM),
        (Script::List, LIST),
        (Script::Stats, STATS),
        (Script::Purge, PURGE),
        (Script::Beat, BEAT),
    ]
    .map(|(s, body)| match s {
        Script::Beat => (s, body.to_string()),
        _ => (s, format!("{SWEEP}{body}")),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Add,
    Refresh,
    Remove,
    Confirm,
    List,
    Stats,
    Purge,
    Beat,
}

/// Dead nodes claimed at once, at most.
const REAP_NODES: usize = 16;

/// How long a connection attempt or an answer may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Most scripts in one pipeline of the refresher.
const BATCH: usize = 512;

/// The set of the groups where `node` has members.
fn node_groups_key(node: &str) -> Vec<u8> {
    [b"roomcast:pg:", node.as_bytes()].concat()
}

/// The five keys of `group`.
fn keys(group: &str) -> [Vec<u8>; 5] {
    ["p", "px", "pu", "pc", "pl"]
        .map(|k| [b"roomcast:", k.as_bytes(), b":{", group.as_bytes(), b"}"].concat())
}

/// A connection and the SHA1s of the scripts loaded on it.
#[derive(Clone)]
struct Connection {
    conn: MultiplexedConnection,
    shas: Arc<[String; 8]>,
}

/// Presence kept in a Redis server.
pub struct RedisPresence {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    /// This node's name (its beat, its groups' set).
    node: Arc<str>,
    /// This process, among the lives of a node name (random per start).
    instance: String,
    connection: tokio::sync::Mutex<Option<Connection>>,
    local: Local,
    ttl: Duration,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisPresence {
    /// A store on the Redis server at `url` (checked by the configuration
    /// already) whose entries expire after `ttl` unless refreshed. It
    /// connects on first use.
    pub fn new(url: &str, ttl: Duration, node: Arc<str>) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                node,
                instance: format!("{:016x}", fastrand::u64(..)),
                connection: tokio::sync::Mutex::new(None),
                local: Local::default(),
                ttl,
            }),
        })
    }
}

impl Inner {
    async fn connection(&self) -> Result<Connection, PresenceError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)?;
        let mut shas: [String; 8] = Default::default();
        for (i, (_, code)) in scripts().iter().enumerate() {
            shas[i] = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(code)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        let c = Connection {
            conn,
            shas: Arc::new(shas),
        };
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Drop the connection: the next call connects again (and loads the
    /// scripts again, should Redis have lost them).
    async fn reset(&self) {
        *self.connection.lock().await = None;
    }

    fn command(shas: &[String; 8], script: Script, group: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&shas[script as usize]).arg(5);
        for k in keys(group) {
            cmd.arg(k);
        }
        cmd
    }

    /// Run `script` on `group`'s keys with `args`.
    async fn run(&self, script: Script, group: &str, args: &[&[u8]]) -> Result<redis::Value, PresenceError> {
        let Connection { mut conn, shas } = self.connection().await?;
        let mut cmd = Self::command(&shas, script, group);
        for a in args {
            cmd.arg(*a);
        }
        match cmd.query_async::<redis::Value>(&mut conn).await {
            Ok(redis::Value::ServerError(e)) => {
                self.reset().await;
                Err(PresenceError::Unavailable(e.to_string()))
            }
            Ok(v) => Ok(v),
            Err(e) => {
                self.reset().await;
                Err(unavailable(e))
            }
        }
    }

    /// A pending leave's lifetime.
    fn ttl_ms(&self) -> String {
        self.ttl.as_millis().max(1).to_string()
    }

    /// An entry's own lifetime: twice the TTL (a live node reaps a dead
    /// one's entries within the TTL; this is for when none is left).
    fn entry_ttl_ms(&self) -> String {
        (2 * self.ttl.as_millis()).max(1).to_string()
    }

    /// Run a plain command, resetting the connection on failure.
    async fn plain<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, PresenceError> {
        let Connection { mut conn, .. } = self.connection().await?;
        match cmd.query_async::<T>(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.reset().await;
                Err(unavailable(e))
            }
        }
    }

    /// Beat, claim the dead nodes, and remove their members.
    async fn reap(&self) -> Result<Vec<Reaped>, PresenceError> {
        let Connection { mut conn, shas } = self.connection().await?;
        let alive = super::alive_for(self.ttl).as_millis().to_string();
        let (restarted, dead): (u8, Vec<String>) = match redis::cmd("EVALSHA")
            .arg(&shas[Script::Beat as usize])
            .arg(2)
            .arg("roomcast:pn:{nodes}")
            .arg("roomcast:pi:{nodes}")
            .arg(&*self.node)
            .arg(alive)
            .arg(REAP_NODES)
            .arg(&self.instance)
            .query_async(&mut conn)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                self.reset().await;
                return Err(unavailable(e));
            }
        };
        let mut reaped = Vec::new();
        if restarted == 1 {
            // This node's previous life (a crash, then a restart under the
            // same name): its members, but not this life's.
            reaped.extend(self.purge_node(&self.node, true).await?);
        }
        for node in dead {
            reaped.extend(self.purge_node(&node, false).await?);
            let _: () = self.plain(redis::cmd("DEL").arg(node_groups_key(&node))).await?;
        }
        Ok(reaped)
    }

    /// Remove `node`'s members from every group it had members in (but
    /// this node's own current ones when `own`).
    async fn purge_node(&self, node: &str, own: bool) -> Result<Vec<Reaped>, PresenceError> {
        let groups: Vec<String> = self
            .plain(redis::cmd("SMEMBERS").arg(node_groups_key(node)))
            .await?;
        let pattern = format!("{}.*", node.replace(['*', '?', '[', ']', '\\'], ""));
        let mut reaped = Vec::new();
        for group in groups {
            let keep: Vec<String> = if own {
                self.local.conns(&group).iter().map(ToString::to_string).collect()
            } else {
                Vec::new()
            };
            let mut args: Vec<&[u8]> = vec![pattern.as_bytes()];
            args.extend(keep.iter().map(|k| k.as_bytes()));
            let group: Arc<str> = group.into();
            let v = self.run(Script::Purge, &group, &args).await?;
            reaped.extend(parse_purged(&group, v)?);
        }
        Ok(reaped)
    }

    async fn add_member(&self, group: &str, member: &Member) -> Result<Added, PresenceError> {
        let conn = member.conn.to_string();
        let user = member.user.as_deref().unwrap_or("");
        let ttl = self.entry_ttl_ms();
        let v = self
            .run(
                Script::Add,
                group,
                &[conn.as_bytes(), &member.json, user.as_bytes(), ttl.as_bytes()],
            )
            .await?;
        let _: () = self
            .plain(redis::cmd("SADD").arg(node_groups_key(&self.node)).arg(group))
            .await?;
        let [first, connections] = ints(&v)?;
        Ok(Added {
            first: first == 1,
            connections,
        })
    }

    async fn do_refresh(self: Arc<Self>, hub: Arc<Hub>) {
        for (group, m) in self.local.take_gone(&hub) {
            let conn = m.conn.to_string();
            let _ = self
                .run(
                    Script::Remove,
                    &group,
                    &[conn.as_bytes(), b"0", self.ttl_ms().as_bytes()],
                )
                .await;
        }
        let all = self.local.snapshot();
        let ttl = self.entry_ttl_ms();
        // The groups where this node has members, for whoever reaps it.
        let key = node_groups_key(&self.node);
        let mut index = redis::pipe();
        index.cmd("DEL").arg(&key).ignore();
        let groups: std::collections::HashSet<&Arc<str>> = all.iter().map(|(g, _)| g).collect();
        for chunk in groups.into_iter().collect::<Vec<_>>().chunks(BATCH) {
            index
                .cmd("SADD")
                .arg(&key)
                .arg(chunk.iter().map(|g| g.as_bytes()).collect::<Vec<_>>())
                .ignore();
        }
        index.cmd("PEXPIRE").arg(&key).arg(&ttl).ignore();
        if let Ok(Connection { mut conn, .. }) = self.connection().await
            && index.query_async::<()>(&mut conn).await.is_err()
        {
            self.reset().await;
        }
        for chunk in all.chunks(BATCH) {
            let Ok(Connection { mut conn, shas }) = self.connection().await else {
                return;
            };
            let mut pipe = redis::pipe();
            for (group, m) in chunk {
                let mut cmd = Self::command(&shas, Script::Refresh, group);
                cmd.arg(m.conn.to_string()).arg(&ttl);
                pipe.add_command(cmd);
            }
            let answers: Vec<redis::Value> = match pipe.query_async(&mut conn).await {
                Ok(a) => a,
                Err(e) => {
                    crate::warn_limited!(
                        crate::logging::LogKind::Broker,
                        error = %e,
                        "cannot refresh presence in Redis; entries expire unless a later refresh works"
                    );
                    self.reset().await;
                    return;
                }
            };
            // Gone (expired while this node could not refresh, or the
            // Redis data was lost): written again while still members.
            for ((group, m), answer) in chunk.iter().zip(answers) {
                if matches!(answer, redis::Value::Int(0)) && self.local.contains(group, &m.conn) {
                    let _ = self.add_member(group, m).await;
                    // A leave that removed it while it was being written:
                    // removed again, or it would stay.
                    if !self.local.contains(group, &m.conn) {
                        let conn = m.conn.to_string();
                        let _ = self
                            .run(
                                Script::Remove,
                                group,
                                &[conn.as_bytes(), b"0", self.ttl_ms().as_bytes()],
                            )
                            .await;
                    }
                }
            }
        }
    }
}

/// [`PURGE`]'s answer as reaped members.
fn parse_purged(group: &Arc<str>, v: redis::Value) -> Result<Vec<Reaped>, PresenceError> {
    use redis::Value;
    let Value::Array(parts) = v else {
        return Err(bad_answer());
    };
    let [Value::Int(connections), Value::Array(items)]: [Value; 2] =
        parts.try_into().map_err(|_| bad_answer())?
    else {
        return Err(bad_answer());
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    };
    let mut out = Vec::with_capacity(items.len() / 3);
    for triple in items.chunks(3) {
        let [conn, user, Value::Int(last)] = triple else {
            return Err(bad_answer());
        };
        let conn = text(conn)
            .and_then(|c| ClientId::parse(&c))
            .ok_or_else(bad_answer)?;
        let user = text(user).ok_or_else(bad_answer)?;
        out.push(Reaped {
            group: group.clone(),
            conn,
            user: (!user.is_empty()).then(|| user.into()),
            last: *last == 1,
            connections: u64::try_from(connections).unwrap_or(0),
        });
    }
    Ok(out)
}

fn unavailable(e: redis::RedisError) -> PresenceError {
    PresenceError::Unavailable(format!("redis: {e}"))
}

fn bad_answer() -> PresenceError {
    PresenceError::Unavailable("unexpected answer from Redis to a presence script".into())
}

/// The first `N` integers of an array answer.
fn ints<const N: usize>(v: &redis::Value) -> Result<[u64; N], PresenceError> {
    let redis::Value::Array(items) = v else {
        return Err(bad_answer());
    };
    let mut out = [0; N];
    for (o, item) in out.iter_mut().zip(items) {
        let redis::Value::Int(n) = item else {
            return Err(bad_answer());
        };
        *o = u64::try_from(*n).map_err(|_| bad_answer())?;
    }
    if items.len() < N {
        return Err(bad_answer());
    }
    Ok(out)
}

impl Presence for RedisPresence {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn add(
        &self,
        group: &Arc<str>,
        member: Member,
        _count: bool,
    ) -> BoxFuture<'static, Result<Added, PresenceError>> {
        let this = self.inner.clone();
        let group = group.clone();
        // Listed first, so that a refresh racing with this write keeps it.
        this.local.insert(&group, member.clone());
        Box::pin(async move { this.add_member(&group, &member).await })
    }

    fn remove(
        &self,
        group: &Arc<str>,
        conn: &ClientId,
        _user: Option<&Arc<str>>,
        pending: bool,
        _count: bool,
    ) -> BoxFuture<'static, Result<Removed, PresenceError>> {
        let this = self.inner.clone();
        let group = group.clone();
        let conn = conn.clone();
        // Unlisted first: the refresher no longer writes it.
        this.local.remove(&group, &conn);
        Box::pin(async move {
            let id = conn.to_string();
            let pending: &[u8] = if pending { b"1" } else { b"0" };
            let v = this
                .run(
                    Script::Remove,
                    &group,
                    &[id.as_bytes(), pending, this.ttl_ms().as_bytes()],
                )
                .await?;
            let [last, connections] = ints(&v)?;
            Ok(Removed {
                last: last == 1,
                connections,
            })
        })
    }

    fn confirm_left(
        &self,
        group: &Arc<str>,
        user: &Arc<str>,
    ) -> BoxFuture<'static, Result<Option<u64>, PresenceError>> {
        let this = self.inner.clone();
        let group = group.clone();
        let user = user.clone();
        Box::pin(async move {
            let v = this.run(Script::Confirm, &group, &[user.as_bytes()]).await?;
            let [confirmed, connections] = ints(&v)?;
            Ok((confirmed == 1).then_some(connections))
        })
    }

    fn list(&self, group: &Arc<str>, limit: usize) -> BoxFuture<'static, Result<Listing, PresenceError>> {
        let this = self.inner.clone();
        let group = group.clone();
        Box::pin(async move {
            let v = this
                .run(Script::List, &group, &[limit.to_string().as_bytes()])
                .await?;
            let [connections, users] = ints(&v)?;
            let redis::Value::Array(mut items) = v else {
                return Err(bad_answer());
            };
            let Some(redis::Value::Array(entries)) = items.pop() else {
                return Err(bad_answer());
            };
            let members = entries
                .into_iter()
                .map(|e| match e {
                    redis::Value::BulkString(b) => Ok(Bytes::from(b)),
                    _ => Err(bad_answer()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Listing {
                members,
                stats: Stats { connections, users },
            })
        })
    }

    fn stats(&self, group: &Arc<str>) -> BoxFuture<'static, Result<Stats, PresenceError>> {
        let this = self.inner.clone();
        let group = group.clone();
        Box::pin(async move {
            let v = this.run(Script::Stats, &group, &[]).await?;
            let [connections, users] = ints(&v)?;
            Ok(Stats { connections, users })
        })
    }

    fn refresh(&self, hub: Arc<Hub>) -> BoxFuture<'static, ()> {
        Box::pin(self.inner.clone().do_refresh(hub))
    }

    fn reap(&self) -> BoxFuture<'static, Result<Vec<Reaped>, PresenceError>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.reap().await })
    }
}
