//! Identifiers shared across the server's layers.
//!
//! Kept in a module of their own so that the modules that pass them around
//! (the outbox, the hub, the broker, the protocol encoder) need not import
//! one another to name them.

use std::fmt;
use std::sync::Arc;

/// Identifier of a connection on this node, unique for the life of the
/// process.
pub type ConnId = u64;

/// A connection anywhere in the cluster: its node and its id there.
///
/// Clients see it as an opaque string: the local number alone on a single
/// node (`"17"`), and `NODE.NUMBER` in a cluster (`"web-1.1765180000000017"`),
/// so that any node can tell which node holds a connection. Node names
/// contain no character that a number does not, and the number never
/// contains a `.`, so the last `.` splits the two.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId {
    /// The node holding the connection; `None` on a single node.
    pub node: Option<Arc<str>>,
    /// The connection's id on that node.
    pub conn: ConnId,
}

impl ClientId {
    /// Parse a client id as [`fmt::Display`] writes it; `None` when it
    /// cannot be one.
    pub fn parse(s: &str) -> Option<Self> {
        let number = |n: &str| {
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse().ok())
                .flatten()
        };
        match s.rsplit_once('.') {
            Some((node, n)) if !node.is_empty() => Some(Self {
                node: Some(Arc::from(node)),
                conn: number(n)?,
            }),
            Some(_) => None,
            None => Some(Self {
                node: None,
                conn: number(s)?,
            }),
        }
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(node) => write!(f, "{node}.{}", self.conn),
            None => write!(f, "{}", self.conn),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_round_trip() {
        for s in ["17", "web-1.42", "a.b.c.7", "n_1.18446744073709551615"] {
            assert_eq!(ClientId::parse(s).unwrap().to_string(), s);
        }
        let id = ClientId::parse("a.b.7").unwrap();
        assert_eq!((id.node.as_deref(), id.conn), (Some("a.b"), 7));
        for bad in [
            "",
            ".",
            ".7",
            "a.",
            "a.x",
            "x",
            "-1",
            "+1",
            "a.+1",
            "1 ",
            "a.18446744073709551616",
        ] {
            assert_eq!(ClientId::parse(bad), None, "{bad:?}");
        }
    }
}
