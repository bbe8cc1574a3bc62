//! `bench recover`: many clients lose their node at once and recover.
//!
//! Clients join a group with history on the last node (`--url` repeated,
//! or `--spawn --nodes 2` with a shared broker) while a publisher on the
//! first node publishes numbered messages. Then the last node is killed
//! (SIGKILL): every client reconnects to the first node and joins again
//! with `recover` from the last offset it got. Measured: how long until
//! each client has everything it missed (the recovered publications up to
//! the position its rejoin was answered with), how many recovered, whether
//! any publication arrived twice or not at all (by number, across the
//! reconnect), and the surviving node's CPU over the recovery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use memchr::memmem;
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::histogram::Histogram;
use super::process::Usage;
use super::wire::{self, Frame, Target};
use super::{Ctx, Report, at_least_one, parse_duration};

/// Options of `bench recover`.
#[derive(Debug, Clone, Args)]
pub struct RecoverArgs {
    /// Clients on the node that is killed.
    #[arg(short = 'c', long, default_value_t = 5_000)]
    pub clients: usize,
    /// The group; the servers must keep history for it
    /// (--server-arg=--history-size=N, or a [[groups]] rule).
    #[arg(short = 'g', long, default_value = "recover")]
    pub group: String,
    /// Publications per second, from one publisher on the first node.
    #[arg(short = 'r', long, default_value_t = 200)]
    pub rate: u64,
    /// How long traffic flows before the node is killed.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub before: Duration,
    /// How long the clients may take to catch up before the run fails.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// What the clients found, shared.
#[derive(Default)]
struct Tally {
    recovered: AtomicU64,
    not_recovered: AtomicU64,
    failed: AtomicU64,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    /// Publications replayed to the clients (missed while away).
    replayed: AtomicU64,
    /// From the kill to each client's catching up, in microseconds.
    caught_up: Histogram,
}

/// Run the scenario.
pub async fn run(ctx: &Ctx, args: &RecoverArgs) -> anyhow::Result<Report> {
    at_least_one("--clients", args.clients)?;
    if ctx.targets.len() < 2 || ctx.server_pids.len() < 2 {
        bail!(
            "recover needs two nodes of a cluster, with their pids: --spawn --nodes 2 \
             --server-arg=--broker=URL, or --url twice and --server-pid twice"
        );
    }
    ctx.check_fd_budget(args.clients + 1)?;
    let survivor = ctx.targets[0].clone();
    let doomed = ctx.targets[ctx.targets.len() - 1].clone();
    let doomed_pid = ctx.server_pids[ctx.server_pids.len() - 1];
    let (kill_tx, killed) = watch::channel(None::<Instant>);
    let tally = Arc::new(Tally::default());
    let gate = Arc::new(Semaphore::new(ctx.concurrency));
    // Clients: connected and joined before the publisher starts.
    let mut clients = JoinSet::new();
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(args.clients);
    for _ in 0..args.clients {
        let (doomed, survivor, group) = (doomed.clone(), survivor.clone(), args.group.clone());
        let (sources, gate, tally, killed, ready) = (
            ctx.sources.clone(),
            gate.clone(),
            tally.clone(),
            killed.clone(),
            ready_tx.clone(),
        );
        clients.spawn(async move {
            let r = client(&doomed, &survivor, &sources, &gate, &group, killed, ready).await;
            match r {
                Ok(c) => c.count(&tally),
                Err(_) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    drop(ready_tx);
    let mut joined = 0;
    while joined < args.clients {
        match ready.recv().await {
            Some(Ok(())) => joined += 1,
            Some(Err(e)) => return Err(e.context("a client could not connect and join")),
            None => bail!("clients ended before joining"),
        }
    }
    // The publisher.
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (target, sources, group, rate) = (
            survivor.clone(),
            ctx.sources.clone(),
            args.group.clone(),
            args.rate,
        );
        let published = published.clone();
        let (stop_tx, stop) = watch::channel(false);
        let task =
            tokio::spawn(async move { publish(&target, &sources, &group, rate, stop, &published).await });
        (task, stop_tx)
    };
    tokio::time::sleep(args.before).await;
    let before = Usage::of(Some(ctx.server_pids[0])).ok();
    let t0 = Instant::now();
    // SAFETY: kill(2) with a pid we were given; no memory is involved.
    if unsafe { libc::kill(doomed_pid as i32, libc::SIGKILL) } != 0 {
        bail!(
            "cannot kill the node with pid {doomed_pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    let _ = kill_tx.send(Some(t0));
    let all = tokio::time::timeout(args.timeout, async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    let window = t0.elapsed();
    let after = Usage::of(Some(ctx.server_pids[0])).ok();
    let _ = publisher.1.send(true);
    let sent = publisher.0.await.context("the publisher panicked")??;
    if all.is_err() {
        bail!(
            "not every client caught up within {:?} (raise --timeout, or fewer --clients)",
            args.timeout
        );
    }
    let mut report = Report::new("recover");
    report.push("clients", args.clients);
    report.push("recovered", tally.recovered.load(Ordering::Relaxed));
    report.push("not_recovered", tally.not_recovered.load(Ordering::Relaxed));
    report.push("failed", tally.failed.load(Ordering::Relaxed));
    report.push("duplicates", tally.duplicates.load(Ordering::Relaxed));
    report.push("gaps", tally.gaps.load(Ordering::Relaxed));
    report.push("publications", sent);
    report.push("replayed_publications", tally.replayed.load(Ordering::Relaxed));
    let s = tally.caught_up.summary();
    for (name, v) in [
        ("caught_up_p50_ms", s.p50),
        ("caught_up_p99_ms", s.p99),
        ("caught_up_max_ms", s.max),
    ] {
        report.push_f(name, v as f64 / 1000.0, 1);
    }
    report.push_f("all_caught_up_s", window.as_secs_f64(), 2);
    super::push_server_usage(&mut report, before, after, window);
    Ok(report)
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    recovered: Option<bool>,
    duplicates: u64,
    gaps: u64,
    replayed: u64,
    caught_up: Option<Duration>,
}

impl Seen {
    fn count(self, tally: &Tally) {
        match self.recovered {
            Some(true) => tally.recovered.fetch_add(1, Ordering::Relaxed),
            Some(false) => tally.not_recovered.fetch_add(1, Ordering::Relaxed),
            None => tally.failed.fetch_add(1, Ordering::Relaxed),
        };
        tally.duplicates.fetch_add(self.duplicates, Ordering::Relaxed);
        tally.gaps.fetch_add(self.gaps, Ordering::Relaxed);
        tally.replayed.fetch_add(self.replayed, Ordering::Relaxed);
        if let Some(d) = self.caught_up {
            tally.caught_up.record(d.as_micros() as u64);
        }
    }
}

/// Where a client stands: offset, epoch, number of the last publication.
struct Position {
    offset: u64,
    epoch: String,
    number: Option<u64>,
}

impl Position {
    /// Take a delivery: count a duplicate or a gap by its number.
    fn take(&mut self, text: &[u8], seen: &mut Seen) -> Option<u64> {
        let (offset, number) = delivery(text)?;
        match self.number {
            Some(n) if number <= n => seen.duplicates += 1,
            Some(n) if number > n + 1 => seen.gaps += number - n - 1,
            _ => {}
        }
        self.number = Some(self.number.map_or(number, |n| n.max(number)));
        self.offset = self.offset.max(offset);
        Some(offset)
    }
}

/// The offset and number of a delivery of the publisher's.
fn delivery(text: &[u8]) -> Option<(u64, u64)> {
    let number = |key: &[u8]| -> Option<u64> {
        let at = memmem::find(text, key)? + key.len();
        let end = text[at..].iter().position(|b| !b.is_ascii_digit())? + at;
        std::str::from_utf8(&text[at..end]).ok()?.parse().ok()
    };
    Some((number(br#""offset":"#)?, number(br#""data":"#)?))
}

/// One client: join on `doomed`, follow the group until the node dies,
/// then rejoin on `survivor` with `recover` and read until caught up.
async fn client(
    doomed: &Target,
    survivor: &Target,
    sources: &wire::Sources,
    gate: &Semaphore,
    group: &str,
    mut killed: watch::Receiver<Option<Instant>>,
    ready: tokio::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<Seen> {
    let mut seen = Seen::default();
    let (mut r, mut w) = {
        let _permit = gate.acquire().await?;
        let opened = async {
            let (mut r, mut w) = wire::connect(doomed, sources).await?;
            let welcome = wire::next_text(&mut r, &mut w).await?;
            if memmem::find(&welcome, br#""type":"welcome""#).is_none() {
                bail!("expected welcome");
            }
            w.text(
                format!(
                    r#"{{"type":"join","group":{},"id":0}}"#,
                    serde_json::to_string(group)?
                )
                .as_bytes(),
            );
            w.flush().await?;
            Ok((r, w))
        }
        .await;
        match opened {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(anyhow::anyhow!("{e}"))).await;
                return Err(e);
            }
        }
    };
    let ack: Value = serde_json::from_slice(&wire::next_text(&mut r, &mut w).await?)?;
    let (Some(offset), Some(epoch)) = (ack["offset"].as_u64(), ack["epoch"].as_str()) else {
        let e =
            anyhow::anyhow!("the join was not answered with a position (does {group} keep history?): {ack}");
        let _ = ready.send(Err(anyhow::anyhow!("{e}"))).await;
        return Err(e);
    };
    let mut at = Position {
        offset,
        epoch: epoch.to_owned(),
        number: None,
    };
    let _ = ready.send(Ok(())).await;
    drop(ready);
    // Follow until the node dies.
    loop {
        match r.next().await {
            Ok(Some(Frame::Text(t))) => {
                let t = t.to_vec();
                at.take(&t, &mut seen);
            }
            Ok(Some(Frame::Ping(p))) => {
                let p = p.to_vec();
                let _ = w.pong(&p).await;
            }
            Ok(Some(Frame::Binary(_) | Frame::Pong)) => {}
            Ok(Some(Frame::Close(_)) | None) | Err(_) => break,
        }
    }
    let t0 = killed.wait_for(Option::is_some).await?.expect("set");
    drop((r, w));
    let _permit = gate.acquire().await?;
    let (mut r, mut w) = wire::connect(survivor, sources).await?;
    drop(_permit);
    wire::next_text(&mut r, &mut w).await?;
    let join = serde_json::json!({
        "type": "join", "group": group, "id": 1,
        "recover": {"offset": at.offset, "epoch": at.epoch},
    });
    w.text(join.to_string().as_bytes());
    w.flush().await?;
    let ack: Value = serde_json::from_slice(&wire::next_text(&mut r, &mut w).await?)?;
    let recovered = ack["recovered"]
        .as_bool()
        .context("no `recovered` in the rejoin's answer")?;
    seen.recovered = Some(recovered);
    let target = ack["offset"]
        .as_u64()
        .context("no offset in the rejoin's answer")?;
    if !recovered {
        // Nothing to replay: the client would reload its state.
        at.number = None;
        seen.caught_up = Some(t0.elapsed());
        return Ok(seen);
    }
    while at.offset < target {
        let t = wire::next_text(&mut r, &mut w).await?;
        if at.take(&t, &mut seen).is_some() {
            seen.replayed += 1;
        }
    }
    seen.caught_up = Some(t0.elapsed());
    let _ = w.close(1000).await;
    Ok(seen)
}

/// Publish numbered messages at `rate` until `stop`; returns how many.
async fn publish(
    target: &Target,
    sources: &wire::Sources,
    group: &str,
    rate: u64,
    mut stop: watch::Receiver<bool>,
    published: &AtomicU64,
) -> anyhow::Result<u64> {
    let (mut r, mut w) = wire::connect(target, sources).await?;
    wire::next_text(&mut r, &mut w).await?;
    let group = serde_json::to_string(group)?;
    let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Read (and drop) whatever the server says, answering pings.
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = r.next().await {} });
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                w.text(format!(r#"{{"type":"publish","group":{group},"data":{n}}}"#).as_bytes());
                w.flush().await?;
                n += 1;
                published.store(n, Ordering::Relaxed);
            }
        }
    }
    reader.abort();
    Ok(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_offsets_and_numbers() {
        assert_eq!(
            super::delivery(br#"{"type":"message","group":"g","offset":17,"data":41}"#),
            Some((17, 41))
        );
        assert_eq!(
            super::delivery(br#"{"type":"message","group":"g","data":41}"#),
            None
        );
    }
}
