//! Our own WebSocket layer (RFC 6455), kept behind this module boundary.
//!
//! Why not a crate: the hub must write one pre-encoded frame (and later one
//! pre-compressed permessage-deflate frame) to thousands of sockets, and an
//! idle connection must not hold a read buffer. No WebSocket crate offers both
//! (see `../shared/DESIGN-NOTES.md`), so the codec is ours:
//!
//! - [`handshake`]: validating the upgrade request, computing the accept key.
//! - [`decoder`]: streaming, sans-IO decoder of client frames (fragmentation,
//!   control frames, masking, UTF-8, size limits, close payloads).
//! - [`frame`]: encoding unmasked server frames, header placed in front of the
//!   payload without a copy; RSV1 is a parameter for compressed frames.
//! - [`close`]: close codes and close payloads.
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation, compressing a
//!   publication once for every recipient, bounded inflation of client messages.
//! - [`mask`], [`utf8`]: helpers of the decoder.
//!
//! The socket I/O that drives the codec lives in [`crate::conn`].

pub mod close;
pub mod decoder;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use decoder::{Decoder, Event, ProtocolError};
