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

use std::time::Duration;

use common::*;
use roomcast::config::Config;
use roomcast::ws::decoder::client_frame;
use roomcast::ws::frame::{OP_BINARY, OP_PING};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let mut member = RawClient::connect_small_rcvbuf(server.addr, "/ws").await;
    assert_eq!(member.json().await["type"], "welcome");
    member
        .send_text(&json!({"type":"join","group":"alone","id":1}).to_string())
        .await;
    assert_eq!(member.json().await["type"], "ack");
    let (_reader, wr) = member.split();
    let pinger = ping_forever(wr);
    // 15 publications of 60 KB: 900 KB, below --queue-bytes (1 MiB), so the
    // queue-full policy never fires; only the write timeout can.
    let body = vec![b'y'; 60_000];
    for _ in 0..15 {
        let (status, text) = http(
            server.addr,
            "POST",
            "/api/publish?group=alone",
            &[("Content-Type", "application/octet-stream")],
            &body,
        )
        .await;
        assert_eq!(status, 200, "{text}");
    }
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
    let mut member = RawClient::connect_small_rcvbuf(server.addr, "/ws").await;
    assert_eq!(member.json().await["type"], "welcome");
    member
        .send_text(&json!({"type":"join","group":"slow","id":1}).to_string())
        .await;
    assert_eq!(member.json().await["type"], "ack");
    let body = vec![b'z'; 60_000];
    for _ in 0..8 {
        let (status, text) = http(
            server.addr,
            "POST",
            "/api/publish?group=slow",
            &[("Content-Type", "application/octet-stream")],
            &body,
        )
        .await;
        assert_eq!(status, 200, "{text}");
    }
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
