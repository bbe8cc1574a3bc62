//! `roomcast bench` end to end: the real binary spawns a real server
//! (`--spawn`) and drives each scenario through real sockets, small enough
//! to run in the suite. These check that the tool counts correctly (every
//! message accounted for, reports complete, files written), not how fast
//! anything is: speed is measured by hand, see docs/BENCHMARKS.md.

mod common;

use std::process::Command;

use common::brokers::{BrokerProcess, Kind};
use serde_json::Value;

/// Run `roomcast bench --spawn --json <args>` and parse its report.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["bench", "--spawn", "--json", "--sources", "2"])
        .args(args)
        .output()
        .expect("run roomcast bench");
    assert!(
        out.status.success(),
        "roomcast bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn num(report: &Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {report}"))
}

#[test]
fn fanout_accounts_for_every_message() {
    let r = bench(&[
        "fanout", "-c", "60", "-g", "3", "-p", "2", "-r", "200", "-d", "1s",
    ]);
    assert_eq!(r["scenario"], "fanout");
    let acked = num(&r, "acked");
    assert!(acked >= 150.0, "{r}");
    // 60 subscribers in 3 groups: 20 members per group.
    assert_eq!(num(&r, "expected"), acked * 20.0, "{r}");
    assert_eq!(num(&r, "received"), num(&r, "expected"), "{r}");
    assert_eq!(num(&r, "lost"), 0.0);
    assert_eq!(num(&r, "out_of_order"), 0.0);
    assert_eq!(num(&r, "duplicates"), 0.0);
    assert_eq!(num(&r, "unexpected_frames"), 0.0);
    assert!(num(&r, "latency_p50_ms") <= num(&r, "latency_p99_ms"));
    assert!(num(&r, "latency_p99_ms") <= num(&r, "latency_max_ms"));
    assert!(num(&r, "server_rss_mib") > 1.0);
    assert!(num(&r, "server_cpu_seconds") > 0.0);
    assert_eq!(num(&r, "source_addresses"), 2.0);
}

#[test]
fn fanout_with_deflate_inflates_every_delivery_and_compresses_once_per_publication() {
    for reader in ["1", "0"] {
        let r = bench(&[
            "--deflate",
            "fanout",
            "-c",
            "40",
            "-r",
            "100",
            "-d",
            "1s",
            "-s",
            "1024",
            "--fill",
            "words",
            "--subscriber-threads",
            reader,
        ]);
        let acked = num(&r, "acked");
        assert!(acked >= 50.0, "{r}");
        assert_eq!(num(&r, "received"), acked * 40.0, "{r}");
        assert_eq!(
            num(&r, "lost") + num(&r, "out_of_order") + num(&r, "unexpected_frames"),
            0.0
        );
        // Forty deflate members, one compression per publication (plus none
        // for the small replies).
        assert_eq!(num(&r, "server_compressions"), acked, "{r}");
        let ratio = num(&r, "compression_ratio");
        assert!(ratio > 0.2 && ratio < 0.7, "{r}");
        assert!(num(&r, "server_bytes_sent_per_delivery") < 1024.0 * 0.7, "{r}");
    }
    // Without --deflate nothing is compressed.
    let r = bench(&[
        "fanout", "-c", "10", "-r", "50", "-d", "1s", "-s", "1024", "--fill", "words",
    ]);
    assert_eq!(num(&r, "server_compressions"), 0.0, "{r}");
    assert!(num(&r, "server_bytes_sent_per_delivery") > 1024.0, "{r}");
}

