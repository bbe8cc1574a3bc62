//! The HTTP server API through a real HTTP connection, with real WebSocket
//! members receiving what it publishes.

mod common;

use common::*;
use roomcast::config::Config;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn publish_json_and_binary_reach_members() {
    let server = start(config()).await;
    let (mut a, _) = connect(&server).await;
    let (mut b, _) = connect(&server).await;
    let (mut outsider, _) = connect(&server).await;
    request(&mut a, json!({"type":"join","group":"news","id":1})).await;
    request(&mut b, json!({"type":"join","group":"news","id":1})).await;

    let (status, body) = api_post(
        server.addr,
        "/api/publish",
        json!({"group":"news","data":{"headline":"hi"}}),
    )
    .await;
    assert_eq!((status, body), (200, json!({"published": true})));
    for ws in [&mut a, &mut b] {
        // Same frame as a WebSocket publish, without "from".
        assert_eq!(
            recv_json(ws).await,
            json!({"type":"message","group":"news","data":{"headline":"hi"}})
        );
    }

    let (status, text) = http(
        server.addr,
        "POST",
        "/api/publish?group=news",
        &[("Content-Type", "application/octet-stream")],
        b"\x00\x01raw",
    )
    .await;
    assert_eq!((status, text.as_str()), (200, r#"{"published":true}"#));
    for ws in [&mut a, &mut b] {
        match recv(ws).await {
            Message::Binary(bin) => assert_eq!(&bin[..], b"\x04\0\0\0\x04news\x00\x01raw"),
            other => panic!("expected binary, got {other:?}"),
        }
    }
    // Publishing to a group nobody is in delivers to nobody: a success,
    // and no frame queued (the metrics count deliveries, the answer does not).
    let deliveries = server.stats().deliveries;
    assert_eq!(
        api_post(server.addr, "/api/publish", json!({"group":"empty","data":1}))
            .await
            .1["published"],
        true
    );
    assert_eq!(server.stats().deliveries, deliveries);
    assert_eq!(
        request(&mut outsider, json!({"type":"ping","id":1})).await["type"],
        "pong"
    );
    server.stop().await;
}

#[tokio::test]
async fn broadcast_send_and_disconnect() {
    let server = start(config()).await;
    let (mut a, a_id) = connect(&server).await;
    let (mut b, b_id) = connect(&server).await;
    request(&mut a, json!({"type":"join","group":"g","id":1})).await;

    let (status, body) = api_post(server.addr, "/api/broadcast", json!({"data":"all hands"})).await;
    assert_eq!((status, body["published"].as_bool()), (200, Some(true)));
    for ws in [&mut a, &mut b] {
        assert_eq!(recv_json(ws).await, json!({"type":"message","data":"all hands"}));
    }

    let (status, body) = api_post(
        server.addr,
        "/api/send",
        json!({"to": b_id, "data": {"just":"you"}}),
    )
    .await;
    assert_eq!((status, body["published"].as_bool()), (200, Some(true)));
    assert_eq!(
        recv_json(&mut b).await,
        json!({"type":"message","data":{"just":"you"}})
    );
    for to in ["999999", "not-an-id"] {
        let (status, body) = api_post(server.addr, "/api/send", json!({"to": to, "data": 1})).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("unknown_connection")),
            "{to}"
        );
    }

    let (status, body) = api_post(
        server.addr,
        "/api/disconnect",
        json!({"conn": a_id, "code": 4100, "reason": "kicked"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, frame) = recv_until_close(&mut a).await;
    let frame = frame.unwrap();
    assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4100, "kicked"));
    // A code the server also uses itself keeps the caller's reason.
    let (mut c, c_id) = connect(&server).await;
    let (status, _) = api_post(
        server.addr,
        "/api/disconnect",
        json!({"conn": c_id, "code": 4001, "reason": "go away"}),
    )
    .await;
    assert_eq!(status, 200);
    let (_, frame) = recv_until_close(&mut c).await;
    let frame = frame.unwrap();
    assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4001, "go away"));
    // Default code 4000.
    let (status, _) = api_post(server.addr, "/api/disconnect", json!({"conn": b_id})).await;
    assert_eq!(status, 200);
    assert_eq!(close_code(&mut b).await, 4000);
    server.wait_stats("both gone", |s| s.connections == 0).await;
    let (status, body) = api_post(server.addr, "/api/disconnect", json!({"conn": b_id})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_connection"))
    );
    let (status, _) = api_post(server.addr, "/api/disconnect", json!({"conn": "1", "code": 1006})).await;
    assert_eq!(status, 400);
    server.stop().await;
}

