//! `roomcast bench`: the load generator behind `docs/BENCHMARKS.md`.
//!
//! It speaks the roomcast protocol over many real sockets and measures the
//! server from outside: deliveries per second, loss counted exactly,
//! ordering, latency percentiles from timestamps carried in every payload,
//! and the server's CPU time and memory read from `/proc` (`--server-pid`,
//! or `--spawn` to start a fresh server for each run).
//!
//! - [`wire`]: the lean client (in-place frame parsing, batched writes,
//!   several loopback source addresses).
//! - [`histogram`]: one lock-free latency histogram shared by all tasks.
//! - [`process`]: `/proc` sampling and the spawned server.
//! - [`connections`], [`fanout`], [`echo`], [`shootout`]: the scenarios.
//! - [`subscribers`]: fan-out subscribers on plain epoll threads.
//! - [`floor`]: the fan-out pattern over loopback TCP with no server, the
//!   machine's floor for those numbers.
//! - [`sweep`] and [`chart`]: one scenario over a list of values, written
//!   as CSV and an SVG chart.
//!
//! Each scenario returns a [`Report`]: printed as a table, or as JSON with
//! `--json`. Progress goes to stderr and only when it is a terminal.

pub mod chart;
pub mod connections;
mod delivery;
pub mod echo;
pub mod fanout;
pub mod floor;
pub mod histogram;
pub mod process;
pub mod recover;
pub mod shootout;
pub mod subscribers;
pub mod sweep;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use self::process::{SpawnedServer, Usage};
use self::wire::{Reader, Sources, Target, Writer};

/// Options of `roomcast bench`.
#[derive(Debug, Args)]
#[command(
    after_help = "Run the server and the load tool on the same machine; see docs/BENCHMARKS.md.\n\
Against a server you started yourself, pass --server-pid for its CPU and memory and\n\
start it with --message-rate 0 --connect-rate-per-ip 0 --max-connections-per-ip 0,\n\
or the run measures those limits. --spawn does all of that."
)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Options shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The server's WebSocket endpoint, ws:// or wss:// (TLS dominates
    /// what is measured: compare TLS runs with TLS runs). With --spawn
    /// and wss://, pass the server its certificate with --server-arg.
    /// Repeat it for the nodes of a cluster: fanout puts subscriber i on
    /// URL i mod N; publishers, and the other scenarios, use the first.
    #[arg(long, global = true, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: Vec<String>,
    /// With --spawn: how many servers to start, each with the --server-arg
    /// values and a --node-name of its own (bench-0, bench-1, ...); with a
    /// shared --server-arg=--broker=URL they form a cluster, and fanout
    /// spreads its subscribers over them.
    #[arg(
        long,
        global = true,
        default_value_t = 1,
        value_name = "N",
        requires = "spawn"
    )]
    pub nodes: usize,
    /// Process id of the cluster's broker (redis-server, nats-server), for
    /// its CPU time over the run.
    #[arg(long, global = true, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// With wss://, also trust the CA certificates in this PEM file (a
    /// private or self-signed CA); the system's store is always trusted.
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Process id of the server, for its CPU time and memory (repeat for
    /// the nodes of a cluster: their CPU and memory are added up).
    #[arg(long, global = true, value_name = "PID", conflicts_with = "spawn")]
    pub server_pid: Vec<u32>,
    /// Start a fresh `roomcast serve` for the run (for each point of a
    /// sweep) on a free loopback port; --url's path is kept.
    #[arg(long, global = true)]
    pub spawn: bool,
    /// An argument for the spawned server, e.g. --server-arg=--slow-consumer=drop
    /// (repeat for more).
    #[arg(
        long = "server-arg",
        global = true,
        value_name = "ARG",
        allow_hyphen_values = true,
        requires = "spawn"
    )]
    pub server_args: Vec<String>,
    /// Loopback source addresses to connect from (127.0.0.2, ...), so large
    /// runs do not run out of ephemeral ports; 0 lets the system choose.
    #[arg(long, global = true, default_value_t = 8, value_name = "N")]
    pub sources: usize,
    /// Connection attempts in flight at once.
    #[arg(long, global = true, default_value_t = 128, value_name = "N")]
    pub connect_concurrency: usize,
    /// Threads of the load tool's runtime (0: one per core). The load tool
    /// shares the machine's cores with the server under test.
    #[arg(long, global = true, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Print the report as one JSON object instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Offer permessage-deflate on every connection (the run fails if the
    /// server declines); compressed deliveries are inflated before they
    /// are checked, by one inflater per reader thread.
    #[arg(long, global = true)]
    pub deflate: bool,
}

