//! The typed configuration of `roomcast serve`.
//!
//! One struct, [`Config`], holds every setting with its default. It is
//! filled from four layers, later ones winning: defaults, a TOML file
//! (`--config`), `ROOMCAST_*` environment variables, command-line flags.
//! clap parses flags and environment together and tells for each setting
//! where its value came from ([`clap::parser::ValueSource`]); a value from
//! the file replaces only defaults. Unknown keys in the file are errors
//! that name the key, so a typo never silently leaves a default in place.
//! Unknown `ROOMCAST_*` variables are only warned about
//! ([`unknown_env_vars`]): Kubernetes sets `ROOMCAST_PORT`,
//! `ROOMCAST_SERVICE_HOST` and more in every pod of a namespace that has a
//! Service named `roomcast`, and the server must start there.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, ValueEnum};
use serde::{Deserialize, Serialize};

/// What to do with a member whose outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumerPolicy {
    /// Close the connection with code 4001 so the client reconnects.
    Disconnect,
    /// Skip the message for that member only (counted as dropped).
    Drop,
}

/// A feature switch: `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Settings of the server. Every field is a flag (`--max-message-size`), an
/// environment variable (`ROOMCAST_MAX_MESSAGE_SIZE`) and a TOML key
/// (`max_message_size`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address and port to listen on.
    #[arg(
        long,
        env = "ROOMCAST_LISTEN",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Largest WebSocket message accepted from a client, in bytes (sum of
    /// its fragments); larger ones close the connection with 1009.
    #[arg(long, env = "ROOMCAST_MAX_MESSAGE_SIZE", value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_message_size: usize,

    /// How often the server pings each client on /ws (0s: never).
    #[arg(long, env = "ROOMCAST_PING_INTERVAL", value_name = "DUR", default_value = "25s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,

    /// Close a connection (code 4002) that shows no sign of life for this
    /// long: nothing received from it (pongs count) and no progress reading
    /// a backlog it is sent (0s: never).
    #[arg(long, env = "ROOMCAST_IDLE_TIMEOUT", value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,

    /// Close a connection as a slow consumer (4001) when its outbound
    /// backlog has made no write progress for this long, whatever the
    /// client sends meanwhile (0s: never).
    #[arg(long, env = "ROOMCAST_WRITE_TIMEOUT", value_name = "DUR", default_value = "20s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,

    /// Outbound queue limit per connection, in frames.
    #[arg(
        long,
        env = "ROOMCAST_QUEUE_MESSAGES",
        value_name = "N",
        default_value_t = 1024
    )]
    pub queue_messages: usize,

    /// Outbound queue limit per connection, in bytes.
    #[arg(long, env = "ROOMCAST_QUEUE_BYTES", value_name = "BYTES", default_value_t = 1024 * 1024)]
    pub queue_bytes: usize,

    /// Flush shards: tasks that write queued frames to plain TCP sockets
    /// in the order they were published, one `writev` per socket per turn,
    /// instead of waking each connection's task (see docs/configuration.md);
    /// 0 turns this off. Default: one per CPU core.
    #[arg(long, env = "ROOMCAST_FLUSHERS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flushers: Option<usize>,

    /// What happens when a client's outbound queue is full: `disconnect`
    /// closes it with code 4001, `drop` skips the message for that client.
    #[arg(long, env = "ROOMCAST_SLOW_CONSUMER", value_enum, default_value_t = SlowConsumerPolicy::Disconnect)]
    pub slow_consumer: SlowConsumerPolicy,

    /// Most groups one connection may be in at once.
    #[arg(
        long,
        env = "ROOMCAST_MAX_GROUPS_PER_CONNECTION",
        value_name = "N",
        default_value_t = 128
    )]
    pub max_groups_per_connection: usize,

    /// On SIGINT/SIGTERM, how long to wait for queued messages to be written
    /// and clients to acknowledge the close before exiting anyway.
    #[arg(long, env = "ROOMCAST_DRAIN_TIMEOUT", value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,

    /// Kernel send buffer per client socket, in bytes (0: the kernel's
    /// autotuning, up to net.ipv4.tcp_wmem). Small enough that the backlog
    /// of a slow client sits in roomcast's queue, where it is bounded,
    /// counted and subject to the slow-consumer policy, and heartbeats are
    /// not stuck behind megabytes in the kernel.
    #[arg(long, env = "ROOMCAST_SOCKET_SEND_BUFFER", value_name = "BYTES", default_value_t = 256 * 1024)]
    pub socket_send_buffer: usize,

    /// TLS certificate chain (PEM, leaf first). With `--tls-key`, the
    /// server speaks only TLS: `wss://` and the HTTP API over HTTPS.
    /// Reloaded on SIGHUP.
    #[arg(long, env = "ROOMCAST_TLS_CERT", value_name = "PEM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key for `--tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1,
    /// unencrypted). Reloaded on SIGHUP.
    #[arg(long, env = "ROOMCAST_TLS_KEY", value_name = "PEM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// Do not deliver a publication back to the connection that published it.
    #[arg(long, env = "ROOMCAST_NO_ECHO")]
    pub no_echo: bool,

    /// permessage-deflate (RFC 7692) for clients that offer it (every
    /// browser does): `on` or `off`. Each message is compressed once for
    /// all the recipients that negotiated it.
    #[arg(long, env = "ROOMCAST_COMPRESSION", value_enum, default_value_t = Switch::On)]
    pub compression: Switch,

    /// Messages at least this long (payload bytes) go compressed to clients
    /// that negotiated permessage-deflate; shorter ones go plain, as do
    /// messages that compression would not make smaller.
    #[arg(
        long,
        env = "ROOMCAST_COMPRESSION_THRESHOLD",
        value_name = "BYTES",
        default_value_t = 256
    )]
    pub compression_threshold: usize,

    /// zlib compression level, 1 (fastest) to 9 (smallest).
    #[arg(
        long,
        env = "ROOMCAST_COMPRESSION_LEVEL",
        value_name = "1-9",
        default_value_t = DEFAULT_COMPRESSION_LEVEL
    )]
    pub compression_level: u32,

    /// Do not serve the plain echo endpoint at /echo (used for conformance).
    #[arg(long, env = "ROOMCAST_DISABLE_ECHO_ENDPOINT")]
    pub disable_echo_endpoint: bool,

    /// Key required as `Authorization: Bearer KEY` on /api. Without one,
    /// the API answers only clients on loopback addresses.
    #[arg(long, env = "ROOMCAST_API_KEY", value_name = "KEY", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,

    /// Most WebSocket connections at once (0: no limit); more get 503.
    #[arg(
        long,
        env = "ROOMCAST_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 100_000
    )]
    pub max_connections: usize,

    /// Most WebSocket connections from one client IP (0: no limit); more
    /// get 429. Set, it holds every address. Unset: 10000 for a public
    /// address, and no limit for a loopback, private, CGNAT or link-local
    /// one (nearly always a proxy, load balancer or NAT that many clients
    /// share; see docs/configuration.md).
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<usize>,

    /// New WebSocket connections per second from one client IP, with an
    /// equal burst (0: no limit); more get 429 with Retry-After. Set, it
    /// holds every address. Unset: 1000 for a public address, and no limit
    /// for a loopback, private, CGNAT or link-local one.
    #[arg(long, env = "ROOMCAST_CONNECT_RATE_PER_IP", value_name = "PER_SEC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_rate_per_ip: Option<u32>,

    /// Messages per second one connection may send (0: no limit). Excess
    /// messages get `rate_limited` errors; a client that keeps going (more
    /// rejected messages within a second than the burst) is closed with 1008.
    #[arg(
        long,
        env = "ROOMCAST_MESSAGE_RATE",
        value_name = "PER_SEC",
        default_value_t = 1000
    )]
    pub message_rate: u32,

    /// Messages a connection may send at once before the rate applies
    /// (default: equal to the rate).
    #[arg(long, env = "ROOMCAST_MESSAGE_BURST", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_burst: Option<u32>,

    /// Largest HTTP request head (request line and headers) in bytes;
    /// a larger one gets 431.
    #[arg(long, env = "ROOMCAST_MAX_HEADER_SIZE", value_name = "BYTES", default_value_t = 32 * 1024)]
    pub max_header_size: usize,

    /// Per-IP limits count an IPv6 client by this many leading bits of its
    /// address (64: a /64, what one subscriber usually gets; 128: every
    /// address on its own).
    #[arg(
        long,
        env = "ROOMCAST_IPV6_PREFIX_LEN",
        value_name = "BITS",
        default_value_t = 64
    )]
    pub ipv6_prefix_len: u8,

    /// Time a client has to send its request headers (and finish TLS).
    #[arg(long, env = "ROOMCAST_HANDSHAKE_TIMEOUT", value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,

    /// Longest pause allowed while a client sends an `/api` request body:
    /// when no byte of the body arrives for this long, the request gets 408
    /// and the connection is closed. A stall timeout, reset whenever bytes
    /// arrive, not a deadline for the whole body.
    #[arg(long, env = "ROOMCAST_BODY_TIMEOUT", value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,

    /// Browser origin allowed to open WebSockets, e.g.
    /// `https://app.example.com` (repeatable; none: every origin). Clients
    /// that send no Origin header are not browsers and are allowed.
    #[arg(
        long,
        env = "ROOMCAST_ALLOWED_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origin: Vec<String>,

    /// Proxy address or CIDR whose `X-Forwarded-For` is believed
    /// (repeatable; none: the TCP peer is always the client).
    #[arg(
        long,
        env = "ROOMCAST_TRUSTED_PROXY",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<String>,

    /// Secret for HS256 JWTs; when set, every WebSocket client needs a
    /// valid token (see docs/auth.md). At least 32 bytes.
    #[arg(
        long,
        env = "ROOMCAST_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,

    /// PEM public key (RSA for RS256, P-256 for ES256); when set, every
    /// WebSocket client needs a valid token signed with its private key.
    #[arg(long, env = "ROOMCAST_JWT_PUBLIC_KEY", value_name = "PEM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_public_key: Option<PathBuf>,

    /// Where publications go: `memory` (one node), `redis://[user:password@]host:port[/db]`,
    /// `rediss://...` (Redis over TLS), or `nats://[user:password@|token@]host:port`
    /// (a comma-separated list for a NATS cluster). Nodes sharing a broker
    /// share their groups (see docs/cluster.md).
    #[arg(
        long,
        env = "ROOMCAST_BROKER",
        value_name = "URL",
        default_value = "memory",
        hide_env_values = true
    )]
    pub broker: String,

    /// This node's name, shown in `/stats` and the startup log, and part of
    /// its connection ids in a cluster (unique in the cluster): 1 to 64
    /// letters, digits, `_`, `-` or single dots between them (default: the
    /// host name and a short random suffix, so that every start is a new
    /// name).
    #[arg(long, env = "ROOMCAST_NODE_NAME", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// Publications kept per group for groups that no `[[groups]]` rule
    /// matches (0: no history). Members of a group with history can
    /// recover what they missed after a reconnect (see docs/protocol.md).
    #[arg(long, env = "ROOMCAST_HISTORY_SIZE", value_name = "N", default_value_t = 0)]
    pub history_size: usize,

    /// How long those publications are kept.
    #[arg(long, env = "ROOMCAST_HISTORY_TTL", value_name = "DUR", default_value = "10m", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,

    /// With the memory broker: most bytes of history kept in all (payloads
    /// and bookkeeping). Past it, the groups published to least recently
    /// lose their history first (their epoch changes, so their members
    /// learn it on recovery).
    #[arg(
        long,
        env = "ROOMCAST_HISTORY_MEMORY",
        value_name = "BYTES",
        default_value_t = 256 * 1024 * 1024
    )]
    pub history_memory: usize,

    /// List the members of groups that no `[[groups]]` rule matches in
    /// presence (the `presence` request and the API), across the cluster.
    #[arg(long, env = "ROOMCAST_PRESENCE")]
    pub presence: bool,

    /// Send `joined` and `left` events to the members of groups that no
    /// `[[groups]]` rule matches (needs `--presence`).
    #[arg(long, env = "ROOMCAST_JOIN_LEAVE")]
    pub join_leave: bool,

    /// How long a presence entry lives without being refreshed: each node
    /// refreshes its members' entries every third of this, so the members
    /// of a node that dies leave presence within this time.
    #[arg(long, env = "ROOMCAST_PRESENCE_TTL", value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,

    /// Largest `info` object a client may give on `join`, in bytes of JSON
    /// (0: no info accepted).
    #[arg(
        long,
        env = "ROOMCAST_MAX_PRESENCE_INFO_SIZE",
        value_name = "BYTES",
        default_value_t = 1024
    )]
    pub max_presence_info_size: usize,

    /// Most members listed in one presence answer; a larger group's answer
    /// is cut there (`"truncated":true`), its counts stay whole.
    #[arg(
        long,
        env = "ROOMCAST_MAX_PRESENCE_MEMBERS",
        value_name = "N",
        default_value_t = 1000
    )]
    pub max_presence_members: usize,

    /// How long after a user's last connection leaves a group its `left`
    /// event waits: a reconnect within it is neither a leave nor a join.
    #[arg(long, env = "ROOMCAST_JOIN_LEAVE_GRACE", value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    #[serde(with = "humantime_serde")]
    pub join_leave_grace: Duration,

    /// Groups with more connections than this (across the cluster) send
    /// no `joined` or `left` events: each event goes to every member, so
    /// their cost grows with the square of the group's size.
    #[arg(
        long,
        env = "ROOMCAST_JOIN_LEAVE_MAX_MEMBERS",
        value_name = "N",
        default_value_t = 100
    )]
    pub join_leave_max_members: usize,

    /// Log format.
    #[arg(long, env = "ROOMCAST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `roomcast=debug,hyper=warn` (tracing
    /// EnvFilter syntax). Unset: `RUST_LOG`, or `info`.
    #[arg(long, env = "ROOMCAST_LOG_LEVEL", value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,

    /// `[[groups]]` rules: features per group-name prefix, the longest
    /// prefix winning (TOML file only; see docs/configuration.md).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<crate::groups::GroupRule>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_message_size: 64 * 1024,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(20),
            queue_messages: 1024,
            queue_bytes: 1024 * 1024,
            flushers: None,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            max_groups_per_connection: 128,
            drain_timeout: Duration::from_secs(10),
            socket_send_buffer: 256 * 1024,
            tls_cert: None,
            tls_key: None,
            no_echo: false,
            disable_echo_endpoint: false,
            compression: Switch::On,
            compression_threshold: 256,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            api_key: None,
            jwt_secret: None,
            jwt_public_key: None,
            max_connections: 100_000,
            max_connections_per_ip: None,
            connect_rate_per_ip: None,
            message_rate: 1000,
            message_burst: None,
            max_header_size: 32 * 1024,
            ipv6_prefix_len: 64,
            handshake_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            allowed_origin: Vec::new(),
            trusted_proxy: Vec::new(),
            log_format: LogFormat::Human,
            log_level: None,
            node_name: None,
            broker: "memory".into(),
            history_size: 0,
            history_ttl: crate::groups::DEFAULT_HISTORY_TTL,
            history_memory: 256 * 1024 * 1024,
            presence: false,
            join_leave: false,
            presence_ttl: Duration::from_secs(30),
            max_presence_info_size: 1024,
            max_presence_members: 1000,
            join_leave_grace: Duration::from_secs(5),
            join_leave_max_members: 100,
            groups: Vec::new(),
        }
    }
}

