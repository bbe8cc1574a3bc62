//! Admission limits and the per-connection message rate, over real
//! sockets: refused upgrades are cheap JSON responses with Retry-After, and
//! a flooding client is slowed, then closed, while others are unaffected.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use roomcast::config::Config;
use roomcast::limits::DEFAULT_CONNECT_RATE_PER_IP;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

/// An upgrade request expected to be refused; returns status, head, body.
async fn refused_upgrade(server: &TestServer, extra: &[(&str, &str)]) -> (u16, String, serde_json::Value) {
    let mut headers = UPGRADE.to_vec();
    headers.extend_from_slice(extra);
    let (status, head, body) = http_full(server.addr, "GET", "/ws", &headers, &[]).await;
    let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {head}\n{body}"));
    (status, head, v)
}

async fn metric(server: &TestServer, line_start: &str) -> f64 {
    let (_, body) = http_get(server.addr, "/metrics", &[]).await;
    body.lines()
        .find_map(|l| l.strip_prefix(line_start).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no {line_start} in metrics"))
}

#[tokio::test]
async fn per_ip_and_global_connection_caps() {
    let server = start(Config {
        max_connections_per_ip: Some(2),
        ..config()
    })
    .await;
    let (a, _) = connect(&server).await;
    let (_b, _) = connect(&server).await;
    let (status, head, body) = refused_upgrade(&server, &[]).await;
    assert_eq!(status, 429, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: "), "{head}");
    assert_eq!(body["error"]["code"], "too_many_connections_from_ip");
    let refused = r#"roomcast_connections_refused_total{reason="too_many_connections_from_ip"} "#;
    assert_eq!(metric(&server, refused).await, 1.0);
    // A slot comes back when a connection ends.
    drop(a);
    server.wait_stats("one left", |s| s.connections == 1).await;
    let (_c, _) = connect(&server).await;
    server.stop().await;

    let server = start(Config {
        max_connections: 1,
        ..config()
    })
    .await;
    let (_a, _) = connect(&server).await;
    let (status, _, body) = refused_upgrade(&server, &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("server_full"))
    );
    server.stop().await;
}

#[tokio::test]
async fn connect_rate_per_ip() {
    let server = start(Config {
        connect_rate_per_ip: Some(3),
        ..config()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(&server).await.0);
    }
    let (status, head, body) = refused_upgrade(&server, &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("connect_rate_exceeded")),
        "{head}"
    );
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    // The budget refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    open.push(connect(&server).await.0);
    server.stop().await;
}

/// Upgrade to `/ws` at `addr` over raw TCP, 32 at a time, as fast as this
/// machine can (each connection dropped once answered), until the burst
/// has outrun the default connect rate (a bucket of 1,000 that refills at
/// 1,000 per second) by 500 upgrades: well over 1,000 upgrades within a
/// second, which that rate, holding this address, answers with 429s.
/// Returns how many got each status, and how long it took.
async fn upgrade_burst(addr: SocketAddr) -> (BTreeMap<u16, usize>, Duration) {
    const PARALLEL: usize = 32;
    let rate = f64::from(DEFAULT_CONNECT_RATE_PER_IP);
    let started = Instant::now();
    let answered = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                loop {
                    let n = answered.load(Ordering::Relaxed) as f64;
                    if n > rate * (1.0 + started.elapsed().as_secs_f64()) + 500.0 {
                        return statuses;
                    }
                    assert!(
                        started.elapsed() < STEP,
                        "{n} upgrades in {:?}: this machine is too slow to outrun the default \
                         connect rate, so the test proves nothing",
                        started.elapsed()
                    );
                    let mut tcp = TcpStream::connect(addr).await.unwrap();
                    tcp.write_all(upgrade_request(addr, "/ws").as_bytes())
                        .await
                        .unwrap();
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        let read = tokio::time::timeout(STEP, tcp.read(&mut chunk)).await;
                        let got = read.expect("an answer in time").unwrap_or(0);
                        assert!(
                            got > 0,
                            "closed before answering: {:?}",
                            String::from_utf8_lossy(&head)
                        );
                        head.extend_from_slice(&chunk[..got]);
                    }
                    statuses.push(String::from_utf8_lossy(&head[9..12]).parse::<u16>().unwrap());
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for task in tasks {
        for status in task.await.unwrap() {
            *counts.entry(status).or_insert(0) += 1;
        }
    }
    (counts, started.elapsed())
}

/// Behind a proxy, or in a shootout from one host, every client comes from
/// one loopback or private address: with the defaults (no per-IP option
/// set) such an address is not held to the per-IP connect rate, so a burst
/// of reconnects is not answered with 429s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_connect_rate_does_not_hold_a_loopback_client() {
    let server = ServerProcess::start(&[]);
    let (statuses, took) = upgrade_burst(server.addr).await;
    let logged = server.stop();
    assert_eq!(
        statuses.keys().collect::<Vec<_>>(),
        [&101],
        "in {took:?}: {statuses:?}; {logged:#?}"
    );
}

