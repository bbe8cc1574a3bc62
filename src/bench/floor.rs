//! `roomcast bench floor`: the fan-out delivery pattern over loopback TCP
//! with no server at all, to show what this machine's kernel allows.
//!
//! The load tool opens C socket pairs to itself. Writer threads play an
//! ideal server: publications arrive at the fan-out scenario's rate and
//! round-robin over its groups, each one marks its members' sockets dirty
//! in one first-in-first-out list, and a writer visits the dirty sockets in
//! that order, writing everything a socket is owed with one `write` (so
//! frames coalesce exactly as they would in a server that is never
//! behind). Reader threads play an ideal client: one epoll loop each, no
//! tasks, a fixed-size record parsed in place. Records are as long as the
//! frame the server sends for the same payload, and carry their
//! publication time, so latency is measured as in `fanout`.
//!
//! Nothing here is roomcast: the gap between `fanout` and `floor` at the
//! same options is the server's (and the WebSocket client's) share; the
//! rest is the cost of loopback TCP on this machine. Both ends live in
//! this process, so a pair takes two of its file descriptors.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use socket2::{Domain, Socket, Type};

use super::histogram::Histogram;
use super::{Report, at_least_one, now_us, own_usage, parse_duration, push_latency};
use crate::protocol::message_json;
use crate::ws::frame::OP_TEXT;

/// Options of the `floor` scenario.
#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// Socket pairs (subscribers); each takes two of this process's file
    /// descriptors.
    #[arg(short = 'c', long, default_value_t = 1000)]
    pub connections: usize,
    /// Groups (subscriber i is in group i mod G).
    #[arg(short = 'g', long, default_value_t = 1)]
    pub groups: usize,
    /// Publications per second, round-robin over the groups (as in fanout).
    #[arg(short = 'r', long, default_value_t = 100)]
    pub rate: u64,
    /// Payload size in bytes: each record is as long as the frame the
    /// server sends for such a payload.
    #[arg(short = 's', long, default_value_t = 64)]
    pub size: usize,
    /// How long to publish.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// After publishing, how long to wait without progress for the last
    /// records before counting the rest as lost.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Writer threads (the "server"); one writer leaves a core to the
    /// readers on a two-core machine.
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Reader threads (the "clients").
    #[arg(long, default_value_t = 1)]
    pub readers: usize,
}

/// Bytes of a record that carry data: publication time and per-socket
/// sequence number (the rest is padding).
const HEAD: usize = 16;
/// Dirty sockets written between two looks at the clock.
const VISITS_PER_TICK: usize = 64;

