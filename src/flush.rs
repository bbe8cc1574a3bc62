//! Flush shards: direct writes for plain TCP connections (see the
//! `outbox` module docs for the hand-over between a connection's task and
//! its shard).
//!
//! Each shard is a first-in-first-out list of outboxes with frames to
//! write, and one task that takes them in order and gives each one
//! `writev` of what it has queued. A fan-out marks its members' outboxes
//! (once each, however many frames arrive before their turn); the shard
//! then visits them in that order. So a publication reaches the members of
//! a large group in one pass, without waking ten thousand connection
//! tasks, and frames that arrive while an outbox waits share its write.
//! Connections are spread over the shards by id; one shard per core lets
//! every core write.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{IoSlice, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::outbox::{BATCH_BYTES, CLOSE_HEADER, HeadKind, MAX_IOV, Outbox, ShardQueue, advance};

/// Outboxes a shard visits before letting other tasks run.
const VISITS_PER_TURN: usize = 128;

/// One shard's task: visit outboxes in order, for ever.
async fn run(queue: Arc<ShardQueue>, metrics: Arc<Metrics>) {
    let mut scratch = VecDeque::new();
    loop {
        poll_fn(|cx| queue.poll_ready(cx)).await;
        let mut visits = 0;
        while let Some(outbox) = queue.pop() {
            flush(&outbox, &mut scratch, &metrics);
            visits += 1;
            if visits == VISITS_PER_TURN {
                visits = 0;
                tokio::task::yield_now().await;
            }
        }
        // Give back what a burst grew.
        if scratch.capacity() > 2 * MAX_IOV {
            scratch = VecDeque::new();
        }
    }
}

/// The flusher's turn at one outbox: write one batch of what is queued
/// with one `writev`. `scratch` is the flusher's reusable batch (left
/// empty).
fn flush(outbox: &Outbox, scratch: &mut VecDeque<Bytes>, metrics: &Metrics) {
    let Some(fd) = outbox.begin_flush() else {
        // The task took its writing back (or the connection is going).
        return;
    };
    let depth = outbox.len();
    if depth > 0 {
        metrics.observe_outbox_depth(depth);
    }
    outbox.pop_batch(scratch, MAX_IOV, BATCH_BYTES);
    if scratch.is_empty() {
        outbox.end_flush();
        return;
    }
    let mut head_kind: HeadKind = None;
    // A Close frame is the task's to write: nothing may follow it.
    let mut hand_back = scratch.iter().any(|f| f.first() == Some(&CLOSE_HEADER));
    if !hand_back {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let n = scratch.len().min(MAX_IOV);
        for (slot, frame) in slices.iter_mut().zip(scratch.iter()) {
            *slot = IoSlice::new(frame);
        }
        // SAFETY: the task keeps the socket open until `stop_direct`,
        // which cannot finish while the outbox is in its flushing state
        // (from `begin_flush` until `end_flush`/`hand_back`); ManuallyDrop
        // leaves the descriptor open.
        let socket = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        match (&*socket).write_vectored(&slices[..n]) {
            Ok(written) if written > 0 => {
                let tally = advance(scratch, &mut head_kind, written);
                outbox.written(tally.frames as usize, written);
                metrics.record_written(&tally);
                // Full socket (or a batch limit): the task finishes,
                // waiting for the socket as it always does.
                hand_back = !scratch.is_empty();
            }
            // Full, interrupted or failed: the task retries and sees any
            // error itself.
            _ => hand_back = true,
        }
    }
    if hand_back {
        outbox.hand_back(scratch, head_kind);
    } else {
        outbox.end_flush();
    }
}

/// All shards of a hub.
#[derive(Debug)]
pub struct Flusher {
    shards: Box<[Arc<ShardQueue>]>,
    metrics: Arc<Metrics>,
}

