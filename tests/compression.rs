//! permessage-deflate (RFC 7692) through real sockets: what is negotiated,
//! one compression per publication shared by every deflate member (with a
//! third-party client, soketto, beside plain ones), compressed and
//! fragmented client messages, the zip bomb, RSV1 without negotiation and
//! corrupt compressed data.

mod common;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use futures_util::{SinkExt, StreamExt};
use roomcast::config::{Config, Switch};
use roomcast::ws::frame::{OP_BINARY, OP_CONTINUATION, OP_PING, OP_TEXT};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use yawc::frame::{Frame, OpCode};
use yawc::{Options, TcpWebSocket, WebSocket};

/// A yawc client on `/ws` that negotiated permessage-deflate, after its
/// welcome.
async fn yawc_connect(server: &TestServer) -> TcpWebSocket {
    let url = format!("ws://{}/ws", server.addr).parse().unwrap();
    let mut ws = WebSocket::connect(url)
        .with_options(Options::default().with_balanced_compression())
        .await
        .expect("connect");
    let welcome = yawc_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    ws
}

/// The next data message's payload (yawc inflates compressed ones).
async fn yawc_data(ws: &mut TcpWebSocket) -> (OpCode, Vec<u8>) {
    loop {
        let f = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("a message in time")
            .expect("a message");
        match f.opcode() {
            OpCode::Text | OpCode::Binary => return (f.opcode(), f.payload().to_vec()),
            _ => {}
        }
    }
}

async fn yawc_json(ws: &mut TcpWebSocket) -> Value {
    serde_json::from_slice(&yawc_data(ws).await.1).expect("JSON")
}

async fn yawc_request(ws: &mut TcpWebSocket, v: Value) -> Value {
    ws.send(Frame::text(v.to_string())).await.unwrap();
    yawc_json(ws).await
}

/// Raw deflate of one message as a client sends it: sync flush, the
/// trailing 00 00 ff ff removed; `z` may carry context from earlier
/// messages.
fn deflate_with(z: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let before = z.total_in();
    loop {
        let consumed = (z.total_in() - before) as usize;
        out.reserve(data.len() + 64);
        z.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .unwrap();
        if (z.total_in() - before) as usize == data.len() && out.ends_with(&[0, 0, 0xff, 0xff]) {
            break;
        }
    }
    out.truncate(out.len() - 4);
    out
}

fn deflate(data: &[u8], window: u8) -> Vec<u8> {
    deflate_with(
        &mut Compress::new_with_window_bits(Compression::new(6), false, window),
        data,
    )
}

/// The payload of a frame the server sent, inflated if compressed (the
/// server never keeps context, so each message inflates on its own).
fn payload_of(f: &RawFrame) -> Vec<u8> {
    if !f.rsv1 {
        return f.payload.clone();
    }
    let mut input = f.payload.clone();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut z = Decompress::new_with_window_bits(false, 15);
    let mut out = Vec::with_capacity(1 << 20);
    z.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
    out
}

/// A client frame with RSV1 set on its first byte.
fn compressed_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = roomcast::ws::decoder::client_frame(fin, opcode, [1, 2, 3, 4], payload);
    f[0] |= 0x40;
    f
}

/// Chat-like JSON that compresses well, about `n` bytes.
fn chatty(n: usize, seq: usize) -> String {
    let mut s = String::from("[");
    while s.len() < n {
        s.push_str(&format!(
            r#"{{"user":"ann","room":"lobby","seq":{seq},"text":"hello everyone, hello again"}},"#
        ));
    }
    s.pop();
    s.push(']');
    s
}

