//! Publish/subscribe between nodes.
//!
//! Sessions and the HTTP API never fan out themselves: they hand a
//! [`Publication`] to the node's [`Broker`]. The in-memory broker delivers it
//! straight to the local [`Hub`]; a cluster broker ([`cluster`], over Redis
//! or NATS) sends it to every node that has members, and each node delivers
//! what arrives to its own hub. The broker carries payloads, never frames:
//! each node prepares a publication once for its own members
//! ([`Prepared`]).
//!
//! As in centrifuge, the broker is only publish, subscribe, unsubscribe and
//! a handler for what arrives; history and presence stand beside it behind
//! interfaces of their own ([`crate::history`], [`crate::presence`]). The
//! broker carries presence's `joined` and `left` events
//! ([`Payload::Event`]), never kept in history.

pub mod cluster;
pub mod memory;
pub mod nats;
pub mod redis;
pub mod wire;

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::disconnect::{ApiClose, Disconnect};
use crate::hub::{Fanout, Hub};
use crate::id::ClientId;
use crate::prepared::Prepared;
use crate::protocol;

pub use crate::publication::{Payload, Publication, Target};
pub use memory::MemoryBroker;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a publication or subscription failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// A direct message or disconnect for a connection that is not
    /// connected (as far as this node can tell).
    #[error("no connection with id {0}")]
    UnknownConnection(ClientId),
    /// The broker could not carry the message: it is down, did not answer
    /// in time, or this node's queue to it is full.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// The broker's answer to a request: known at once (the memory broker, or
/// a cluster broker that is down), or once the broker has answered.
#[derive(Debug)]
pub enum Pending {
    /// Answered.
    Ready(Result<(), BrokerError>),
    /// To be answered; a dropped sender means the broker went away.
    Waiting(oneshot::Receiver<Result<(), BrokerError>>),
}

impl Pending {
    /// Wait for the answer.
    pub async fn wait(self) -> Result<(), BrokerError> {
        match self {
            Self::Ready(r) => r,
            Self::Waiting(rx) => rx
                .await
                .unwrap_or_else(|_| Err(BrokerError::Unavailable("the broker task ended".into()))),
        }
    }
}

/// What the broker is and whether it works, for `/readyz`, `/stats` and
/// the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `memory`, `redis` or `nats`.
    pub kind: &'static str,
    /// Takes publications and holds this node's subscriptions.
    pub up: bool,
    /// Why it is down, when it is.
    pub error: Option<String>,
}

/// Carries publications to every node's hub.
pub trait Broker: Send + Sync + 'static {
    /// Send `publication` to its recipients on every node. Publications
    /// from one caller are delivered in the order they were given here.
    /// `Ok` means the broker took it: with one node, it is queued for every
    /// local recipient whose queue accepted it; in a cluster, the broker
    /// has it and passes it to every subscribed node. How many frames end
    /// up queued is known only on each node, in its metrics.
    fn publish(&self, publication: Publication) -> Pending;

    /// Close connection `conn`, on whichever node holds it, after what is
    /// already queued for it.
    fn disconnect(&self, conn: ClientId, close: ApiClose) -> Pending;

    /// A member of `group` joined on this node: make sure the node receives
    /// the group's publications. Answered once they will arrive, so
    /// anything published after the answer reaches the new member.
    fn subscribe(&self, group: &Arc<str>) -> Pending;

    /// This node lost what may be its last member of `group`: drop the
    /// subscription unless members are back by the time it is looked at.
    fn unsubscribe(&self, group: &Arc<str>);

    /// What the broker is and whether it is up.
    fn status(&self) -> Status;
}

/// Prepare `p` once and queue it for its recipients on this node, whose
/// name in the cluster is `node` (`None` on a single node). A connection id
/// naming another node is unknown here. `offset`: the publication's offset
/// in its group's history, when the group keeps one.
pub fn deliver_local(
    hub: &Hub,
    p: &Publication,
    node: Option<&str>,
    offset: Option<u64>,
) -> Result<Fanout, BrokerError> {
    let is_local = |id: &ClientId| id.node.as_deref() == node;
    let message = prepare(hub, p, offset);
    match &p.target {
        Target::Group(g) => {
            let publisher = p.from.as_ref().filter(|f| is_local(f)).map(|f| f.conn);
            Ok(hub.fanout(g, &message, publisher, offset))
        }
        Target::Conn(id) => is_local(id)
            .then(|| hub.send_to(id.conn, &message))
            .flatten()
            .ok_or_else(|| BrokerError::UnknownConnection(id.clone())),
        Target::All => Ok(hub.broadcast(&message)),
    }
}

/// The message recipients of `p` get (with its `offset` in its group's
/// history, when the group keeps one), prepared once for all of them.
pub fn prepare(hub: &Hub, p: &Publication, offset: Option<u64>) -> Prepared {
    let group = match &p.target {
        Target::Group(g) => Some(&**g),
        _ => None,
    };
    let c = hub.compression();
    match &p.payload {
        Payload::Json(data) => Prepared::text(
            protocol::message_json(group, offset, p.from.as_ref(), p.user.as_deref(), data),
            c,
        ),
        Payload::Binary(data) => {
            Prepared::binary(protocol::message_binary(group.unwrap_or(""), offset, data), c)
        }
        Payload::Event(data) => Prepared::copy_of(crate::ws::frame::OP_TEXT, data, c),
    }
}

/// Close a connection of this node (see [`deliver_local`] for `node`).
pub fn disconnect_local(
    hub: &Hub,
    conn: &ClientId,
    close: ApiClose,
    node: Option<&str>,
) -> Result<bool, BrokerError> {
    let outbox = (conn.node.as_deref() == node)
        .then(|| hub.connection(conn.conn))
        .flatten()
        .ok_or_else(|| BrokerError::UnknownConnection(conn.clone()))?;
    Ok(outbox.request_close(Disconnect::Api(Box::new(close))))
}
