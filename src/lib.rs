//! roomcast: a real-time messaging server. Clients connect over WebSocket,
//! join named groups, and every message published to a group reaches every
//! member.
//!
//! # Layout
//!
//! - [`config`]: the one typed configuration struct and its validation.
//! - [`bench`]: `roomcast bench`, the load generator and its scenarios.
//! - [`client`]: `roomcast client`, a command-line client speaking the
//!   protocol (for trying and scripting a server).
//! - [`server`]: accept loop, HTTP/1.1 connections, graceful shutdown.
//! - [`tls`]: `wss://` and HTTPS with rustls; certificate reload on SIGHUP.
//! - [`http`]: every HTTP route: the `/ws` and `/echo` upgrades, the server
//!   API under `/api`, `/stats`, `/metrics`, `/healthz`, `/readyz`.
//! - [`auth`]: JWT verification on connect, and what a token allows.
//! - [`node`]: the shared handle of a running server (hub, broker, metrics).
//! - [`session`]: one client: the roomcast protocol or echo, one handler
//!   per request, heartbeat, cleanup.
//! - [`conn`]: socket I/O of one connection: stack read buffer, decoder,
//!   vectored writes from the outbox.
//! - [`broker`]: the publish/subscribe seam between nodes: `memory` (one
//!   node), and cluster brokers over Redis and NATS (`cluster`, `redis`,
//!   `nats`, `wire`).
//! - [`history`]: each group's latest publications with offsets and an
//!   epoch, for recovery and `history` reads (`memory` for the memory
//!   broker).
//! - [`presence`]: who is in each group with presence, across the cluster,
//!   and the counts join/leave events go by (`memory`, `redis`, `nats`).
//! - [`roster`]: what sessions and the API do with presence: entries on
//!   join and leave, `joined`/`left` events through the broker (with the
//!   grace), presence answers.
//! - [`groups`]: what each group has: history, presence, join/leave events
//!   (`[[groups]]` prefix rules).
//! - [`publication`]: a message on its way to its recipients (target,
//!   publisher, payload), as the broker carries and history keeps it.
//! - [`hub`]: connections by id and groups by name, sharded; fan-out.
//! - [`flush`]: flush shards, which write fan-out to plain TCP sockets in
//!   publication order without waking each connection's task.
//! - [`outbox`]: the bounded, lock-free outbound queue of one connection,
//!   and the list a flush shard takes it from.
//! - [`prepared`]: a message prepared once for all its recipients: the
//!   frames each kind of recipient needs, built at most once each.
//! - [`protocol`]: JSON and binary requests, encoding of server messages
//!   (payloads, not frames).
//! - [`metrics`]: lock-free counters and histograms, in the Prometheus text
//!   format; also read by `/stats`.
//! - [`limits`]: admission limits (connection caps, connect rate, Origin,
//!   trusted proxies) and the per-connection message rate.
//! - [`disconnect`]: every way a connection ends, with its close code,
//!   reason and metrics label.
//! - [`id`]: identifiers shared across layers ([`id::ConnId`]).
//! - [`ws`]: our RFC 6455 codec (handshake, frame decoder/encoder, close).
//! - [`logging`]: log setup and the per-kind limiter for repeated errors.
//!
//! # Layers
//!
//! Each module imports only modules below it (a child may use its parent),
//! so no two modules import each other, directly or round about:
//!
//! ```text
//! main, bench, client
//! server
//! http (upgrade, api, probes, stats)
//! session
//! roster
//! node
//! broker, conn
//! history, presence
//! hub
//! prepared, flush
//! outbox
//! metrics, logging
//! config             (builds auth, limits and tls from the settings it validates)
//! auth, limits, tls, groups
//! publication
//! protocol, disconnect
//! ws, id
//! ```
//!
//! A request climbs this stack and a publication goes down it: a session
//! (or `http::api`) hands a publication to the broker, the broker to the
//! hub of every node, the hub into each member's outbox, and the outbox's
//! frames leave through the connection's task or a flush shard. `metrics`
//! sits below everything that counts, and knows none of it.
//! `../shared/tools/module-cycles src` checks the rule.

pub mod auth;
pub mod bench;
pub mod broker;
pub mod client;
pub mod config;
pub mod conn;
pub mod disconnect;
pub mod flush;
pub mod groups;
pub mod history;
pub mod http;
pub mod hub;
pub mod id;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod prepared;
pub mod presence;
pub mod protocol;
pub mod publication;
pub mod roster;
pub mod server;
pub mod session;
pub mod tls;
pub mod ws;
