//! Identifiers shared across the server's layers.
//!
//! Kept in a module of their own so that the modules that pass them around
//! (the outbox, the hub, the broker, the protocol encoder) need not import
//! one another to name them.

/// Identifier of a connection, unique for the life of the process.
pub type ConnId = u64;
