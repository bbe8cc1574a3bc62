//! JWT authentication on connect, claims, expiry and refresh, through real
//! sockets and real signed tokens.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use roomcast::config::Config;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = JWT_SECRET;

fn now() -> u64 {
    unix_now()
}

fn token(claims: Value) -> String {
    hs256_token(&claims)
}

fn auth_config() -> Config {
    Config {
        jwt_secret: Some(SECRET.into()),
        ..config()
    }
}

async fn connect_with(server: &TestServer, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}?token={token}", server.url("/ws")))
        .await
        .expect("authorized connect");
    assert_eq!(recv_json(&mut ws).await["type"], "welcome");
    ws
}

async fn refused(server: &TestServer, query: &str) -> (u16, Value) {
    let headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let (status, head, body) = http_full(server.addr, "GET", &format!("/ws{query}"), &headers, &[]).await;
    if status == 401 {
        assert!(
            head.to_ascii_lowercase().contains("www-authenticate: bearer"),
            "{head}"
        );
    }
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn missing_invalid_or_expired_tokens_get_401_before_the_upgrade() {
    let server = start(auth_config()).await;
    let (status, body) = refused(&server, "").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing token")
    );
    let (status, _) = refused(&server, "?token=not.a.jwt").await;
    assert_eq!(status, 401);
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub":"mallory","exp": now() + 60}),
        &EncodingKey::from_secret(b"some-other-secret-of-enough-length!!"),
    )
    .unwrap();
    assert_eq!(refused(&server, &format!("?token={forged}")).await.0, 401);
    let expired = token(json!({"sub":"ann","exp": now() - 10}));
    let (status, body) = refused(&server, &format!("?token={expired}")).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    let no_exp = token(json!({"sub":"ann"}));
    assert_eq!(refused(&server, &format!("?token={no_exp}")).await.0, 401);
    assert_eq!(
        server.stats().connections_total,
        0,
        "nothing was set up for refused clients"
    );
    server.stop().await;
}

#[tokio::test]
async fn token_in_query_header_or_subprotocol() {
    let server = start(auth_config()).await;
    let t = token(json!({"sub":"ann","exp": now() + 60}));
    connect_with(&server, &t).await;

    let mut req = server.url("/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("header token");
    assert_eq!(recv_json(&mut ws).await["type"], "welcome");

    // Browsers: offered subprotocols; the server selects "roomcast".
    let mut req = server.url("/ws").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("roomcast, bearer.{t}").parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("subprotocol token");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "roomcast");
    assert_eq!(recv_json(&mut ws).await["type"], "welcome");
    server.stop().await;
}

#[tokio::test]
async fn claims_limit_joins_and_publishes_and_name_the_user() {
    let server = start(auth_config()).await;
    let reader = token(json!({"sub":"ann","exp": now() + 60, "groups":["chat:*"], "publish":[]}));
    let writer = token(
        json!({"sub":"bob","exp": now() + 60, "groups":["chat:*","news"], "publish":["chat:announce"]}),
    );
    let mut ann = connect_with(&server, &reader).await;
    let mut bob = connect_with(&server, &writer).await;

    assert_eq!(
        request(&mut ann, json!({"type":"join","group":"chat:announce","id":1})).await["type"],
        "ack"
    );
    let e = request(&mut ann, json!({"type":"join","group":"admin","id":2})).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("not_allowed"), Some(2))
    );
    let e = request(
        &mut ann,
        json!({"type":"publish","group":"chat:announce","data":1,"id":3}),
    )
    .await;
    assert_eq!(e["code"], "not_allowed", "an empty publish list allows nothing");

    assert_eq!(
        request(&mut bob, json!({"type":"join","group":"news","id":1})).await["type"],
        "ack"
    );
    let e = request(
        &mut bob,
        json!({"type":"publish","group":"chat:other","data":1,"id":2}),
    )
    .await;
    assert_eq!(e["code"], "not_allowed");
    send_json(
        &mut bob,
        json!({"type":"publish","group":"chat:announce","data":"hello","id":3}),
    )
    .await;
    assert_eq!(recv_json(&mut bob).await["type"], "ack");
    let m = recv_json(&mut ann).await;
    assert_eq!(
        (m["user"].as_str(), m["data"].as_str()),
        (Some("bob"), Some("hello")),
        "{m}"
    );
    assert!(m["from"].is_string());
    server.stop().await;
}

