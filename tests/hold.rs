//! What a hostile client can make the server hold, and for how long
//! (issue 11): each test fails without its fix.
//!
//! - A client that never reads its backlog is closed as a slow consumer
//!   after the write timeout, however busily it sends Pings (on `/ws` and on
//!   `/echo`), while a client that reads slowly but steadily is not.
//! - Before the upgrade: request heads are capped (431), and connections
//!   that have not upgraded yet are held to the connection caps per IP.
//! - Upgrade requests with a body, and requests without exactly one `Host`,
//!   get 400; IPv6 clients are counted per /64.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use roomcast::config::Config;
use roomcast::ws::decoder::client_frame;
use roomcast::ws::frame::{OP_BINARY, OP_PING};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

fn stall_config() -> Config {
    Config {
        write_timeout: WRITE_TIMEOUT,
        // Far beyond the test: only the write timeout may close anyone.
        idle_timeout: Duration::from_secs(120),
        ping_interval: Duration::from_secs(60),
        ..config()
    }
}

/// Send a Ping every 200 ms until the task is aborted: a client that looks
/// alive to the idle timeout.
fn ping_forever(mut wr: OwnedWriteHalf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let ping = client_frame(true, OP_PING, [1, 2, 3, 4], b"alive");
            if wr.write_all(&ping).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// A `/ws` member of `group` with a 4 KiB receive buffer.
async fn small_member(server: &TestServer, group: &str) -> RawClient {
    let mut member = RawClient::connect_small_rcvbuf(server.addr, "/ws").await;
    assert_eq!(member.json().await["type"], "welcome");
    member
        .send_text(&json!({"type":"join","group":group,"id":1}).to_string())
        .await;
    assert_eq!(member.json().await["type"], "ack");
    member
}

/// Publish `n` binary messages of 60,000 bytes to `group` through the API.
async fn publish_60kb(server: &TestServer, group: &str, n: usize) {
    let body = vec![b'y'; 60_000];
    for _ in 0..n {
        let (status, text) = http(
            server.addr,
            "POST",
            &format!("/api/publish?group={group}"),
            &[("Content-Type", "application/octet-stream")],
            &body,
        )
        .await;
        assert_eq!(status, 200, "{text}");
    }
}

#[tokio::test]
async fn an_echo_client_that_never_reads_is_closed_whatever_it_sends() {
    let server = start(stall_config()).await;
    let client = RawClient::connect_small_rcvbuf(server.addr, "/echo").await;
    let (_reader, mut wr) = client.split();
    // 30 messages of 65,000 bytes come back as about 1.9 MB of echoes,
    // below the point (twice --queue-bytes) where the server stops reading.
    let payload = vec![b'x'; 65_000];
    for i in 0..30u8 {
        let frame = client_frame(true, OP_BINARY, [i, 2, 3, 4], &payload);
        wr.write_all(&frame).await.unwrap();
    }
    let pinger = ping_forever(wr);
    server
        .wait_stats("the echo client closed as a slow consumer", |s| {
            s.slow_consumer_disconnects == 1
        })
        .await;
    server
        .wait_stats("the connection gone", |s| s.connections == 0)
        .await;
    pinger.abort();
    let (_, metrics) = http_get(server.addr, "/metrics", &[]).await;
    assert!(
        metrics.contains("roomcast_connections_closed_total{reason=\"slow_consumer\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_member_that_never_reads_is_closed_though_its_queue_is_not_full() {
    let server = start(stall_config()).await;
    let member = small_member(&server, "alone").await;
    let (_reader, wr) = member.split();
    let pinger = ping_forever(wr);
    // 15 publications of 60 KB: 900 KB, below --queue-bytes (1 MiB), so the
    // queue-full policy never fires; only the write timeout can.
    publish_60kb(&server, "alone", 15).await;
    server
        .wait_stats("the member closed as a slow consumer", |s| {
            s.slow_consumer_disconnects == 1
        })
        .await;
    server.wait_stats("the member gone", |s| s.connections == 0).await;
    assert_eq!(server.stats().groups, 0, "its group is freed");
    pinger.abort();
    server.stop().await;
}

#[tokio::test]
async fn a_member_that_reads_slowly_but_steadily_stays() {
    // Linux reports a full socket writable again only once about a third
    // of its send buffer has drained: a small one makes the server see
    // this reader's progress often, and stall often in between.
    let server = start(Config {
        socket_send_buffer: 16 * 1024,
        ..stall_config()
    })
    .await;
    let member = small_member(&server, "slow").await;
    publish_60kb(&server, "slow", 8).await;
    // About 480 KB at most 16 KiB every 100 ms (the 4 KiB receive buffer
    // gives less per read): several write timeouts long in all, but never
    // a pause of one.
    let (mut rd, _wr) = member.split_raw();
    let expected = 8 * 60_000;
    let mut got = 0;
    let mut chunk = vec![0u8; 16 * 1024];
    while got < expected {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = tokio::time::timeout(STEP, rd.read(&mut chunk))
            .await
            .expect("the server keeps writing")
            .unwrap();
        assert!(
            n > 0,
            "closed after {got} of {expected} bytes: {:?}",
            server.stats()
        );
        got += n;
    }
    assert_eq!(server.stats().slow_consumer_disconnects, 0);
    assert_eq!(server.stats().connections, 1);
    server.stop().await;
}

/// Read what the server sends until it closes (or `STEP` passes).
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(STEP, tcp.read_to_end(&mut out))
        .await
        .expect("the server closes the connection in time");
    String::from_utf8_lossy(&out).into_owned()
}

/// A request head that never ends: `n` bytes of one header, no blank line.
async fn unfinished_request(addr: SocketAddr, n: usize) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Filler: {}",
        "a".repeat(n)
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp
}

#[tokio::test]
async fn a_request_head_above_the_cap_gets_431_at_once() {
    let server = start(Config {
        // Far beyond the test: only the cap may end these requests.
        handshake_timeout: Duration::from_secs(60),
        ..config()
    })
    .await;
    let addr = server.addr;
    let under = "b".repeat(20_000);
    let (status, body) = http_get(addr, "/healthz", &[("X-Filler", &under)]).await;
    assert_eq!(status, 200, "{body}");
    let over = "c".repeat(40_000);
    let (status, body) = http_get(addr, "/healthz", &[("X-Filler", &over)]).await;
    assert_eq!(status, 431, "{body}");
    // A head that keeps coming and never ends: answered as soon as it
    // passes the cap, not at the handshake timeout.
    let mut tcp = unfinished_request(addr, 400_000).await;
    let answer = read_to_close(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn connections_that_have_not_upgraded_are_held_to_the_caps() {
    let server = start(Config {
        max_connections: 10,
        max_connections_per_ip: Some(5),
        handshake_timeout: Duration::from_secs(60),
        ..config()
    })
    .await;
    let addr = server.addr;
    // Five connections stuck in their request heads: this address's share.
    let mut stuck = Vec::new();
    for _ in 0..5 {
        stuck.push(unfinished_request(addr, 1000).await);
    }
    // The sixth is refused at once with the JSON answer, unread.
    let mut sixth = TcpStream::connect(addr).await.unwrap();
    let answer = read_to_close(&mut sixth).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("retry-after: 5"), "{answer}");
    assert!(
        answer.ends_with(
            r#"{"error":{"code":"too_many_connections_from_ip","message":"too many connections from this address"}}"#
        ),
        "{answer}"
    );
    // One gives up: its slot comes back.
    drop(stuck.pop());
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let _ = tcp.write_all(req.as_bytes()).await;
        let answer = read_to_close(&mut tcp).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 429"),
            "{answer}"
        );
        assert!(tokio::time::Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stuck);
    let (_, metrics) = http_get(addr, "/metrics", &[]).await;
    assert!(
        metrics.contains("roomcast_connections_refused_total{reason=\"too_many_connections_from_ip\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn upgraded_connections_leave_the_pool_of_connections_not_upgraded() {
    let server = start(Config {
        max_connections: 5,
        max_connections_per_ip: Some(5),
        connect_rate_per_ip: Some(0),
        ..config()
    })
    .await;
    // Five sessions: every slot of this address, and of the server.
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(connect(&server).await.0);
    }
    // Probes and API calls are still served: the sessions hold no slot of
    // connections that have not upgraded.
    let (status, body) = http_get(server.addr, "/readyz", &[]).await;
    assert_eq!(status, 200, "{body}");
    // The sixth upgrade is refused by the session caps as before.
    let refused = tokio_tungstenite::connect_async(server.url("/ws")).await;
    assert!(refused.is_err(), "a sixth session was admitted");
    // The global cap applies to connections not upgraded too.
    let mut stuck = Vec::new();
    for _ in 0..5 {
        stuck.push(unfinished_request(server.addr, 10).await);
    }
    let mut sixth = TcpStream::connect(server.addr).await.unwrap();
    let answer = read_to_close(&mut sixth).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""code":"server_full""#), "{answer}");
    drop(sessions);
    server.stop().await;
}

#[tokio::test]
async fn an_upgrade_with_a_body_is_refused() {
    let server = start(config()).await;
    for extra in ["Content-Length: 100000\r\n", "Transfer-Encoding: chunked\r\n"] {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let req = upgrade_request(server.addr, "/ws").replace("\r\n\r\n", &format!("\r\n{extra}\r\n"));
        tcp.write_all(req.as_bytes()).await.unwrap();
        // What would have been swallowed as body, or taken for frames.
        tcp.write_all(&[0x81, 0x85, 1, 2, 3, 4]).await.unwrap();
        let head = response_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{extra}: {head}");
    }
    // Content-Length: 0 is no body.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let req = upgrade_request(server.addr, "/ws").replace("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let head = response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    server.stop().await;
}

#[tokio::test]
async fn a_request_needs_exactly_one_valid_host() {
    let server = start(config()).await;
    let addr = server.addr;
    let ask = |req: String| async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(req.as_bytes()).await.unwrap();
        read_to_close(&mut tcp).await
    };
    let none = ask("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".into()).await;
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    assert!(none.contains(r#""code":"bad_host""#), "{none}");
    let two = ask(format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    let bad = ask("GET /healthz HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n".into()).await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    // Upgrades and the API are behind the same rule.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = upgrade_request(addr, "/ws").replace(&format!("Host: {addr}\r\n"), "");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let ws = response_head(&mut tcp).await;
    assert!(ws.starts_with("HTTP/1.1 400"), "{ws}");
    // HTTP/1.0 has no Host requirement; one good Host is served.
    let old = ask("GET /healthz HTTP/1.0\r\n\r\n".into()).await;
    assert!(
        old.starts_with("HTTP/1.1 200") || old.starts_with("HTTP/1.0 200"),
        "{old}"
    );
    let good = ask(format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert!(good.starts_with("HTTP/1.1 200"), "{good}");
    server.stop().await;
}

/// Upgrade to `/ws` through a trusted proxy (this test, on loopback) on
/// behalf of `client`; returns the response head.
async fn upgrade_as(addr: SocketAddr, client: &str) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req =
        upgrade_request(addr, "/ws").replace("\r\n\r\n", &format!("\r\nX-Forwarded-For: {client}\r\n\r\n"));
    tcp.write_all(req.as_bytes()).await.unwrap();
    (response_head(&mut tcp).await, tcp)
}

#[tokio::test]
async fn ipv6_clients_are_counted_per_prefix() {
    for (prefix, same_prefix_admitted) in [(64, false), (128, true)] {
        let server = start(Config {
            trusted_proxy: vec!["127.0.0.1".into()],
            max_connections_per_ip: Some(1),
            connect_rate_per_ip: Some(0),
            ipv6_prefix_len: prefix,
            ..config()
        })
        .await;
        let (first, _a) = upgrade_as(server.addr, "2001:db8:0:7::1").await;
        assert!(first.starts_with("HTTP/1.1 101"), "{first}");
        // Another address of the same /64.
        let (second, _b) = upgrade_as(server.addr, "2001:db8:0:7:ffff::2").await;
        assert_eq!(
            second.starts_with("HTTP/1.1 101"),
            same_prefix_admitted,
            "/{prefix}: {second}"
        );
        if !same_prefix_admitted {
            assert!(second.starts_with("HTTP/1.1 429"), "{second}");
        }
        // Another /64 is another client.
        let (third, _c) = upgrade_as(server.addr, "2001:db8:0:8::1").await;
        assert!(third.starts_with("HTTP/1.1 101"), "/{prefix}: {third}");
        server.stop().await;
    }
}

/// Read one HTTP response head from `tcp` (up to the blank line).
async fn response_head(tcp: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(STEP, tcp.read(&mut byte))
            .await
            .expect("an answer in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn a_per_ip_refusal_of_a_loopback_address_is_warned_about_once() {
    let server = ServerProcess::start(&["--max-connections-per-ip", "1", "--handshake-timeout", "30s"]);
    let addr = server.addr;
    // One connection holds this address's only slot; the next three are
    // refused at accept, and only the first refusal is explained.
    let _held = unfinished_request(addr, 10).await;
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        assert!(read_to_close(&mut tcp).await.starts_with("HTTP/1.1 429"));
    }
    let logged = server.stop();
    let warnings: Vec<_> = logged
        .iter()
        .filter(|l| l.contains("a per-IP limit refused 127.0.0.1"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logged:#?}");
    assert!(warnings[0].contains("--trusted-proxy"), "{}", warnings[0]);
}
