//! Publish/subscribe between nodes.
//!
//! Sessions and the HTTP API never fan out themselves: they hand a
//! [`Publication`] to the node's [`Broker`]. The in-memory broker delivers it
//! straight to the local [`Hub`](crate::hub::Hub); a cluster broker (Redis,
//! NATS) sends it to every node, and each node's subscriber task delivers it
//! to its own hub. The broker carries payloads, never frames: each node
//! prepares a publication once for its own members ([`Prepared`]).

pub mod memory;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::hub::{Fanout, Hub};
use crate::id::ConnId;
use crate::prepared::Prepared;
use crate::protocol;

pub use memory::MemoryBroker;

/// A boxed, sendable future (the trait is used as `dyn Broker`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a publication goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every member of a group.
    Group(Arc<str>),
    /// One connection.
    Conn(ConnId),
    /// Every connection.
    All,
}

/// A publication's payload, as the publisher sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Raw JSON text, delivered inside a JSON `message` frame.
    Json(Bytes),
    /// Raw bytes, delivered as a binary type-4 frame.
    Binary(Bytes),
}

/// One message on its way to its recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Recipients.
    pub target: Target,
    /// The publishing connection, if a client published it.
    pub from: Option<ConnId>,
    /// The publisher's user (JWT `sub`), if it authenticated.
    pub user: Option<Arc<str>>,
    /// The payload.
    pub payload: Payload,
}

/// Why a publication or subscription failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// A direct message to a connection that is not connected.
    #[error("no connection with id {0}")]
    UnknownConnection(ConnId),
    /// The broker could not carry the message (cluster brokers).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Carries publications to every node's hub.
pub trait Broker: Send + Sync + 'static {
    /// Deliver `publication` to its recipients on every node. `Ok` means
    /// the broker took it: with one node, it is queued for every local
    /// recipient whose queue accepted it; in a cluster, it is on its way to
    /// every node. How many frames end up queued is known only on each
    /// node, in its metrics; no caller is told.
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// This node gained its first member of `group`: start receiving its
    /// publications. Completes once publications to the group will arrive.
    fn subscribe(&self, group: Arc<str>) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// This node lost its last member of `group`.
    fn unsubscribe(&self, group: Arc<str>) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// Prepare `p` once and queue it for its recipients on this node.
pub fn deliver_local(hub: &Hub, p: &Publication) -> Result<Fanout, BrokerError> {
    let group = match &p.target {
        Target::Group(g) => Some(&**g),
        _ => None,
    };
    let c = hub.compression();
    let message = match &p.payload {
        Payload::Json(data) => {
            Prepared::text(protocol::message_json(group, p.from, p.user.as_deref(), data), c)
        }
        Payload::Binary(data) => Prepared::binary(protocol::message_binary(group.unwrap_or(""), data), c),
    };
    match &p.target {
        Target::Group(g) => Ok(hub.fanout(g, &message, p.from)),
        Target::Conn(id) => hub
            .send_to(*id, &message)
            .ok_or(BrokerError::UnknownConnection(*id)),
        Target::All => Ok(hub.broadcast(&message)),
    }
}
