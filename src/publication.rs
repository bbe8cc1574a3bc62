//! A message on its way to its recipients, as a publisher gives it to the
//! broker and as history keeps it. Below both the broker and history, so
//! that neither needs the other to name it.

use std::sync::Arc;

use bytes::Bytes;

use crate::id::ClientId;

/// Where a publication goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every member of a group, on every node.
    Group(Arc<str>),
    /// One connection, on whichever node holds it.
    Conn(ClientId),
    /// Every connection of every node.
    All,
}

/// A publication's payload, as the publisher sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Raw JSON text, delivered inside a JSON `message` frame.
    Json(Bytes),
    /// Raw bytes, delivered as a binary type-4 frame.
    Binary(Bytes),
    /// A whole server message (JSON text) from the server itself, delivered
    /// as it is to every recipient and never kept in history: a `joined`
    /// or `left` event.
    Event(Bytes),
}

impl Payload {
    /// The bytes, JSON text or binary.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Self::Json(b) | Self::Binary(b) | Self::Event(b) => b,
        }
    }
}

/// One message on its way to its recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Recipients.
    pub target: Target,
    /// The publishing connection, if a client published it.
    pub from: Option<ClientId>,
    /// The publisher's user (JWT `sub`), if it authenticated.
    pub user: Option<Arc<str>>,
    /// The payload.
    pub payload: Payload,
}
