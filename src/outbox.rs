//! One bounded outbound queue per connection.
//!
//! Publishers (any task) push reference-counted frames; the connection's own
//! task pops them in batches and writes each batch with one vectored write.
//! Pushing is lock-free (a segmented queue plus two counters), so a fan-out
//! to ten thousand members takes no lock per recipient.
//!
//! The counters cover every frame not yet handed to the kernel, so the limits
//! (`--queue-messages`, `--queue-bytes`) bound what a slow client can make the
//! server hold. When a push would cross a limit it fails with
//! [`PushError::Full`] and the caller applies the slow-consumer policy.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::task::Context;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_queue::SegQueue;

/// Identifier of a connection, unique for the life of the process.
pub type ConnId = u64;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue is at its message or byte limit.
    Full,
    /// The connection is being closed; the frame would never be written.
    Closing,
}

/// The outbound side of one connection, shared by everyone who sends to it.
#[derive(Debug)]
pub struct Outbox {
    /// The connection's id.
    id: ConnId,
    queue: SegQueue<Bytes>,
    /// Ping and Pong frames: written before anything waiting in `queue`, so
    /// a heartbeat is not stuck behind a backlog of publications.
    control: SegQueue<Bytes>,
    /// Frames queued or popped but not yet written.
    len: AtomicUsize,
    /// Bytes of those frames.
    bytes: AtomicUsize,
    /// Limit on `len`.
    max_len: usize,
    /// Limit on `bytes`.
    max_bytes: usize,
    /// Close code requested by someone other than the connection's task
    /// (slow consumer, shutdown, API); 0 while none.
    close_request: AtomicU16,
    /// Reason text to send with a requested close (set by the HTTP API).
    close_reason: std::sync::OnceLock<Box<str>>,
    /// Wakes the connection's task when a frame or a close request arrives.
    waker: AtomicWaker,
}

impl Outbox {
    /// An empty outbox; allocates nothing until the first push.
    pub fn new(id: ConnId, max_len: usize, max_bytes: usize) -> Self {
        Self {
            id,
            queue: SegQueue::new(),
            control: SegQueue::new(),
            len: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_len,
            max_bytes,
            close_request: AtomicU16::new(0),
            close_reason: std::sync::OnceLock::new(),
            waker: AtomicWaker::new(),
        }
    }

    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Queue `frame` if both limits allow it.
    ///
    /// A frame larger than the byte limit is still accepted into an empty
    /// queue, so one big message cannot wedge a connection.
    pub fn try_push(&self, frame: Bytes) -> Result<(), PushError> {
        if self.close_request.load(Ordering::Relaxed) != 0 {
            return Err(PushError::Closing);
        }
        let n = frame.len();
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.max_len {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(PushError::Full);
        }
        let before = self.bytes.fetch_add(n, Ordering::AcqRel);
        if before > 0 && before + n > self.max_bytes {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(PushError::Full);
        }
        self.queue.push(frame);
        self.waker.wake();
        Ok(())
    }

    /// Queue a frame the connection owes its own client (ack, error, pong,
    /// close), ignoring the limits. The connection stops reading while its
    /// queue is past a limit, so these are bounded by what one read produces.
    pub fn push_reply(&self, frame: Bytes) {
        self.len.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(frame.len(), Ordering::AcqRel);
        self.queue.push(frame);
        self.waker.wake();
    }

    /// Queue a Ping or Pong ahead of the waiting frames (after the frame
    /// being written, if any). Counted like a reply.
    pub fn push_control(&self, frame: Bytes) {
        self.len.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(frame.len(), Ordering::AcqRel);
        self.control.push(frame);
        self.waker.wake();
    }

    /// Ask the connection to close with `code`. Returns true for the first
    /// request only, so the caller can count it once.
    pub fn request_close(&self, code: u16) -> bool {
        let first = self
            .close_request
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.waker.wake();
        }
        first
    }

    /// Like [`Outbox::request_close`], with a reason text for the Close frame.
    pub fn request_close_with_reason(&self, code: u16, reason: &str) -> bool {
        let _ = self.close_reason.set(reason.into());
        self.request_close(code)
    }

    /// The reason given with the close request, if any.
    pub fn close_reason(&self) -> Option<&str> {
        self.close_reason.get().map(|r| &**r)
    }

    /// The pending close request, if any.
    pub fn close_requested(&self) -> Option<u16> {
        match self.close_request.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }

    /// Frames not yet written.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes not yet written.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Whether replies pushed the queue to twice a limit (fan-out alone
    /// stops at the limit, leaving the same again for replies); the
    /// connection pauses reading from its client then.
    pub fn is_over_limit(&self) -> bool {
        self.len() > 2 * self.max_len || self.bytes() > 2 * self.max_bytes
    }

    // ---- consumer side: only the connection's own task calls these ----

    /// Register the connection task's waker before looking at the queue.
    pub fn register(&self, cx: &Context<'_>) {
        self.waker.register(cx.waker());
    }

    /// Move up to `max_frames` frames (and roughly `max_bytes` bytes) into
    /// `batch`. They stay counted until [`Outbox::written`].
    pub fn pop_batch(&self, batch: &mut impl Extend<Bytes>, max_frames: usize, max_bytes: usize) {
        let (mut frames, mut bytes) = (0, 0);
        while frames < max_frames && bytes < max_bytes {
            match self.control.pop().or_else(|| self.queue.pop()) {
                Some(f) => {
                    frames += 1;
                    bytes += f.len();
                    batch.extend(Some(f));
                }
                None => break,
            }
        }
    }

    /// Frames and bytes from a batch were written (or discarded).
    pub fn written(&self, frames: usize, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.len.fetch_sub(frames, Ordering::AcqRel);
    }

    /// Drop everything queued (a slow consumer being disconnected).
    pub fn discard(&self) {
        let (mut frames, mut bytes) = (0, 0);
        while let Some(f) = self.control.pop().or_else(|| self.queue.pop()) {
            frames += 1;
            bytes += f.len();
        }
        self.written(frames, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_by_count_and_bytes() {
        let o = Outbox::new(1, 3, 10);
        o.try_push(Bytes::from_static(b"12345")).unwrap();
        o.try_push(Bytes::from_static(b"12345")).unwrap();
        assert_eq!(o.try_push(Bytes::from_static(b"1")), Err(PushError::Full));
        assert_eq!((o.len(), o.bytes()), (2, 10));
        let mut batch = Vec::new();
        o.pop_batch(&mut batch, 64, 1 << 20);
        assert_eq!(batch.len(), 2);
        // Still counted until written.
        assert_eq!(o.try_push(Bytes::from_static(b"1")), Err(PushError::Full));
        o.written(2, 10);
        for _ in 0..3 {
            o.try_push(Bytes::from_static(b"1")).unwrap();
        }
        assert_eq!(o.try_push(Bytes::from_static(b"1")), Err(PushError::Full));
    }

    #[test]
    fn oversize_frame_fits_an_empty_queue() {
        let o = Outbox::new(1, 10, 4);
        o.try_push(Bytes::from_static(b"123456")).unwrap();
        assert_eq!(o.try_push(Bytes::from_static(b"1")), Err(PushError::Full));
    }

    #[test]
    fn close_request_counts_once_and_refuses_pushes() {
        let o = Outbox::new(1, 10, 100);
        assert!(o.request_close(4001));
        assert!(!o.request_close(1001));
        assert_eq!(o.close_requested(), Some(4001));
        assert_eq!(o.try_push(Bytes::from_static(b"x")), Err(PushError::Closing));
    }
}
