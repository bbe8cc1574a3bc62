//! Limits and failure handling over real sockets: message size, UTF-8,
//! slow consumers under both policies, heartbeat and idle timeout, and
//! cleanup after many connections.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use roomcast::config::{Config, SlowConsumerPolicy};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

#[tokio::test]
async fn oversize_message_closes_1009_and_limit_is_inclusive() {
    let server = start(Config {
        max_message_size: 1000,
        ..config()
    })
    .await;
    let (mut ws, _) = connect(&server).await;
    // Exactly at the limit is fine (binary publish of 1000 bytes in total).
    let mut ok = b"\x03\0\0\0\x01g".to_vec();
    ok.resize(1000, b'x');
    ws.send(Message::binary(ok)).await.unwrap();
    assert_eq!(
        request(&mut ws, json!({"type":"ping","id":1})).await["type"],
        "pong"
    );
    ws.send(Message::binary(vec![0u8; 1001])).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1009);
    // Also when the excess comes from fragments adding up.
    let (mut ws, _) = connect(&server).await;
    let mut first = Frame::message(vec![b'a'; 600], OpCode::Data(Data::Text), false);
    first.header_mut().is_final = false;
    ws.send(Message::Frame(first)).await.unwrap();
    let second = Frame::message(vec![b'a'; 600], OpCode::Data(Data::Continue), true);
    ws.send(Message::Frame(second)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1009);
    server
        .wait_stats("connections gone", |s| s.connections == 0)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let server = start(config()).await;
    let (mut ws, _) = connect(&server).await;
    let bad = Frame::message(b"{\"type\":\"\xff\"}".to_vec(), OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(bad)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1007);
    server.stop().await;
}

#[tokio::test]
async fn protocol_violation_closes_1002() {
    let server = start(config()).await;
    let (mut ws, _) = connect(&server).await;
    // A continuation frame with no message in progress.
    let header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Continue),
        ..FrameHeader::default()
    };
    ws.send(Message::Frame(Frame::from_payload(header, b"x".to_vec().into())))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, 1002);
    server.stop().await;
}

#[tokio::test]
async fn client_close_is_answered_with_its_code() {
    let server = start(config()).await;
    let (mut ws, _) = connect(&server).await;
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 4321.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let (_, frame) = recv_until_close(&mut ws).await;
    assert_eq!(u16::from(frame.unwrap().code), 4321);
    server.wait_stats("closed", |s| s.connections == 0).await;
    server.stop().await;
}

/// Publish `n` messages of `size` bytes to `group` in lockstep with a fast
/// member, which must receive every one in order.
async fn publish_in_lockstep(publisher: &mut Ws, fast: &mut Ws, n: usize, size: usize) {
    let pad = "p".repeat(size);
    for i in 0..n {
        send_json(
            publisher,
            json!({"type":"publish","group":"g","data":{"seq":i,"pad":pad}}),
        )
        .await;
        let m = recv_json(fast).await;
        assert_eq!(m["data"]["seq"], i, "the fast member lost or reordered a message");
    }
}

/// A group with a slow member (tiny receive buffer, reads nothing) and a
/// fast one, after 3000 x 8 KiB = 24 MiB were published in lockstep with the
/// fast member: far more than the kernel buffers between the server and a
/// client that reads nothing. Returns the server, slow, fast and publisher.
async fn slow_consumer_scenario(policy: SlowConsumerPolicy) -> (TestServer, Ws, Ws, Ws) {
    let server = start(Config {
        queue_messages: 16,
        queue_bytes: 64 * 1024,
        // 3000 publishes in lockstep can exceed the default message rate.
        message_rate: 0,
        slow_consumer: policy,
        ..config()
    })
    .await;
    let (mut slow, _) = connect_small_rcvbuf(&server).await;
    let (mut fast, _) = connect(&server).await;
    let (mut publisher, _) = connect(&server).await;
    request(&mut slow, json!({"type":"join","group":"g","id":1})).await;
    request(&mut fast, json!({"type":"join","group":"g","id":1})).await;
    publish_in_lockstep(&mut publisher, &mut fast, 3000, 8 * 1024).await;
    (server, slow, fast, publisher)
}

#[tokio::test]
async fn slow_consumer_is_disconnected_and_others_lose_nothing() {
    let (server, mut slow, mut fast, _publisher) =
        slow_consumer_scenario(SlowConsumerPolicy::Disconnect).await;
    let s = server
        .wait_stats("one slow disconnect", |s| s.slow_consumer_disconnects == 1)
        .await;
    assert_eq!(s.dropped, 0);
    // The slow client reads now: a prefix of the messages, in order, then 4001.
    let (before, frame) = recv_until_close(&mut slow).await;
    assert_eq!(u16::from(frame.expect("close frame").code), 4001);
    for (i, m) in before.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        assert_eq!(v["data"]["seq"], i);
    }
    assert!(before.len() < 3000);
    // The fast member is still fine.
    assert_eq!(
        request(&mut fast, json!({"type":"ping","id":2})).await["type"],
        "pong"
    );
    server.stop().await;
}

