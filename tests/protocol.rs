//! The roomcast protocol over real sockets: groups, fan-out, direct sends,
//! the binary form, and every error code.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use roomcast::config::Config;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn join_publish_receive_across_clients() {
    let server = start(config()).await;
    let (mut a, a_id) = connect(&server).await;
    let (mut b, _) = connect(&server).await;
    let (mut c, _) = connect(&server).await;
    for ws in [&mut a, &mut b] {
        let r = request(ws, json!({"type":"join","group":"lobby","id":1})).await;
        assert_eq!(r, json!({"type":"ack","id":1}));
    }
    // c joins another group and must not see lobby traffic.
    assert_eq!(
        request(&mut c, json!({"type":"join","group":"other","id":"j"})).await["type"],
        "ack"
    );

    send_json(
        &mut a,
        json!({"type":"publish","group":"lobby","data":{"text":"hi","n":[1,2]},"id":7}),
    )
    .await;
    let expected = json!({"type":"message","group":"lobby","from":a_id,"data":{"text":"hi","n":[1,2]}});
    // The publisher is a member: it gets its own message and the ack (in that order).
    assert_eq!(recv_json(&mut a).await, expected);
    assert_eq!(recv_json(&mut a).await, json!({"type":"ack","id":7}));
    assert_eq!(recv_json(&mut b).await, expected);

    // c publishes into lobby without being a member.
    assert_eq!(
        request(
            &mut c,
            json!({"type":"publish","group":"lobby","data":null,"id":8})
        )
        .await["type"],
        "ack"
    );
    for ws in [&mut a, &mut b] {
        let m = recv_json(ws).await;
        assert_eq!(m["data"], json!(null));
        assert_eq!(m["group"], "lobby");
    }
    // Nothing arrived at c but its own ack: a ping round trip proves it.
    assert_eq!(
        request(&mut c, json!({"type":"ping","id":9})).await,
        json!({"type":"pong","id":9})
    );
    assert_eq!(server.stats().broadcasts, 2);
    server.stop().await;
}

#[tokio::test]
async fn leave_stops_delivery_and_both_are_idempotent() {
    let server = start(config()).await;
    let (mut a, _) = connect(&server).await;
    let (mut b, _) = connect(&server).await;
    for _ in 0..2 {
        assert_eq!(
            request(&mut a, json!({"type":"join","group":"g","id":1})).await["type"],
            "ack"
        );
    }
    assert_eq!(server.node.hub.member_count("g"), 1);
    for _ in 0..2 {
        assert_eq!(
            request(&mut a, json!({"type":"leave","group":"g","id":2})).await["type"],
            "ack"
        );
    }
    assert_eq!(server.stats().groups, 0, "an empty group disappears");
    request(&mut b, json!({"type":"join","group":"g","id":1})).await;
    request(&mut b, json!({"type":"publish","group":"g","data":1,"id":2})).await;
    recv_json(&mut b).await; // ack (own message came first)
    assert_eq!(
        request(&mut a, json!({"type":"ping","id":3})).await["type"],
        "pong"
    );
    server.stop().await;
}

#[tokio::test]
async fn direct_send_reaches_one_connection() {
    let server = start(config()).await;
    let (mut a, a_id) = connect(&server).await;
    let (mut b, b_id) = connect(&server).await;
    let (mut c, _) = connect(&server).await;
    let r = request(
        &mut a,
        json!({"type":"send","to":b_id,"data":{"secret":true},"id":1}),
    )
    .await;
    assert_eq!(r, json!({"type":"ack","id":1}));
    assert_eq!(
        recv_json(&mut b).await,
        json!({"type":"message","from":a_id,"data":{"secret":true}})
    );
    // A send without id gets no ack but is delivered.
    send_json(&mut a, json!({"type":"send","to":b_id,"data":2})).await;
    assert_eq!(recv_json(&mut b).await["data"], 2);
    assert_eq!(
        request(&mut c, json!({"type":"ping"})).await,
        json!({"type":"pong"})
    );
    server.stop().await;
}

