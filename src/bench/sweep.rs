//! `roomcast bench sweep`: one scenario over a list of values of one
//! parameter, e.g. the fan-out scenario with one group of 100, 1,000 and
//! 10,000 members. Writes `<out>/<name>.csv` (every numeric result, a row
//! per value) and `<out>/<name>.svg` (how throughput, latency, CPU and
//! memory grow). With `--spawn` each value gets a fresh server, so memory
//! figures do not carry over from the previous point.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use super::chart::{self, Panel, Series};
use super::connections::ConnectionsArgs;
use super::echo::EchoArgs;
use super::fanout::FanoutArgs;
use super::{Common, Ctx, Report, Scenario, Server};

/// Options of `sweep`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example: roomcast bench --spawn sweep --param group-size --values 100,1000,10000 fanout -r 20 -d 10s"
)]
pub struct SweepArgs {
    /// The parameter to vary.
    #[arg(long, value_enum)]
    pub param: Param,
    /// Its values, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub values: Vec<u64>,
    /// Directory for the CSV and SVG files (created if missing).
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// File name (without extension); default `<scenario>-<param>`.
    #[arg(long)]
    pub name: Option<String>,
    /// The scenario and its fixed options.
    #[command(subcommand)]
    pub scenario: Swept,
}

/// Scenarios that can be swept.
#[derive(Debug, Clone, Subcommand)]
pub enum Swept {
    /// See `roomcast bench connections`.
    Connections(ConnectionsArgs),
    /// See `roomcast bench fanout`.
    Fanout(FanoutArgs),
    /// See `roomcast bench echo`.
    Echo(EchoArgs),
}

/// What a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Param {
    /// Connections (subscribers for fanout).
    Connections,
    /// Members of one group: fanout with --groups 1 and this many subscribers.
    GroupSize,
    /// Groups.
    Groups,
    /// Publications per second (fanout).
    Rate,
    /// Payload size in bytes (fanout, echo).
    Size,
    /// Publishers (fanout).
    Publishers,
}

impl Param {
    fn name(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::GroupSize => "group_size",
            Self::Groups => "groups",
            Self::Rate => "rate",
            Self::Size => "size",
            Self::Publishers => "publishers",
        }
    }
}

impl Swept {
    fn name(&self) -> &'static str {
        match self {
            Self::Connections(_) => "connections",
            Self::Fanout(_) => "fanout",
            Self::Echo(_) => "echo",
        }
    }

    /// The scenario with the parameter set to `v`.
    fn with(&self, param: Param, v: u64) -> anyhow::Result<Scenario> {
        let n = v as usize;
        Ok(match (self.clone(), param) {
            (Self::Connections(mut a), Param::Connections) => {
                a.connections = n;
                Scenario::Connections(a)
            }
            (Self::Connections(mut a), Param::Groups) => {
                a.groups = n;
                Scenario::Connections(a)
            }
            (Self::Fanout(mut a), Param::Connections) => {
                a.connections = n;
                Scenario::Fanout(a)
            }
            (Self::Fanout(mut a), Param::GroupSize) => {
                a.connections = n;
                a.groups = 1;
                Scenario::Fanout(a)
            }
            (Self::Fanout(mut a), Param::Groups) => {
                a.groups = n;
                Scenario::Fanout(a)
            }
            (Self::Fanout(mut a), Param::Rate) => {
                a.rate = v;
                Scenario::Fanout(a)
            }
            (Self::Fanout(mut a), Param::Size) => {
                a.size = n;
                Scenario::Fanout(a)
            }
            (Self::Fanout(mut a), Param::Publishers) => {
                a.publishers = n;
                Scenario::Fanout(a)
            }
            (Self::Echo(mut a), Param::Connections) => {
                a.connections = n;
                Scenario::Echo(a)
            }
            (Self::Echo(mut a), Param::Size) => {
                a.size = n;
                Scenario::Echo(a)
            }
            (s, p) => bail!(
                "--param {} does not apply to the {} scenario",
                p.name().replace('_', "-"),
                s.name()
            ),
        })
    }

    /// The chart's panels: which results to draw, on what axis.
    fn panels(&self) -> Vec<(&'static str, &'static str, &'static [&'static str], bool)> {
        match self {
            Self::Connections(_) => vec![
                (
                    "Server memory per connection",
                    "KiB",
                    &["server_rss_per_conn_kib"],
                    false,
                ),
                ("Server RSS", "MiB", &["server_rss_after_mib"], false),
                ("Connect rate", "connections/s", &["connects_per_sec"], false),
            ],
            Self::Fanout(_) => vec![
                (
                    "Deliveries per second",
                    "deliveries/s",
                    &["deliveries_per_sec"],
                    false,
                ),
                (
                    "Latency",
                    "ms",
                    &["latency_p50_ms", "latency_p99_ms", "latency_max_ms"],
                    true,
                ),
                (
                    "Server CPU per delivery",
                    "µs",
                    &["server_cpu_us_per_delivery"],
                    false,
                ),
                ("Server CPU", "% of one core", &["server_cpu_percent"], false),
                ("Server RSS", "MiB", &["server_rss_mib"], false),
                (
                    "Lost and out of order",
                    "messages",
                    &["lost", "out_of_order"],
                    false,
                ),
            ],
            Self::Echo(_) => vec![
                (
                    "Round trips per second",
                    "round trips/s",
                    &["round_trips_per_sec"],
                    false,
                ),
                ("Latency", "ms", &["latency_p50_ms", "latency_p99_ms"], true),
                ("Server CPU", "% of one core", &["server_cpu_percent"], false),
            ],
        }
    }
}

