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
//!
//! # Memory of an idle connection
//!
//! A segmented queue allocates a block of 31 slots (about 1.2 KiB) on its
//! first push and keeps it until all 31 slots have been used, so a
//! connection that was sent only its welcome and an ack would hold a block
//! for ever. So each queue is allocated on its first push, and
//! [`Outbox::release_idle`] frees it (with its block) once everything is
//! written: the connection's task calls it when it runs dry (and on its
//! timer). Freeing is safe only while no producer is inside a push; the
//! frame counter `len` doubles as that gate. Every push raises `len` before
//! it touches a queue and the frame stays counted until it is written, so
//! `len == 0` means that no frame is queued and no push is under way. The
//! consumer claims the queues by turning `len` from 0 into [`RECLAIMING`]
//! with one compare-and-swap, detaches them (two pointer swaps), clears the
//! bit, and only then frees them. A push that raised `len` meanwhile sees
//! the bit and waits those few instructions before touching a queue; any
//! other push is unaffected.
//!
//! # Direct writes
//!
//! On plain TCP the connection's task can hand its writing over to a
//! flush shard ([`crate::flush`]): while it has nothing of its own to write (its batch is
//! empty, it is not closing), a push does not wake the task but puts the
//! outbox on the shard's first-in-first-out list, once, and the shard's
//! flusher writes everything queued with one `writev` on the socket's
//! descriptor when it gets to it. A fan-out to ten thousand members then
//! costs ten thousand list entries and, later, ten thousand writes in
//! publication order, instead of ten thousand task wake-ups and polls;
//! frames published while an outbox waits its turn share its write.
//!
//! Who writes is one state, [`Outbox::writer`]: `TASK` (the task, as
//! without direct writes), `FLUSHER` (the shard will), `FLUSHING` (the
//! flusher is writing right now) or `DONE` (the task, for good: the
//! connection is closing or gone, and the descriptor may be closed). The
//! task hands over when it has written everything, and takes back when it
//! has something of its own (a reply to its client, its Close) by turning
//! `FLUSHER` into `TASK`. The flusher writes only in `FLUSHING`, entered from
//! `FLUSHER`, so it never writes after the task turned the state to `DONE`
//! (which waits out a write in progress). When the socket is full, a frame
//! is only partly written, a Close frame turns up or the write fails, the
//! flusher leaves what it could not write in the outbox's `spill` (the
//! task's batch-to-be, with how its first frame counts in the metrics),
//! turns the state back to `TASK` and wakes the task, which goes on as it
//! would have. Pushes and the hand-over check each other's side after a
//! `SeqCst` fence, so a frame pushed while the state changes is seen by the
//! task or scheduled with the shard, never neither.
//!
//! Fan-out reuses a block across publications: after frames from
//! [`Outbox::try_push`] the queue keeps its block when it runs dry and gives
//! it back only on the connection's timer, so a member of a busy group does
//! not allocate per publication. Replies and control frames (the
//! connection's own) give it back as soon as they are written.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::{Buf, Bytes};
use crossbeam_queue::SegQueue;

use crate::disconnect::Disconnect;
use crate::id::ConnId;
use crate::metrics::{Protocol, Written};
use crate::prepared::Encoding;

/// Set in `len` while the consumer swaps the queues (see the module docs).
const RECLAIMING: usize = 1 << (usize::BITS - 1);

/// [`Outbox::writer`]: the connection's task writes.
const TASK: u8 = 0;
/// The flush shard writes; pushes schedule the outbox with it.
const FLUSHER: u8 = 1;
/// The flusher is writing now.
const FLUSHING: u8 = 2;
/// The task writes, for good (closing or gone).
const DONE: u8 = 3;

/// Most frames in one vectored write.
pub const MAX_IOV: usize = 64;
/// Roughly the most bytes taken from the outbox for one write.
pub const BATCH_BYTES: usize = 256 * 1024;
/// First byte of a Close frame (FIN + opcode 8). Every outbox entry is a
/// whole frame, so an entry starting with it is a Close.
pub const CLOSE_HEADER: u8 = 0x88;

