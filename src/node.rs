//! The whole of one running roomcast process, as a cheap-to-clone handle:
//! configuration, hub, broker, metrics, and the shutdown machinery.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::broker::cluster::{ClusterBroker, Transport};
use crate::broker::nats::NatsTransport;
use crate::broker::redis::RedisTransport;
use crate::broker::{Broker, MemoryBroker};
use crate::config::{BrokerSpec, Config};
use crate::groups::GroupRules;
use crate::history::{History, MemoryHistory};
use crate::hub::{Hub, HubConfig};
use crate::id::{ClientId, ConnId};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::presence::nats::NatsPresence;
use crate::presence::redis::RedisPresence;
use crate::presence::{MemoryPresence, Presence};

/// Shared state of the server.
pub struct Node {
    /// This node's name (`--node-name`, or the host name and a random
    /// suffix).
    pub name: Arc<str>,
    /// Whether the broker is a cluster broker (connection ids then name
    /// their node).
    pub cluster: bool,
    /// Effective configuration.
    pub config: Config,
    /// Local connections and groups.
    pub hub: Arc<Hub>,
    /// Where publications go.
    pub broker: Arc<dyn Broker>,
    /// What each group has (history), from `[[groups]]` and the flags.
    pub rules: Arc<GroupRules>,
    /// Where history is read (`None`: this broker keeps none).
    pub history: Option<Arc<dyn History>>,
    /// The memory broker's history, swept by the server every second.
    pub memory_history: Option<Arc<MemoryHistory>>,
    /// Where members of groups with presence are listed (`None`: no group
    /// has presence). Refreshed by the server every third of
    /// `presence_ttl`.
    pub presence: Option<Arc<dyn Presence>>,
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

    /// A node with the broker its configuration names and a ready token
    /// verifier. A cluster broker starts connecting in the background (on
    /// the current runtime), so this must run inside one then.
    pub fn with_auth(config: Config, auth: Option<Arc<Auth>>) -> Arc<Self> {
        let spec = config
            .broker_spec()
            .unwrap_or_else(|e| panic!("{e}: validate the config first"));
        let name: Arc<str> = config
            .node_name
            .clone()
            .unwrap_or_else(crate::config::default_node_name)
            .into();
        // In a cluster, ids count from the start time in microseconds: a
        // node restarted under the same name does not hand out the ids of
        // its previous life again (unless it took more than a million
        // connections a second).
        let first_id = match spec {
            BrokerSpec::Memory => 1,
            _ => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_micros() as u64),
        };
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
                first_id,
            },
            metrics.clone(),
        ));
        let shutdown = CancellationToken::new();
        let transport: Option<Box<dyn Transport>> = match &spec {
            BrokerSpec::Memory => None,
            BrokerSpec::Redis(url) => Some(Box::new(
                RedisTransport::new(url).unwrap_or_else(|e| panic!("{e}: validate the config first")),
            )),
            BrokerSpec::Nats(url) => Some(Box::new(
                NatsTransport::new(url, name.clone(), Arc::new(config.group_rules()))
                    .unwrap_or_else(|e| panic!("{e}: validate the config first")),
            )),
        };
        let rules = Arc::new(config.group_rules());
        let memory_history =
            (spec == BrokerSpec::Memory).then(|| MemoryHistory::new(config.history_memory, metrics.clone()));
        let (broker, history): (Arc<dyn Broker>, Option<Arc<dyn History>>) = match transport {
            None => {
                let h = memory_history.clone().expect("memory broker");
                let broker = Arc::new(MemoryBroker::new(hub.clone(), h.clone(), rules.clone()));
                (broker, Some(h))
            }
            Some(t) => {
                let keeps_history = t.keeps_history();
                let broker = ClusterBroker::start(
                    t,
                    name.clone(),
                    hub.clone(),
                    metrics.clone(),
                    config.max_message_size,
                    rules.clone(),
                    shutdown.clone(),
                );
                let history = keeps_history.then(|| broker.clone() as Arc<dyn History>);
                (broker, history)
            }
        };
        // Presence keeps its own connection to the broker's server, apart
        // from the broker's (see crate::presence).
        let presence: Option<Arc<dyn Presence>> = rules.any_presence().then(|| {
            let ttl = config.presence_ttl;
            let p: Arc<dyn Presence> = match &spec {
                BrokerSpec::Memory => Arc::new(MemoryPresence::new(ttl)),
                BrokerSpec::Redis(url) => Arc::new(
                    RedisPresence::new(url, ttl, name.clone())
                        .unwrap_or_else(|e| panic!("{e}: validate the config first")),
                ),
                BrokerSpec::Nats(url) => Arc::new(NatsPresence::new(url, ttl, name.clone())),
            };
            p
        });
        let limits = Arc::new(config.limits());
        Arc::new(Self {
            cluster: spec != BrokerSpec::Memory,
            name,
            config,
            hub,
            broker,
            rules,
            history,
            memory_history,
            presence,
            metrics,
            limits,
            auth,
            shutdown,
            tracker: TaskTracker::new(),
        })
    }
}

impl Node {
    /// The id clients see for connection `conn` of this node.
    pub fn client_id(&self, conn: ConnId) -> ClientId {
        ClientId {
            node: self.cluster.then(|| self.name.clone()),
            conn,
        }
    }

    /// Whether `id` names a connection of this node.
    pub fn is_local(&self, id: &ClientId) -> bool {
        match &id.node {
            None => !self.cluster,
            Some(n) => self.cluster && *n == self.name,
        }
    }
}