/// Run the scenario (blocking threads; call from a blocking context).
pub fn run(args: &FloorArgs, sources: usize, fd_limit: u64) -> anyhow::Result<Report> {
    at_least_one("--connections", args.connections)?;
    at_least_one("--groups", args.groups)?;
    at_least_one("--writers", args.writers)?;
    at_least_one("--readers", args.readers)?;
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let budget = fd_limit.saturating_sub(64) as usize / 2;
    if args.connections > budget {
        bail!(
            "{} socket pairs need {} file descriptors in this process; its open-file limit of {fd_limit} \
             allows at most {budget} pairs (the hard limit caps it; see docs/BENCHMARKS.md)",
            args.connections,
            2 * args.connections
        );
    }
    let record = record_len(args.size);
    let (servers, clients) = pairs(args.connections, sources).context("opening socket pairs")?;

    let received = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let latency = Arc::new(Histogram::new());
    let mut readers = Vec::new();
    let mut shares: Vec<Vec<TcpStream>> = (0..args.readers).map(|_| Vec::new()).collect();
    for (i, c) in clients.into_iter().enumerate() {
        shares[i % args.readers].push(c);
    }
    for share in shares {
        let (received, stop, latency) = (received.clone(), stop.clone(), latency.clone());
        readers.push(std::thread::spawn(move || {
            read_loop(share, record, &received, &stop, &latency)
        }));
    }

    // Publication k (k >= 1) happens at start + k/rate and goes to group
    // (k - 1) mod G, as in the fan-out scenario.
    let start_us = now_us() + 50_000;
    let last = (args.duration.as_secs_f64() * args.rate as f64) as u64;
    let plan = Plan {
        start_us,
        rate: args.rate as f64,
        groups: args.groups,
        last,
        record,
    };
    let before = own_usage()?;
    let started = Instant::now() + Duration::from_micros(50_000);
    let mut writers = Vec::new();
    let mut shares: Vec<Vec<(usize, TcpStream)>> = (0..args.writers).map(|_| Vec::new()).collect();
    for (i, s) in servers.into_iter().enumerate() {
        shares[i % args.writers].push((i % args.groups, s));
    }
    for share in shares {
        let plan = plan.clone();
        writers.push(std::thread::spawn(move || write_loop(share, &plan)));
    }
    let mut wrote = Wrote::default();
    for w in writers {
        let w = w
            .join()
            .map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
        wrote.writes += w.writes;
        wrote.frames += w.frames;
        wrote.expected += w.expected;
    }
    // Wait for the readers to catch up, as long as they make progress.
    let mut seen = received.records.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while seen < wrote.expected && quiet_since.elapsed() < args.drain {
        std::thread::sleep(Duration::from_millis(10));
        let now = received.records.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        }
    }
    let window = started.elapsed();
    let after = own_usage()?;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join()
            .map_err(|_| anyhow::anyhow!("a reader thread panicked"))??;
    }
    let got = received.records.load(Ordering::Relaxed);
    let publishing = args.duration.as_secs_f64().max(1e-9);

    let mut report = Report::new("floor");
    report.push("connections", args.connections);
    report.push("groups", args.groups);
    report.push("rate", args.rate);
    report.push("size", args.size);
    report.push("record_bytes", record);
    report.push("writers", args.writers);
    report.push("readers", args.readers);
    report.push("published", last);
    report.push("expected", wrote.expected);
    report.push("received", got);
    report.push("lost", wrote.expected.saturating_sub(got));
    report.push("out_of_order", received.out_of_order.load(Ordering::Relaxed));
    report.push_f("deliveries_per_sec", got as f64 / publishing, 0);
    report.push("writes", wrote.writes);
    report.push_f(
        "frames_per_write",
        wrote.frames as f64 / wrote.writes.max(1) as f64,
        2,
    );
    push_latency(&mut report, &latency);
    let cpu = after.cpu - before.cpu;
    report.push_f("cpu_seconds", cpu, 2);
    report.push_f("cpu_percent", 100.0 * cpu / window.as_secs_f64().max(1e-9), 1);
    report.push_f("cpu_us_per_delivery", cpu * 1e6 / got.max(1) as f64, 3);
    report.text = Some(
        "No server took part: this is the loopback TCP floor of this machine for the pattern\n\
         (writers and readers in this process, sharing its cores). Compare with `fanout`.\n"
            .to_string(),
    );
    Ok(report)
}

/// The length of the frame the server sends to a subscriber for a payload
/// of `size` bytes published by a connection (what `fanout` receives).
pub fn record_len(size: usize) -> usize {
    let data = format!("\"{}\"", "x".repeat(size));
    message_json(
        Some("g0"),
        None,
        Some(&crate::id::ClientId {
            node: None,
            conn: 10_001,
        }),
        None,
        data.as_bytes(),
    )
    .finish(OP_TEXT)
    .len()
    .max(HEAD)
}

/// Open `n` connected pairs over loopback, the client ends bound to
/// `sources` addresses 127.0.0.2 and up (0: the system's choice).
fn pairs(n: usize, sources: usize) -> io::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    listener.set_reuse_address(true)?;
    listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    listener.listen(1024)?;
    let listener: TcpListener = listener.into();
    let addr = listener.local_addr()?;
    let mut servers = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        if sources > 0 {
            let ip = Ipv4Addr::new(127, 0, 0, 2 + (i % sources) as u8);
            socket.bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())?;
        }
        socket.connect(&addr.into())?;
        let client: TcpStream = socket.into();
        let (server, _) = listener.accept()?;
        // As the server does: small frames go out at once.
        server.set_nodelay(true)?;
        server.set_nonblocking(true)?;
        client.set_nonblocking(true)?;
        servers.push(server);
        clients.push(client);
    }
    Ok((servers, clients))
}

