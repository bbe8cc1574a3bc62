//! `roomcast bench fanout`: C subscribers in G groups, P publishers sending
//! R messages/s in total for T seconds.
//!
//! Every payload is `P:SEQ:TS:` padded to S bytes: the publisher's index,
//! its sequence number and the send time in microseconds. Subscribers count
//! what arrives, check per-publisher order and record `now - TS`.
//!
//! Loss is counted exactly: each publish carries an id, and the server's
//! `ack` for it tells which group it reached, so the expected deliveries are
//! the sum over groups of acknowledged publications × members. Publications
//! the server refused (an `error` reply) are reported as refused, not lost.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::delivery::{Local, Received};
use super::subscribers::Subscribers;
use super::wire::Frame;
use super::{
    Conn, Ctx, Report, at_least_one, now_us, open_many, own_usage, parse_duration, push_latency,
    push_server_usage,
};

/// Options of the `fanout` scenario.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Subscriber connections.
    #[arg(short = 'c', long, default_value_t = 1_000)]
    pub connections: usize,
    /// Groups (subscriber i joins group i mod G).
    #[arg(short = 'g', long, default_value_t = 1)]
    pub groups: usize,
    /// Publisher connections (not members of any group). 0: subscribers
    /// only, counting and timing what another load process publishes to
    /// the same groups for --duration (runs over more connections than one
    /// process may open; see docs/BENCHMARKS.md).
    #[arg(short = 'p', long, default_value_t = 1)]
    pub publishers: usize,
    /// Publications per second, all publishers together; each goes to one
    /// group, round-robin.
    #[arg(short = 'r', long, default_value_t = 100)]
    pub rate: u64,
    /// Payload size in bytes (the `data` string; at least 32).
    #[arg(short = 's', long, default_value_t = 64)]
    pub size: usize,
    /// What pads `data` to --size: `x` (one letter repeated: compresses
    /// about a hundredfold) or `words` (chat-like text from a small
    /// vocabulary, which deflate shrinks to roughly a third, like real
    /// JSON traffic: for --deflate runs).
    #[arg(long, value_enum, default_value_t = Fill::X)]
    pub fill: Fill,
    /// How long to publish.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// After publishing, how long to wait without progress for the last
    /// deliveries before counting the rest as lost.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Threads reading the subscribers, each a plain epoll loop outside
    /// the runtime; 0 reads each subscriber in its own runtime task instead
    /// (costlier per delivery, kept for comparison).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub subscriber_threads: usize,
}

/// What pads a publication's `data` (see [`FanoutArgs::fill`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fill {
    /// `xxxx...`
    X,
    /// Chat-like words.
    Words,
}

/// The words of [`Fill::Words`].
const WORDS: [&str; 32] = [
    "hello", "everyone", "the", "match", "starts", "in", "five", "minutes", "who", "is", "joining", "lobby",
    "room", "score", "team", "red", "blue", "wins", "again", "nice", "shot", "price", "up", "down", "order",
    "filled", "at", "market", "ok", "see", "you", "later",
];

/// Append words to `out` until it is `len` bytes long.
fn fill_words(out: &mut Vec<u8>, len: usize, rng: &mut fastrand::Rng) {
    while out.len() < len {
        out.extend_from_slice(WORDS[rng.usize(..WORDS.len())].as_bytes());
        out.push(if rng.u8(..8) == 0 { b',' } else { b' ' });
    }
    out.truncate(len);
}

/// What one publisher did.
#[derive(Debug, Default)]
struct Published {
    sent: u64,
    /// Acknowledged publications per group.
    acked: Vec<u64>,
    /// Refused publications by error code.
    refused: BTreeMap<String, u64>,
}

/// The `id` of an `ack` or `error` reply, and the error code if any.
fn parse_reply(text: &[u8]) -> Option<(u64, Option<String>)> {
    if let Some(rest) = text.strip_prefix(br#"{"type":"ack","id":"#) {
        let end = rest.iter().position(|&b| b == b'}')?;
        return Some((std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?, None));
    }
    let v: serde_json::Value = serde_json::from_slice(text).ok()?;
    if v["type"] != "error" {
        return None;
    }
    Some((
        v["id"].as_u64()?,
        Some(v["code"].as_str().unwrap_or("?").to_string()),
    ))
}

