//! `roomcast bench connections`: ramp up idle connections, each joined to
//! one of G groups; report the connect rate and the server's memory per
//! connection (RSS growth over the ramp divided by the connections).

use std::time::Duration;

use clap::Args;
use tokio::task::JoinSet;

use super::{Ctx, Report, at_least_one, keep_alive, open_many, parse_duration};

/// Options of the `connections` scenario.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    /// Connections to open.
    #[arg(short = 'c', long, default_value_t = 10_000)]
    pub connections: usize,
    /// Groups to spread them over (connection i joins group i mod G; 0
    /// joins none).
    #[arg(short = 'g', long, default_value_t = 1_000)]
    pub groups: usize,
    /// How long to hold the connections idle before measuring (longer than
    /// the server's ping interval to include the heartbeat's effect).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,
}

/// Run the scenario.
pub async fn run(ctx: &Ctx, args: &ConnectionsArgs) -> anyhow::Result<Report> {
    at_least_one("--connections", args.connections)?;
    ctx.check_fd_budget(args.connections)?;
    // Let the server settle (a spawned one has just started).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ctx.server_usage()?;
    let groups = args.groups;
    let opened = open_many(
        ctx,
        std::slice::from_ref(&ctx.target),
        args.connections,
        |i| {
            if groups == 0 {
                String::new()
            } else {
                format!("g{}", i % groups)
            }
        },
        true,
        "connecting",
    )
    .await;
    let mut report = Report::new("connections");
    report.push("connections", args.connections);
    report.push("groups", args.groups);
    report.push("opened", opened.conns.len());
    report.push("failed", opened.failures.values().sum::<usize>());
    if !opened.failures.is_empty() {
        report.push("failures", super::describe(&opened.failures));
    }
    report.push_f("connect_seconds", opened.elapsed.as_secs_f64(), 2);
    report.push_f("connects_per_sec", opened.rate(), 0);
    let open = opened.conns.len();
    let mut alive = JoinSet::new();
    for conn in opened.conns {
        alive.spawn(keep_alive(conn));
    }
    let spinner = ctx.spinner("holding");
    spinner.set_message(format!("{open} idle connections"));
    tokio::time::sleep(args.hold).await;
    // Connections the server closed during the hold have finished.
    let mut closed = 0;
    while alive.try_join_next().is_some() {
        closed += 1;
    }
    spinner.finish_and_clear();
    report.push("closed_during_hold", closed);
    report.push_f("hold_seconds", args.hold.as_secs_f64(), 1);
    let after = ctx.server_usage()?;
    if let (Some(b), Some(a)) = (before, after) {
        report.push_f("server_rss_before_mib", b.rss as f64 / 1048576.0, 1);
        report.push_f("server_rss_after_mib", a.rss as f64 / 1048576.0, 1);
        let held = open.saturating_sub(closed).max(1);
        report.push_f(
            "server_rss_per_conn_kib",
            (a.rss as f64 - b.rss as f64) / held as f64 / 1024.0,
            2,
        );
    }
    alive.abort_all();
    Ok(report)
}