#[tokio::test]
async fn expiry_closes_with_4003_unless_refreshed() {
    let server = start(auth_config()).await;
    let short = token(json!({"sub":"ann","exp": now() + 2}));

    let mut lapsing = connect_with(&server, &short).await;
    let mut refreshed = connect_with(&server, &short).await;
    // Refresh errors first: another user, and a bad token.
    let other = token(json!({"sub":"eve","exp": now() + 60}));
    let e = request(&mut refreshed, json!({"type":"refresh","token":other,"id":1})).await;
    assert_eq!(e["code"], "not_allowed");
    let e = request(&mut refreshed, json!({"type":"refresh","token":"garbage","id":2})).await;
    assert_eq!(e["code"], "invalid_token");
    let longer = token(json!({"sub":"ann","exp": now() + 60}));
    let r = request(&mut refreshed, json!({"type":"refresh","token":longer,"id":3})).await;
    assert_eq!(r, json!({"type":"ack","id":3}));

    let (_, frame) = recv_until_close(&mut lapsing).await;
    let frame = frame.unwrap();
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (4003, "token expired")
    );
    // Past the first token's expiry, the refreshed connection still works.
    assert_eq!(
        request(&mut refreshed, json!({"type":"ping","id":4})).await["type"],
        "pong"
    );
    server.stop().await;
}

#[tokio::test]
async fn es256_public_key() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("jwt.pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let server = start(Config {
        jwt_public_key: Some(public),
        ..config()
    })
    .await;
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub":"ann","exp": now() + 60}),
        &signing,
    )
    .unwrap();
    connect_with(&server, &t).await;
    // An HS256 token is not accepted by an ES256 server.
    assert_eq!(
        refused(&server, &format!("?token={}", token(json!({"exp": now() + 60}))))
            .await
            .0,
        401
    );
    server.stop().await;
}

#[tokio::test]
async fn without_auth_refresh_is_a_bad_request_and_no_user_appears() {
    let server = start(config()).await;
    let (mut ws, _) = connect(&server).await;
    let e = request(&mut ws, json!({"type":"refresh","token":"x","id":1})).await;
    assert_eq!(e["code"], "bad_request");
    request(&mut ws, json!({"type":"join","group":"g","id":2})).await;
    send_json(&mut ws, json!({"type":"publish","group":"g","data":1})).await;
    assert!(recv_json(&mut ws).await.get("user").is_none());
    server.stop().await;
}

#[tokio::test]
async fn a_refresh_that_narrows_groups_leaves_the_groups_it_no_longer_allows() {
    let server = start(auth_config()).await;
    let wide = token(json!({"sub":"ann","exp": now() + 60, "groups": ["chat:*", "lobby"]}));
    let mut ann = connect_with(&server, &wide).await;
    for (id, g) in [(1, "chat:a"), (2, "chat:b"), (3, "lobby")] {
        let r = request(&mut ann, json!({"type":"join","group":g,"id":id})).await;
        assert_eq!(r, json!({"type":"ack","id":id}), "{g}");
    }
    let narrow = token(json!({"sub":"ann","exp": now() + 60, "groups": ["chat:a"]}));
    send_json(&mut ann, json!({"type":"refresh","token":narrow,"id":4})).await;
    let mut left = Vec::new();
    loop {
        let f = recv_json(&mut ann).await;
        if f["type"] == "ack" {
            assert_eq!(f["id"], 4);
            break;
        }
        assert_eq!(f["type"], "left", "{f}");
        assert_eq!(f["reason"], "the new token does not allow this group");
        left.push(f["group"].as_str().unwrap().to_owned());
    }
    left.sort();
    assert_eq!(left, ["chat:b", "lobby"]);
    let members = |g: &str| server.node.hub.member_count(g);
    assert_eq!(
        (members("chat:a"), members("chat:b"), members("lobby")),
        (1, 0, 0)
    );
    // Nothing published to a revoked group reaches the connection any more;
    // the group still allowed works.
    let mut other = connect_with(&server, &wide).await;
    for (id, g) in [(1, "lobby"), (2, "chat:a")] {
        let r = request(&mut other, json!({"type":"publish","group":g,"data":g,"id":id})).await;
        assert_eq!(r["type"], "ack");
    }
    let m = recv_json(&mut ann).await;
    assert_eq!(
        (m["type"].as_str(), m["data"].as_str()),
        (Some("message"), Some("chat:a"))
    );
    // And joining a revoked group again is refused.
    let e = request(&mut ann, json!({"type":"join","group":"lobby","id":5})).await;
    assert_eq!(e["code"], "not_allowed");
    server.stop().await;
}