#[tokio::test]
async fn slow_consumer_under_drop_policy_skips_messages_and_stays() {
    let (server, mut slow, mut fast, mut publisher) = slow_consumer_scenario(SlowConsumerPolicy::Drop).await;
    let dropped = server.wait_stats("drops", |s| s.dropped > 0).await.dropped;
    assert_eq!(server.stats().slow_consumer_disconnects, 0);
    // The slow client now reads: increasing sequence numbers with gaps, and
    // exactly (3000 - dropped) of them.
    request(
        &mut publisher,
        json!({"type":"publish","group":"g","data":{"seq":"end"},"id":9}),
    )
    .await;
    recv_json(&mut fast).await;
    let mut last = -1i64;
    let mut got = 0u64;
    loop {
        let m = recv_json(&mut slow).await;
        if m["data"]["seq"] == "end" {
            break;
        }
        let seq = m["data"]["seq"].as_i64().unwrap();
        assert!(seq > last, "reordered: {seq} after {last}");
        last = seq;
        got += 1;
    }
    assert_eq!(
        got + dropped,
        3000,
        "every message either delivered or counted as dropped"
    );
    // Still connected.
    assert_eq!(
        request(&mut slow, json!({"type":"ping","id":3})).await["type"],
        "pong"
    );
    server.stop().await;
}

#[tokio::test]
async fn server_pings_and_keeps_a_responsive_client() {
    let server = start(Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..config()
    })
    .await;
    let (mut ws, _) = connect(&server).await;
    // tungstenite answers pings while we read; count them for a second.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(m) = tokio::time::timeout_at(until, ws.next()).await {
        match m.expect("open").expect("no error") {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 3, "only {pings} pings in 1 s at a 100 ms interval");
    assert_eq!(
        request(&mut ws, json!({"type":"ping","id":1})).await["type"],
        "pong"
    );
    server.stop().await;
}