/// Run the scenario.
pub async fn run(ctx: &Ctx, args: &FanoutArgs) -> anyhow::Result<Report> {
    at_least_one("--connections", args.connections)?;
    at_least_one("--groups", args.groups)?;
    if args.size < 32 {
        bail!("--size must be at least 32 bytes (room for the sequence number and timestamp)");
    }
    ctx.check_fd_budget(args.connections + args.publishers)?;
    let groups = args.groups;
    let subs = open_many(
        ctx,
        &ctx.targets,
        args.connections,
        |i| format!("g{}", i % groups),
        true,
        "subscribers",
    )
    .await;
    subs.require_all()?;
    let connect_rate = subs.rate();
    // Deliveries name their publisher's index (0.. in each load process).
    let indexes = args.publishers.max(1);
    let pubs = open_many(
        ctx,
        std::slice::from_ref(&ctx.target),
        args.publishers,
        |_| String::new(),
        true,
        "publishers",
    )
    .await;
    pubs.require_all()?;
    let mut members = vec![0u64; groups];
    for i in 0..args.connections {
        members[i % groups] += 1;
    }

    let received = Arc::new(Received::default());
    let mut sub_tasks = JoinSet::new();
    let mut sub_threads = None;
    if args.subscriber_threads == 0 {
        for conn in subs.conns {
            sub_tasks.spawn(subscribe(conn, received.clone(), indexes));
        }
    } else {
        sub_threads = Some(Subscribers::start(
            subs.conns,
            args.subscriber_threads,
            received.clone(),
            indexes,
        )?);
    }

    let server_before = ctx.server_usage()?;
    let counters_before = super::all_counters(&ctx.targets).await;
    let broker_before = ctx.broker_usage()?;
    let own_before = own_usage()?;
    let start = Instant::now() + Duration::from_millis(50);
    let start_us = now_us() + 50_000;
    let mut pub_tasks = JoinSet::new();
    let rate = args.rate as f64 / args.publishers as f64;
    for (i, conn) in pubs.conns.into_iter().enumerate() {
        let assigned: Vec<usize> = if groups >= args.publishers {
            (i..groups).step_by(args.publishers).collect()
        } else {
            vec![i % groups]
        };
        pub_tasks.spawn(publish(
            conn,
            i as u64,
            assigned,
            groups,
            rate,
            args.size,
            args.fill,
            start,
            args.duration,
            args.drain,
        ));
    }
    let spinner = ctx.spinner("publishing");
    let mut published = Published {
        acked: vec![0; groups],
        ..Default::default()
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            done = pub_tasks.join_next() => match done {
                Some(result) => {
                    let p = result??;
                    published.sent += p.sent;
                    for (g, n) in p.acked.iter().enumerate() {
                        published.acked[g] += n;
                    }
                    for (code, n) in p.refused {
                        *published.refused.entry(code).or_insert(0) += n;
                    }
                }
                None => break,
            },
            _ = tick.tick() => spinner.set_message(format!("{} deliveries", received.messages.load(Ordering::Relaxed))),
        }
    }
    let listening = args.publishers == 0;
    if listening {
        spinner.set_prefix("listening");
        tokio::time::sleep_until(start + args.duration).await;
    }
    let publish_window = start.elapsed();
    let expected: u64 = published.acked.iter().zip(&members).map(|(a, m)| a * m).sum();
    // Wait for the last deliveries, as long as they keep coming (when
    // listening, the count expected is unknown: until they stop).
    spinner.set_prefix("draining");
    let mut last = received.messages.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while (listening || last < expected) && quiet_since.elapsed() < args.drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = received.messages.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let server_after = ctx.server_usage()?;
    let counters_after = super::all_counters(&ctx.targets).await;
    let broker_after = ctx.broker_usage()?;
    let own_after = own_usage()?;
    spinner.finish_and_clear();
    sub_tasks.abort_all();
    while sub_tasks.join_next().await.is_some() {}
    if let Some(threads) = sub_threads {
        tokio::task::spawn_blocking(move || threads.stop()).await?;
    }

    let got = received.messages.load(Ordering::Relaxed);
    let active = Duration::from_micros(received.last_us.load(Ordering::Relaxed).saturating_sub(start_us))
        .max(Duration::from_millis(1));
    let acked: u64 = published.acked.iter().sum();
    let mut report = Report::new("fanout");
    report.push("nodes", ctx.targets.len());
    report.push("connections", args.connections);
    report.push("groups", args.groups);
    report.push("publishers", args.publishers);
    report.push("rate", args.rate);
    report.push("size", args.size);
    report.push_f("duration_seconds", args.duration.as_secs_f64(), 1);
    report.push_f("connects_per_sec", connect_rate, 0);
    report.push("published", published.sent);
    report.push_f(
        "published_per_sec",
        published.sent as f64 / args.duration.as_secs_f64().max(1e-9),
        0,
    );
    report.push("acked", acked);
    report.push("refused", published.refused.values().sum::<u64>());
    if !published.refused.is_empty() {
        let codes: BTreeMap<String, usize> = published
            .refused
            .iter()
            .map(|(k, v)| (k.clone(), *v as usize))
            .collect();
        report.push("refused_codes", super::describe(&codes));
    }
    if listening {
        // Published elsewhere: loss is judged by adding up the processes.
        report.push("expected", serde_json::Value::Null);
        report.push("received", got);
        report.push("lost", serde_json::Value::Null);
    } else {
        report.push("expected", expected);
        report.push("received", got);
        report.push("lost", expected.saturating_sub(got));
    }
    report.push("out_of_order", received.out_of_order.load(Ordering::Relaxed));
    report.push("duplicates", received.duplicates.load(Ordering::Relaxed));
    report.push("unexpected_frames", received.unexpected.load(Ordering::Relaxed));
    report.push("subscribers_closed", received.closed.load(Ordering::Relaxed));
    report.push_f("deliveries_per_sec", got as f64 / active.as_secs_f64(), 0);
    push_latency(&mut report, &received.latency);
    push_server_usage(&mut report, server_before, server_after, publish_window);
    if let (Some(b), Some(a)) = (server_before, server_after) {
        report.push_f(
            "server_cpu_us_per_delivery",
            (a.cpu - b.cpu) * 1e6 / got.max(1) as f64,
            3,
        );
    }
    report.push_f("client_cpu_seconds", own_after.cpu - own_before.cpu, 2);
    if let (Some(b), Some(a)) = (broker_before, broker_after) {
        report.push_f("broker_cpu_seconds", a.cpu - b.cpu, 2);
        report.push_f(
            "broker_cpu_us_per_publication",
            (a.cpu - b.cpu) * 1e6 / acked.max(1) as f64,
            2,
        );
    }
    if let (Some(b), Some(a)) = (&counters_before, &counters_after) {
        let delta = |name: &str| a.get(name).copied().unwrap_or(0.0) - b.get(name).copied().unwrap_or(0.0);
        report.push_f(
            "server_bytes_sent_per_delivery",
            delta("roomcast_websocket_sent_bytes_total") / got.max(1) as f64,
            1,
        );
        report.push_f("server_compressions", delta("roomcast_compressions_total"), 0);
        let from_broker = delta("roomcast_broker_received_total");
        if from_broker > 0.0 {
            // One per publication and subscribed node: never one per member.
            report.push_f(
                "broker_messages_per_publication",
                from_broker / acked.max(1) as f64,
                2,
            );
        }
        let input = delta("roomcast_compression_input_bytes_total");
        if input > 0.0 {
            report.push_f(
                "compression_ratio",
                delta("roomcast_compression_output_bytes_total") / input,
                3,
            );
        }
    }
    Ok(report)
}