/// When publications happen and how big their records are.
#[derive(Debug, Clone)]
struct Plan {
    start_us: u64,
    rate: f64,
    groups: usize,
    /// The last publication's number.
    last: u64,
    record: usize,
}

impl Plan {
    /// When publication `k` happens ([`now_us`] clock).
    fn time_of(&self, k: u64) -> u64 {
        self.start_us + (k as f64 * 1e6 / self.rate) as u64
    }
}

/// What a writer did.
#[derive(Debug, Default)]
struct Wrote {
    writes: u64,
    frames: u64,
    /// Records owed to its sockets by the end.
    expected: u64,
}

/// One writer-side socket.
struct Out {
    stream: TcpStream,
    group: usize,
    /// Records written to it (its next record's sequence number - 1).
    written: u64,
    /// Bytes a short write left over, written before anything else.
    leftover: Vec<u8>,
    queued: bool,
}

/// The ideal server: a first-in-first-out list of dirty sockets, each
/// visited once per turn with everything it is owed in one write.
fn write_loop(share: Vec<(usize, TcpStream)>, plan: &Plan) -> anyhow::Result<Wrote> {
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); plan.groups];
    let mut outs: Vec<Out> = Vec::with_capacity(share.len());
    for (i, (group, stream)) in share.into_iter().enumerate() {
        members[group].push(i as u32);
        outs.push(Out {
            stream,
            group,
            written: 0,
            leftover: Vec::new(),
            queued: false,
        });
    }
    // Publications so far, per group.
    let mut published = vec![0u64; plan.groups];
    let mut dirty: VecDeque<u32> = VecDeque::with_capacity(outs.len());
    let mut next = 1u64;
    let mut wrote = Wrote::default();
    let mut buf = Vec::new();
    loop {
        let now = now_us();
        while next <= plan.last && plan.time_of(next) <= now {
            let g = ((next - 1) % plan.groups as u64) as usize;
            published[g] += 1;
            for &m in &members[g] {
                let out = &mut outs[m as usize];
                if !out.queued {
                    out.queued = true;
                    dirty.push_back(m);
                }
            }
            next += 1;
        }
        for _ in 0..VISITS_PER_TICK {
            let Some(m) = dirty.pop_front() else { break };
            let out = &mut outs[m as usize];
            out.queued = false;
            buf.clear();
            buf.append(&mut out.leftover);
            let owed = published[out.group];
            for seq in out.written + 1..=owed {
                // The socket's seq-th record is its group's seq-th
                // publication: number g + 1 + (seq - 1) G overall.
                let k = out.group as u64 + 1 + (seq - 1) * plan.groups as u64;
                buf.extend_from_slice(&plan.time_of(k).to_le_bytes());
                buf.extend_from_slice(&seq.to_le_bytes());
                buf.resize(buf.len() + plan.record - HEAD, b'x');
            }
            wrote.frames += owed - out.written;
            out.written = owed;
            let n = match (&out.stream).write(&buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e).context("writing to a loopback socket"),
            };
            wrote.writes += 1;
            if n < buf.len() {
                // The reader is behind: keep the rest and come back later.
                out.leftover.extend_from_slice(&buf[n..]);
                out.queued = true;
                dirty.push_back(m);
            }
        }
        if dirty.is_empty() {
            if next > plan.last {
                break;
            }
            let wait = plan.time_of(next).saturating_sub(now_us());
            if wait > 0 {
                std::thread::sleep(Duration::from_micros(wait));
            }
        }
    }
    wrote.expected = outs.iter().map(|o| published[o.group]).sum();
    Ok(wrote)
}

/// What the readers counted.
#[derive(Debug, Default)]
struct Counts {
    records: AtomicU64,
    out_of_order: AtomicU64,
}

/// One reader-side socket: where it is in the current record.
struct In {
    stream: mio::net::TcpStream,
    /// Bytes of the current record seen so far.
    pos: usize,
    head: [u8; HEAD],
    last_seq: u64,
}