/// A setting that cannot work, named.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting '{key}': {message}")]
pub struct ConfigError {
    /// The offending key (TOML key, flag or environment variable).
    pub key: String,
    /// Why.
    pub message: String,
}

/// Flags shared by `roomcast serve` and `roomcast config`.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// TOML configuration file; flags and `ROOMCAST_*` variables override it.
    #[arg(long, short = 'c', env = "ROOMCAST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: Config,
}

/// Environment variables that are not settings but are still ours.
const OTHER_ENV: &[&str] = &["ROOMCAST_CONFIG"];

impl ConfigArgs {
    /// Merge defaults, the file, the environment and flags into the
    /// effective configuration, and validate it. `matches` are the parsed
    /// arguments of the subcommand (they say where each value came from).
    pub fn resolve(self, matches: &ArgMatches) -> Result<Config, ConfigError> {
        let mut merged = toml::Table::try_from(&self.settings).map_err(|e| ConfigError {
            key: "(flags)".into(),
            message: e.to_string(),
        })?;
        if let Some(path) = &self.config {
            let file = read_file(path)?;
            for (key, value) in file {
                // `groups` is a file-only key (no flag to ask about).
                let from_cli = key != "groups"
                    && matches!(
                        matches.value_source(&key),
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    );
                if !from_cli {
                    merged.insert(key, value);
                }
            }
        }
        let config = Config::deserialize(merged).map_err(|e| ConfigError {
            key: "(merged)".into(),
            message: e.message().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }
}

/// Read and check a TOML file: every key known, every value valid.
fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        key: shown.clone(),
        message: format!("cannot read config file: {e}"),
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
        key: shown.clone(),
        message: e.to_string(),
    })?;
    // Deserializing the text finds unknown keys and bad values, with a span
    // that points at the offending line.
    if let Err(e) = toml::from_str::<Config>(&text) {
        let key = e
            .span()
            .and_then(|span| text[..span.start].rsplit('\n').next().map(|_| span.start))
            .and_then(|start| {
                let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
                let line = text[line_start..].lines().next().unwrap_or("");
                line.split_once('=').map(|(k, _)| k.trim().to_owned())
            })
            .unwrap_or_else(|| shown.clone());
        return Err(ConfigError {
            key,
            message: format!("{} (in {shown})", e.message()),
        });
    }
    Ok(table)
}