/// How a frame counts in the metrics ([`Protocol::of_frame`]), noted
/// before any of it is written (a partly written frame has lost its header).
pub type HeadKind = Option<Option<(Protocol, usize)>>;

/// Frames taken from the queue but not (wholly) written: the head of a
/// batch, handed from the flusher back to the connection's task.
#[derive(Debug, Default)]
pub struct Spill {
    /// The frames, the first possibly partly written.
    pub frames: VecDeque<Bytes>,
    /// How the first frame counts.
    pub head_kind: HeadKind,
}

/// Account `n` written bytes against `batch`: drop the frames written,
/// advance a partly written first one. Returns the tally for the metrics.
pub fn advance(batch: &mut VecDeque<Bytes>, head_kind: &mut HeadKind, mut n: usize) -> Written {
    let mut tally = Written::new(n);
    while let Some(head) = batch.front_mut() {
        let kind = *head_kind.get_or_insert_with(|| Protocol::of_frame(head));
        if head.len() <= n {
            n -= head.len();
            batch.pop_front();
            *head_kind = None;
            tally.frame(kind);
        } else {
            head.advance(n);
            break;
        }
    }
    tally
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue is at its message or byte limit.
    Full,
    /// The connection is being closed; the frame would never be written.
    Closing,
}

/// The outbound side of one connection, shared by everyone who sends to it.
pub struct Outbox {
    /// The connection's id.
    id: ConnId,
    /// Allocated on first push, freed under the `len` gate (module docs).
    queue: LazyQueue,
    /// Ping and Pong frames: written before anything waiting in `queue`, so
    /// a heartbeat is not stuck behind a backlog of publications. Freed
    /// like `queue`.
    control: LazyQueue,
    /// Frames queued or popped but not yet written, plus [`RECLAIMING`]
    /// while the consumer swaps the queues.
    len: AtomicUsize,
    /// [`Outbox::try_push`] queued a frame since the last full release.
    fanned_out: AtomicBool,
    /// [`Outbox::push_control`] queued a frame since the last release.
    control_used: AtomicBool,
    /// Held by the consumer-side methods, so that a caller breaking the
    /// one-consumer rule cannot pop from a queue being swapped.
    consuming: AtomicBool,
    /// Bytes of those frames.
    bytes: AtomicUsize,
    /// Limit on `len`.
    max_len: usize,
    /// Limit on `bytes`.
    max_bytes: usize,
    /// Why the connection is to close, once someone asked: its own task,
    /// or anyone else (slow consumer, shutdown, the HTTP API). The first
    /// request wins; pushes are refused from then on.
    close: OnceLock<Disconnect>,
    /// Wakes the connection's task when a frame or a close request arrives.
    waker: AtomicWaker,
    /// Who writes: `TASK`, `FLUSHER`, `FLUSHING` or `DONE` (module docs).
    writer: AtomicU8,
    /// The outbox is on its shard's list (or about to be).
    scheduled: AtomicBool,
    /// The socket's descriptor for direct writes; -1 while there is none.
    fd: AtomicI32,
    /// The list of the flush shard that writes for it; `None`: never.
    shard: Option<Arc<ShardQueue>>,
    /// What the connection negotiated: which frame of a prepared message
    /// it gets (plain or deflated).
    encoding: Encoding,
    /// This outbox, for the shard's list.
    this: Weak<Outbox>,
    /// What the flusher could not write, for the task (module docs).
    spill: Mutex<Spill>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("id", &self.id)
            .field("len", &self.len())
            .field("bytes", &self.bytes())
            .field("max_len", &self.max_len)
            .field("max_bytes", &self.max_bytes)
            .field("close_request", &self.close_requested())
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An empty outbox; allocates nothing until the first push.
    pub fn new(id: ConnId, max_len: usize, max_bytes: usize) -> Self {
        Self::build(id, max_len, max_bytes, None, Encoding::PLAIN, Weak::new())
    }

