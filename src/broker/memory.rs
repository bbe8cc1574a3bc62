//! The single-node broker: a publication goes straight to the local hub.

use std::sync::Arc;

use super::{Broker, Pending, Publication, Status, deliver_local, disconnect_local};
use crate::disconnect::ApiClose;
use crate::hub::Hub;
use crate::id::ClientId;

/// Delivers every publication to this process's hub.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    /// A broker delivering to `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, publication: Publication) -> Pending {
        Pending::Ready(deliver_local(&self.hub, &publication, None).map(|_| ()))
    }

    fn disconnect(&self, conn: ClientId, close: ApiClose) -> Pending {
        Pending::Ready(disconnect_local(&self.hub, &conn, close, None).map(|_| ()))
    }

    fn subscribe(&self, _group: &Arc<str>) -> Pending {
        Pending::Ready(Ok(()))
    }

    fn unsubscribe(&self, _group: &Arc<str>) {}

    fn status(&self) -> Status {
        Status {
            kind: "memory",
            up: true,
            error: None,
        }
    }
}
