//! `roomcast bench echo`: N connections to `/echo`, each sending a message
//! and waiting for it to come back, over and over: round-trip latency and
//! round trips per second. This measures the WebSocket layer alone (frame
//! decoding, unmasking, UTF-8 validation, writing), without the protocol.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::histogram::Histogram;
use super::wire::Frame;
use super::{
    Conn, Ctx, Report, at_least_one, now_us, open_many, own_usage, parse_duration, push_latency,
    push_server_usage,
};

/// Options of the `echo` scenario.
#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// Connections, each with one message in flight.
    #[arg(short = 'c', long, default_value_t = 100)]
    pub connections: usize,
    /// Message size in bytes (a text message; at least 24).
    #[arg(short = 's', long, default_value_t = 64)]
    pub size: usize,
    /// How long to run.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The echo endpoint's path on the --url server.
    #[arg(long, default_value = "/echo")]
    pub path: String,
}

/// Run the scenario.
pub async fn run(ctx: &Ctx, args: &EchoArgs) -> anyhow::Result<Report> {
    at_least_one("--connections", args.connections)?;
    if args.size < 24 {
        bail!("--size must be at least 24 bytes (room for the timestamp)");
    }
    ctx.check_fd_budget(args.connections)?;
    let target = ctx.target.with_path(&args.path);
    let opened = open_many(
        ctx,
        std::slice::from_ref(&target),
        args.connections,
        |_| String::new(),
        false,
        "connecting",
    )
    .await;
    opened.require_all()?;
    let latency = Arc::new(Histogram::new());
    let round_trips = Arc::new(AtomicU64::new(0));
    let server_before = ctx.server_usage()?;
    let own_before = own_usage()?;
    let started = Instant::now();
    let end = started + args.duration;
    let mut tasks = JoinSet::new();
    for conn in opened.conns {
        tasks.spawn(echo(conn, args.size, end, latency.clone(), round_trips.clone()));
    }
    let spinner = ctx.spinner("echoing");
    let mut failed = 0;
    while let Some(result) = tasks.join_next().await {
        if result.expect("echo task does not panic").is_err() {
            failed += 1;
        }
        spinner.set_message(format!("{} round trips", round_trips.load(Ordering::Relaxed)));
    }
    let window = started.elapsed();
    let server_after = ctx.server_usage()?;
    let own_after = own_usage()?;
    spinner.finish_and_clear();
    let n = round_trips.load(Ordering::Relaxed);
    let mut report = Report::new("echo");
    report.push("connections", args.connections);
    report.push("size", args.size);
    report.push_f("duration_seconds", args.duration.as_secs_f64(), 1);
    report.push("round_trips", n);
    report.push("failed_connections", failed);
    report.push_f("round_trips_per_sec", n as f64 / window.as_secs_f64(), 0);
    push_latency(&mut report, &latency);
    push_server_usage(&mut report, server_before, server_after, window);
    report.push_f("client_cpu_seconds", own_after.cpu - own_before.cpu, 2);
    Ok(report)
}

/// One connection's loop: send, wait for the same bytes back, record.
async fn echo(
    (mut r, mut w): Conn,
    size: usize,
    end: Instant,
    latency: Arc<Histogram>,
    count: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut msg = Vec::with_capacity(size);
    let mut n = 0;
    let mut max = 0;
    let result = async {
        while Instant::now() < end {
            msg.clear();
            msg.extend_from_slice(format!("{:020}:", now_us()).as_bytes());
            msg.resize(size, b'x');
            let sent = now_us();
            w.text(&msg);
            w.flush().await?;
            loop {
                match tokio::time::timeout_at(end + Duration::from_secs(5), r.next()).await {
                    Err(_) => bail!("no echo within 5 s of the end"),
                    Ok(frame) => match frame? {
                        Some(Frame::Text(t)) if t == msg.as_slice() => break,
                        Some(Frame::Text(_) | Frame::Binary(_)) => {
                            bail!("the echo differs from the message sent")
                        }
                        Some(Frame::Ping(p)) => {
                            let p = p.to_vec();
                            w.pong(&p).await?;
                        }
                        Some(Frame::Pong) => {}
                        Some(Frame::Close(code)) => bail!("closed by the server with {code}"),
                        None => bail!("the server closed TCP"),
                    },
                }
            }
            let rtt = now_us() - sent;
            latency.record(rtt);
            max = u64::max(max, rtt);
            n += 1;
            if n % 64 == 0 {
                count.fetch_add(64, Ordering::Relaxed);
            }
        }
        Ok(())
    }
    .await;
    count.fetch_add(n % 64, Ordering::Relaxed);
    latency.note_max(max);
    let _ = w.close(1000).await;
    result
}