#[tokio::test]
async fn silent_client_times_out_with_4002() {
    let server = start(Config {
        ping_interval: Duration::ZERO,
        idle_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let (mut ws, _) = connect(&server).await;
    let started = std::time::Instant::now();
    assert_eq!(close_code(&mut ws).await, 4002);
    assert!(started.elapsed() >= Duration::from_millis(250));
    server.stop().await;
}

#[tokio::test]
async fn client_ping_gets_pong_with_payload() {
    let server = start(config()).await;
    let (mut ws, _) = connect(&server).await;
    ws.send(Message::Ping(b"hello".to_vec().into())).await.unwrap();
    let m = tokio::time::timeout(STEP, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, Message::Pong(b"hello".to_vec().into()));
    server.stop().await;
}

#[tokio::test]
async fn no_leak_after_1000_connect_join_disconnect_cycles() {
    let server = start(config()).await;
    let mut tasks = Vec::new();
    for t in 0..10 {
        let url = server.url("/ws");
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
                recv_json(&mut ws).await; // welcome
                let group = format!("g{}", (t * 100 + i) % 37);
                let r = request(&mut ws, json!({"type":"join","group":group,"id":1})).await;
                assert_eq!(r["type"], "ack");
                if i % 2 == 0 {
                    ws.close(None).await.unwrap(); // clean close
                    let _ = recv_until_close(&mut ws).await;
                } // else: dropped abruptly
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = server
        .wait_stats("all gone", |s| s.connections == 0 && s.groups == 0)
        .await;
    assert_eq!(s.connections_total, 1000);
    for shard_groups in 0..37 {
        assert_eq!(server.node.hub.member_count(&format!("g{shard_groups}")), 0);
    }
    server.stop().await;
}

#[tokio::test]
async fn nothing_follows_the_close_frame_even_under_traffic() {
    let server = start(Config {
        message_rate: 0,
        ..config()
    })
    .await;
    let mut raw = RawClient::connect_small_rcvbuf(server.addr, "/ws").await;
    let welcome = raw.frame().await.unwrap();
    assert_eq!(welcome.opcode, 1);
    raw.send_text(r#"{"type":"join","group":"g","id":1}"#).await;
    assert_eq!(raw.frame().await.unwrap().payload, br#"{"type":"ack","id":1}"#);
    // A publisher keeps the group busy before and after the raw client
    // closes; the raw client reads nothing until it has sent its Close.
    let (mut publisher, _) = connect(&server).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let flood = tokio::spawn(async move {
        let mut i = 0u64;
        let pad = "x".repeat(2000);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            send_json(
                &mut publisher,
                json!({"type":"publish","group":"g","data":[i, pad]}),
            )
            .await;
            i += 1;
            // About 2 MB/s: busy, but far from filling the raw client's
            // 1 MiB queue before its Close (which would close it with
            // 4001 instead, in a fast build).
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw.send_frame(true, 8, &1000u16.to_be_bytes()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut after_close = 0;
    let mut closed = false;
    while let Some(f) = raw.frame().await {
        if closed {
            after_close += 1;
        }
        if f.opcode == 8 {
            assert_eq!(&f.payload[..2], &1000u16.to_be_bytes());
            closed = true;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(closed, "the server answered the Close");
    assert_eq!(after_close, 0, "frames after the Close");
    flood.await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn echo_connections_cannot_be_targeted_by_send() {
    let server = start(config()).await;
    let (mut ws, my_id) = connect(&server).await;
    let mut echo = RawClient::connect(server.addr, "/echo").await;
    // Ids are sequential: the echo connection got the next one.
    let echo_id = (my_id.parse::<u64>().unwrap() + 1).to_string();
    let e = request(&mut ws, json!({"type":"send","to":echo_id,"data":"x","id":1})).await;
    assert_eq!(e["code"], "unknown_connection");
    echo.send_frame(true, 2, b"ping-pong").await;
    let f = echo.frame().await.unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (2, &b"ping-pong"[..]));
    server.stop().await;
}

#[tokio::test]
async fn a_reading_client_under_drop_policy_is_not_timed_out() {
    let server = start(Config {
        queue_messages: 8,
        slow_consumer: SlowConsumerPolicy::Drop,
        // The publisher floods on purpose; this test is not about its rate.
        message_rate: 0,
        ping_interval: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(3),
        ..config()
    })
    .await;
    // A small receive buffer keeps the kernel's share of the backlog small,
    // as it would be for a reader on a slow link; the server's pings then
    // reach the reader (ahead of queued publications) and its pongs count.
    let (mut reader, _) = connect_small_rcvbuf(&server).await;
    request(&mut reader, json!({"type":"join","group":"g","id":1})).await;
    let (mut publisher, _) = connect(&server).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let flood = tokio::spawn(async move {
        let pad = "x".repeat(1024);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            send_json(&mut publisher, json!({"type":"publish","group":"g","data":pad})).await;
            tokio::task::yield_now().await;
        }
    });
    // Read slowly for 4 s (more than the idle timeout), always behind. The
    // signs of life are pongs and the socket taking bytes again after it was
    // full; both lag behind what the kernel buffers, hence the idle timeout
    // of seconds (60 s by default).
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut got = 0;
    while tokio::time::Instant::now() < until {
        match recv(&mut reader).await {
            Message::Text(_) => got += 1,
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.await.unwrap();
    assert!(got > 0);
    assert!(
        server.stats().dropped > 0,
        "the reader was slower than the publisher"
    );
    // Still connected: the backlog drains and a ping is answered, no Close.
    send_json(&mut reader, json!({"type":"ping","id":"last"})).await;
    loop {
        match recv(&mut reader).await {
            Message::Text(t) if t.contains("\"pong\"") => break,
            Message::Text(_) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_neither_sends_nor_reads_times_out_despite_pings() {
    let server = start(Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(500),
        ..config()
    })
    .await;
    // The raw client never answers pings; the server's pings go into the
    // socket without blocking, which must not count as a sign of life.
    let mut raw = RawClient::connect(server.addr, "/ws").await;
    server.wait_stats("timed out", |s| s.connections == 0).await;
    let mut pings = 0;
    let mut close = None;
    while let Some(f) = raw.frame().await {
        match f.opcode {
            9 => pings += 1,
            8 => close = Some(u16::from_be_bytes([f.payload[0], f.payload[1]])),
            _ => {}
        }
    }
    assert!(pings >= 2, "{pings} pings");
    assert_eq!(close, Some(4002));
    server.stop().await;
}

#[tokio::test]
async fn after_a_client_close_the_server_closes_tcp_first() {
    let server = start(config()).await;
    let mut raw = RawClient::connect(server.addr, "/ws").await;
    assert_eq!(raw.frame().await.unwrap().opcode, 1); // welcome
    let started = std::time::Instant::now();
    raw.send_frame(true, 8, &1000u16.to_be_bytes()).await;
    let reply = raw.frame().await.unwrap();
    assert_eq!(
        (reply.opcode, &reply.payload[..]),
        (8, &1000u16.to_be_bytes()[..])
    );
    // EOF from the server, and the connection is gone on the server side,
    // while this client still holds its end open: the server does not sit
    // out its 5 s close wait for the client to close TCP.
    assert_eq!(raw.frame().await, None);
    server.wait_stats("closed", |s| s.connections == 0).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    drop(raw);
    server.stop().await;
}