/// One subscriber: count, order-check and time every delivery. Counts are
/// kept locally and added to the shared ones whenever no whole frame is
/// buffered, i.e. before any read that may wait (and be cancelled).
async fn subscribe((mut r, mut w): Conn, shared: Arc<Received>, publishers: usize) {
    let mut last_seq = vec![0u64; publishers];
    let mut local = Local::default();
    // Frames that came in one read arrived together: one clock read serves
    // them all.
    let mut clock: Option<u64> = None;
    loop {
        let frame = match r.next().await {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => break,
        };
        match frame {
            Frame::Text(t) => local.text(t, &mut clock, &shared, &mut last_seq),
            Frame::Ping(p) => {
                let p = p.to_vec();
                local.flush(&shared);
                if w.pong(&p).await.is_err() {
                    break;
                }
            }
            Frame::Close(_) => break,
            Frame::Binary(_) | Frame::Pong => local.unexpected += 1,
        }
        if !r.has_frame() {
            local.flush(&shared);
            clock = None;
        }
    }
    local.flush(&shared);
    shared.closed.fetch_add(1, Ordering::Relaxed);
}

/// One publisher: send `rate` publications per second from `start` for
/// `duration`, round-robin over `assigned` groups, in batches of whatever
/// is due each millisecond; meanwhile count the replies.
#[allow(clippy::too_many_arguments)]
async fn publish(
    (mut r, mut w): Conn,
    index: u64,
    assigned: Vec<usize>,
    groups: usize,
    rate: f64,
    size: usize,
    fill: Fill,
    start: Instant,
    duration: Duration,
    drain: Duration,
) -> anyhow::Result<Published> {
    let mut out = Published {
        acked: vec![0; groups],
        ..Default::default()
    };
    let group_of = |seq: u64| assigned[((seq - 1) % assigned.len() as u64) as usize];
    let mut answered = 0u64;
    let mut tick = tokio::time::interval_at(start, Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let end = start + duration;
    let mut payload = Vec::with_capacity(size + 64);
    let mut rng = fastrand::Rng::with_seed(index);
    let mut pongs: Vec<Vec<u8>> = Vec::new();
    let handle = |text: &[u8], out: &mut Published, answered: &mut u64| {
        if let Some((id, err)) = parse_reply(text)
            && id >= 1
            && id <= out.sent
        {
            *answered += 1;
            match err {
                None => out.acked[group_of(id)] += 1,
                Some(code) => *out.refused.entry(code).or_insert(0) += 1,
            }
        }
    };
    // Publishing, reading replies as they come.
    loop {
        tokio::select! {
            biased;
            _ = tick.tick() => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let due = ((now - start).as_secs_f64() * rate) as u64;
                // At most 1,000 frames per write, so replies are read often.
                let mut batch = 0;
                while out.sent < due && batch < 1000 {
                    out.sent += 1;
                    batch += 1;
                    payload.clear();
                    let g = group_of(out.sent);
                    let _ = write!(payload, r#"{{"type":"publish","group":"g{g}","id":{},"data":""#, out.sent);
                    let data_at = payload.len();
                    let _ = write!(payload, "{index}:{}:{}:", out.sent, now_us());
                    let len = data_at + size.max(payload.len() - data_at);
                    match fill {
                        Fill::X => payload.resize(len, b'x'),
                        Fill::Words => fill_words(&mut payload, len, &mut rng),
                    }
                    payload.extend_from_slice(b"\"}");
                    w.text(&payload);
                }
                w.flush().await?;
                for p in pongs.drain(..) {
                    w.pong(&p).await?;
                }
            }
            frame = r.next() => match frame? {
                Some(Frame::Text(t)) => handle(t, &mut out, &mut answered),
                Some(Frame::Ping(p)) => pongs.push(p.to_vec()),
                Some(Frame::Close(code)) => bail!("the server closed a publisher with {code}"),
                Some(_) => {}
                None => bail!("the server closed a publisher's connection"),
            },
        }
    }
    // Every publication gets a reply; wait for the rest.
    let deadline = Instant::now() + drain.max(Duration::from_secs(1));
    while answered < out.sent {
        let frame = match tokio::time::timeout_at(deadline, r.next()).await {
            Ok(f) => f?,
            Err(_) => bail!(
                "{} publications got no reply within {:?}",
                out.sent - answered,
                drain
            ),
        };
        match frame {
            Some(Frame::Text(t)) => handle(t, &mut out, &mut answered),
            Some(Frame::Ping(p)) => {
                let p = p.to_vec();
                w.pong(&p).await?;
            }
            Some(Frame::Close(code)) => bail!("the server closed a publisher with {code}"),
            Some(_) => {}
            None => bail!("the server closed a publisher's connection"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::delivery::parse_delivery;

    #[test]
    fn parses_deliveries_and_replies() {
        let msg = br#"{"type":"message","group":"g1","from":"7","data":"3:42:123456:xxxx"}"#;
        assert_eq!(parse_delivery(msg), Some((3, 42, 123456)));
        assert_eq!(parse_delivery(br#"{"type":"message","data":"x"}"#), None);
        assert_eq!(parse_reply(br#"{"type":"ack","id":17}"#), Some((17, None)));
        assert_eq!(
            parse_reply(br#"{"type":"error","id":5,"code":"rate_limited","message":"slow down"}"#),
            Some((5, Some("rate_limited".to_string())))
        );
        assert_eq!(parse_reply(br#"{"type":"pong"}"#), None);
    }
}
