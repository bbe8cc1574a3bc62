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
//! - [`api`]: the HTTP server API under `/api` (publish, send, groups).
//! - [`auth`]: JWT verification on connect, and what a token allows.
//! - [`http`]: routes: `/ws` and `/echo` upgrades, `/stats`, `/healthz`,
//!   and the routes of [`metrics`].
//! - [`node`]: the shared handle of a running server (hub, broker, stats).
//! - [`session`]: one client: the roomcast protocol or echo, heartbeat, cleanup.
//! - [`conn`]: socket I/O of one connection: stack read buffer, decoder,
//!   vectored writes from the outbox.
//! - [`outbox`]: the bounded, lock-free outbound queue of one connection.
//! - [`flush`]: flush shards, which write fan-out to plain TCP sockets in
//!   publication order without waking each connection's task.
//! - [`hub`]: connections by id and groups by name, sharded; fan-out.
//! - [`broker`]: the publish/subscribe seam between nodes (`memory` today).
//! - [`protocol`]: JSON and binary requests, encoding of server frames.
//! - [`ws`]: our RFC 6455 codec (handshake, frame decoder/encoder, close).
//! - [`disconnect`]: every reason the server closes a connection, with codes.
//! - [`stats`]: counters behind `/stats` (a view of [`metrics`]).
//! - [`metrics`]: Prometheus metrics at `/metrics` (lock-free recording) and
//!   the readiness probe `/readyz`.
//! - [`limits`]: admission limits (connection caps, connect rate, Origin,
//!   trusted proxies) and the per-connection message rate.
//! - [`logging`]: log setup and the per-kind limiter for repeated errors.

pub mod api;
pub mod auth;
pub mod bench;
pub mod broker;
pub mod client;
pub mod config;
pub mod conn;
pub mod disconnect;
pub mod flush;
pub mod http;
pub mod hub;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod session;
pub mod stats;
pub mod tls;
pub mod ws;