#[tokio::test]
async fn every_error_code() {
    let server = start(Config {
        max_groups_per_connection: 2,
        ..config()
    })
    .await;
    let (mut ws, _) = connect(&server).await;
    let cases = [
        ("not json at all", None, "bad_request"),
        (r#"{"type":"fly","id":1}"#, Some(json!(1)), "bad_request"),
        (r#"{"group":"g","id":2}"#, Some(json!(2)), "bad_request"),
        (r#"{"type":"join","id":3}"#, Some(json!(3)), "bad_request"),
        (
            r#"{"type":"join","group":5,"id":4}"#,
            Some(json!(4)),
            "bad_request",
        ),
        (
            r#"{"type":"publish","group":"g","id":"five"}"#,
            Some(json!("five")),
            "bad_request",
        ),
        (
            r#"{"type":"join","group":"","id":6}"#,
            Some(json!(6)),
            "invalid_group",
        ),
        (
            r#"{"type":"join","group":"a\u0007b","id":7}"#,
            Some(json!(7)),
            "invalid_group",
        ),
        (
            r#"{"type":"send","to":"999999","data":1,"id":8}"#,
            Some(json!(8)),
            "unknown_connection",
        ),
        (
            r#"{"type":"send","to":"nobody","data":1,"id":9}"#,
            Some(json!(9)),
            "unknown_connection",
        ),
    ];
    for (text, id, code) in cases {
        send_text(&mut ws, text).await;
        let e = recv_json(&mut ws).await;
        assert_eq!(e["type"], "error", "{text}: {e}");
        assert_eq!(e["code"], code, "{text}: {e}");
        assert_eq!(e.get("id").cloned(), id, "{text}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    let long = "x".repeat(129);
    let e = request(&mut ws, json!({"type":"join","group":long,"id":10})).await;
    assert_eq!(e["code"], "invalid_group");
    request(&mut ws, json!({"type":"join","group":"one","id":11})).await;
    request(&mut ws, json!({"type":"join","group":"two","id":12})).await;
    let e = request(&mut ws, json!({"type":"join","group":"three","id":13})).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("too_many_groups"), Some(13))
    );
    // Re-joining a group it is already in is fine at the limit.
    assert_eq!(
        request(&mut ws, json!({"type":"join","group":"two","id":14})).await["type"],
        "ack"
    );
    // Errors never closed the connection.
    assert_eq!(
        request(&mut ws, json!({"type":"ping","id":15})).await["type"],
        "pong"
    );
    server.stop().await;
}

#[tokio::test]
async fn binary_protocol() {
    let server = start(config()).await;
    let (mut a, _) = connect(&server).await;
    let (mut b, _) = connect(&server).await;
    // Short group names work (one byte).
    a.send(Message::binary(b"\x01\0\0\0g".to_vec())).await.unwrap();
    b.send(Message::binary(b"\x01\0\0\0g".to_vec())).await.unwrap();
    // Binary join has no id, so no ack: wait until both are members.
    server
        .wait_stats("two members", |_| server.node.hub.member_count("g") == 2)
        .await;
    a.send(Message::binary(b"\x03\0\0\0\x01g\x00\xffpayload".to_vec()))
        .await
        .unwrap();
    for ws in [&mut a, &mut b] {
        match recv(ws).await {
            Message::Binary(bin) => assert_eq!(&bin[..], b"\x04\0\0\0\x01g\x00\xffpayload"),
            other => panic!("expected binary, got {other:?}"),
        }
    }
    // A JSON publish to the same group arrives as JSON text.
    request(&mut b, json!({"type":"publish","group":"g","data":"t","id":1})).await;
    assert_eq!(recv_json(&mut a).await["data"], "t");
    // Malformed binary frames get JSON errors and the connection stays.
    for (bad, code) in [
        (&b"\x01\0"[..], "bad_request"),
        (b"\x07\0\0\0g", "bad_request"),
        (b"\x03\0\0\0\x09g", "bad_request"),
        (b"\x01\0\0\0\xc3\x28", "invalid_group"),
    ] {
        a.send(Message::binary(bad.to_vec())).await.unwrap();
        let e = recv_json(&mut a).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some(code)),
            "{bad:?}"
        );
    }
    // Binary leave.
    a.send(Message::binary(b"\x02\0\0\0g".to_vec())).await.unwrap();
    server
        .wait_stats("one member", |_| server.node.hub.member_count("g") == 1)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn no_echo_skips_the_publisher() {
    let server = start(Config {
        no_echo: true,
        ..config()
    })
    .await;
    let (mut a, _) = connect(&server).await;
    let (mut b, _) = connect(&server).await;
    request(&mut a, json!({"type":"join","group":"g","id":1})).await;
    request(&mut b, json!({"type":"join","group":"g","id":1})).await;
    // The next frame for a is the ack, not its own message.
    assert_eq!(
        request(&mut a, json!({"type":"publish","group":"g","data":1,"id":2})).await["type"],
        "ack"
    );
    assert_eq!(recv_json(&mut b).await["data"], 1);
    server.stop().await;
}

#[tokio::test]
async fn ids_are_unique_strings_and_stats_endpoints_answer() {
    let server = start(config()).await;
    let mut ids = std::collections::HashSet::new();
    let mut conns = Vec::new();
    for _ in 0..20 {
        let (ws, id) = connect(&server).await;
        assert!(ids.insert(id));
        conns.push(ws);
    }
    let (status, line) = http_get(server.addr, "/stats", &[]).await;
    assert_eq!(status, 200);
    assert!(line.starts_with("Connections: 20 | Messages: 0/"), "{line}");
    let (status, body) = http_get(server.addr, "/stats?format=json", &[]).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["connections"], 20);
    // The node's name: by default the host name and a random suffix.
    let node = v["node"].as_str().expect("a node name");
    assert_eq!(node, &*server.node.name);
    let (_, suffix) = node.rsplit_once('-').expect("name-suffix");
    assert!(
        suffix.len() == 4 && suffix.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{node}"
    );
    let (_, body) = http_get(server.addr, "/stats", &[("Accept", "application/json")]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["connections"],
        20
    );
    assert_eq!(http_get(server.addr, "/healthz", &[]).await.0, 200);
    let (status, body) = http_get(server.addr, "/nope", &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("\"error\""));
    // A plain GET to /ws is not an upgrade.
    assert_eq!(http_get(server.addr, "/ws", &[]).await.0, 426);
    server.stop().await;
}

/// Fan-out through the flush shards (and without them): every subscriber
/// gets every publication once, in order, also one that reads slowly
/// through a small socket buffer (so writes are partial and the shard hands
/// the rest back to the connection's task), and the publisher gets each ack
/// after its own copy.
#[tokio::test]
async fn fanout_is_complete_and_ordered_with_any_number_of_flushers() {
    for flushers in [0, 1, 2] {
        let server = start(Config {
            message_rate: 0,
            flushers: Some(flushers),
            ..config()
        })
        .await;
        let mut subs = Vec::new();
        for _ in 0..20 {
            let (mut ws, _) = connect(&server).await;
            assert_eq!(
                request(&mut ws, json!({"type":"join","group":"g","id":1})).await["type"],
                "ack"
            );
            subs.push(ws);
        }
        let (mut slow, _) = connect_small_rcvbuf(&server).await;
        assert_eq!(
            request(&mut slow, json!({"type":"join","group":"g","id":1})).await["type"],
            "ack"
        );
        let (mut publisher, _) = connect(&server).await;
        assert_eq!(
            request(&mut publisher, json!({"type":"join","group":"g","id":0})).await["type"],
            "ack"
        );
        const N: u64 = 400;
        let pad = "p".repeat(1000);
        for i in 1..=N {
            send_json(
                &mut publisher,
                json!({"type":"publish","group":"g","data":[i, pad],"id":i}),
            )
            .await;
        }
        for i in 1..=N {
            let own = recv_json(&mut publisher).await;
            assert_eq!(own["data"][0], i, "flushers={flushers}: own copy {i}");
            assert_eq!(recv_json(&mut publisher).await, json!({"type":"ack","id":i}));
        }
        for ws in subs.iter_mut() {
            for i in 1..=N {
                assert_eq!(recv_json(ws).await["data"][0], i, "flushers={flushers}");
            }
        }
        for i in 1..=N {
            assert_eq!(
                recv_json(&mut slow).await["data"][0],
                i,
                "flushers={flushers}: slow reader"
            );
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        server.stop().await;
    }
}