#[tokio::test]
async fn deflate_and_plain_members_receive_every_publication_and_each_is_compressed_once() {
    let server = start(config()).await;
    // Five deflate members through yawc, one through a raw client (to see
    // the RSV1 bit), and one plain tungstenite member.
    let mut third_party = Vec::new();
    for i in 0..5 {
        let mut ws = yawc_connect(&server).await;
        let ack = yawc_request(&mut ws, json!({"type":"join","group":"room","id":i})).await;
        assert_eq!(ack, json!({"type":"ack","id":i}));
        third_party.push(ws);
    }
    // Only yawc members so far: a compression run proves they negotiated
    // deflate (nothing is compressed for nobody).
    let first = chatty(1000, 0);
    let (status, _) = api_post(
        server.addr,
        "/api/publish",
        json!({"group":"room","data": serde_json::from_str::<Value>(&first).unwrap()}),
    )
    .await;
    assert_eq!(status, 200);
    for ws in &mut third_party {
        let m: Value = serde_json::from_slice(&yawc_data(ws).await.1).unwrap();
        assert_eq!(m["data"][0]["seq"], 0);
    }
    assert_eq!(
        server.node.metrics.compressions(),
        1,
        "five yawc members, one compression"
    );
    let mut raw = RawClient::connect_offering(server.addr, "/ws", "permessage-deflate").await;
    assert!(raw.deflate, "{}", raw.head);
    assert_eq!(raw.json().await["type"], "welcome");
    raw.send_text(r#"{"type":"join","group":"room","id":1}"#).await;
    assert_eq!(raw.json().await, json!({"type":"ack","id":1}));
    let (mut plain, _) = connect(&server).await;
    assert_eq!(
        request(&mut plain, json!({"type":"join","group":"room","id":1})).await,
        json!({"type":"ack","id":1})
    );

    // Large and small, JSON from the API and from a client, and binary.
    let mut expected: Vec<(bool, Vec<u8>)> = Vec::new(); // (binary, payload as delivered)
    let mut large = 1;
    for i in 0..24 {
        let size = if i % 2 == 0 { 2048 } else { 40 };
        let data = chatty(size, i);
        if i % 3 == 2 {
            let (status, _) = http(
                server.addr,
                "POST",
                "/api/publish?group=room",
                &[("Content-Type", "application/octet-stream")],
                data.as_bytes(),
            )
            .await;
            assert_eq!(status, 200);
            let mut body = vec![4, 0, 0, 0, 4];
            body.extend_from_slice(b"room");
            body.extend_from_slice(data.as_bytes());
            expected.push((true, body));
        } else {
            let (status, _) = api_post(
                server.addr,
                "/api/publish",
                json!({"group":"room","data": serde_json::from_str::<Value>(&data).unwrap()}),
            )
            .await;
            assert_eq!(status, 200);
            let v = serde_json::to_string(&serde_json::from_str::<Value>(&data).unwrap()).unwrap();
            expected.push((
                false,
                format!(r#"{{"type":"message","group":"room","data":{v}}}"#).into_bytes(),
            ));
        }
        if expected.last().unwrap().1.len() >= 256 {
            large += 1;
        }
    }
    for ws in &mut third_party {
        for (binary, want) in &expected {
            let (op, got) = yawc_data(ws).await;
            assert_eq!(op, if *binary { OpCode::Binary } else { OpCode::Text });
            assert_eq!(&got, want);
        }
    }
    for (binary, want) in &expected {
        let f = raw.frame().await.unwrap();
        assert_eq!(f.opcode, if *binary { OP_BINARY } else { OP_TEXT });
        assert_eq!(
            f.rsv1,
            want.len() >= 256,
            "compressed exactly when at or above the threshold"
        );
        if f.rsv1 {
            assert!(
                f.payload.len() < want.len() / 3,
                "{} of {}",
                f.payload.len(),
                want.len()
            );
        }
        assert_eq!(&payload_of(&f), want);
    }
    for (binary, want) in &expected {
        let m = tokio::time::timeout(STEP, plain.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match (binary, m) {
            (false, Message::Text(t)) => assert_eq!(t.as_bytes(), &want[..]),
            (true, Message::Binary(b)) => assert_eq!(&b[..], &want[..]),
            (_, other) => panic!("{other:?}"),
        }
    }
    // Six deflate members, one compression per large publication.
    assert_eq!(server.node.metrics.compressions(), large);
    server.stop().await;
}

#[tokio::test]
async fn compressed_and_fragmented_client_messages_are_inflated() {
    let server = start(config()).await;
    let mut echo =
        RawClient::connect_offering(server.addr, "/echo", "permessage-deflate; client_max_window_bits").await;
    let head = echo.head.to_ascii_lowercase();
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate; server_no_context_takeover")
            && head.contains("client_max_window_bits="),
        "{head}"
    );
    let window: u8 = head
        .split("client_max_window_bits=")
        .nth(1)
        .and_then(|r| {
            r[..2]
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .expect("a client window in the answer");
    assert!((9..=15).contains(&window));
    // One compressed frame, with context kept across messages (the client
    // did not offer client_no_context_takeover): the second refers back.
    let mut z = Compress::new_with_window_bits(Compression::new(6), false, window);
    let first = chatty(3000, 1);
    echo.send_raw(&compressed_frame(
        true,
        OP_TEXT,
        &deflate_with(&mut z, first.as_bytes()),
    ))
    .await;
    let f = echo.frame().await.unwrap();
    assert_eq!(
        (f.opcode, f.rsv1),
        (OP_TEXT, true),
        "the echo goes compressed too"
    );
    assert_eq!(payload_of(&f), first.as_bytes());
    let second = chatty(3000, 1);
    let c = deflate_with(&mut z, second.as_bytes());
    assert!(c.len() < 40, "refers to the first message: {} bytes", c.len());
    echo.send_raw(&compressed_frame(true, OP_TEXT, &c)).await;
    assert_eq!(payload_of(&echo.frame().await.unwrap()), second.as_bytes());
    // A fragmented compressed binary message: RSV1 on the first frame
    // only, a Ping in between.
    let data: Vec<u8> = chatty(5000, 7).into_bytes();
    let c = deflate_with(&mut z, &data);
    let (a, rest) = c.split_at(c.len() / 3);
    let (b, d) = rest.split_at(rest.len() / 2);
    let mut wire = compressed_frame(false, OP_BINARY, a);
    wire.extend(roomcast::ws::decoder::client_frame(
        false,
        OP_CONTINUATION,
        [5, 6, 7, 8],
        b,
    ));
    wire.extend(roomcast::ws::decoder::client_frame(
        true,
        OP_PING,
        [1, 1, 1, 1],
        b"p",
    ));
    wire.extend(roomcast::ws::decoder::client_frame(
        true,
        OP_CONTINUATION,
        [9, 9, 9, 9],
        d,
    ));
    echo.send_raw(&wire).await;
    let pong = echo.frame().await.unwrap();
    assert_eq!((pong.opcode, &pong.payload[..]), (0xA, &b"p"[..]));
    let f = echo.frame().await.unwrap();
    assert_eq!(f.opcode, OP_BINARY);
    assert_eq!(payload_of(&f), data);
    // A plain message on the same connection still works, small ones come
    // back plain.
    echo.send_text("short and plain").await;
    let f = echo.frame().await.unwrap();
    assert_eq!((f.rsv1, &f.payload[..]), (false, &b"short and plain"[..]));
    assert_eq!(server.node.metrics.inflated_messages(), 3);

    // On /ws a compressed request is served like any other.
    let (mut member, _) = connect(&server).await;
    request(&mut member, json!({"type":"join","group":"g","id":1})).await;
    let mut ws = RawClient::connect_offering(server.addr, "/ws", "permessage-deflate").await;
    assert_eq!(ws.json().await["type"], "welcome");
    let publish = json!({"type":"publish","group":"g","data":{"hi":"there"},"id":9}).to_string();
    ws.send_raw(&compressed_frame(true, OP_TEXT, &deflate(publish.as_bytes(), 15)))
        .await;
    assert_eq!(ws.json().await, json!({"type":"ack","id":9}));
    let m = recv_json(&mut member).await;
    assert_eq!(m["data"], json!({"hi":"there"}));
    server.stop().await;
}

#[tokio::test]
async fn a_zip_bomb_closes_1009_and_costs_no_more_than_the_limit() {
    let server = start(config()).await; // --max-message-size 64 KiB
    // 32 MiB of zeros compress to about 32 KiB: under the limit on the wire.
    let bomb = deflate(&vec![0u8; 32 << 20], 15);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    let before = rss_bytes();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(RawClient::connect_offering(server.addr, "/echo", "permessage-deflate").await);
    }
    for c in &mut clients {
        c.send_raw(&compressed_frame(true, OP_BINARY, &bomb)).await;
    }
    for c in &mut clients {
        let (frames, code) = c.until_close().await;
        assert!(frames.is_empty(), "nothing was echoed");
        assert_eq!(code, Some(1009));
    }
    let grown = rss_bytes().saturating_sub(before);
    // Inflating them whole would take 8 x 32 MiB.
    assert!(grown < 24 << 20, "RSS grew {} MiB", grown >> 20);
    server.stop().await;
}

#[tokio::test]
async fn rsv1_without_negotiated_deflate_closes_1002() {
    // The client did not offer deflate.
    let server = start(config()).await;
    let mut c = RawClient::connect(server.addr, "/echo").await;
    assert!(!c.head.to_ascii_lowercase().contains("sec-websocket-extensions"));
    c.send_raw(&compressed_frame(true, OP_TEXT, &deflate(b"hello hello", 15)))
        .await;
    assert_eq!(c.until_close().await.1, Some(1002));
    server.stop().await;
    // The server has compression off: the offer is declined, RSV1 is a
    // protocol error.
    let server = start(Config {
        compression: Switch::Off,
        ..config()
    })
    .await;
    let mut c = RawClient::connect_offering(server.addr, "/ws", "permessage-deflate").await;
    assert!(!c.deflate, "{}", c.head);
    assert_eq!(c.json().await["type"], "welcome");
    c.send_raw(&compressed_frame(true, OP_TEXT, &deflate(b"{}", 15)))
        .await;
    assert_eq!(c.until_close().await.1, Some(1002));
    server.stop().await;
}

#[tokio::test]
async fn corrupt_compressed_data_or_invalid_utf8_after_inflating_closes_1007() {
    let server = start(config()).await;
    let mut c = RawClient::connect_offering(server.addr, "/echo", "permessage-deflate").await;
    c.send_raw(&compressed_frame(true, OP_TEXT, &[0xff, 0xfe, 0xfd, 0x00, 0x12]))
        .await;
    assert_eq!(c.until_close().await.1, Some(1007));
    let mut c = RawClient::connect_offering(server.addr, "/echo", "permessage-deflate").await;
    c.send_raw(&compressed_frame(
        true,
        OP_TEXT,
        &deflate(b"ok \xce\xba then \xed\xa0\x80", 15),
    ))
    .await;
    assert_eq!(c.until_close().await.1, Some(1007));
    server.stop().await;
}

#[tokio::test]
async fn offers_the_server_cannot_honour_are_declined_never_refused() {
    let server = start(config()).await;
    for (offer, answer) in [
        (
            "permessage-deflate",
            Some(
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=15; client_no_context_takeover",
            ),
        ),
        ("x-webkit-deflate-frame", None),
        ("permessage-deflate; server_max_window_bits", None),
        ("permessage-deflate; bogus=1", None),
        ("permessage-deflate; server_max_window_bits=16", None),
        (
            "permessage-deflate; server_max_window_bits=16, permessage-deflate; server_max_window_bits=10",
            Some(
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_no_context_takeover",
            ),
        ),
    ] {
        let c = RawClient::connect_offering(server.addr, "/ws", offer).await;
        let got = c.head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions"))
                .map(|(_, v)| v.trim().to_owned())
        });
        assert_eq!(got.as_deref(), answer, "offer {offer}");
    }
    server.stop().await;
}