#[test]
fn fanout_reports_refused_publications() {
    // The spawned server allows 50 messages/s per connection after a burst
    // of 200: a publisher at 400/s for a second gets about 150
    // rate_limited errors (fewer than the burst, so it is not closed). The
    // tool must report them as refused, not count them as lost.
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args([
            "bench",
            "--spawn",
            "--json",
            "--server-arg=--message-rate=50",
            "--server-arg=--message-burst=200",
        ])
        .args(["fanout", "-c", "5", "-r", "400", "-d", "1s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(num(&r, "refused") > 0.0, "{r}");
    assert!(
        r["refused_codes"].as_str().unwrap().contains("rate_limited"),
        "{r}"
    );
    assert_eq!(num(&r, "received"), num(&r, "acked") * 5.0, "{r}");
    assert_eq!(num(&r, "lost"), 0.0);
}

#[test]
fn connections_reports_memory_per_connection() {
    let r = bench(&["connections", "-c", "300", "-g", "10", "--hold", "200ms"]);
    assert_eq!(num(&r, "opened"), 300.0, "{r}");
    assert_eq!(num(&r, "failed"), 0.0);
    assert_eq!(num(&r, "closed_during_hold"), 0.0);
    assert!(r["server_rss_per_conn_kib"].is_number(), "{r}");
    assert!(num(&r, "connects_per_sec") > 0.0);
}

#[test]
fn echo_measures_round_trips() {
    let r = bench(&["echo", "-c", "4", "-d", "500ms"]);
    assert!(num(&r, "round_trips") > 10.0, "{r}");
    assert_eq!(num(&r, "failed_connections"), 0.0);
}

#[test]
fn shootout_steps_up_to_the_maximum() {
    let r = bench(&[
        "shootout",
        "--max-clients",
        "200",
        "--step",
        "100",
        "--senders",
        "2",
        "--broadcasts",
        "3",
        "--limit",
        "5s",
    ]);
    assert_eq!(num(&r, "clients_reached"), 200.0, "{r}");
    assert_eq!(num(&r, "largest_passing_clients"), 200.0, "{r}");
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[1]["clients"], 200);
    assert_eq!(steps[1]["timed_out"], 0);
}

#[test]
fn sweep_writes_csv_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let r = bench(&[
        "sweep",
        "--param",
        "group-size",
        "--values",
        "10,20",
        "--out",
        out,
        "fanout",
        "-r",
        "50",
        "-d",
        "500ms",
    ]);
    let csv = std::fs::read_to_string(dir.path().join("fanout-group-size.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("group_size,"), "{csv}");
    assert!(
        lines[1].starts_with("10,") && lines[2].starts_with("20,"),
        "{csv}"
    );
    let svg = std::fs::read_to_string(dir.path().join("fanout-group-size.svg")).unwrap();
    assert!(svg.contains("<svg"), "{svg}");
    let points = r["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    for p in points {
        assert_eq!(p["lost"], 0, "{p}");
    }
}

#[test]
fn floor_delivers_every_record_without_a_server() {
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["bench", "--json", "--sources", "2", "floor"])
        .args(["-c", "40", "-g", "4", "-r", "400", "-d", "500ms"])
        .output()
        .expect("run roomcast bench floor");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(r["scenario"], "floor");
    // 200 publications round-robin over 4 groups of 10 members.
    assert_eq!(num(&r, "published"), 200.0);
    assert_eq!(num(&r, "expected"), 2000.0, "{r}");
    assert_eq!(num(&r, "received"), 2000.0, "{r}");
    assert_eq!(num(&r, "lost"), 0.0);
    assert_eq!(num(&r, "out_of_order"), 0.0);
    assert!(num(&r, "frames_per_write") >= 1.0, "{r}");
    assert!(num(&r, "latency_p50_ms") <= num(&r, "latency_max_ms"));
}

#[test]
fn bad_options_fail_clearly() {
    for (args, expected) in [
        (vec!["fanout", "-s", "8"], "--size must be at least 32"),
        (
            vec!["sweep", "--param", "rate", "--values", "1", "echo"],
            "does not apply",
        ),
        (vec!["connections", "-c", "2000000000"], "open-file limit"),
        (vec!["floor", "-c", "2000000000"], "open-file limit"),
        (vec!["--spawn", "floor", "-c", "10"], "runs no server"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .arg("bench")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["bench", "--url", "ws://127.0.0.1:1/ws", "fanout", "-c", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ConnectionRefused"));
}

#[test]
fn wss_fanout_and_echo_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls_args = [
        format!("--server-arg=--tls-cert={}", cert_path.display()),
        format!("--server-arg=--tls-key={}", key_path.display()),
        format!("--ca-cert={}", cert_path.display()),
        "--url=wss://127.0.0.1/ws".to_owned(),
    ];
    let args = |rest: &[&str]| -> Vec<String> {
        tls_args
            .iter()
            .cloned()
            .chain(rest.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |a: &[String]| bench(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let r = run(&args(&[
        "--deflate",
        "fanout",
        "-c",
        "20",
        "-r",
        "100",
        "-d",
        "1s",
        "-s",
        "1024",
        "--fill",
        "words",
        "--subscriber-threads",
        "0",
    ]));
    let acked = num(&r, "acked");
    assert!(acked >= 50.0, "{r}");
    assert_eq!(num(&r, "received"), acked * 20.0, "{r}");
    assert_eq!(num(&r, "lost") + num(&r, "out_of_order"), 0.0, "{r}");
    let r = run(&args(&["echo", "-c", "4", "-d", "1s"]));
    assert!(num(&r, "round_trips") > 0.0, "{r}");
    // The epoll reader takes plain TCP only: a clear refusal, not a hang.
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["bench", "--spawn", "--json"])
        .args(&tls_args)
        .args(["fanout", "-c", "2", "-d", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--subscriber-threads 0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the CA the certificate is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["bench", "--spawn", "--json"])
        .args(&tls_args[..2])
        .args(["--url=wss://127.0.0.1/ws", "echo", "-c", "1", "-d", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// A cluster: `--nodes 2` spawns two servers on one broker, fanout spreads
/// its subscribers over them, and every delivery is still accounted for;
/// the broker carries one message per publication and node.
#[test]
fn fanout_over_a_spawned_cluster() {
    for kind in [Kind::Redis, Kind::Nats] {
        let broker = BrokerProcess::start(kind);
        let r = bench(&[
            "--nodes",
            "2",
            &format!("--server-arg=--broker={}", broker.url()),
            "fanout",
            "-c",
            "20",
            "-r",
            "50",
            "-d",
            "1s",
        ]);
        assert_eq!(num(&r, "nodes"), 2.0, "{r}");
        let acked = num(&r, "acked");
        assert!(acked >= 25.0, "{r}");
        assert_eq!(num(&r, "received"), acked * 20.0, "{r}");
        assert_eq!(
            num(&r, "lost") + num(&r, "out_of_order") + num(&r, "duplicates"),
            0.0,
            "{r}"
        );
        assert_eq!(num(&r, "broker_messages_per_publication"), 2.0, "{kind:?}: {r}");
    }
}
