//! History: the last publications of each group that keeps them, with
//! offsets, so that a member who reconnects can get exactly what it missed,
//! or learn for certain that it cannot.
//!
//! Each publication to a group with history gets the next offset of the
//! group (1, 2, 3, ...), and the group's history has an *epoch*: a string
//! that changes whenever the history is lost and offsets start again (the
//! memory broker restarted, the stream was evicted or expired, a Redis key
//! was flushed). A position is the pair; a client that knows its position
//! in an epoch can ask for everything after it.
//!
//! As in centrifuge, history stands beside the broker, not inside it: the
//! broker carries publications, history keeps them. Where offsets come
//! from depends on the broker, because offsets, delivery order and history
//! must agree: the memory broker appends and delivers under one lock
//! ([`memory`]); a cluster broker appends and publishes in one atomic step
//! on the broker's server.

pub mod memory;

use std::sync::Arc;

use crate::protocol::{self, HistoryHead, HistoryItem};
use crate::publication::{Payload, Publication};
use crate::ws::frame::FramePayload;

pub use memory::MemoryHistory;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a group's history stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Offset of the latest publication (0: none yet in this epoch).
    pub offset: u64,
    /// The epoch those offsets belong to.
    pub epoch: Arc<str>,
}

/// One kept publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its offset in the group.
    pub offset: u64,
    /// The publication (target, publisher, user, payload).
    pub publication: Publication,
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Kept publications, oldest first.
    pub entries: Vec<Entry>,
    /// The group's position when it was read.
    pub position: Position,
    /// For a read `since` an offset: every publication after it up to the
    /// first entry is still kept (nothing is missing before `entries`).
    /// Always true for a read of the latest entries.
    pub complete: bool,
    /// More entries follow the last one returned (the limit cut them).
    pub more: bool,
}

impl Page {
    /// Whether a member at `since` in `epoch` can get all it missed from
    /// this page: same epoch, nothing missing, nothing cut.
    pub fn recovers(&self, since: u64, epoch: &str) -> bool {
        *self.position.epoch == *epoch && self.complete && !self.more && since <= self.position.offset
    }
}

/// Why history could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The store (Redis, NATS) is down or did not answer.
    #[error("history unavailable: {0}")]
    Unavailable(String),
}

/// Reads a group's history.
pub trait History: Send + Sync + 'static {
    /// Up to `limit` kept publications of `group`, oldest first: those after
    /// offset `since`, or (with `None`) the latest ones; with the group's
    /// position. `limit` 0 reads only the position.
    fn read(
        &self,
        group: &Arc<str>,
        since: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Page, HistoryError>>;
}

/// A new epoch: 12 random letters and digits (62^12: two streams of one
/// group never share one).
pub fn new_epoch() -> Arc<str> {
    let s: String = (0..12).map(|_| fastrand::alphanumeric()).collect();
    s.into()
}

/// Most payload bytes in one history answer; a page is cut (`more`) past
/// it, after at least one publication.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The answer to a `history` request for `group`: the JSON `history`
/// message (with `id`), or the binary page.
pub fn answer(
    group: &str,
    page: &Page,
    binary: bool,
    id: Option<&serde_json::value::RawValue>,
) -> FramePayload {
    let mut bytes = 0;
    let mut items = Vec::with_capacity(page.entries.len());
    for e in &page.entries {
        let data = e.publication.payload.bytes();
        if !items.is_empty() && bytes + data.len() > MAX_ANSWER_BYTES {
            break;
        }
        bytes += data.len();
        items.push(HistoryItem {
            offset: e.offset,
            from: e.publication.from.as_ref(),
            user: e.publication.user.as_deref(),
            binary: matches!(e.publication.payload, Payload::Binary(_)),
            data,
        });
    }
    let head = HistoryHead {
        group,
        offset: page.position.offset,
        epoch: &page.position.epoch,
        complete: page.complete,
        more: page.more || items.len() < page.entries.len(),
    };
    if binary {
        protocol::history_binary(&head, &items)
    } else {
        protocol::history_json(id, &head, &items)
    }
}
