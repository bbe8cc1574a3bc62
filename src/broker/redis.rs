//! The Redis transport: core pub/sub (`PUBLISH`/`SUBSCRIBE`), on the
//! maintained `redis` crate.
//!
//! Two connections per node, as the crate and Redis intend: a multiplexed
//! one for publishing (each batch is one pipeline, one round trip) and a
//! dedicated pub/sub connection for subscriptions and what arrives on them.
//! Channels are binary-safe and matched exactly (no patterns), so a group's
//! name goes into its channel as it is: `roomcast:g:NAME`. A node's own
//! channel is `roomcast:node:NAME`, the broadcast channel `roomcast:all`.
//!
//! History: a group with history has two keys, `roomcast:h:{NAME}` (a
//! stream: entry id `0-OFFSET`, fields `t`, the time in ms, and `d`, the
//! envelope) and `roomcast:m:{NAME}` (a hash: `e`, the epoch, and `o`, the
//! latest offset). A Lua script appends, numbers and publishes in one
//! atomic step ([`PUBLISH_SCRIPT`]), so offsets, the order of delivery and
//! history always agree; it publishes `H<offset>:` and the envelope. The
//! stream is trimmed to the group's size and its entries to their TTL; the
//! hash (the position) lives a day past the last publication. When the
//! hash is gone (expired, flushed, evicted under `maxmemory`), the next
//! publication or read starts a new epoch and drops what the stream held.
//! The braces make both keys of a group hash to one Redis Cluster slot.
//!
//! Redis Cluster's sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) is not used
//! yet: with plain pub/sub on a Redis Cluster every message reaches every
//! shard, which works but does not scale; see docs/cluster.md.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use redis::AsyncConnectionConfig;
use redis::aio::{MultiplexedConnection, PubSubSink};
use tokio_util::sync::CancellationToken;

use super::BoxFuture;
use super::cluster::{
    Answers, CONNECT_TIMEOUT, Channel, Link, Message, OnMessage, PING_TIMEOUT, RawPage, Transport,
};
use crate::groups::Features;

/// Append to a group's history, number and publish, atomically.
/// KEYS: stream, meta. ARGV: channel, envelope, size, ttl (ms), meta ttl
/// (s), a new epoch (used when the group has none). Returns the offset.
pub const PUBLISH_SCRIPT: &str = r#"
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if redis.call('HEXISTS', KEYS[2], 'e') == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', ARGV[6], 'o', 0)
end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '0-' .. offset, 't', now, 'd', ARGV[2])
local ttl = tonumber(ARGV[4])
while true do
  local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #head == 0 or tonumber(head[1][2][2]) + ttl > now then break end
  redis.call('XDEL', KEYS[1], head[1][1])
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[1], 'H' .. offset .. ':' .. ARGV[2])
return offset
"#;

/// Read a group's history. KEYS: stream, meta. ARGV: since (-1: the
/// latest), limit, ttl (ms), meta ttl (s), a new epoch. Returns epoch,
/// latest offset, oldest kept offset, and the entries (id, fields).
pub const READ_SCRIPT: &str = r#"
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if redis.call('HEXISTS', KEYS[2], 'e') == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', ARGV[5], 'o', 0)
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
local epoch = redis.call('HGET', KEYS[2], 'e')
local top = tonumber(redis.call('HGET', KEYS[2], 'o'))
local ttl = tonumber(ARGV[3])
while true do
  local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #head == 0 or tonumber(head[1][2][2]) + ttl > now then break end
  redis.call('XDEL', KEYS[1], head[1][1])
end
local first = top + 1
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head > 0 then first = tonumber(string.sub(head[1][1], 3)) end
local since = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local entries = {}
if limit > 0 then
  if since >= 0 then
    entries = redis.call('XRANGE', KEYS[1], '0-' .. (since + 1), '+', 'COUNT', limit + 1)
  else
    entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', limit)
  end
end
return {epoch, top, first, entries, since < 0 and 1 or 0}
"#;

/// How long a group's position outlives its last publication.
const META_TTL_SECS: u64 = 24 * 3600;

/// The stream and meta keys of `group`'s history.
fn history_keys(group: &str) -> (Vec<u8>, Vec<u8>) {
    (
        [b"roomcast:h:{", group.as_bytes(), b"}"].concat(),
        [b"roomcast:m:{", group.as_bytes(), b"}"].concat(),
    )
}

/// The meta TTL for a group kept `keep`: a day, or the TTL if longer.
fn meta_ttl(keep: &Features) -> u64 {
    META_TTL_SECS.max(keep.history_ttl.as_secs() + 1)
}

/// Connects to one Redis server (`redis://` or `rediss://`).
pub struct RedisTransport {
    client: redis::Client,
}

impl RedisTransport {
    /// A transport for `url` (checked by the configuration already).
    pub fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(Self { client })
    }
}

/// The channel of `c`.
pub fn channel_name(c: &Channel) -> Vec<u8> {
    let (prefix, name): (&[u8], &str) = match c {
        Channel::Group(g) => (b"roomcast:g:", g),
        Channel::Node(n) => (b"roomcast:node:", n),
        Channel::All => (b"roomcast:all", ""),
    };
    [prefix, name.as_bytes()].concat()
}

impl Transport for RedisTransport {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn keeps_history(&self) -> bool {
        true
    }