/// The `ROOMCAST_*` variables of this process's environment that are
/// neither a setting nor `ROOMCAST_CONFIG`, sorted. The caller warns about
/// them: they are not errors, because an orchestrator may set such
/// variables for its own reasons (Kubernetes' service links set
/// `ROOMCAST_PORT=tcp://10.0.0.1:8080` for a Service named `roomcast`).
/// A known variable with a bad value is still an error (clap's).
pub fn unknown_env_vars() -> Vec<String> {
    // `vars_os`: a variable whose name or value is not UTF-8 must not panic.
    unknown_env(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))
}

fn unknown_env(names: impl Iterator<Item = String>) -> Vec<String> {
    let known = toml::Table::try_from(Config {
        api_key: Some(String::new()),
        log_level: Some(String::new()),
        node_name: Some(String::new()),
        tls_cert: Some(PathBuf::new()),
        tls_key: Some(PathBuf::new()),
        message_burst: Some(0),
        flushers: Some(0),
        max_connections_per_ip: Some(0),
        connect_rate_per_ip: Some(0),
        jwt_secret: Some(String::new()),
        jwt_public_key: Some(PathBuf::new()),
        ..Config::default()
    })
    .expect("defaults serialize");
    let mut unknown: Vec<String> = names
        .filter(|name| {
            name.strip_prefix("ROOMCAST_").is_some_and(|rest| {
                !OTHER_ENV.contains(&name.as_str()) && !known.contains_key(&rest.to_ascii_lowercase())
            })
        })
        .collect();
    unknown.sort();
    unknown
}