/// What to measure.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Ramp up idle connections spread over groups; connect rate and server
    /// memory per connection.
    Connections(connections::ConnectionsArgs),
    /// Subscribers in groups, publishers at a fixed rate: throughput, loss,
    /// ordering, latency, server CPU and memory.
    Fanout(fanout::FanoutArgs),
    /// Round trips on the /echo endpoint: latency and throughput.
    Echo(echo::EchoArgs),
    /// The classic broadcast shootout: add clients in steps and time each
    /// broadcast until every client has it.
    Shootout(shootout::ShootoutArgs),
    /// Run one scenario over a list of values; write CSV and an SVG chart.
    Sweep(sweep::SweepArgs),
    /// The fan-out pattern over loopback TCP with no server: an ideal
    /// writer and reader in this process, the floor this machine allows.
    Floor(floor::FloorArgs),
    /// Clients of a group with history lose their node (SIGKILL) and
    /// recover on another: time until all have caught up, server CPU.
    Recover(recover::RecoverArgs),
}

/// Run `roomcast bench`; prints the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let fd_limit = crate::limits::raise_open_file_limit();
    let common = args.common;
    let report = match &args.scenario {
        Scenario::Sweep(sweep) => sweep::run(&common, sweep, fd_limit).await?,
        Scenario::Floor(floor) => {
            if common.spawn || !common.server_pid.is_empty() {
                bail!("the floor scenario runs no server: drop --spawn and --server-pid");
            }
            let (floor, sources) = (floor.clone(), common.sources);
            tokio::task::spawn_blocking(move || floor::run(&floor, sources, fd_limit)).await??
        }
        scenario => {
            let server = Server::start(&common)?;
            let ctx = Ctx::new(&common, &server, fd_limit)?;
            run_one(&ctx, scenario).await?
        }
    };
    if common.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Run one (non-sweep) scenario.
async fn run_one(ctx: &Ctx, scenario: &Scenario) -> anyhow::Result<Report> {
    let mut report = match scenario {
        Scenario::Connections(a) => connections::run(ctx, a).await?,
        Scenario::Fanout(a) => fanout::run(ctx, a).await?,
        Scenario::Echo(a) => echo::run(ctx, a).await?,
        Scenario::Shootout(a) => shootout::run(ctx, a).await?,
        Scenario::Recover(a) => recover::run(ctx, a).await?,
        Scenario::Sweep(_) => bail!("a sweep cannot contain a sweep"),
        Scenario::Floor(_) => bail!("the floor scenario runs on its own, without a server"),
    };
    report.push("client_fd_limit", ctx.fd_limit);
    report.push("source_addresses", ctx.sources.len());
    Ok(report)
}

/// The servers under test: ones we started, or ones we were pointed at
/// (several: the nodes of a cluster).
pub struct Server {
    spawned: Vec<SpawnedServer>,
    targets: Vec<Target>,
    pids: Vec<u32>,
}