/// The ideal client: one epoll loop over its sockets.
fn read_loop(
    share: Vec<TcpStream>,
    record: usize,
    counts: &Counts,
    stop: &AtomicBool,
    latency: &Histogram,
) -> anyhow::Result<()> {
    let mut poll = mio::Poll::new()?;
    let mut ins: Vec<In> = Vec::with_capacity(share.len());
    for (i, s) in share.into_iter().enumerate() {
        let mut stream = mio::net::TcpStream::from_std(s);
        poll.registry()
            .register(&mut stream, mio::Token(i), mio::Interest::READABLE)?;
        ins.push(In {
            stream,
            pos: 0,
            head: [0; HEAD],
            last_seq: 0,
        });
    }
    let mut events = mio::Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match poll.poll(&mut events, Some(Duration::from_millis(20))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        let (mut n, mut ooo) = (0u64, 0u64);
        for ev in events.iter() {
            let sock = &mut ins[ev.token().0];
            loop {
                let got = match sock.stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(got) => got,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("reading a loopback socket"),
                };
                // Records that came in one read arrived together.
                let now = now_us();
                let mut chunk = &buf[..got];
                while !chunk.is_empty() {
                    if sock.pos < HEAD {
                        let take = (HEAD - sock.pos).min(chunk.len());
                        sock.head[sock.pos..sock.pos + take].copy_from_slice(&chunk[..take]);
                        sock.pos += take;
                        chunk = &chunk[take..];
                        if sock.pos == HEAD {
                            let ts = u64::from_le_bytes(sock.head[..8].try_into().expect("8 bytes"));
                            let seq = u64::from_le_bytes(sock.head[8..].try_into().expect("8 bytes"));
                            latency.record(now.saturating_sub(ts));
                            n += 1;
                            if seq != sock.last_seq + 1 {
                                ooo += 1;
                            }
                            sock.last_seq = seq;
                        }
                    }
                    let skip = (record - sock.pos).min(chunk.len());
                    sock.pos += skip;
                    chunk = &chunk[skip..];
                    if sock.pos == record {
                        sock.pos = 0;
                    }
                }
                if got < buf.len() {
                    // A short read emptied the socket; epoll reports the
                    // next arrival.
                    break;
                }
            }
        }
        if n > 0 {
            counts.records.fetch_add(n, Ordering::Relaxed);
        }
        if ooo > 0 {
            counts.out_of_order.fetch_add(ooo, Ordering::Relaxed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_as_long_as_the_servers_frames() {
        // The payload adds its own length; the envelope and header are
        // the same whatever the payload.
        assert_eq!(record_len(64), record_len(0) + 64);
        assert!(record_len(0) > 40, "{}", record_len(0));
        assert!(record_len(0) >= HEAD);
    }

    #[test]
    fn delivers_every_record_in_order() {
        let args = FloorArgs {
            connections: 20,
            groups: 3,
            rate: 600,
            size: 64,
            duration: Duration::from_millis(300),
            drain: Duration::from_secs(5),
            writers: 2,
            readers: 2,
        };
        let report = run(&args, 0, 1024).expect("runs");
        assert_eq!(report.num("published"), Some(180.0));
        // Groups 0, 1, 2 have 7, 7 and 6 members; 60 publications each.
        assert_eq!(report.num("expected"), Some(60.0 * 20.0));
        assert_eq!(report.num("received"), Some(1200.0));
        assert_eq!(report.num("lost"), Some(0.0));
        assert_eq!(report.num("out_of_order"), Some(0.0));
    }

    #[test]
    fn refuses_what_the_fd_limit_cannot_hold() {
        let args = FloorArgs {
            connections: 1000,
            groups: 1,
            rate: 10,
            size: 64,
            duration: Duration::from_millis(10),
            drain: Duration::from_secs(1),
            writers: 1,
            readers: 1,
        };
        let err = run(&args, 0, 1024).unwrap_err().to_string();
        assert!(err.contains("at most 480 pairs"), "{err}");
    }
}
