//! Socket I/O for one WebSocket connection: reads into a scratch buffer on
//! the stack and feeds the [`Decoder`]; writes whatever the connection's
//! [`Outbox`] holds with vectored writes, a batch at a time.
//!
//! One task drives both directions with a single poll function, so an idle
//! connection is one small future: no read buffer, no write buffer, no
//! second task. Generic over the stream so TLS can slot in later.
//!
//! Backpressure: fan-out can fill the outbox only up to its limits; replies
//! to the client's own requests may go past them. While the outbox is at
//! twice a limit the connection stops reading from its client, so a client
//! that floods requests without reading the replies fills its own TCP window
//! instead of the server's memory.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::disconnect::Disconnect;
use crate::metrics::Metrics;
use crate::outbox::{BATCH_BYTES, CLOSE_HEADER, HeadKind, MAX_IOV, Outbox, advance};
use crate::ws::deflate::DeflateParams;
use crate::ws::{Decoder, Event, ProtocolError};

/// Size of the on-stack read buffer.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per poll before yielding to other tasks.
const READS_PER_POLL: usize = 8;

/// Milliseconds since the first call, wrapping every 49 days: enough to
/// time a stall (the write timeout is at most 24 hours) in 4 bytes.
fn stall_clock() -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // Truncation is the wrapping.
    epoch.elapsed().as_millis() as u32
}

/// What the connection's task must handle next.
#[derive(Debug)]
pub enum Incoming {
    /// A frame from the client.
    Event(Event),
    /// Someone asked this connection to close.
    CloseRequested(Disconnect),
    /// The timer set with [`Conn::set_timer`] fired.
    Timer,
    /// A write found the socket full: the backlog is stalled from
    /// [`Conn::stalled_since`] until the client takes bytes again (reported
    /// once per stall, so the session can arm its write timeout).
    Stalled,
    /// The client closed TCP without a close handshake.
    Eof,
}

/// Why the connection cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The client broke the protocol; fail the connection with its code.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// One WebSocket connection's socket, decoder and outbound batch.
#[derive(Debug)]
pub struct Conn<S> {
    io: S,
    decoder: Decoder,
    /// The decoder failed; ignore further input. The error is reported
    /// after the events decoded before it (so a message that preceded a
    /// violation is still answered, as Autobahn's strict cases expect).
    decoder_failed: bool,
    pending_error: Option<ProtocolError>,
    /// Events decoded from the last read, not yet handed out.
    events: VecDeque<Event>,
    outbox: Arc<Outbox>,
    /// Frames taken from the outbox, the first possibly partly written.
    batch: VecDeque<Bytes>,
    /// Something was written since the last flush (matters for TLS).
    unflushed: bool,
    read_eof: bool,
    /// When the client last showed it is alive: bytes arrived from it, or
    /// a full socket took bytes again (the client is reading, just slowly).
    last_seen: Instant,
    /// A Close frame has been taken into the batch: nothing may follow it.
    close_queued: bool,
    /// The socket has been full since `stall_start`: set when a write
    /// would block, cleared when the socket takes bytes again.
    stalled: bool,
    /// [`Incoming::Stalled`] was handed out for the current stall.
    stall_reported: bool,
    /// When the stall began, on the coarse [`stall_clock`] (4 bytes where
    /// an `Instant` takes 16: every connection carries this).
    stall_start: u32,
    timer: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
    /// How the batch's first frame counts in the metrics, noted before any
    /// of it is written (a partly written frame has lost its header).
    head_kind: HeadKind,
    /// The socket can be written by the outbox's flush shard (plain TCP
    /// with a running shard; see `outbox`'s module docs).
    direct: bool,
    /// The outbox may hold queue blocks: frames were taken from it since
    /// the last [`Outbox::release_idle`] that gave everything back.
    outbox_warm: bool,
}

