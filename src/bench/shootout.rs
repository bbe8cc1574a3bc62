//! `roomcast bench shootout`: the well-known WebSocket broadcast benchmark.
//!
//! Clients are added in steps, all members of one group. At each step a
//! few senders (connections outside the group) each publish a number of
//! broadcasts, one at a time; a broadcast's round trip runs from its send
//! until the last client has it. The step's p95 round trip decides: the
//! result is the largest client count whose p95 stays under the limit.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::histogram::Histogram;
use super::wire::Frame;
use super::{Conn, Ctx, Report, at_least_one, now_us, open_many, parse_duration};

const GROUP: &str = "shootout";

/// Options of the `shootout` scenario.
#[derive(Debug, Clone, Args)]
pub struct ShootoutArgs {
    /// Stop adding clients at this many.
    #[arg(long, default_value_t = 19_000)]
    pub max_clients: usize,
    /// Clients added per step.
    #[arg(long, default_value_t = 1_000)]
    pub step: usize,
    /// Sender connections, broadcasting concurrently.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Broadcasts per sender per step, one after the other.
    #[arg(long, default_value_t = 10)]
    pub broadcasts: usize,
    /// Payload size in bytes (at least 32).
    #[arg(short = 's', long, default_value_t = 64)]
    pub size: usize,
    /// The p95 round trip a step must stay under.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub limit: Duration,
    /// Go on adding clients after a step fails the limit.
    #[arg(long)]
    pub keep_going: bool,
}

/// The broadcasts of one step: how many clients still miss each one.
struct Step {
    remaining: Vec<AtomicU32>,
    done: Vec<Notify>,
    latency: Histogram,
}

/// Run the scenario.
pub async fn run(ctx: &Ctx, args: &ShootoutArgs) -> anyhow::Result<Report> {
    at_least_one("--max-clients", args.max_clients)?;
    at_least_one("--step", args.step)?;
    at_least_one("--senders", args.senders)?;
    at_least_one("--broadcasts", args.broadcasts)?;
    if args.size < 32 {
        bail!("--size must be at least 32 bytes");
    }
    ctx.check_fd_budget(args.max_clients + args.senders)?;
    let per_step = args.senders * args.broadcasts;
    let current: Arc<Current> = Arc::default();
    let senders = open_many(
        ctx,
        std::slice::from_ref(&ctx.target),
        args.senders,
        |_| String::new(),
        true,
        "senders",
    )
    .await;
    senders.require_all()?;
    let mut senders = senders.conns;
    let mut clients = JoinSet::new();
    let mut count = 0usize;
    let mut steps = Vec::new();
    let mut best = 0usize;
    let mut stopped = None;
    while count < args.max_clients {
        let add = args.step.min(args.max_clients - count);
        let opened = open_many(
            ctx,
            std::slice::from_ref(&ctx.target),
            add,
            |_| GROUP.to_string(),
            true,
            &format!("{} clients", count + add),
        )
        .await;
        let connect_rate = opened.rate();
        let failed = opened.failures.values().sum::<usize>();
        for conn in opened.conns {
            clients.spawn(client(conn, current.clone()));
        }
        count += add - failed;
        if failed > 0 {
            stopped = Some(format!(
                "{failed} connections failed at {} clients: {}",
                count + failed,
                super::describe(&opened.failures)
            ));
            break;
        }
        // Clients the server closed (e.g. as slow consumers) are gone.
        let mut closed = 0;
        while clients.try_join_next().is_some() {
            closed += 1;
        }
        if closed > 0 {
            stopped = Some(format!("the server closed {closed} clients"));
            break;
        }
        let step = Arc::new(Step {
            remaining: (0..per_step).map(|_| AtomicU32::new(count as u32)).collect(),
            done: (0..per_step).map(|_| Notify::new()).collect(),
            latency: Histogram::new(),
        });
        current.set(step.clone());
        let spinner = ctx.spinner("broadcasting");
        spinner.set_message(format!("{count} clients"));
        let mut tasks = JoinSet::new();
        for (i, conn) in senders.drain(..).enumerate() {
            tasks.spawn(send(
                conn,
                step.clone(),
                i,
                args.broadcasts,
                args.size,
                args.limit * 10,
            ));
        }
        let mut timed_out = 0;
        while let Some(r) = tasks.join_next().await {
            let (conn, missed) = r.expect("sender does not panic")?;
            senders.push(conn);
            timed_out += missed;
        }
        spinner.finish_and_clear();
        let lat = step.latency.summary();
        let p95 = lat.p95 as f64 / 1000.0;
        let pass = timed_out == 0 && p95 < args.limit.as_secs_f64() * 1000.0;
        if pass {
            best = count;
        }
        if ctx.progress {
            eprintln!(
                "{count:>6} clients  p50 {:>8.1} ms  p95 {:>8.1} ms  max {:>8.1} ms  {}",
                lat.p50 as f64 / 1000.0,
                p95,
                lat.max as f64 / 1000.0,
                if pass { "ok" } else { "over the limit" }
            );
        }
        steps.push(json!({
            "clients": count,
            "connects_per_sec": connect_rate.round(),
            "p50_ms": lat.p50 as f64 / 1000.0,
            "p95_ms": p95,
            "max_ms": lat.max as f64 / 1000.0,
            "timed_out": timed_out,
        }));
        if !pass && !args.keep_going {
            stopped = Some(format!(
                "p95 over {} ms at {count} clients",
                args.limit.as_millis()
            ));
            break;
        }
    }
    clients.abort_all();
    let mut report = Report::new("shootout");
    report.push("max_clients", args.max_clients);
    report.push("step", args.step);
    report.push("senders", args.senders);
    report.push("broadcasts_per_step", per_step);
    report.push_f("limit_ms", args.limit.as_secs_f64() * 1000.0, 1);
    report.push("clients_reached", count);
    report.push("largest_passing_clients", best);
    report.push(
        "stopped",
        stopped.unwrap_or_else(|| "reached --max-clients".to_string()),
    );
    if ctx.progress {
        // A table for people; --json gets the steps as an array.
        let mut text = format!(
            "  {:>8}  {:>10}  {:>10}  {:>10}  {:>9}\n",
            "clients", "p50 ms", "p95 ms", "max ms", "timed out"
        );
        for s in &steps {
            let col = |k: &str| s[k].to_string();
            text.push_str(&format!(
                "  {:>8}  {:>10}  {:>10}  {:>10}  {:>9}\n",
                col("clients"),
                col("p50_ms"),
                col("p95_ms"),
                col("max_ms"),
                col("timed_out")
            ));
        }
        report.text = Some(text);
    } else {
        report.push("steps", serde_json::Value::Array(steps));
    }
    Ok(report)
}

