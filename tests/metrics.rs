//! `/metrics` over a real server: the exposition text parses, and its values
//! move as traffic flows; `/readyz` turns 503 once shutdown begins.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use roomcast::config::Config;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// One scrape: every sample, keyed by name and its labels (sorted).
#[derive(Debug)]
struct Scrape(BTreeMap<(String, Vec<(String, String)>), f64>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels end with }");
                    let mut labels: Vec<(String, String)> = body
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label is k=v");
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    labels.sort();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), Vec::new()),
            };
            assert!(
                samples.insert((name, labels), value).is_none(),
                "duplicate series in {line:?}"
            );
        }
        Self(samples)
    }

    /// The sample `name` with exactly `labels`; panics if absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key.sort();
        *self
            .0
            .get(&(name.to_owned(), key))
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:#?}", self.0.keys()))
    }

    /// Sum of every sample named `name`, whatever its labels.
    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }
}

/// GET `/metrics`, check the status and content type, parse the body.
async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, head, body) = http_full(addr, "GET", "/metrics", &[], &[]).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    Scrape::parse(&body)
}

/// Scrape until `pred` holds (some counters move just after the event a
/// client sees, for example the write that delivered it).
async fn wait_for(addr: SocketAddr, what: &str, pred: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let s = scrape(addr).await;
        if pred(&s) {
            return s;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("metrics never reached '{what}': {s:#?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const WS_JSON: &[(&str, &str)] = &[("source", "ws"), ("protocol", "json")];
const WS_BINARY: &[(&str, &str)] = &[("source", "ws"), ("protocol", "binary")];

#[tokio::test]
async fn metrics_move_as_traffic_flows() {
    let server = start(config()).await;
    let addr = server.addr;
    let m = scrape(addr).await;
    assert_eq!(m.get("roomcast_connections", &[]), 0.0);
    assert_eq!(m.get("roomcast_connections_opened_total", &[]), 0.0);
    assert_eq!(m.get("roomcast_messages_received_total", WS_JSON), 0.0);
    assert_eq!(m.get("roomcast_fanout_duration_seconds_count", &[]), 0.0);

    let (mut a, _) = connect(&server).await;
    let (mut b, _) = connect(&server).await;
    let m = scrape(addr).await;
    assert_eq!(m.get("roomcast_connections", &[]), 2.0);
    assert_eq!(m.get("roomcast_connections_opened_total", &[]), 2.0);

    for ws in [&mut a, &mut b] {
        let ack = request(ws, json!({"type":"join","group":"g","id":1})).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let m = scrape(addr).await;
    assert_eq!(m.get("roomcast_groups", &[]), 1.0);
    assert_eq!(m.get("roomcast_group_memberships", &[]), 2.0);
    assert_eq!(m.get("roomcast_messages_received_total", WS_JSON), 2.0);

    // A JSON publish reaches both members.
    let publish = json!({"type":"publish","group":"g","data":{"n":1},"id":2}).to_string();
    send_text(&mut a, &publish).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(recv_json(&mut a).await["type"].as_str().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(got, ["ack", "message"]);
    assert_eq!(recv_json(&mut b).await["data"], json!({"n":1}));
    let m = scrape(addr).await;
    assert_eq!(m.get("roomcast_messages_received_total", WS_JSON), 3.0);
    assert_eq!(m.get("roomcast_messages_received_total", WS_BINARY), 0.0);
    assert!(m.get("roomcast_received_payload_bytes_total", WS_JSON) >= publish.len() as f64);
    assert_eq!(m.get("roomcast_fanouts_total", &[]), 1.0);
    assert_eq!(m.get("roomcast_fanout_deliveries_total", &[]), 2.0);
    assert_eq!(m.get("roomcast_fanout_duration_seconds_count", &[]), 1.0);
    assert_eq!(
        m.get("roomcast_fanout_duration_seconds_bucket", &[("le", "+Inf")]),
        1.0
    );

    // A binary publish reaches both members as a binary frame.
    let bin = b"\x03\0\0\0\x01gpayload".to_vec();
    b.send(Message::binary(bin.clone())).await.unwrap();
    for ws in [&mut a, &mut b] {
        assert!(matches!(recv(ws).await, Message::Binary(_)));
    }
    let m = wait_for(addr, "binary frames written", |m| {
        m.get("roomcast_messages_sent_total", &[("protocol", "binary")]) == 2.0
    })
    .await;
    assert_eq!(m.get("roomcast_messages_received_total", WS_BINARY), 1.0);
    assert_eq!(
        m.get("roomcast_received_payload_bytes_total", WS_BINARY),
        bin.len() as f64
    );
    assert_eq!(m.get("roomcast_fanouts_total", &[]), 2.0);
    assert_eq!(m.get("roomcast_fanout_deliveries_total", &[]), 4.0);
    assert_eq!(m.get("roomcast_fanout_duration_seconds_count", &[]), 2.0);
    // welcome x2, ack x2 (join), ack + message x2 (JSON publish).
    assert!(m.get("roomcast_messages_sent_total", &[("protocol", "json")]) >= 7.0);
    assert!(m.get("roomcast_outbox_depth_frames_count", &[]) >= 1.0);
    assert!(m.get("roomcast_websocket_sent_bytes_total", &[]) > 0.0);

    // Bad requests are counted by error code.
    send_text(&mut a, "not json").await;
    assert_eq!(recv_json(&mut a).await["code"], "bad_request");
    let e = request(&mut a, json!({"type":"join","group":"","id":3})).await;
    assert_eq!(e["code"], "invalid_group");
    let m = scrape(addr).await;
    assert_eq!(
        m.get("roomcast_errors_sent_total", &[("code", "bad_request")]),
        1.0
    );
    assert_eq!(
        m.get("roomcast_errors_sent_total", &[("code", "invalid_group")]),
        1.0
    );
    assert_eq!(m.get("roomcast_errors_sent_total", &[("code", "internal")]), 0.0);
    // Nothing came in through the API.
    assert_eq!(
        m.get(
            "roomcast_messages_received_total",
            &[("source", "api"), ("protocol", "json")]
        ),
        0.0
    );

    // /stats is a view of the same counters.
    let s = server.stats();
    assert_eq!(s.broadcasts, m.get("roomcast_fanouts_total", &[]) as u64);
    assert_eq!(
        s.deliveries,
        m.get("roomcast_fanout_deliveries_total", &[]) as u64
    );
    assert_eq!(s.messages_in, m.sum("roomcast_messages_received_total") as u64);
    assert_eq!(s.connections, 2);

    // A client close is counted by reason and its memberships go away.
    b.close(None).await.unwrap();
    // Read the server's Close so the closing handshake completes, then
    // drop the socket so the server sees EOF at once.
    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut b).await {}
    drop(b);
    let m = wait_for(addr, "b closed", |m| {
        m.get(
            "roomcast_connections_closed_total",
            &[("reason", "client_closed")],
        ) == 1.0
    })
    .await;
    assert_eq!(m.get("roomcast_connections", &[]), 1.0);
    assert_eq!(m.get("roomcast_group_memberships", &[]), 1.0);
    assert_eq!(m.get("roomcast_groups", &[]), 1.0);
    assert_eq!(m.sum("roomcast_connections_closed_total"), 1.0);

    // Dropping the TCP connection without a close handshake is an EOF.
    drop(a);
    let m = wait_for(addr, "a gone", |m| m.get("roomcast_connections", &[]) == 0.0).await;
    assert_eq!(
        m.get("roomcast_connections_closed_total", &[("reason", "eof")])
            + m.get("roomcast_connections_closed_total", &[("reason", "socket_error")]),
        1.0
    );
    assert_eq!(m.get("roomcast_groups", &[]), 0.0);
    assert_eq!(m.get("roomcast_group_memberships", &[]), 0.0);
    assert_eq!(
        m.get("roomcast_connections_opened_total", &[]),
        m.sum("roomcast_connections_closed_total")
    );
    server.stop().await;
}

#[tokio::test]
async fn slow_consumer_disconnects_are_counted() {
    let server = start(Config {
        queue_messages: 4,
        ..config()
    })
    .await;
    let (mut slow, _) = connect_small_rcvbuf(&server).await;
    let (mut publisher, _) = connect(&server).await;
    request(&mut slow, json!({"type":"join","group":"g","id":1})).await;
    let big = "x".repeat(16 * 1024);
    let mut i = 0;
    // `slow` never reads, so its queue fills and the policy closes it.
    let m = loop {
        let ack = request(
            &mut publisher,
            json!({"type":"publish","group":"g","data":big,"id":i}),
        )
        .await;
        assert_eq!(ack["type"], "ack");
        i += 1;
        let m = scrape(server.addr).await;
        if m.get("roomcast_slow_consumer_disconnects_total", &[]) == 1.0 {
            break m;
        }
        assert!(i < 1000, "slow consumer never disconnected");
    };
    assert_eq!(m.get("roomcast_slow_consumer_dropped_total", &[]), 0.0);
    // Read up to the 4001 close, then hang up so the session ends now.
    assert_eq!(close_code(&mut slow).await, 4001);
    drop(slow);
    wait_for(server.addr, "slow consumer closed", |m| {
        m.get(
            "roomcast_connections_closed_total",
            &[("reason", "slow_consumer")],
        ) == 1.0
    })
    .await;
    server.stop().await;
}

/// The listener closes as soon as shutdown begins, so the probe that sees
/// the 503 is one whose request was already arriving: its connection was
/// accepted and the start of its request read before shutdown began.
#[tokio::test]
async fn readyz_turns_503_when_shutdown_begins() {
    let mut server = start(config()).await;
    let (status, body) = http_get(server.addr, "/readyz", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"broker":{"kind":"memory","up":true},"status":"ready"}"#)
    );
    let (status, _) = http_get(server.addr, "/healthz", &[]).await;
    assert_eq!(status, 200);

    // A client that never answers the close keeps the drain going (1 s).
    let (_stuck, _) = connect(&server).await;
    let mut probe = TcpStream::connect(server.addr).await.unwrap();
    probe.write_all(b"GET /readyz HTTP/1.1\r\n").await.unwrap();
    // Let the server accept the connection and read the partial request:
    // a connection that has sent nothing is closed by graceful shutdown.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.begin_shutdown();
    let deadline = tokio::time::Instant::now() + STEP;
    while !server.node.shutdown.is_cancelled() {
        assert!(tokio::time::Instant::now() < deadline, "shutdown never began");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rest = format!("Host: {}\r\nConnection: close\r\n\r\n", server.addr);
    probe.write_all(rest.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(STEP, probe.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    assert!(head.starts_with("HTTP/1.1 503"), "{text}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], "shutting_down", "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    server.join().await;
}