impl Server {
    /// Start servers if `--spawn` asks for them.
    pub fn start(common: &Common) -> anyhow::Result<Self> {
        let mut targets = Vec::with_capacity(common.url.len());
        for url in &common.url {
            let mut target = Target::parse(url)?;
            target.deflate = common.deflate;
            if target.secure {
                target.tls = Some(crate::tls::client_config(common.ca_cert.as_deref())?);
            } else if common.ca_cert.is_some() {
                anyhow::bail!("--ca-cert is for wss:// URLs");
            }
            targets.push(target);
        }
        if targets.is_empty() {
            bail!("--url: at least one");
        }
        if !common.spawn {
            return Ok(Self {
                spawned: Vec::new(),
                targets,
                pids: common.server_pid.clone(),
            });
        }
        if targets.len() > 1 {
            bail!("with --spawn, give one --url (its path is kept) and the number of servers with --nodes");
        }
        at_least_one("--nodes", common.nodes)?;
        let mut server = Self {
            spawned: Vec::new(),
            targets: Vec::new(),
            pids: Vec::new(),
        };
        for i in 0..common.nodes {
            let mut args = common.server_args.clone();
            if common.nodes > 1 {
                args.push(format!("--node-name=bench-{i}"));
            }
            let spawned = SpawnedServer::start(&args)?;
            let mut target = targets[0].clone();
            target.addr = spawned.addr;
            target.host = spawned.addr.to_string();
            server.pids.push(spawned.pid());
            server.spawned.push(spawned);
            server.targets.push(target);
        }
        Ok(server)
    }

    /// Whether this run started the servers itself.
    pub fn is_spawned(&self) -> bool {
        !self.spawned.is_empty()
    }
}

/// What a scenario needs to run.
pub struct Ctx {
    /// The `/ws` endpoint (or whatever --url names): the first server's.
    pub target: Target,
    /// Every server's (the nodes of a cluster; just `target` otherwise).
    pub targets: Vec<Target>,
    /// Source addresses to connect from.
    pub sources: Arc<Sources>,
    /// The servers' process ids, when known.
    pub server_pids: Vec<u32>,
    /// The broker's process id, when known.
    pub broker_pid: Option<u32>,
    /// Connection attempts in flight at once.
    pub concurrency: usize,
    /// Draw progress bars.
    pub progress: bool,
    /// This process's open-file limit.
    pub fd_limit: u64,
}

impl Ctx {
    /// The context of one run against `server`.
    pub fn new(common: &Common, server: &Server, fd_limit: u64) -> anyhow::Result<Self> {
        if common.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        Ok(Self {
            sources: Arc::new(Sources::new(common.sources, &server.targets[0])),
            target: server.targets[0].clone(),
            targets: server.targets.clone(),
            server_pids: server.pids.clone(),
            broker_pid: common.broker_pid,
            concurrency: common.connect_concurrency,
            progress: !common.json,
            fd_limit,
        })
    }

    /// The servers' usage now, added up (`None` when no pid is known).
    pub fn server_usage(&self) -> anyhow::Result<Option<Usage>> {
        if self.server_pids.is_empty() {
            return Ok(None);
        }
        let mut total = Usage::default();
        for &pid in &self.server_pids {
            let u = Usage::of(Some(pid))?;
            total.cpu += u.cpu;
            total.rss += u.rss;
        }
        Ok(Some(total))
    }

    /// The broker's usage now, when its pid is known.
    pub fn broker_usage(&self) -> anyhow::Result<Option<Usage>> {
        self.broker_pid.map(|pid| Usage::of(Some(pid))).transpose()
    }

    /// Fail early when `connections` sockets cannot fit under this
    /// process's open-file limit, and say so.
    pub fn check_fd_budget(&self, connections: usize) -> anyhow::Result<()> {
        // Leave room for stdio, the runtime's own descriptors and the
        // spawned server's pipes.
        let budget = self.fd_limit.saturating_sub(64) as usize;
        if connections > budget {
            bail!(
                "{connections} connections do not fit under this process's open-file limit of {} \
                 (hard limit reached; at most {budget} here). Raise it with `ulimit -Hn` as root, \
                 or run several load processes; see docs/BENCHMARKS.md",
                self.fd_limit
            );
        }
        Ok(())
    }