/// The warning about [`unknown_env_vars`], `None` when there are none.
pub fn unknown_env_warning(names: &[String]) -> Option<String> {
    (!names.is_empty()).then(|| {
        format!(
            "ignoring unknown environment variable{} {} (not a roomcast setting; \
             check for a typo, see docs/configuration.md)",
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        )
    })
}

/// Longest accepted duration setting: far beyond any sensible value, and
/// small enough that deadlines computed from it never overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Bounds of `presence_ttl`: refreshed every third of it, at least every
/// second; a dead node's members may not linger more than an hour.
const MIN_PRESENCE_TTL: Duration = Duration::from_secs(3);
const MAX_PRESENCE_TTL: Duration = Duration::from_secs(3600);
/// Largest `max_presence_info_size`: an entry is stored once per member and
/// listed in presence answers.
const MAX_PRESENCE_INFO: usize = 64 * 1024;
/// Largest `max_presence_members`: with 1 KiB of info each, an answer of
/// about 10 MiB.
const MAX_PRESENCE_MEMBERS: usize = 10_000;

/// Bounds of `max_header_size`: hyper reads request heads into a buffer of
/// at least 8 KiB; beyond 1 MiB a request head is an attack, not a cookie.
const MIN_HEADER_SIZE: usize = 8 * 1024;
const MAX_HEADER_SIZE: usize = 1 << 20;

