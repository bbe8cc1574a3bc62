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
use super::cluster::{Answers, CONNECT_TIMEOUT, Channel, Link, OnMessage, PING_TIMEOUT, Transport};

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
            let link: Arc<dyn Link> = Arc::new(RedisLink { publisher, sink });
            Ok(link)
        })
    }
}

struct RedisLink {
    publisher: MultiplexedConnection,
    sink: PubSubSink,
}

impl Link for RedisLink {
    fn publish<'a>(&'a self, batch: &'a [(Channel, Bytes)]) -> BoxFuture<'a, Answers> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            for (channel, body) in batch {
                pipe.cmd("PUBLISH").arg(channel_name(channel)).arg(&body[..]);
            }
            let counts: Vec<u64> = pipe
                .query_async(&mut self.publisher.clone())
                .await
                .map_err(|e| e.to_string())?;
            Ok(counts.into_iter().map(|n| Ok(Some(n))).collect())
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