/// Where clients find the step being measured. Clients only look when a
/// broadcast arrives, so the lock is taken once per delivery and is
/// rarely contended.
#[derive(Default)]
struct Current(Mutex<Option<Arc<Step>>>);

impl Current {
    fn set(&self, step: Arc<Step>) {
        *self.0.lock().expect("not poisoned") = Some(step);
    }

    fn get(&self) -> Option<Arc<Step>> {
        self.0.lock().expect("not poisoned").clone()
    }
}

/// A client: note each broadcast's arrival; the last one to arrive
/// records the round trip and wakes the sender.
async fn client((mut r, mut w): Conn, current: Arc<Current>) {
    loop {
        match r.next().await {
            Ok(Some(Frame::Text(t))) => {
                let Some((b, ts)) = parse(t) else { continue };
                let Some(step) = current.get() else { continue };
                let Some(remaining) = step.remaining.get(b) else {
                    continue;
                };
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let rtt = now_us().saturating_sub(ts);
                    step.latency.record(rtt);
                    step.latency.note_max(rtt);
                    step.done[b].notify_one();
                }
            }
            Ok(Some(Frame::Ping(p))) => {
                let p = p.to_vec();
                if w.pong(&p).await.is_err() {
                    return;
                }
            }
            Ok(Some(Frame::Close(_))) | Ok(None) | Err(_) => return,
            Ok(Some(_)) => {}
        }
    }
}

/// `(broadcast index, timestamp)` from a delivery's data `B:TS:...`.
fn parse(text: &[u8]) -> Option<(usize, u64)> {
    let at = memchr::memmem::find(text, br#""data":""#)? + 8;
    let mut fields = text[at..].splitn(3, |&b| b == b':');
    let b = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let ts = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    Some((b, ts))
}

/// One sender: its broadcasts, one at a time. Returns the connection and
/// how many broadcasts did not reach every client within `timeout`.
async fn send(
    (mut r, mut w): Conn,
    step: Arc<Step>,
    sender: usize,
    count: usize,
    size: usize,
    timeout: Duration,
) -> anyhow::Result<(Conn, usize)> {
    let mut missed = 0;
    for k in 0..count {
        let b = sender * count + k;
        let mut data = format!("{b}:{}:", now_us());
        let pad = size.saturating_sub(data.len());
        data.extend(std::iter::repeat_n('x', pad));
        w.text(format!(r#"{{"type":"publish","group":"{GROUP}","data":"{data}"}}"#).as_bytes());
        w.flush().await?;
        let deadline = Instant::now() + timeout;
        let done = step.done[b].notified();
        tokio::pin!(done);
        loop {
            tokio::select! {
                _ = &mut done => break,
                _ = tokio::time::sleep_until(deadline) => {
                    missed += 1;
                    // Late arrivals must not count against the next step.
                    step.remaining[b].store(u32::MAX, Ordering::Relaxed);
                    break;
                }
                frame = r.next() => match frame? {
                    Some(Frame::Ping(p)) => {
                        let p = p.to_vec();
                        w.pong(&p).await?;
                    }
                    Some(Frame::Close(code)) => bail!("the server closed a sender with {code}"),
                    None => bail!("the server closed a sender's connection"),
                    Some(Frame::Text(t)) if memchr::memmem::find(t, br#""type":"error""#).is_some() => {
                        bail!("a broadcast was refused: {}", String::from_utf8_lossy(t))
                    }
                    Some(_) => {}
                },
            }
        }
    }
    Ok(((r, w), missed))
}