    /// A progress bar of `len` steps (hidden unless stderr is a terminal).
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        let bar = if self.progress {
            ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:32}] {pos}/{len} {per_sec} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(what.to_string());
        bar
    }

    /// A spinner for a timed phase.
    pub fn spinner(&self, what: &str) -> ProgressBar {
        let bar = if self.progress {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} {spinner} {elapsed} {msg}").expect("valid template"),
        );
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}

/// One open connection.
pub type Conn = (Reader<wire::ReadHalf>, Writer<wire::WriteHalf>);

/// The result of opening many connections.
pub struct Opened {
    /// The connections that were opened, in order.
    pub conns: Vec<Conn>,
    /// Failures by kind.
    pub failures: BTreeMap<String, usize>,
    /// Time taken.
    pub elapsed: Duration,
}

impl Opened {
    /// Connections opened per second.
    pub fn rate(&self) -> f64 {
        self.conns.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Fail with the failures counted by kind, if there were any.
    pub fn require_all(&self) -> anyhow::Result<()> {
        if self.failures.is_empty() {
            return Ok(());
        }
        bail!(
            "{} connections failed: {}",
            self.failures.values().sum::<usize>(),
            describe(&self.failures)
        )
    }
}

/// `HTTP 429 ×12, ConnectionRefused ×3`.
pub fn describe(failures: &BTreeMap<String, usize>) -> String {
    failures
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Open `n` connections, connection `i` to `targets[i % targets.len()]`,
/// at most `ctx.concurrency` at once; connection `i` reads its welcome and
/// joins `group(i)` (none when empty). Failures are counted, not fatal.
pub async fn open_many(
    ctx: &Ctx,
    targets: &[Target],
    n: usize,
    group: impl Fn(usize) -> String,
    welcome: bool,
    what: &str,
) -> Opened {
    let bar = ctx.bar(n as u64, what);
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(ctx.concurrency));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let gate = gate.clone();
        let target = targets[i % targets.len()].clone();
        let sources = ctx.sources.clone();
        let group = group(i);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("never closed");
            let result = async {
                let (mut r, mut w) = wire::connect(&target, &sources).await.map_err(|e| e.kind())?;
                if welcome {
                    wire::welcome_and_join(&mut r, &mut w, &group)
                        .await
                        .map_err(|e| format!("setup: {e}"))?;
                }
                Ok::<_, String>((r, w))
            }
            .await;
            (i, result)
        });
    }
    let mut slots: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    let mut failures = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.expect("connect task does not panic");
        match result {
            Ok(c) => slots[i] = Some(c),
            Err(kind) => *failures.entry(kind).or_insert(0) += 1,
        }
        bar.inc(1);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Opened {
        conns: slots.into_iter().flatten().collect(),
        failures,
        elapsed,
    }
}

/// Keep a connection alive (answer Pings) until the server closes it;
/// returns the close code (1006 when TCP ended without one).
pub async fn keep_alive((mut r, mut w): Conn) -> u16 {
    loop {
        match r.next().await {
            Ok(Some(wire::Frame::Ping(p))) => {
                let p = p.to_vec();
                if w.pong(&p).await.is_err() {
                    return 1006;
                }
            }
            Ok(Some(wire::Frame::Close(code))) => return code,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return 1006,
        }
    }
}

/// Microseconds on the system's monotonic clock (`CLOCK_MONOTONIC`): the
/// clock of every timestamp carried in a payload. It is the same clock in
/// every process of the machine, so a subscriber in one load process can
/// time what a publisher in another sent (runs beyond one process's
/// open-file limit).
pub fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// A scenario's results: named values in a fixed order. Names carry their
/// unit (`_ms`, `_per_sec`, `_mib`, ...).
#[derive(Debug, Clone)]
pub struct Report {
    /// Which scenario produced it.
    pub scenario: String,
    /// The values, in the order they were pushed.
    pub fields: Vec<(String, Value)>,
    /// Text printed after the table (not part of the JSON).
    pub text: Option<String>,
}