#[tokio::test]
async fn groups_are_listed_with_paging_and_members() {
    let server = start(config()).await;
    let mut conns = Vec::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        let (mut ws, id) = connect(&server).await;
        for g in 0..=i {
            request(&mut ws, json!({"type":"join","group":format!("room-{g}"),"id":1})).await;
        }
        conns.push(ws);
        ids.push(id);
    }
    let (status, page) = api_get(server.addr, "/api/groups?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(
        page,
        json!({"groups":[{"name":"room-0","members":5},{"name":"room-1","members":4}],"next":"room-1"})
    );
    let (_, page) = api_get(server.addr, "/api/groups?limit=2&after=room-1").await;
    assert_eq!(page["next"], "room-3");
    let (_, page) = api_get(server.addr, "/api/groups?after=room-3").await;
    assert_eq!(
        page,
        json!({"groups":[{"name":"room-4","members":1}],"next":null})
    );

    let (status, info) = api_get(server.addr, "/api/groups/room-3").await;
    assert_eq!(status, 200);
    assert_eq!(info["members"], 2);
    let mut got: Vec<String> = serde_json::from_value(info["connections"].clone()).unwrap();
    got.sort();
    let mut want = vec![ids[3].clone(), ids[4].clone()];
    want.sort();
    assert_eq!(got, want);
    // Names with spaces and slashes travel percent-encoded.
    request(&mut conns[0], json!({"type":"join","group":"a b/c","id":2})).await;
    assert_eq!(
        api_get(server.addr, "/api/groups/a%20b%2Fc").await.1["members"],
        1
    );

    let (status, body) = api_get(server.addr, "/api/groups/nobody-here").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_group"))
    );
    let long = "x".repeat(129);
    assert_eq!(api_get(server.addr, &format!("/api/groups/{long}")).await.0, 400);
    assert_eq!(api_get(server.addr, "/api/groups?limit=0").await.0, 400);
    assert_eq!(api_get(server.addr, "/api/groups?limit=many").await.0, 400);
    server.stop().await;
}

#[tokio::test]
async fn client_mistakes_get_4xx_with_json_bodies() {
    let server = start(Config {
        max_message_size: 1024,
        ..config()
    })
    .await;
    let addr = server.addr;
    let json_ct = [("Content-Type", "application/json")];
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/publish",
            json_ct.to_vec(),
            br#"["g", 1]"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/publish?group=a&group=b",
            vec![("Content-Type", "application/octet-stream")],
            b"x".to_vec(),
            400,
            "bad_request",
        ),
        ("GET", "/api/groups/%FF", vec![], vec![], 400, "invalid_group"),
        (
            "POST",
            "/api/publish?group=%FF",
            vec![("Content-Type", "application/octet-stream")],
            b"x".to_vec(),
            400,
            "invalid_group",
        ),
        (
            "POST",
            "/api/publish",
            json_ct.to_vec(),
            b"{not json".to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/publish",
            json_ct.to_vec(),
            br#"{"group":"g"}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/publish",
            json_ct.to_vec(),
            br#"{"data":1}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/publish",
            json_ct.to_vec(),
            br#"{"group":"g","data":1,"extra":2}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/publish",
            json_ct.to_vec(),
            br#"{"group":"","data":1}"#.to_vec(),
            400,
            "invalid_group",
        ),
        (
            "POST",
            "/api/publish",
            json_ct.to_vec(),
            vec![b' '; 2000],
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/api/publish",
            vec![("Content-Type", "text/plain")],
            b"hi".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/api/publish",
            vec![("Content-Type", "application/octet-stream")],
            b"hi".to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/broadcast",
            json_ct.to_vec(),
            b"[]".to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/send",
            json_ct.to_vec(),
            br#"{"to":5,"data":1}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/disconnect",
            json_ct.to_vec(),
            br#"{"conn":"1","reason":7}"#.to_vec(),
            400,
            "bad_request",
        ),
        ("GET", "/api/publish", vec![], vec![], 405, "method_not_allowed"),
        ("DELETE", "/api/groups", vec![], vec![], 405, "method_not_allowed"),
        ("GET", "/api/nothing", vec![], vec![], 404, "not_found"),
    ];
    for (method, path, headers, body, status, code) in cases {
        let (got, text) = http(addr, method, path, &headers, &body).await;
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert_eq!(
            got,
            status,
            "{method} {path} {}: {text}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(v["error"]["code"], code, "{method} {path}: {text}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    server.stop().await;
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let key = "test-key-0123456789";
    let server = start(Config {
        api_key: Some(key.into()),
        ..config()
    })
    .await;
    let body = br#"{"group":"g","data":1}"#;
    let ct = ("Content-Type", "application/json");
    let (status, text) = http(server.addr, "POST", "/api/publish", &[ct], body).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("unauthorized"));
    let bad = format!("Bearer {key}x");
    assert_eq!(
        http(
            server.addr,
            "POST",
            "/api/publish",
            &[ct, ("Authorization", &bad)],
            body
        )
        .await
        .0,
        401
    );
    // The scheme name is case-insensitive (RFC 9110).
    let lower = format!("bearer {key}");
    assert_eq!(
        http(
            server.addr,
            "POST",
            "/api/publish",
            &[ct, ("Authorization", &lower)],
            body
        )
        .await
        .0,
        200
    );
    let good = format!("Bearer {key}");
    let (status, text) = http(
        server.addr,
        "POST",
        "/api/publish",
        &[ct, ("Authorization", &good)],
        body,
    )
    .await;
    assert_eq!((status, text.as_str()), (200, r#"{"published":true}"#));
    assert_eq!(http_get(server.addr, "/api/groups", &[]).await.0, 401);
    assert_eq!(
        http_get(server.addr, "/api/groups", &[("Authorization", &good)])
            .await
            .0,
        200
    );
    // The WebSocket endpoint and stats are not behind the key.
    assert_eq!(http_get(server.addr, "/healthz", &[]).await.0, 200);
    server.stop().await;
}