/// The same burst with the connect rate set explicitly, to its default
/// value: an explicit per-IP limit holds every address, loopback included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_connect_rate_holds_a_loopback_client() {
    let rate = DEFAULT_CONNECT_RATE_PER_IP.to_string();
    let server = ServerProcess::start(&["--connect-rate-per-ip", &rate]);
    let (statuses, took) = upgrade_burst(server.addr).await;
    let logged = server.stop();
    assert_eq!(
        statuses.keys().collect::<Vec<_>>(),
        [&101, &429],
        "in {took:?}: {statuses:?}"
    );
    // The refusal of a loopback address is explained, once.
    let warned = logged
        .iter()
        .filter(|l| l.contains("a per-IP limit refused 127.0.0.1"))
        .count();
    assert_eq!(warned, 1, "{logged:#?}");
}

#[tokio::test]
async fn origin_allow_list() {
    let server = start(Config {
        allowed_origin: vec!["https://app.example.com".into()],
        ..config()
    })
    .await;
    let (status, _, body) = refused_upgrade(&server, &[("Origin", "https://evil.example.com")]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(server.url("/ws"))
            .unwrap();
    req.headers_mut()
        .insert("Origin", "https://app.example.com".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("allowed origin");
    assert_eq!(recv_json(&mut ws).await["type"], "welcome");
    // Non-browser clients send no Origin and are allowed.
    connect(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn forwarded_for_counts_only_behind_a_trusted_proxy() {
    // This test's client is 127.0.0.1; make it a trusted proxy.
    let server = start(Config {
        max_connections_per_ip: Some(1),
        trusted_proxy: vec!["127.0.0.0/8".into()],
        ..config()
    })
    .await;
    let mut conns = Vec::new();
    for client in ["203.0.113.1", "203.0.113.2"] {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(server.url("/ws"))
                .unwrap();
        req.headers_mut()
            .insert("X-Forwarded-For", client.parse().unwrap());
        conns.push(tokio_tungstenite::connect_async(req).await.expect(client).0);
    }
    let (status, _, _) = refused_upgrade(&server, &[("X-Forwarded-For", "203.0.113.1")]).await;
    assert_eq!(status, 429, "the same forwarded client is capped");
    server.stop().await;

    // Without a trusted proxy the header is ignored: all from 127.0.0.1.
    let server = start(Config {
        max_connections_per_ip: Some(1),
        ..config()
    })
    .await;
    let (_a, _) = connect(&server).await;
    let (status, _, _) = refused_upgrade(&server, &[("X-Forwarded-For", "203.0.113.7")]).await;
    assert_eq!(status, 429);
    server.stop().await;
}

#[tokio::test]
async fn message_rate_rejects_excess_then_closes_a_flood() {
    let server = start(Config {
        message_rate: 5,
        ..config()
    })
    .await;
    let (mut ws, _) = connect(&server).await;
    let (mut other, _) = connect(&server).await;
    for i in 0..10 {
        send_json(&mut ws, json!({"type":"ping","id":i})).await;
    }
    let mut pongs = 0;
    for i in 0..10 {
        let r = recv_json(&mut ws).await;
        assert_eq!(r["id"], i, "every request gets its one reply: {r}");
        match r["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => assert_eq!(r["code"], "rate_limited"),
            _ => panic!("{r}"),
        }
    }
    assert_eq!(pongs, 5, "the burst equals the rate");
    // Another connection has its own budget.
    assert_eq!(
        request(&mut other, json!({"type":"ping","id":1})).await["type"],
        "pong"
    );
    // After a pause the client may send again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        request(&mut ws, json!({"type":"ping","id":"later"})).await["type"],
        "pong"
    );
    // A client that keeps flooding is closed with 1008.
    for i in 0..50 {
        send_json(&mut ws, json!({"type":"ping","id":i})).await;
    }
    assert_eq!(close_code(&mut ws).await, 1008);
    let closed = r#"roomcast_connections_closed_total{reason="rate_limited"} "#;
    server.wait_stats("closed", |s| s.connections == 1).await;
    assert_eq!(metric(&server, closed).await, 1.0);
    assert!(metric(&server, r#"roomcast_errors_sent_total{code="rate_limited"} "#).await >= 5.0);
    server.stop().await;
}

#[tokio::test]
async fn slowloris_clients_are_dropped_after_the_handshake_timeout() {
    let server = start(Config {
        handshake_timeout: Duration::from_millis(500),
        ..config()
    })
    .await;
    // One sends half a request and stalls; one sends nothing at all.
    let mut partial = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websock")
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    for s in [&mut partial, &mut silent] {
        let mut buf = [0u8; 1024];
        // The server closes the connection (EOF, or a 408 then EOF); the
        // test's own bound is far above the 500 ms setting.
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(read.is_ok(), "a stalled client was not dropped");
    }
    // Well-behaved clients are unaffected.
    connect(&server).await;
    server.stop().await;
}