/// A node name: 1 to 64 ASCII letters, digits, `_` or `-`, with single
/// dots between them (it names the node's broker channel, a NATS subject
/// whose dots separate tokens, and prefixes its connection ids).
pub fn valid_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        })
}

/// `url` with any password or token replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            } else {
                let _ = u.set_username("***");
            }
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Which broker `--broker` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerSpec {
    /// This process only.
    Memory,
    /// A Redis server (`redis://` or `rediss://` URL, as given).
    Redis(String),
    /// A NATS server or cluster (one URL or several, comma-separated).
    Nats(String),
}

/// The default node name: the host name (what of it is valid in a name,
/// at most 59 bytes) and `-` with four random letters or digits.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut name: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(59)
        .collect();
    if name.is_empty() {
        name.push_str("roomcast");
    }
    name.push('-');
    name.extend((0..4).map(|_| fastrand::alphanumeric().to_ascii_lowercase()));
    name
}

/// The default zlib level (see docs/configuration.md for the measurement
/// behind it).
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 1;

/// Largest message size accepted as a setting (1 GiB).
const MAX_MESSAGE_LIMIT: usize = 1 << 30;

impl Config {
    /// Reject combinations that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &str, message: &str| {
            Err(ConfigError {
                key: key.to_owned(),
                message: message.to_owned(),
            })
        };
        if self.max_message_size == 0 || self.max_message_size > MAX_MESSAGE_LIMIT {
            return err("max_message_size", "must be between 1 and 1073741824 bytes");
        }
        if self.queue_messages == 0 {
            return err("queue_messages", "must be at least 1");
        }
        if self.queue_bytes == 0 {
            return err("queue_bytes", "must be at least 1");
        }
        if !(1..=9).contains(&self.compression_level) {
            return err("compression_level", "must be between 1 and 9");
        }
        if self.max_groups_per_connection == 0 {
            return err("max_groups_per_connection", "must be at least 1");
        }
        for (key, d) in [
            ("ping_interval", self.ping_interval),
            ("idle_timeout", self.idle_timeout),
            ("write_timeout", self.write_timeout),
            ("drain_timeout", self.drain_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if d > MAX_DURATION {
                return err(key, "must be at most 24h");
            }
        }
        for cidr in &self.trusted_proxy {
            if let Err(m) = crate::limits::parse_cidr(cidr) {
                return err("trusted_proxy", &m);
            }
        }
        for origin in &self.allowed_origin {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return err("allowed_origin", "must look like https://host[:port]");
            }
        }
        if !(MIN_HEADER_SIZE..=MAX_HEADER_SIZE).contains(&self.max_header_size) {
            return err("max_header_size", "must be between 8192 and 1048576 bytes");
        }
        if !(1..=128).contains(&self.ipv6_prefix_len) {
            return err("ipv6_prefix_len", "must be between 1 and 128");
        }
        if let Err(m) = self.broker_spec() {
            return err("broker", &m);
        }
        if self.node_name.as_deref().is_some_and(|n| !valid_node_name(n)) {
            return err(
                "node_name",
                "must be 1 to 64 characters, each a letter, digit, '_', '-' or a '.' between two others",
            );
        }
        if let Err((key, m)) = crate::groups::check(self.history_size, self.history_ttl) {
            return err(key, &m);
        }
        let mut prefixes = std::collections::HashSet::new();
        for rule in &self.groups {
            if let Err((key, m)) = crate::groups::check(rule.history_size, rule.history_ttl) {
                return err(&format!("groups.{key} (prefix '{}')", rule.prefix), &m);
            }
            if !prefixes.insert(rule.prefix.as_str()) {
                return err(
                    "groups.prefix",
                    &format!("'{}' appears in two [[groups]] rules", rule.prefix),
                );
            }
        }
        if let Err((key, m)) = crate::groups::check_presence(self.presence_features()) {
            return err(key, &m);
        }
        for rule in &self.groups {
            if let Err((key, m)) = crate::groups::check_presence(rule.into()) {
                return err(&format!("groups.{key} (prefix '{}')", rule.prefix), &m);
            }
        }
        if !(MIN_PRESENCE_TTL..=MAX_PRESENCE_TTL).contains(&self.presence_ttl) {
            return err("presence_ttl", "must be between 3s and 1h");
        }
        if self.join_leave_grace >= self.presence_ttl {
            return err(
                "join_leave_grace",
                "must be shorter than presence_ttl (a pending leave is kept that long)",
            );
        }
        if self.max_presence_info_size > MAX_PRESENCE_INFO {
            return err("max_presence_info_size", "must be at most 65536 bytes");
        }
        if !(1..=MAX_PRESENCE_MEMBERS).contains(&self.max_presence_members) {
            return err("max_presence_members", "must be between 1 and 10000");
        }
        if self.history_memory < 1024 * 1024 {
            return err("history_memory", "must be at least 1048576 bytes");
        }
        if self.handshake_timeout.is_zero() {
            return err("handshake_timeout", "must be more than 0s");
        }
        if self.body_timeout.is_zero() {
            return err("body_timeout", "must be more than 0s");
        }
        self.auth()?;
        if self.api_key.as_deref().is_some_and(|k| k.len() < 16) {
            return err("api_key", "must be at least 16 characters");
        }
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => {}
            (Some(_), None) => return err("tls_key", "required with tls_cert"),
            (None, Some(_)) => return err("tls_cert", "required with tls_key"),
            (Some(cert), Some(key)) => {
                if let Err(e) = crate::tls::server_config(cert, key) {
                    return err(e.setting, &e.message);
                }
            }
        }
        if let Some(filter) = &self.log_level
            && tracing_subscriber::EnvFilter::try_new(filter).is_err()
        {
            return err(
                "log_level",
                "not a valid log filter (examples: info, roomcast=debug)",
            );
        }
        if !self.idle_timeout.is_zero()
            && !self.ping_interval.is_zero()
            && self.ping_interval >= self.idle_timeout
        {
            return err(
                "ping_interval",
                "must be shorter than idle-timeout, or clients that only answer pings time out",
            );
        }
        Ok(())
    }

    /// The token verifier these settings ask for, if any.
    pub fn auth(&self) -> Result<Option<std::sync::Arc<crate::auth::Auth>>, ConfigError> {
        crate::auth::Auth::from_settings(self.jwt_secret.as_deref(), self.jwt_public_key.as_deref()).map_err(
            |e| ConfigError {
                key: e.key.into(),
                message: e.message,
            },
        )
    }

    /// The broker `broker` names, its URL checked.
    pub fn broker_spec(&self) -> Result<BrokerSpec, String> {
        let b = self.broker.trim();
        if b == "memory" {
            return Ok(BrokerSpec::Memory);
        }
        let scheme = b.split_once("://").map(|(s, _)| s).unwrap_or("");
        let check = |part: &str| -> Result<(), String> {
            let u = url::Url::parse(part).map_err(|e| format!("'{}': {e}", redact(part)))?;
            if u.host_str().is_none_or(str::is_empty) {
                return Err(format!("'{}': no host", redact(part)));
            }
            Ok(())
        };
        match scheme {
            "redis" | "rediss" => {
                check(b)?;
                Ok(BrokerSpec::Redis(b.to_string()))
            }
            "nats" | "tls" => {
                for part in b.split(',').map(str::trim) {
                    if !(part.starts_with("nats://") || part.starts_with("tls://")) {
                        return Err(format!(
                            "'{}': every server of a NATS list must be nats:// or tls://",
                            redact(part)
                        ));
                    }
                    check(part)?;
                }
                Ok(BrokerSpec::Nats(b.to_string()))
            }
            _ => Err("must be 'memory', a redis:// or rediss:// URL, or nats:// URLs".into()),
        }
    }

    /// The admission limits these settings ask for.
    pub fn limits(&self) -> crate::limits::Limits {
        crate::limits::Limits::new(crate::limits::Settings {
            max_connections: self.max_connections,
            max_per_ip: self.max_connections_per_ip,
            connect_rate_per_ip: self.connect_rate_per_ip,
            allowed_origins: &self.allowed_origin,
            trusted_proxies: &self.trusted_proxy,
            ipv6_prefix_len: self.ipv6_prefix_len,
        })
    }

    /// What each group has, from `[[groups]]` and the flags.
    pub fn group_rules(&self) -> crate::groups::GroupRules {
        crate::groups::GroupRules::with_presence(
            &self.groups,
            crate::groups::Features {
                history_size: self.history_size,
                history_ttl: self.history_ttl,
            },
            self.presence_features(),
        )
    }

    /// Presence and join/leave events for groups that no rule matches.
    pub fn presence_features(&self) -> crate::groups::PresenceFeatures {
        crate::groups::PresenceFeatures {
            presence: self.presence,
            join_leave: self.join_leave,
        }
    }

    /// The ping interval, `None` when pings are off.
    pub fn ping(&self) -> Option<Duration> {
        (!self.ping_interval.is_zero()).then_some(self.ping_interval)
    }

    /// The effective configuration as a commented TOML file.
    pub fn to_toml(&self, show_secrets: bool) -> String {
        use crate::limits::{DEFAULT_CONNECT_RATE_PER_IP, DEFAULT_MAX_CONNECTIONS_PER_IP};
        let mut shown = self.clone();
        if !show_secrets {
            for secret in [&mut shown.api_key, &mut shown.jwt_secret] {
                if secret.is_some() {
                    *secret = Some("<redacted>".into());
                }
            }
            // A broker URL may carry a password or token.
            shown.broker = shown
                .broker
                .split(',')
                .map(|part| redact(part.trim()))
                .collect::<Vec<_>>()
                .join(",");
        }
        let body = toml::to_string(&shown).expect("config serializes");
        let mut out = String::from(
            "# roomcast configuration (effective values). Use with: roomcast serve --config FILE\n\
             # Every key is documented in docs/configuration.md.\n",
        );
        if shown.api_key.is_none() {
            out.push_str("# api_key = \"...\"   # unset: the HTTP API answers loopback clients only\n");
        }
        if shown.log_level.is_none() {
            out.push_str("# log_level = \"info\"   # unset: RUST_LOG, or info\n");
        }
        if shown.flushers.is_none() {
            out.push_str("# flushers = 2   # unset: one per CPU core; 0: off\n");
        }
        let unset = "for a public address, no limit for a loopback, private, CGNAT or link-local one; \
                     set: for every address";
        if shown.max_connections_per_ip.is_none() {
            out.push_str(&format!(
                "# max_connections_per_ip = {DEFAULT_MAX_CONNECTIONS_PER_IP}   # unset: {DEFAULT_MAX_CONNECTIONS_PER_IP} {unset}\n"
            ));
        }
        if shown.connect_rate_per_ip.is_none() {
            out.push_str(&format!(
                "# connect_rate_per_ip = {DEFAULT_CONNECT_RATE_PER_IP}   # unset: {DEFAULT_CONNECT_RATE_PER_IP}/s {unset}\n"
            ));
        }
        if shown.tls_cert.is_none() {
            out.push_str(
                "# tls_cert = \"/path/to/fullchain.pem\"   # unset (with tls_key): plain ws:// and http://\n",
            );
            out.push_str("# tls_key = \"/path/to/privkey.pem\"\n");
        }
        out.push_str(&body);
        out
    }

    /// Burst of the per-connection message rate.
    pub fn message_burst(&self) -> u32 {
        self.message_burst.unwrap_or(self.message_rate)
    }

    /// The write timeout, `None` when off.
    pub fn write_stall(&self) -> Option<Duration> {
        (!self.write_timeout.is_zero()).then_some(self.write_timeout)
    }

    /// The idle timeout, `None` when off.
    pub fn idle(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }
}

