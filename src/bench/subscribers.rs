//! Fan-out subscribers read by plain epoll threads instead of one runtime
//! task each.
//!
//! Once its handshake and join are done, a subscriber's socket leaves the
//! tokio runtime and goes to one of a few threads, each a single epoll loop
//! over its share of the sockets: on readiness it reads until the socket is
//! empty and parses frames in place (a partial frame is the only thing a
//! socket keeps between reads). No waker, no task, no run queue per
//! delivery, so the load tool spends less of the cores it shares with the
//! server, and what arrives is read in the order the kernel reports it.
//! The [`floor`](super::floor) scenario's reader works the same way.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;

use super::Conn;
use super::delivery::{Local, Received};
use super::wire::{Frame, Inflate, Parsed, ReadHalf, WriteHalf, masked_frame, parse};

/// Bytes read at a time.
const SCRATCH: usize = 64 * 1024;

/// The reader threads; stopped (and their sockets closed) by
/// [`Subscribers::stop`].
pub(super) struct Subscribers {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Subscribers {
    /// Move `conns` out of the runtime onto `threads` epoll threads.
    pub(super) fn start(
        conns: Vec<Conn>,
        threads: usize,
        shared: Arc<Received>,
        publishers: usize,
    ) -> anyhow::Result<Self> {
        let threads = threads.max(1);
        let mut shares: Vec<Vec<Sub>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, (r, w)) in conns.into_iter().enumerate() {
            let deflate = r.deflate();
            let (read_half, pending) = r.into_parts();
            let (ReadHalf::Tcp(read_half), WriteHalf::Tcp(write_half)) = (read_half, w.into_inner()) else {
                anyhow::bail!(
                    "the epoll subscriber threads read plain TCP only: for wss:// use --subscriber-threads 0"
                );
            };
            let stream = read_half
                .reunite(write_half)
                .context("reuniting a subscriber's halves")?
                .into_std()
                .context("taking a subscriber out of the runtime")?;
            shares[i % threads].push(Sub {
                stream: mio::net::TcpStream::from_std(stream),
                pending,
                last_seq: vec![0; publishers],
                deflate,
                open: true,
                counted: false,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for share in shares {
            let (shared, stop) = (shared.clone(), stop.clone());
            let handle = std::thread::Builder::new()
                .name("bench-subscribers".into())
                .spawn(move || {
                    if let Err(e) = read_loop(share, &shared, &stop) {
                        eprintln!("bench: a subscriber thread failed: {e:#}");
                    }
                })
                .context("starting a subscriber thread")?;
            handles.push(handle);
        }
        Ok(Self {
            threads: handles,
            stop,
        })
    }

    /// Stop reading and close every subscriber.
    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One subscriber socket.
struct Sub {
    stream: mio::net::TcpStream,
    /// The start of a frame not yet wholly received.
    pending: Vec<u8>,
    /// Last sequence number seen from each publisher.
    last_seq: Vec<u64>,
    /// It agreed to permessage-deflate: compressed frames are allowed.
    deflate: bool,
    open: bool,
    /// Its closing was added to the shared count.
    counted: bool,
}

fn read_loop(mut subs: Vec<Sub>, shared: &Received, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut poll = mio::Poll::new()?;
    for (i, sub) in subs.iter_mut().enumerate() {
        poll.registry()
            .register(&mut sub.stream, mio::Token(i), mio::Interest::READABLE)?;
    }
    let mut events = mio::Events::with_capacity(1024);
    let mut scratch = vec![0u8; SCRATCH];
    let mut out = Vec::new();
    let mut rng = fastrand::Rng::new();
    let mut local = Local::default();
    // One for the thread: the server compresses each message on its own.
    let mut inflate = Inflate::default();
    // Bytes left in the kernel after the handshake's reads were handed
    // over with the socket; epoll reports only new arrivals.
    for sub in &mut subs {
        let pending = std::mem::take(&mut sub.pending);
        if !pending.is_empty() {
            sub.consume(
                &pending,
                &mut None,
                shared,
                &mut local,
                &mut out,
                &mut rng,
                &mut inflate,
            );
            sub.answer(&mut out, shared);
        }
    }
    local.flush(shared);
    while !stop.load(Ordering::Relaxed) {
        match poll.poll(&mut events, Some(Duration::from_millis(20))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        for ev in events.iter() {
            let sub = &mut subs[ev.token().0];
            while sub.open {
                match sub.stream.read(&mut scratch) {
                    Ok(0) => sub.close(shared),
                    Ok(n) => {
                        // Frames that came in one read arrived together:
                        // one clock reading serves them all.
                        let mut clock = None;
                        sub.consume(
                            &scratch[..n],
                            &mut clock,
                            shared,
                            &mut local,
                            &mut out,
                            &mut rng,
                            &mut inflate,
                        );
                        sub.answer(&mut out, shared);
                        if n < scratch.len() {
                            // Emptied; epoll reports the next arrival.
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => sub.close(shared),
                }
            }
            if !sub.open {
                let _ = poll.registry().deregister(&mut sub.stream);
            }
        }
        local.flush(shared);
    }
    Ok(())
}

impl Sub {
    /// Handle the bytes of one read: every whole frame in them (after what
    /// was pending), keeping a partial frame for the next read. Pongs to
    /// send go to `out`; compressed messages are inflated with `inflate`.
    #[allow(clippy::too_many_arguments)]
    fn consume(
        &mut self,
        bytes: &[u8],
        clock: &mut Option<u64>,
        shared: &Received,
        local: &mut Local,
        out: &mut Vec<u8>,
        rng: &mut fastrand::Rng,
        inflate: &mut Inflate,
    ) {
        let joined;
        let data: &[u8] = if self.pending.is_empty() {
            bytes
        } else {
            let mut p = std::mem::take(&mut self.pending);
            p.extend_from_slice(bytes);
            joined = p;
            &joined
        };
        let mut at = 0;
        while at < data.len() {
            match parse(&data[at..]) {
                Ok(Parsed::Frame {
                    opcode,
                    header,
                    len,
                    compressed,
                }) => {
                    let mut payload = &data[at + header..at + header + len];
                    at += header + len;
                    if compressed {
                        match inflate.message(payload) {
                            Ok(p) if self.deflate => payload = p,
                            _ => {
                                local.unexpected += 1;
                                self.open = false;
                                return;
                            }
                        }
                    }
                    if !self.frame(Frame::new(opcode, payload), clock, shared, local, out, rng) {
                        self.open = false;
                        return;
                    }
                }
                Ok(Parsed::Need(_)) => break,
                Err(_) => {
                    local.unexpected += 1;
                    self.open = false;
                    return;
                }
            }
        }
        self.pending = data[at..].to_vec();
    }

    /// Count one frame; `false` when the server closed the connection.
    fn frame(
        &mut self,
        frame: Frame<'_>,
        clock: &mut Option<u64>,
        shared: &Received,
        local: &mut Local,
        out: &mut Vec<u8>,
        rng: &mut fastrand::Rng,
    ) -> bool {
        match frame {
            Frame::Text(t) => local.text(t, clock, shared, &mut self.last_seq),
            Frame::Ping(p) => masked_frame(out, 0xA, p, rng),
            Frame::Close(_) => return false,
            Frame::Binary(_) | Frame::Pong => local.unexpected += 1,
        }
        true
    }

    /// Send the pongs in `out`; a closed subscriber is counted once.
    fn answer(&mut self, out: &mut Vec<u8>, shared: &Received) {
        if !out.is_empty() && self.open {
            // A subscriber sends nothing else, so its socket buffer is
            // empty and takes a pong whole; anything less is a failure.
            if !matches!(self.stream.write(out), Ok(n) if n == out.len()) {
                self.open = false;
            }
        }
        out.clear();
        if !self.open {
            self.close(shared);
        }
    }

    fn close(&mut self, shared: &Received) {
        self.open = false;
        self.pending = Vec::new();
        if !std::mem::replace(&mut self.counted, true) {
            shared.closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
