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
//! Every script first removes the entries whose expiry has passed (their
//! node stopped refreshing them: it died), adjusting the user counts, so a
//! dead node's members are gone from every read within `presence_ttl`.
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

use super::{Added, BoxFuture, Listing, Local, Member, Presence, PresenceError, Removed, Stats};
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

/// Every script, the sweep in front: (name, code).
fn scripts() -> [(Script, String); 6] {
    [
        (Script::Add, ADD),
        (Script::Refresh, REFRESH),
        (Script::Remove, REMOVE),
        (Script::Confirm, CONFIRM),
        (Script::List, LIST),
        (Script::Stats, STATS),
    ]
    .map(|(s, body)| (s, format!("{SWEEP}{body}")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Add,
    Refresh,
    Remove,
    Confirm,
    List,
    Stats,
}

/// How long a connection attempt or an answer may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Most scripts in one pipeline of the refresher.
const BATCH: usize = 512;

/// The five keys of `group`.
fn keys(group: &str) -> [Vec<u8>; 5] {
    ["p", "px", "pu", "pc", "pl"]
        .map(|k| [b"roomcast:", k.as_bytes(), b":{", group.as_bytes(), b"}"].concat())
}

/// A connection and the SHA1s of the scripts loaded on it.
#[derive(Clone)]
struct Connection {
    conn: MultiplexedConnection,
    shas: Arc<[String; 6]>,
}

/// Presence kept in a Redis server.
pub struct RedisPresence {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
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
    pub fn new(url: &str, ttl: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
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
        let mut shas: [String; 6] = Default::default();
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

    fn command(shas: &[String; 6], script: Script, group: &str) -> redis::Cmd {
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

    fn ttl_ms(&self) -> String {
        self.ttl.as_millis().max(1).to_string()
    }

    async fn add_member(&self, group: &str, member: &Member) -> Result<Added, PresenceError> {
        let conn = member.conn.to_string();
        let user = member.user.as_deref().unwrap_or("");
        let ttl = self.ttl_ms();
        let v = self
            .run(
                Script::Add,
                group,
                &[conn.as_bytes(), &member.json, user.as_bytes(), ttl.as_bytes()],
            )
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
        let ttl = self.ttl_ms();
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
                }
            }
        }
    }
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
}