/// Run the sweep; writes the files even when a point fails (then fails).
pub async fn run(common: &Common, args: &SweepArgs, fd_limit: u64) -> anyhow::Result<Report> {
    if !common.server_pid.is_empty() && !common.spawn {
        eprintln!(
            "note: without --spawn all points share one server; its memory carries over between points"
        );
    }
    // Check every value applies before running anything.
    for &v in &args.values {
        args.scenario.with(args.param, v)?;
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", args.scenario.name(), args.param.name().replace('_', "-")));
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut points: Vec<(u64, Report)> = Vec::new();
    let mut failure = None;
    for &v in &args.values {
        if !common.json {
            eprintln!("sweep: {} = {v}", args.param.name());
        }
        let result = async {
            let server = Server::start(common)?;
            let ctx = Ctx::new(common, &server, fd_limit)?;
            let report = super::run_one(&ctx, &args.scenario.with(args.param, v)?).await;
            if !server.is_spawned() {
                // Give a shared server a moment to close the last point's
                // connections.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            report
        }
        .await;
        match result {
            Ok(r) => points.push((v, r)),
            Err(e) => {
                failure = Some(e.context(format!("at {} = {v}", args.param.name())));
                break;
            }
        }
    }
    let csv_path = args.out.join(format!("{name}.csv"));
    let svg_path = args.out.join(format!("{name}.svg"));
    let mut columns = numeric_columns(&points);
    columns.retain(|c| c != args.param.name());
    std::fs::write(&csv_path, csv(args.param, &columns, &points))
        .with_context(|| format!("writing {}", csv_path.display()))?;
    let panels: Vec<Panel> = args
        .scenario
        .panels()
        .into_iter()
        .map(|(title, unit, keys, log_y)| Panel {
            title: title.to_string(),
            y_label: unit.to_string(),
            series: keys
                .iter()
                .map(|k| Series {
                    name: k.to_string(),
                    points: points
                        .iter()
                        .filter_map(|(x, r)| Some((*x as f64, r.num(k)?)))
                        .collect(),
                })
                .collect(),
            log_y,
        })
        .collect();
    let title = format!(
        "roomcast bench {} — {} sweep",
        args.scenario.name(),
        args.param.name().replace('_', " ")
    );
    chart::write_svg(&svg_path, &title, args.param.name(), &panels)?;
    if let Some(e) = failure {
        return Err(e.context(format!(
            "partial results written to {} and {}",
            csv_path.display(),
            svg_path.display()
        )));
    }
    let mut report = Report::new("sweep");
    report.push("scenario", args.scenario.name());
    report.push("param", args.param.name());
    report.push("csv", csv_path.display().to_string());
    report.push("svg", svg_path.display().to_string());
    if common.json {
        report.push(
            "points",
            Value::Array(points.iter().map(|(_, r)| r.to_json()).collect()),
        );
    } else {
        report.text = Some(aligned(&csv(args.param, &columns, &points)));
    }
    Ok(report)
}

/// Names of the numeric results, in the first report's order.
fn numeric_columns(points: &[(u64, Report)]) -> Vec<String> {
    let mut columns: Vec<String> = Vec::new();
    for (_, r) in points {
        for (k, v) in &r.fields {
            if (v.is_number() || v.is_null()) && !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    columns
}

fn csv(param: Param, columns: &[String], points: &[(u64, Report)]) -> String {
    let mut out = String::new();
    out.push_str(param.name());
    for c in columns {
        out.push(',');
        out.push_str(c);
    }
    out.push('\n');
    for (x, r) in points {
        let _ = write!(out, "{x}");
        for c in columns {
            out.push(',');
            if let Some(v) = r.num(c) {
                let _ = write!(out, "{v}");
            }
        }
        out.push('\n');
    }
    out
}

/// The CSV as a table for a terminal, a column per line of results.
fn aligned(csv: &str) -> String {
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    let Some(header) = rows.first() else {
        return String::new();
    };
    let width = header.iter().map(|h| h.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (i, name) in header.iter().enumerate() {
        let _ = write!(out, "  {name:<width$}");
        for row in &rows[1..] {
            let _ = write!(out, "  {:>12}", row.get(i).copied().unwrap_or(""));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_row_per_point_and_blank_missing_values() {
        let mut a = Report::new("fanout");
        a.push("deliveries_per_sec", 10.5);
        a.push("note", "text is left out");
        let mut b = Report::new("fanout");
        b.push("deliveries_per_sec", 20);
        b.push("lost", 1);
        let points = vec![(100, a), (200, b)];
        let columns = numeric_columns(&points);
        assert_eq!(columns, ["deliveries_per_sec", "lost"]);
        assert_eq!(
            csv(Param::GroupSize, &columns, &points),
            "group_size,deliveries_per_sec,lost\n100,10.5,\n200,20,1\n"
        );
    }

    #[test]
    fn params_must_fit_the_scenario() {
        let echo = Swept::Echo(EchoArgs {
            connections: 1,
            size: 64,
            duration: Duration::from_secs(1),
            path: "/echo".into(),
        });
        assert!(echo.with(Param::Rate, 5).is_err());
        assert!(matches!(echo.with(Param::Connections, 5).unwrap(), Scenario::Echo(a) if a.connections == 5));
    }
}
