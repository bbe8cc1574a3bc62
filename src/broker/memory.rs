//! The single-node broker: a publication goes straight to the local hub,
//! and into the group's history first when the group keeps one.

use std::sync::Arc;

use super::{Broker, Payload, Pending, Publication, Status, Target, deliver_local, disconnect_local};
use crate::disconnect::ApiClose;
use crate::groups::GroupRules;
use crate::history::MemoryHistory;
use crate::hub::Hub;
use crate::id::ClientId;

/// Delivers every publication to this process's hub.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
    history: Arc<MemoryHistory>,
    rules: Arc<GroupRules>,
}

impl MemoryBroker {
    /// A broker delivering to `hub`, keeping history in `history` for the
    /// groups whose rule asks for it.
    pub fn new(hub: Arc<Hub>, history: Arc<MemoryHistory>, rules: Arc<GroupRules>) -> Self {
        Self { hub, history, rules }
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, publication: Publication) -> Pending {
        if let Target::Group(g) = &publication.target {
            let features = self.rules.features(g);
            if features.history() && !matches!(publication.payload, Payload::Event(_)) {
                // Offsets are delivered in order: the fan-out runs under
                // the stream's lock.
                let r = self.history.append(g, features, &publication, |offset| {
                    deliver_local(&self.hub, &publication, None, Some(offset))
                });
                return Pending::Ready(r.map(|_| ()));
            }
        }
        Pending::Ready(deliver_local(&self.hub, &publication, None, None).map(|_| ()))
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