impl Report {
    /// An empty report.
    pub fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_string(),
            fields: Vec::new(),
            text: None,
        }
    }

    /// Add (or replace) a value.
    pub fn push(&mut self, name: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.fields.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((name.to_string(), value)),
        }
    }

    /// Add a float rounded to `digits` decimals (NaN and infinities
    /// become null).
    pub fn push_f(&mut self, name: &str, value: f64, digits: i32) {
        let scale = 10f64.powi(digits);
        self.push(name, (value * scale).round() / scale);
    }

    /// A numeric value by name.
    pub fn num(&self, name: &str) -> Option<f64> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_f64())
    }

    /// The report as a JSON object.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("scenario".into(), Value::String(self.scenario.clone()));
        for (k, v) in &self.fields {
            map.insert(k.clone(), v.clone());
        }
        Value::Object(map)
    }

    /// The report as an aligned two-column table.
    pub fn table(&self) -> String {
        let width = self.fields.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let mut out = format!("roomcast bench {}\n", self.scenario);
        for (name, value) in &self.fields {
            let shown = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!("  {name:<width$}  {shown}\n"));
        }
        if let Some(text) = &self.text {
            out.push_str(text);
        }
        out
    }
}

/// Latency percentiles (recorded in microseconds) as `latency_*_ms`.
pub fn push_latency(report: &mut Report, latency: &histogram::Histogram) {
    let lat = latency.summary();
    for (name, v) in [
        ("latency_p50_ms", lat.p50),
        ("latency_p90_ms", lat.p90),
        ("latency_p99_ms", lat.p99),
        ("latency_p999_ms", lat.p999),
        ("latency_max_ms", lat.max),
    ] {
        report.push_f(name, v as f64 / 1000.0, 3);
    }
}

/// Server CPU and memory over a measured window, added to `report`.
pub fn push_server_usage(report: &mut Report, before: Option<Usage>, after: Option<Usage>, window: Duration) {
    if let (Some(b), Some(a)) = (before, after) {
        let cpu = a.cpu - b.cpu;
        report.push_f("server_cpu_seconds", cpu, 2);
        report.push_f(
            "server_cpu_percent",
            100.0 * cpu / window.as_secs_f64().max(1e-9),
            1,
        );
        report.push_f("server_rss_mib", a.rss as f64 / (1024.0 * 1024.0), 1);
    } else {
        report.push("server_cpu_seconds", Value::Null);
        report.push("server_rss_mib", Value::Null);
    }
}

/// Check a count option is at least one.
pub fn at_least_one(name: &str, v: usize) -> anyhow::Result<()> {
    if v == 0 {
        bail!("{name} must be at least 1");
    }
    Ok(())
}

/// Parse a duration like `10s` or `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// The usage of this (load tool) process, for reports.
pub fn own_usage() -> anyhow::Result<Usage> {
    Usage::of(None).context("reading this process's usage")
}

/// The Prometheus counters of every server now, summed over servers and
/// labels, by name; `None` when one cannot be read.
pub async fn all_counters(targets: &[Target]) -> Option<std::collections::HashMap<String, f64>> {
    let mut total = std::collections::HashMap::new();
    for t in targets {
        for (k, v) in server_counters(t).await? {
            *total.entry(k).or_insert(0.0) += v;
        }
    }
    Some(total)
}

/// The server's Prometheus counters now (`GET /metrics` on the target's
/// address), summed over their labels, by name; `None` when they cannot be
/// read (another server, or no `/metrics`).
pub async fn server_counters(target: &Target) -> Option<std::collections::HashMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read = async {
        let mut s = tokio::net::TcpStream::connect(target.addr).await.ok()?;
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            target.host
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.ok()?;
        String::from_utf8(body).ok()
    };
    let text = tokio::time::timeout(Duration::from_secs(5), read).await.ok()??;
    if !text.starts_with("HTTP/1.1 200") {
        return None;
    }
    let mut counters = std::collections::HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("roomcast_")) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name);
        if let Ok(v) = value.parse::<f64>() {
            *counters.entry(name.to_owned()).or_insert(0.0) += v;
        }
    }
    Some(counters)
}