    fn connect(
        &self,
        on_message: OnMessage,
        lost: CancellationToken,
    ) -> BoxFuture<'_, Result<Arc<dyn Link>, String>> {
        Box::pin(async move {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(PING_TIMEOUT));
            let publisher = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| e.to_string())?;
            let pubsub = self.client.get_async_pubsub().await.map_err(|e| e.to_string())?;
            let (sink, mut stream) = pubsub.split();
            let done = lost.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = done.cancelled() => return,
                        m = stream.next() => match m {
                            Some(m) => on_message(Bytes::copy_from_slice(m.get_payload_bytes())),
                            None => break,
                        },
                    }
                }
                // The pub/sub connection is gone.
                done.cancel();
            });
            let conn = publisher.clone();
            let load = |code: &'static str| {
                let mut conn = conn.clone();
                async move {
                    redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(code)
                        .query_async::<String>(&mut conn)
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            let publish_sha = load(PUBLISH_SCRIPT).await?;
            let read_sha = load(READ_SCRIPT).await?;
            let link: Arc<dyn Link> = Arc::new(RedisLink {
                publisher,
                sink,
                publish_sha,
                read_sha,
            });
            Ok(link)
        })
    }
}

struct RedisLink {
    publisher: MultiplexedConnection,
    sink: PubSubSink,
    /// SHA1 of [`PUBLISH_SCRIPT`] and [`READ_SCRIPT`], loaded on connect
    /// (a Redis server that lost them is reconnected to, which loads them
    /// again).
    publish_sha: String,
    read_sha: String,
}

impl Link for RedisLink {
    fn publish<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Answers> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for m in batch {
                match (&m.keep, &m.channel) {
                    (Some(keep), Channel::Group(group)) => {
                        let (stream, meta) = history_keys(group);
                        pipe.cmd("EVALSHA")
                            .arg(&self.publish_sha)
                            .arg(2)
                            .arg(stream)
                            .arg(meta)
                            .arg(channel_name(&m.channel))
                            .arg(&m.body[..])
                            .arg(keep.history_size)
                            .arg(keep.history_ttl.as_millis().max(1) as u64)
                            .arg(meta_ttl(keep))
                            .arg(&*crate::history::new_epoch());
                    }
                    _ => {
                        pipe.cmd("PUBLISH").arg(channel_name(&m.channel)).arg(&m.body[..]);
                    }
                }
            }
            let values: Vec<redis::Value> = pipe
                .query_async(&mut self.publisher.clone())
                .await
                .map_err(|e| e.to_string())?;
            let mut answers = Vec::with_capacity(values.len());
            for (m, v) in batch.iter().zip(values) {
                answers.push(match v {
                    // A publication kept in history: its offset, not a
                    // receiver count.
                    redis::Value::Int(_) if m.keep.is_some() => Ok(None),
                    redis::Value::Int(n) => Ok(Some(n.max(0) as u64)),
                    redis::Value::ServerError(e) if e.code() == "NOSCRIPT" => {
                        // Scripts flushed: reconnect, which loads them again.
                        return Err("the Redis server lost roomcast's script (SCRIPT FLUSH?)".into());
                    }
                    redis::Value::ServerError(e) => Err(e.to_string()),
                    other => Err(format!("unexpected answer from Redis: {other:?}")),
                });
            }
            Ok(answers)
        })
    }

    fn history<'a>(
        &'a self,
        group: &'a str,
        since: Option<u64>,
        limit: usize,
        keep: Features,
        epoch: &'a str,
    ) -> BoxFuture<'a, Result<RawPage, String>> {
        Box::pin(async move {
            let (stream, meta) = history_keys(group);
            let since = since.map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX - 1));
            let value: redis::Value = redis::cmd("EVALSHA")
                .arg(&self.read_sha)
                .arg(2)
                .arg(stream)
                .arg(meta)
                .arg(since)
                .arg(limit)
                .arg(keep.history_ttl.as_millis().max(1) as u64)
                .arg(meta_ttl(&keep))
                .arg(epoch)
                .query_async(&mut self.publisher.clone())
                .await
                .map_err(|e| e.to_string())?;
            parse_page(value).ok_or_else(|| "unexpected answer from Redis to a history read".to_string())
        })
    }

    fn subscribe(&self, channels: Vec<Channel>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let names: Vec<Vec<u8>> = channels.iter().map(channel_name).collect();
            self.sink
                .clone()
                .subscribe(names)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn unsubscribe(&self, channels: Vec<Channel>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let names: Vec<Vec<u8>> = channels.iter().map(channel_name).collect();
            self.sink
                .clone()
                .unsubscribe(names)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut publisher = self.publisher.clone();
            let mut sink = self.sink.clone();
            let ping = redis::cmd("PING");
            let (a, b) = tokio::join!(
                ping.query_async::<String>(&mut publisher),
                sink.ping::<redis::Value>(),
            );
            a.map_err(|e| e.to_string())?;
            b.map_err(|e| e.to_string())?;
            Ok(())
        })
    }
}

/// [`READ_SCRIPT`]'s answer as a page.
fn parse_page(value: redis::Value) -> Option<RawPage> {
    use redis::Value;
    let Value::Array(parts) = value else {
        return None;
    };
    let [epoch, top, first, entries, latest]: [Value; 5] = parts.try_into().ok()?;
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    let Value::Array(entries) = entries else {
        return None;
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Value::Array(pair) = e else {
            return None;
        };
        let [id, fields]: [Value; 2] = pair.try_into().ok()?;
        let offset: u64 = text(&id)?.strip_prefix("0-")?.parse().ok()?;
        let Value::Array(fields) = fields else {
            return None;
        };
        let body = fields.chunks(2).find_map(|kv| match kv {
            [Value::BulkString(k), Value::BulkString(v)] if k == b"d" => Some(Bytes::from(v.clone())),
            _ => None,
        })?;
        out.push((offset, body));
    }
    if int(&latest)? == 1 {
        out.reverse();
    }
    Some(RawPage {
        epoch: text(&epoch)?,
        top: int(&top)?,
        first: int(&first)?,
        entries: out,
    })
}