impl<S> Drop for Conn<S> {
    fn drop(&mut self) {
        // The socket closes with `io`, right after this: the shard must
        // be done with its descriptor first.
        if self.direct {
            self.outbox.stop_direct();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wrap an upgraded stream; `deflate` is what the handshake agreed
    /// for the client's compressed messages, if anything.
    pub fn new(
        io: S,
        outbox: Arc<Outbox>,
        max_message: usize,
        deflate: Option<DeflateParams>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            io,
            decoder: Decoder::with_deflate(max_message, deflate),
            decoder_failed: false,
            pending_error: None,
            events: VecDeque::new(),
            outbox,
            batch: VecDeque::new(),
            unflushed: false,
            read_eof: false,
            last_seen: Instant::now(),
            close_queued: false,
            stalled: false,
            stall_reported: false,
            stall_start: 0,
            timer: None,
            metrics,
            head_kind: None,
            outbox_warm: false,
            direct: false,
        }
    }

    /// Let the outbox's flush shard write to this connection's socket,
    /// `fd`, while the task has nothing of its own to write. `fd` must be
    /// the descriptor of the plain TCP stream this `Conn` owns.
    pub fn enable_direct_writes(&mut self, fd: std::os::fd::RawFd) {
        self.direct = self.outbox.attach_fd(fd);
    }

    /// Write from the task only, from now on (closing).
    pub fn stop_direct_writes(&mut self) {
        if self.direct {
            self.outbox.stop_direct();
            self.direct = false;
        }
    }

    /// When the client last read or sent anything (for the idle timeout).
    pub fn last_seen(&self) -> Instant {
        self.last_seen
    }

    /// Since when the outbound backlog has made no write progress (the
    /// socket is full), if it is stalled now.
    pub fn stalled_since(&self) -> Option<Instant> {
        self.stalled.then(|| {
            let ms = stall_clock().wrapping_sub(self.stall_start);
            let now = Instant::now();
            now.checked_sub(std::time::Duration::from_millis(u64::from(ms)))
                .unwrap_or(now)
        })
    }

    /// Fire [`Incoming::Timer`] at `deadline`.
    pub fn set_timer(&mut self, deadline: Instant) {
        match &mut self.timer {
            Some(t) => t.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Decode bytes that arrived before the connection was handed over
    /// (sent by the client right after its handshake request). Events and
    /// errors come out of [`Conn::next`].
    pub fn feed(&mut self, bytes: &[u8]) {
        self.decode(bytes);
    }

    fn decode(&mut self, bytes: &[u8]) {
        if self.decoder_failed {
            return;
        }
        if let Err(e) = self.decoder.feed(bytes, &mut self.events) {
            self.decoder_failed = true;
            self.pending_error = Some(e);
        }
        let inflated = self.decoder.take_inflated();
        if inflated > 0 {
            self.metrics.record_inflated(inflated);
        }
    }

    /// Wait for the next thing to handle, writing queued frames meanwhile.
    pub async fn next(&mut self) -> Result<Incoming, ConnError> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, ConnError>> {
        // Register before looking at the close flag, so a request that
        // lands in between still wakes this task.
        self.outbox.register(cx);
        if let Some(reason) = self.outbox.close_requested() {
            return Poll::Ready(Ok(Incoming::CloseRequested(reason.clone())));
        }
        if let Poll::Ready(Err(e)) = self.poll_write_out(cx) {
            return Poll::Ready(Err(e.into()));
        }
        if self.stalled && !self.stall_reported {
            self.stall_reported = true;
            return Poll::Ready(Ok(Incoming::Stalled));
        }
        if let Some(ev) = self.events.pop_front() {
            return Poll::Ready(Ok(Incoming::Event(ev)));
        }
        if let Some(e) = self.pending_error.take() {
            return Poll::Ready(Err(e.into()));
        }
        if !self.read_eof && !self.outbox.is_over_limit() {
            let mut reads = 0;
            loop {
                if reads == READS_PER_POLL {
                    // Still readable: yield to other tasks, but come back.
                    cx.waker().wake_by_ref();
                    break;
                }
                reads += 1;
                match self.poll_read_chunk(cx) {
                    Poll::Ready(Ok(0)) => {
                        self.read_eof = true;
                        return Poll::Ready(Ok(Incoming::Eof));
                    }
                    Poll::Ready(Ok(_)) => {
                        if let Some(ev) = self.events.pop_front() {
                            return Poll::Ready(Ok(Incoming::Event(ev)));
                        }
                        if let Some(e) = self.pending_error.take() {
                            return Poll::Ready(Err(e.into()));
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
                if self.outbox.is_over_limit() {
                    break;
                }
            }
        }
        if let Some(t) = &mut self.timer
            && t.as_mut().poll(cx).is_ready()
        {
            // Park the timer far away until the session sets it again.
            t.as_mut()
                .reset(Instant::now() + std::time::Duration::from_secs(86400 * 365));
            // A quiet moment: give back the queue block that fan-out keeps
            // (the flush shard may have taken frames too).
            if (self.outbox_warm || self.direct) && self.batch.is_empty() {
                self.outbox_warm = !self.outbox.release_idle(true);
            }
            return Poll::Ready(Ok(Incoming::Timer));
        }
        Poll::Pending
    }

    /// Read once into a stack buffer and decode it; returns the byte count.
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, ConnError>> {
        let mut storage = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut storage);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        if n > 0 {
            self.last_seen = Instant::now();
            self.metrics.record_socket_read(n);
            self.decode(buf.filled());
        }
        Poll::Ready(Ok(n))
    }

    /// Write from the batch and the outbox until both are empty or the
    /// socket would block. `Ready(Ok)` means everything queued is written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outbox.register(cx);
        // While the shard writes, the task has nothing to do here, unless
        // frames are waiting: then it takes the writing back and writes
        // them now (its own replies should not wait for the shard's turn).
        if self.direct && self.outbox.flusher_owns(!self.outbox.is_empty()) {
            return Poll::Ready(Ok(()));
        }
        if self.batch.is_empty()
            && let Some(spill) = self.outbox.take_spill()
        {
            self.batch = spill.frames;
            self.head_kind = spill.head_kind;
            self.outbox_warm = true;
            self.check_close();
        }
        loop {
            if self.batch.is_empty() {
                self.take_batch();
                if self.batch.is_empty() {
                    // Give back what a burst grew; an idle connection holds nothing.
                    if self.batch.capacity() > 0 {
                        self.batch = VecDeque::new();
                    }
                    if self.events.capacity() > 0 && self.events.is_empty() {
                        self.events = VecDeque::new();
                    }
                    if self.outbox_warm {
                        self.outbox_warm = !self.outbox.release_idle(false);
                    }
                    if self.unflushed {
                        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    if self.direct && !self.close_queued {
                        self.outbox.hand_off();
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (slot, frame) in slices.iter_mut().zip(self.batch.iter()) {
                *slot = IoSlice::new(frame);
                n += 1;
            }
            let written = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    if !self.stalled {
                        self.stalled = true;
                        self.stall_start = stall_clock();
                        self.stall_reported = false;
                    }
                    return Poll::Pending;
                }
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unflushed = true;
            self.advance(written);
        }
    }

    /// Move the next frames from the outbox into the batch. Once a Close
    /// frame is in, whatever was queued after it (a fan-out that raced with
    /// the close) is discarded: RFC 6455 allows no data after Close.
    fn take_batch(&mut self) {
        if !self.close_queued {
            let depth = self.outbox.len();
            if depth > 0 {
                self.metrics.observe_outbox_depth(depth);
            }
            self.outbox.pop_batch(&mut self.batch, MAX_IOV, BATCH_BYTES);
            self.outbox_warm |= !self.batch.is_empty();
            self.check_close();
        }
        if self.close_queued {
            self.outbox.discard();
        }
    }

    /// Once a Close frame is in the batch, drop what follows it.
    fn check_close(&mut self) {
        if self.close_queued {
            return;
        }
        if let Some(at) = self.batch.iter().position(|f| f.first() == Some(&CLOSE_HEADER)) {
            self.close_queued = true;
            let late: Vec<Bytes> = self.batch.drain(at + 1..).collect();
            self.outbox.written(late.len(), late.iter().map(Bytes::len).sum());
        }
    }

    /// Account `n` written bytes against the batch.
    fn advance(&mut self, n: usize) {
        let tally = advance(&mut self.batch, &mut self.head_kind, n);
        self.outbox.written(tally.frames as usize, n);
        if std::mem::take(&mut self.stalled) {
            // The socket was full and took bytes again: the client's TCP
            // window opened, so the client is reading. (A write into a
            // socket that never filled proves nothing: the kernel takes it
            // whether or not anyone is there.)
            self.last_seen = Instant::now();
        }
        self.metrics.record_written(&tally);
    }

    /// Write everything queued, then shut down the write side (our FIN
    /// follows the close frame). When we started the close handshake, then
    /// read until the client's Close (or EOF); when the client started it,
    /// its Close is already here and the server closes TCP first, as RFC
    /// 6455 section 7.1.1 asks. Bounded by `deadline`.
    pub async fn finish(&mut self, deadline: Instant, await_client_close: bool) {
        self.stop_direct_writes();
        let work = async {
            if poll_fn(|cx| self.poll_write_out(cx)).await.is_err() {
                return;
            }
            if poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx))
                .await
                .is_err()
            {
                return;
            }
            // Events decoded earlier may already hold the client's Close.
            if !await_client_close || self.events.iter().any(|e| matches!(e, Event::Close(_))) {
                return;
            }
            loop {
                match poll_fn(|cx| self.poll_read_chunk(cx)).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if self.events.drain(..).any(|e| matches!(e, Event::Close(_))) {
                            return;
                        }
                    }
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, work).await;
    }
}