    /// An empty outbox for a connection that takes `encoding` and may hand
    /// its writing to `shard`.
    pub fn with_shard(
        id: ConnId,
        max_len: usize,
        max_bytes: usize,
        shard: Option<Arc<ShardQueue>>,
        encoding: Encoding,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self::build(id, max_len, max_bytes, shard, encoding, this.clone()))
    }

    fn build(
        id: ConnId,
        max_len: usize,
        max_bytes: usize,
        shard: Option<Arc<ShardQueue>>,
        encoding: Encoding,
        this: Weak<Outbox>,
    ) -> Self {
        Self {
            id,
            queue: LazyQueue::new(),
            control: LazyQueue::new(),
            len: AtomicUsize::new(0),
            fanned_out: AtomicBool::new(false),
            control_used: AtomicBool::new(false),
            consuming: AtomicBool::new(false),
            bytes: AtomicUsize::new(0),
            max_len,
            max_bytes,
            close: OnceLock::new(),
            waker: AtomicWaker::new(),
            writer: AtomicU8::new(TASK),
            scheduled: AtomicBool::new(false),
            fd: AtomicI32::new(-1),
            shard,
            encoding,
            this,
            spill: Mutex::new(Spill::default()),
        }
    }

    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// How the connection takes its frames (what it negotiated).
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Queue `frame` if both limits allow it.
    ///
    /// A frame larger than the byte limit is still accepted into an empty
    /// queue, so one big message cannot wedge a connection.
    pub fn try_push(&self, frame: Bytes) -> Result<(), PushError> {
        if self.close.get().is_some() {
            return Err(PushError::Closing);
        }
        let n = frame.len();
        let prev = self.len.fetch_add(1, Ordering::AcqRel);
        if prev & !RECLAIMING >= self.max_len {
            // Not queued: no need to wait for a swap to finish.
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(PushError::Full);
        }
        let before = self.bytes.fetch_add(n, Ordering::AcqRel);
        if before > 0 && before + n > self.max_bytes {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(PushError::Full);
        }
        self.wait_swap(prev);
        if !self.fanned_out.load(Ordering::Relaxed) {
            self.fanned_out.store(true, Ordering::Relaxed);
        }
        // SAFETY: this push's increment keeps `len` above 0 until its frame
        // is written, so no release starts before the push is done; one
        // that had started is over (`wait_swap`).
        unsafe { self.queue.push(frame) };
        self.notify();
        Ok(())
    }

    /// Make sure whoever writes sees a frame just queued: schedule the
    /// outbox with its shard, or wake the task.
    fn notify(&self) {
        // Pairs with the fence in `hand_off` (module docs).
        fence(Ordering::SeqCst);
        match self.writer.load(Ordering::Relaxed) {
            FLUSHER | FLUSHING => self.schedule(),
            _ => self.waker.wake(),
        }
    }

    /// Put the outbox on its shard's list unless it is on it already.
    fn schedule(&self) {
        if self.scheduled.load(Ordering::Relaxed) || self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        match (&self.shard, self.this.upgrade()) {
            (Some(shard), Some(this)) => shard.push(this),
            _ => {
                // No shard, or the outbox is being dropped: nothing to do
                // but wake the task (if any is left).
                self.scheduled.store(false, Ordering::Release);
                self.waker.wake();
            }
        }
    }

    /// If `prev` (what this push's increment of `len` returned) shows a
    /// swap in progress, wait until it is over.
    fn wait_swap(&self, prev: usize) {
        if prev & RECLAIMING == 0 {
            return;
        }
        #[cfg(test)]
        tests::SWAP_WAITS.with(|n| n.set(n.get() + 1));
        let mut spins = 0u32;
        while self.len.load(Ordering::Acquire) & RECLAIMING != 0 {
            if spins < 64 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                // The consumer was preempted inside its few instructions.
                std::thread::yield_now();
            }
        }
    }

    /// Queue a frame the connection owes its own client (ack, error, pong,
    /// close), ignoring the limits. The connection stops reading while its
    /// queue is past a limit, so these are bounded by what one read produces.
    pub fn push_reply(&self, frame: Bytes) {
        let prev = self.len.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(frame.len(), Ordering::AcqRel);
        self.wait_swap(prev);
        // SAFETY: as in `try_push`.
        unsafe { self.queue.push(frame) };
        self.notify();
    }

    /// Queue a Ping or Pong ahead of the waiting frames (after the frame
    /// being written, if any). Counted like a reply.
    pub fn push_control(&self, frame: Bytes) {
        let prev = self.len.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(frame.len(), Ordering::AcqRel);
        self.wait_swap(prev);
        self.control_used.store(true, Ordering::Relaxed);
        // SAFETY: as in `try_push`.
        unsafe { self.control.push(frame) };
        self.notify();
    }

    /// Ask the connection to close for `reason`. Returns true for the
    /// first request only, so the caller can count it once.
    pub fn request_close(&self, reason: Disconnect) -> bool {
        let first = self.close.set(reason).is_ok();
        if first {
            self.waker.wake();
        }
        first
    }

    /// Why the connection is to close, if anyone asked.
    pub fn close_requested(&self) -> Option<&Disconnect> {
        self.close.get()
    }

    /// Frames not yet written.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire) & !RECLAIMING
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
        let queues = self.consume();
        let (mut frames, mut bytes) = (0, 0);
        while frames < max_frames && bytes < max_bytes {
            match queues.pop() {
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
        {
            let queues = self.consume();
            while let Some(f) = queues.pop() {
                frames += 1;
                bytes += f.len();
            }
        }
        self.written(frames, bytes);
    }

    /// Give back the queues' blocks if everything queued has been written
    /// (see the module docs). After fan-out frames the publication queue
    /// keeps its block unless `all`, so that a member of a busy group does
    /// not allocate a block per publication; the connection passes `all` on
    /// its timer. Returns whether both queues were released (false: call
    /// again later).
    pub fn release_idle(&self, all: bool) -> bool {
        let keep_queue = !all && self.fanned_out.load(Ordering::Relaxed);
        let release_control = self.control_used.load(Ordering::Relaxed);
        if keep_queue && !release_control {
            // Nothing to give back now; the timer will.
            return false;
        }
        if self.len.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let Some(_guard) = self.try_consume() else {
            return false;
        };
        if self
            .len
            .compare_exchange(0, RECLAIMING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // SAFETY: `len` was 0, so nothing is queued and no push is under
        // way; pushes that start now wait for RECLAIMING to clear, and the
        // consumer guard keeps out pops. Only pointer swaps happen here.
        let (old_control, old_queue) = unsafe {
            let control = self.control.take();
            let queue = if keep_queue { None } else { Some(self.queue.take()) };
            (control, queue)
        };
        self.control_used.store(false, Ordering::Relaxed);
        if !keep_queue {
            self.fanned_out.store(false, Ordering::Relaxed);
        }
        self.len.fetch_and(!RECLAIMING, Ordering::Release);
        // Freed after the gate is open again.
        drop(old_control);
        let released = old_queue.is_some();
        drop(old_queue);
        released
    }

    // ---- direct writes (module docs) ----

    /// Let the flusher write to `fd`, the connection's plain TCP socket,
    /// which stays open until [`Outbox::stop_direct`]. Returns whether
    /// direct writes are possible (the outbox has a running shard).
    pub fn attach_fd(&self, fd: RawFd) -> bool {
        if self.shard.as_ref().is_some_and(|s| s.is_running()) {
            self.fd.store(fd, Ordering::Release);
            true
        } else {
            false
        }
    }

    /// The task has written everything and has nothing of its own to
    /// write: let the shard write from now on. Call only with an attached
    /// descriptor and an empty batch.
    pub fn hand_off(&self) {
        if self
            .writer
            .compare_exchange(TASK, FLUSHER, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // Pairs with the fence in `notify`: a frame pushed while the state
        // changed is either seen here or scheduled by its pusher.
        fence(Ordering::SeqCst);
        if self.len.load(Ordering::Relaxed) & !RECLAIMING != 0 {
            self.schedule();
        }
    }

    /// Whether the shard writes for the connection now (the task must
    /// not pop). With `take_back`, a `FLUSHER` state is turned back into
    /// `TASK` first, so the task can write at once.
    pub fn flusher_owns(&self, take_back: bool) -> bool {
        match self.writer.load(Ordering::Acquire) {
            FLUSHER if take_back => self
                .writer
                .compare_exchange(FLUSHER, TASK, Ordering::AcqRel, Ordering::Relaxed)
                .is_err(),
            FLUSHER | FLUSHING => true,
            _ => false,
        }
    }

    /// End direct writes for good, waiting out a write in progress. After
    /// this the flusher never touches the descriptor again.
    pub fn stop_direct(&self) {
        loop {
            match self.writer.load(Ordering::Acquire) {
                DONE => return,
                FLUSHING => std::thread::yield_now(),
                s => {
                    if self
                        .writer
                        .compare_exchange(s, DONE, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// What the flusher left for the task, if anything.
    pub fn take_spill(&self) -> Option<Spill> {
        let mut spill = self.spill.lock().unwrap_or_else(|e| e.into_inner());
        (!spill.frames.is_empty()).then(|| std::mem::take(&mut *spill))
    }

    /// The flusher's turn begins: from here on a push schedules the
    /// outbox again. Returns the descriptor to write to, or `None` when the
    /// task took its writing back (or the connection is going): then the
    /// flusher must not touch the outbox's frames.
    pub fn begin_flush(&self) -> Option<RawFd> {
        self.scheduled.store(false, Ordering::SeqCst);
        self.writer
            .compare_exchange(FLUSHER, FLUSHING, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| self.fd.load(Ordering::Acquire))
    }

    /// The flusher's turn ends with everything it took written: the shard
    /// keeps writing for the connection.
    pub fn end_flush(&self) {
        self.writer.store(FLUSHER, Ordering::Release);
        self.after_flush();
    }

    /// The flusher's turn ends with `frames` it could not write (a full
    /// socket, a Close frame, an error): they go to the task, which writes
    /// from now on, as it would have.
    pub fn hand_back(&self, frames: &mut VecDeque<Bytes>, head_kind: HeadKind) {
        {
            let mut spill = self.spill.lock().unwrap_or_else(|e| e.into_inner());
            spill.frames.extend(frames.drain(..));
            spill.head_kind = head_kind;
        }
        self.writer.store(TASK, Ordering::Release);
        self.waker.wake();
    }

    /// After a batch: more queued (the batch limit, or pushes meanwhile)
    /// goes to the back of the line; an emptied outbox gives back its
    /// blocks as the task would.
    fn after_flush(&self) {
        fence(Ordering::SeqCst);
        if !self.is_empty() {
            self.schedule();
        } else {
            self.release_idle(false);
        }
    }

    /// Take the consumer guard (free unless the one-consumer rule is
    /// broken, when this waits for the other consumer).
    fn consume(&self) -> Consuming<'_> {
        loop {
            if let Some(g) = self.try_consume() {
                return g;
            }
            std::thread::yield_now();
        }
    }

    fn try_consume(&self) -> Option<Consuming<'_>> {
        (!self.consuming.swap(true, Ordering::Acquire)).then_some(Consuming(self))
    }
}

/// The list of outboxes that one flush shard writes for, in the order they
/// were scheduled (each at most once at a time: its `scheduled` flag), with
/// the waker of the shard's task. The task itself, and the writing, are in
/// [`crate::flush`]; the list is here because pushes put outboxes on it.
#[derive(Debug, Default)]
pub struct ShardQueue {
    queue: SegQueue<Arc<Outbox>>,
    waker: AtomicWaker,
    /// The task is (about to be) waiting: the next push wakes it.
    idle: AtomicBool,
    /// The task was started; outboxes hand over only then.
    running: AtomicBool,
}

impl ShardQueue {
    /// Add an outbox to the end of the list.
    fn push(&self, outbox: Arc<Outbox>) {
        self.queue.push(outbox);
        // Pairs with the fence in `poll_ready`: either the task sees the
        // entry before it waits, or this sees it waiting and wakes it.
        fence(Ordering::SeqCst);
        if self.idle.load(Ordering::Relaxed) && self.idle.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// The next outbox to write for, if any.
    pub fn pop(&self) -> Option<Arc<Outbox>> {
        self.queue.pop()
    }

    /// Ready once the list is not empty (registers the task's waker).
    pub fn poll_ready(&self, cx: &Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        self.idle.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.queue.is_empty() {
            Poll::Pending
        } else {
            self.idle.store(false, Ordering::Relaxed);
            Poll::Ready(())
        }
    }

    /// Mark the shard's task as started; true for the first call only.
    pub fn start(&self) -> bool {
        !self.running.swap(true, Ordering::AcqRel)
    }

    /// Whether the shard's task runs.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
}

/// The consumer guard: while it is held the queues are not swapped.
struct Consuming<'a>(&'a Outbox);

impl Consuming<'_> {
    /// The next frame: control frames first.
    fn pop(&self) -> Option<Bytes> {
        // SAFETY: the guard excludes `release_idle`, the only one that
        // frees the queues.
        unsafe { self.0.control.pop().or_else(|| self.0.queue.pop()) }
    }
}

/// A segmented queue allocated on its first push, so that an idle
/// connection holds neither the queue (two cache lines) nor a block.
struct LazyQueue(AtomicPtr<SegQueue<Bytes>>);

impl LazyQueue {
    const fn new() -> Self {
        Self(AtomicPtr::new(ptr::null_mut()))
    }

    /// # Safety
    ///
    /// No [`LazyQueue::take`] may run meanwhile (the caller holds an
    /// increment of the outbox's `len` and has waited out `RECLAIMING`).
    unsafe fn push(&self, frame: Bytes) {
        let mut q = self.0.load(Ordering::Acquire);
        if q.is_null() {
            let new = Box::into_raw(Box::new(SegQueue::new()));
            match self
                .0
                .compare_exchange(ptr::null_mut(), new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => q = new,
                Err(current) => {
                    // Another producer installed one first.
                    // SAFETY: `new` was never shared.
                    drop(unsafe { Box::from_raw(new) });
                    q = current;
                }
            }
        }
        // SAFETY: non-null pointers come from `Box::into_raw` and are
        // freed only by `take`, which the caller excludes.
        unsafe { (*q).push(frame) }
    }

    /// # Safety
    ///
    /// Consumer only (the caller holds the outbox's consumer guard), so no
    /// [`LazyQueue::take`] runs meanwhile.
    unsafe fn pop(&self) -> Option<Bytes> {
        let q = self.0.load(Ordering::Acquire);
        // SAFETY: as in `push`.
        (!q.is_null()).then(|| unsafe { (*q).pop() }).flatten()
    }

    /// Detach the queue, to be dropped by the caller.
    ///
    /// # Safety
    ///
    /// No push or pop may run meanwhile: the caller holds the consumer
    /// guard and has turned the outbox's `len` from 0 into `RECLAIMING`.
    unsafe fn take(&self) -> Option<Box<SegQueue<Bytes>>> {
        let q = self.0.swap(ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: from `Box::into_raw`, and nobody else can reach it now.
        (!q.is_null()).then(|| unsafe { Box::from_raw(q) })
    }
}

impl Drop for LazyQueue {
    fn drop(&mut self) {
        let q = *self.0.get_mut();
        if !q.is_null() {
            // SAFETY: from `Box::into_raw`; `&mut self` excludes everyone.
            drop(unsafe { Box::from_raw(q) });
        }
    }
}

impl Drop for Consuming<'_> {
    fn drop(&mut self) {
        self.0.consuming.store(false, Ordering::Release);
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
    fn release_idle_only_when_everything_is_written() {
        let o = Outbox::new(1, 10, 100);
        o.push_reply(Bytes::from_static(b"ab"));
        o.push_control(Bytes::from_static(b"p"));
        assert!(!o.release_idle(true), "frames queued");
        let mut batch = Vec::new();
        o.pop_batch(&mut batch, 64, 1 << 20);
        assert_eq!(batch, [Bytes::from_static(b"p"), Bytes::from_static(b"ab")]);
        assert!(!o.release_idle(true), "popped but not written");
        o.written(2, 3);
        // Replies and control frames only: everything goes.
        assert!(o.release_idle(false));
        // Fan-out keeps its block until the timer's release.
        o.try_push(Bytes::from_static(b"x")).unwrap();
        batch.clear();
        o.pop_batch(&mut batch, 64, 1 << 20);
        o.written(1, 1);
        assert!(!o.release_idle(false));
        assert!(o.release_idle(true));
        // Still a working queue afterwards, limits included.
        for _ in 0..10 {
            o.try_push(Bytes::from_static(b"y")).unwrap();
        }
        assert_eq!(o.try_push(Bytes::from_static(b"y")), Err(PushError::Full));
        assert_eq!((o.len(), o.bytes()), (10, 10));
        o.discard();
        assert_eq!((o.len(), o.bytes()), (0, 0));
        assert!(o.release_idle(true));
    }

    thread_local! {
        /// Pushes on this thread that found a release swapping the queues
        /// (`wait_swap`'s slow path). Per thread, so other tests running
        /// at the same time cannot add to a test's count.
        pub(super) static SWAP_WAITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// One round of `release_idle_races_with_pushers`: producers push
    /// numbered frames while the consumer drains them and releases the
    /// queues whenever they are empty. Checks that no frame is lost or
    /// reordered; returns how many pushes waited for a swap, and how many
    /// releases gave the queues back.
    fn release_race_round(producers: u64, per: u64) -> (u64, u64) {
        use std::sync::Arc;
        let o = Arc::new(Outbox::new(1, 1 << 20, 1 << 30));
        let threads: Vec<_> = (0..producers)
            .map(|p| {
                let o = o.clone();
                std::thread::spawn(move || {
                    for i in 0..per {
                        let mut f = p.to_be_bytes().to_vec();
                        f.extend_from_slice(&i.to_be_bytes());
                        o.try_push(Bytes::from(f)).unwrap();
                        if i % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                    SWAP_WAITS.with(|n| n.get())
                })
            })
            .collect();
        let mut next = vec![0u64; producers as usize];
        let (mut got, mut releases) = (0, 0);
        let mut batch = Vec::new();
        while got < producers * per {
            o.pop_batch(&mut batch, 7, usize::MAX);
            let n = batch.len();
            for f in batch.drain(..) {
                let p = u64::from_be_bytes(f[..8].try_into().unwrap()) as usize;
                let i = u64::from_be_bytes(f[8..].try_into().unwrap());
                assert_eq!(i, next[p], "producer {p}: frames lost or reordered");
                next[p] += 1;
            }
            o.written(n, 16 * n);
            got += n as u64;
            if o.release_idle(got % 2 == 0) {
                releases += 1;
            }
        }
        let waits = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!((o.len(), o.bytes()), (0, 0));
        assert!(o.release_idle(true));
        (waits, releases)
    }

    /// Pushes that land while `release_idle` swaps the queues wait for the
    /// swap and lose nothing. The race is timing-dependent, so rounds
    /// repeat until it was seen (and enough releases happened), within a
    /// bound, and the test fails if it never happened.
    #[test]
    fn release_idle_races_with_pushers() {
        const MIN_RELEASES: u64 = 100;
        const MAX_ROUNDS: u32 = 200;
        let (mut waits, mut releases, mut rounds) = (0, 0, 0);
        while waits == 0 || releases < MIN_RELEASES {
            assert!(
                rounds < MAX_ROUNDS,
                "in {rounds} rounds ({releases} releases) no push found a release in progress"
            );
            let (w, r) = release_race_round(4, 20_000);
            waits += w;
            releases += r;
            rounds += 1;
        }
        eprintln!("{rounds} rounds: {releases} releases, {waits} pushes waited for a swap");
    }

    #[test]
    fn close_request_counts_once_and_refuses_pushes() {
        let o = Outbox::new(1, 10, 100);
        assert!(o.request_close(Disconnect::SlowConsumer));
        assert!(!o.request_close(Disconnect::Shutdown));
        assert_eq!(o.close_requested(), Some(&Disconnect::SlowConsumer));
        assert_eq!(o.try_push(Bytes::from_static(b"x")), Err(PushError::Closing));
    }
}
