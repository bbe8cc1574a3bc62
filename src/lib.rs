//! roomcast: a real-time messaging server. Clients connect over WebSocket,
//! join named groups, and every message published to a group reaches every
//! member.
//!
//! # Layout
//!
//! - [`config`]: the one typed configuration struct and its validation.
//! - [`server`]: accept loop, HTTP/1.1 connections, graceful shutdown.
//! - [`http`]: routes: `/ws` and `/echo` upgrades, `/stats`, `/healthz`.
//! - [`node`]: the shared handle of a running server (hub, broker, stats).
//! - [`session`]: one client: the roomcast protocol or echo, heartbeat, cleanup.
//! - [`conn`]: socket I/O of one connection: stack read buffer, decoder,
//!   vectored writes from the outbox.
//! - [`outbox`]: the bounded, lock-free outbound queue of one connection.
//! - [`hub`]: connections by id and groups by name, sharded; fan-out.
//! - [`broker`]: the publish/subscribe seam between nodes (`memory` today).
//! - [`protocol`]: JSON and binary requests, encoding of server frames.
//! - [`ws`]: our RFC 6455 codec (handshake, frame decoder/encoder, close).
//! - [`disconnect`]: every reason the server closes a connection, with codes.
//! - [`stats`]: counters behind `/stats`.

pub mod broker;
pub mod config;
pub mod conn;
pub mod disconnect;
pub mod http;
pub mod hub;
pub mod node;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod session;
pub mod stats;
pub mod ws;
