//! The whole of one running roomcast process, as a cheap-to-clone handle:
//! configuration, hub, broker, metrics, and the shutdown machinery.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::broker::{Broker, MemoryBroker};
use crate::config::Config;
use crate::hub::{Hub, HubConfig};
use crate::limits::Limits;
use crate::metrics::Metrics;

/// Shared state of the server.
pub struct Node {
    /// This node's name (`--node-name`, or the host name and a random
    /// suffix).
    pub name: Arc<str>,
    /// Effective configuration.
    pub config: Config,
    /// Local connections and groups.
    pub hub: Arc<Hub>,
    /// Where publications go.
    pub broker: Arc<dyn Broker>,
    /// Counters, behind `/metrics` and `/stats`.
    pub metrics: Arc<Metrics>,
    /// Admission limits (connection caps, rates, Origin, proxies).
    pub limits: Arc<Limits>,
    /// Token verification for WebSocket clients, when configured.
    pub auth: Option<Arc<Auth>>,
    /// Cancelled when shutdown starts.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node with the in-memory broker, for a configuration that passed
    /// [`Config::validate`] (which checks the JWT settings too).
    pub fn new(config: Config) -> Arc<Self> {
        let auth = config
            .auth()
            .unwrap_or_else(|e| panic!("{e}: validate the config first"));
        Self::with_auth(config, auth)
    }

    /// A node with the in-memory broker and a ready token verifier.
    pub fn with_auth(config: Config, auth: Option<Arc<Auth>>) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::new(
            HubConfig {
                queue_messages: config.queue_messages,
                queue_bytes: config.queue_bytes,
                policy: config.slow_consumer,
                no_echo: config.no_echo,
                flushers: config
                    .flushers
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                compression_threshold: config.compression_threshold,
                compression_level: config.compression_level,
            },
            metrics.clone(),
        ));
        let broker = Arc::new(MemoryBroker::new(hub.clone()));
        let limits = Arc::new(config.limits());
        let name = config
            .node_name
            .clone()
            .unwrap_or_else(crate::config::default_node_name);
        Arc::new(Self {
            name: name.into(),
            config,
            hub,
            broker,
            metrics,
            limits,
            auth,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        })
    }
}