/// Parse `25s`, `500ms`, `1m 30s` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 25s, 500ms, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn rejects_unworkable_settings() {
        let c = Config {
            ping_interval: Duration::from_secs(60),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "ping_interval");
        let c = Config {
            queue_messages: 0,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "queue_messages");
        for (c, key) in [
            (
                Config {
                    join_leave: true,
                    ..Config::default()
                },
                "join_leave",
            ),
            (
                Config {
                    presence_ttl: Duration::from_secs(1),
                    ..Config::default()
                },
                "presence_ttl",
            ),
            (
                Config {
                    join_leave_grace: Duration::from_secs(30),
                    ..Config::default()
                },
                "join_leave_grace",
            ),
            (
                Config {
                    max_presence_members: 0,
                    ..Config::default()
                },
                "max_presence_members",
            ),
            (
                Config {
                    max_presence_info_size: 65537,
                    ..Config::default()
                },
                "max_presence_info_size",
            ),
        ] {
            assert_eq!(c.validate().unwrap_err().key, key);
        }
        assert!(parse_duration("500ms").is_ok());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn unknown_env_names_only_unknown_roomcast_variables() {
        let names = [
            "ROOMCAST_SERVICE_HOST",
            "ROOMCAST_PORT",
            "ROOMCAST_LISTEN",
            "ROOMCAST_CONFIG",
            "ROOMCAST_JWT_SECRET",
            "PATH",
        ];
        assert_eq!(
            unknown_env(names.iter().map(|n| n.to_string())),
            ["ROOMCAST_PORT", "ROOMCAST_SERVICE_HOST"]
        );
    }
}