impl Flusher {
    /// `n` shards (0: none; connections then write from their own tasks).
    pub fn new(n: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..n).map(|_| Arc::new(ShardQueue::default())).collect(),
            metrics,
        }
    }

    /// The shard list of connection `id`, if there are shards.
    pub fn shard_for(&self, id: u64) -> Option<Arc<ShardQueue>> {
        (!self.shards.is_empty()).then(|| self.shards[(id % self.shards.len() as u64) as usize].clone())
    }

    /// Start the shards' tasks on the current runtime (once; later calls
    /// do nothing).
    pub fn start(&self) {
        for shard in self.shards.iter() {
            if shard.start() {
                tokio::spawn(run(shard.clone(), self.metrics.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::*;
    use crate::prepared::Encoding;
    use crate::ws::frame::{OP_CLOSE, OP_TEXT, encode};

    /// A connected pair: (server side, client side), both blocking.
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        (s, c)
    }

    fn started(stats: &Arc<Metrics>) -> Flusher {
        let f = Flusher::new(1, stats.clone());
        f.start();
        f
    }

    /// An outbox whose writing is handed to `flusher`'s shard, on `server`.
    fn handed_off(flusher: &Flusher, server: &TcpStream, max_len: usize, max_bytes: usize) -> Arc<Outbox> {
        let outbox = Outbox::with_shard(1, max_len, max_bytes, flusher.shard_for(1), Encoding::PLAIN);
        assert!(outbox.attach_fd(server.as_raw_fd()));
        outbox.hand_off();
        outbox
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_shard_writes_queued_frames_in_order() {
        let stats = Arc::new(Metrics::default());
        let flusher = started(&stats);
        let (server, mut client) = pair();
        let outbox = handed_off(&flusher, &server, 1000, 1 << 20);
        let frames: Vec<Bytes> = (0..300)
            .map(|i| encode(OP_TEXT, format!("m{i}").as_bytes()))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0; expected.len()];
            client.read_exact(&mut got).unwrap();
            assert_eq!(got, expected, "every frame, in order");
        });
        for f in &frames {
            outbox.try_push(f.clone()).unwrap();
        }
        tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        wait_until("the frames are accounted", || outbox.is_empty());
        assert_eq!(outbox.bytes(), 0);
        // The task was never needed: the shard still writes.
        assert!(outbox.flusher_owns(false));
        assert!(outbox.take_spill().is_none());
        assert_eq!(stats.frames_sent(), 300);
        assert_eq!(
            stats.bytes_sent(),
            frames.iter().map(|f| f.len() as u64).sum::<u64>()
        );
        outbox.stop_direct();
        drop(server);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_socket_hands_the_rest_back_to_the_task() {
        let stats = Arc::new(Metrics::default());
        let flusher = started(&stats);
        let (server, mut client) = pair();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        let outbox = handed_off(&flusher, &server, 100_000, 64 << 20);
        let payload = vec![b'x'; 1000];
        let mut expected = Vec::new();
        for _ in 0..5000 {
            let f = encode(OP_TEXT, &payload);
            expected.extend_from_slice(&f);
            outbox.try_push(f).unwrap();
        }
        // Nobody reads: the socket fills and the shard gives up its turn.
        wait_until("the task owns the writing again", || !outbox.flusher_owns(false));
        let spill = outbox.take_spill().expect("what was not written");
        assert!(!spill.frames.is_empty());
        // What the socket took, then the spill, then the queue: the
        // whole stream, in order, nothing twice.
        let spilled: Vec<u8> = spill.frames.iter().flat_map(|f| f.to_vec()).collect();
        let mut rest = Vec::new();
        outbox.pop_batch(&mut rest, usize::MAX, usize::MAX);
        let queued: Vec<u8> = rest.iter().flat_map(|f| f.to_vec()).collect();
        let sent = expected.len() - spilled.len() - queued.len();
        let mut got = vec![0; sent];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, expected[..sent]);
        assert_eq!(spilled, expected[sent..sent + spilled.len()]);
        assert_eq!(queued, expected[sent + spilled.len()..]);
        // The partly written frame's kind was noted before it lost its header.
        if spill.frames[0].len() < 1004 {
            assert!(spill.head_kind.is_some());
        }
        // While the task owns the writing, pushes wake it, not the shard.
        assert!(!outbox.flusher_owns(true));
        outbox.stop_direct();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_shard_leaves_close_frames_to_the_task() {
        let stats = Arc::new(Metrics::default());
        let flusher = started(&stats);
        let (server, mut client) = pair();
        client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let outbox = handed_off(&flusher, &server, 1000, 1 << 20);
        let close = encode(OP_CLOSE, &1000u16.to_be_bytes());
        outbox.push_reply(close.clone());
        wait_until("the task owns the writing again", || !outbox.flusher_owns(false));
        let spill = outbox.take_spill().expect("the Close, for the task");
        assert_eq!(spill.frames, [close]);
        let mut buf = [0u8; 16];
        assert!(client.read(&mut buf).is_err(), "nothing was written");
        outbox.stop_direct();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_stop_direct_the_shard_never_writes() {
        let stats = Arc::new(Metrics::default());
        let flusher = started(&stats);
        let (server, mut client) = pair();
        client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let outbox = handed_off(&flusher, &server, 1000, 1 << 20);
        outbox.stop_direct();
        outbox.try_push(encode(OP_TEXT, b"late")).unwrap();
        // A hand-off after the stop is refused too.
        outbox.hand_off();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(outbox.len(), 1, "left for the task");
        let mut buf = [0u8; 16];
        assert!(client.read(&mut buf).is_err(), "nothing was written");
    }

    #[test]
    fn without_a_running_shard_the_task_keeps_writing() {
        let stats = Arc::new(Metrics::default());
        let flusher = Flusher::new(1, stats);
        let (server, _client) = pair();
        let outbox = Outbox::with_shard(1, 1000, 1 << 20, flusher.shard_for(1), Encoding::PLAIN);
        assert!(!outbox.attach_fd(server.as_raw_fd()));
        assert!(Flusher::new(0, Arc::default()).shard_for(1).is_none());
    }
}
