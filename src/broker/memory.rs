//! The single-node broker: a publication goes straight to the local hub.

use std::sync::Arc;

use super::{BoxFuture, Broker, BrokerError, Publication, deliver_local};
use crate::hub::Hub;

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
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<(), BrokerError>> {
        let result = deliver_local(&self.hub, &publication).map(|_| ());
        Box::pin(std::future::ready(result))
    }

    fn subscribe(&self, _group: Arc<str>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe(&self, _group: Arc<str>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
