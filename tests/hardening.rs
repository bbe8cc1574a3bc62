//! Hardening against hostile clients (issue 11), through a real server on
//! real sockets. Each test is a self-contained function; this file covers:
//!
//! - `/api` request bodies: a declared `Content-Length` over the limit is
//!   refused with 413 before any body byte is read; a body that stalls (a
//!   partial `Content-Length` body, a chunked body announcing an enormous
//!   chunk) gets 408 `body_timeout` after `--body-timeout` and the
//!   connection is closed; the timeout counts from the last byte received,
//!   so a slow body sent in pieces still succeeds; the option itself
//!   (flag, variable, TOML key, validation).
//! - JWTs whose `exp` is beyond any clock (`u64::MAX`), on connect (query
//!   and subprotocol) and in `refresh`: the connection works and does not
//!   expire; refreshing from such a token to a short one still closes with
//!   4003 at the new expiry.
//! - The `/api` loopback rule without an API key: behind `--trusted-proxy`
//!   the client is the address `X-Forwarded-For` names, not the proxy; the
//!   header is ignored when no proxy is trusted; a warning at startup when
//!   proxies are trusted without a key.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use roomcast::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

// ---- shared helpers ----

/// Run the real binary with a clean slate of `ROOMCAST_*` variables.
fn roomcast_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ROOMCAST_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

// ---- /api bodies: size before reading, stall timeout ----

/// A response read to EOF from a raw socket.
struct Reply {
    status: u16,
    /// Status line and headers, lower-cased.
    head: String,
    body: Value,
}

/// Open a connection and write `bytes` (a request head and perhaps part
/// of its body), leaving the connection open for more.
async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

/// Read until the server closes the connection; fails if it neither
/// answers and closes within `within`.
async fn reply_then_eof(s: &mut TcpStream, within: Duration) -> Reply {
    let mut out = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("read failed: {e}; got {:?}", String::from_utf8_lossy(&out)),
        Err(_) => panic!(
            "the server did not answer and close within {within:?}; got {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response: {text:?}"));
    Reply {
        status: head[9..12].parse().unwrap(),
        head: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or_else(|_| panic!("body is not JSON: {text:?}")),
    }
}

fn publish_head(addr: SocketAddr, framing: &str) -> String {
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    )
}

fn body_timeout_config(timeout: Duration) -> Config {
    Config {
        body_timeout: timeout,
        ..config()
    }
}

/// The first probe of item 3: `Content-Length: 1000` and only `{"group"`.
#[tokio::test]
async fn a_stalled_content_length_body_gets_408_and_is_closed() {
    let server = start(body_timeout_config(Duration::from_secs(1))).await;
    let head = publish_head(server.addr, "Content-Length: 1000");
    let mut s = send_raw(server.addr, format!("{head}{{\"group\"").as_bytes()).await;
    let sent = Instant::now();
    let r = reply_then_eof(&mut s, STEP).await;
    let waited = sent.elapsed();
    assert_eq!(r.status, 408, "{}", r.head);
    assert_eq!(r.body["error"]["code"], "body_timeout", "{}", r.body);
    assert!(r.head.contains("connection: close"), "{}", r.head);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "answered after {waited:?} with a 1s body timeout"
    );
    server.stop().await;
}

/// The second probe: a chunked body announcing a chunk of `fffffffffff`
/// bytes (17 TB) and sending a few.
#[tokio::test]
async fn a_chunked_body_announcing_a_huge_chunk_is_answered_and_closed() {
    let server = start(body_timeout_config(Duration::from_secs(1))).await;
    let head = publish_head(server.addr, "Transfer-Encoding: chunked");
    let mut s = send_raw(server.addr, format!("{head}fffffffffff\r\n{{\"gro").as_bytes()).await;
    let r = reply_then_eof(&mut s, STEP).await;
    assert!(
        matches!(
            (r.status, r.body["error"]["code"].as_str()),
            (408, Some("body_timeout")) | (413, Some("payload_too_large"))
        ),
        "{} {}",
        r.head,
        r.body
    );
    assert!(r.head.contains("connection: close"), "{}", r.head);
    server.stop().await;
}

/// A declared length over the limit is refused at once: no body byte is
/// sent, and the body timeout is far longer than the wait allowed.
#[tokio::test]
async fn a_declared_length_over_the_limit_gets_413_before_any_body_byte() {
    let server = start(Config {
        max_message_size: 1024,
        ..body_timeout_config(Duration::from_secs(60))
    })
    .await;
    let cases = [
        (
            "/api/publish",
            10_000_000u64,
            "maximum message size of 1024 bytes",
        ),
        ("/api/broadcast", 1025, "maximum message size of 1024 bytes"),
        // /api/disconnect has its own limit, 4096 bytes.
        ("/api/disconnect", 4097, "limit of 4096 bytes"),
    ];
    for (path, len, says) in cases {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
            server.addr
        );
        let mut s = send_raw(server.addr, head.as_bytes()).await;
        let r = reply_then_eof(&mut s, Duration::from_secs(3)).await;
        assert_eq!(r.status, 413, "{path}: {}", r.head);
        assert_eq!(r.body["error"]["code"], "payload_too_large", "{path}");
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(says),
            "{path}: {}",
            r.body
        );
        assert!(r.head.contains("connection: close"), "{path}: {}", r.head);
    }
    // At the limit exactly, the body is read and served.
    let body = format!("{{\"group\":\"g\",\"data\":\"{}\"}}", "x".repeat(1024 - 23));
    assert_eq!(body.len(), 1024);
    let (status, text) = http(
        server.addr,
        "POST",
        "/api/publish",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await;
    assert_eq!((status, text.as_str()), (200, r#"{"published":true}"#));
    server.stop().await;
}

/// The body timeout limits pauses, not the whole body: pieces with gaps
/// shorter than it succeed although the body takes longer than it, and
/// once a body stops, 408 comes a timeout after its last byte, not after
/// its first.
#[tokio::test]
async fn the_body_timeout_counts_from_the_last_byte_received() {
    let timeout = Duration::from_secs(1);
    let gap = Duration::from_millis(300);
    let server = start(body_timeout_config(timeout)).await;
    let body = br#"{"group":"lobby","data":{"text":"sent slowly, piece by piece"}}"#;
    let pieces: Vec<&[u8]> = body.chunks(body.len() / 8 + 1).collect();
    assert!(gap * pieces.len() as u32 > timeout * 2);

    let head = publish_head(
        server.addr,
        &format!("Content-Length: {}\r\nConnection: close", body.len()),
    );
    let mut s = send_raw(server.addr, head.as_bytes()).await;
    let started = Instant::now();
    for (i, piece) in pieces.iter().enumerate() {
        tokio::time::sleep(gap).await;
        s.write_all(piece).await.unwrap_or_else(|e| {
            panic!(
                "the server dropped a body still arriving (piece {i}, {:?} in, gaps of {gap:?}): {e}",
                started.elapsed()
            )
        });
    }
    let r = reply_then_eof(&mut s, STEP).await;
    assert!(started.elapsed() > timeout * 2);
    assert_eq!(
        (r.status, &r.body),
        (200, &json!({"published": true})),
        "{}",
        r.head
    );

    // The same pieces, then silence before the last one.
    let head = publish_head(server.addr, &format!("Content-Length: {}", body.len()));
    let mut s = send_raw(server.addr, head.as_bytes()).await;
    for piece in &pieces[..pieces.len() - 1] {
        tokio::time::sleep(gap).await;
        s.write_all(piece).await.unwrap();
    }
    let last_byte = Instant::now();
    let r = reply_then_eof(&mut s, STEP).await;
    let waited = last_byte.elapsed();
    assert_eq!(r.status, 408, "{}", r.head);
    assert_eq!(r.body["error"]["code"], "body_timeout");
    assert!(
        waited >= timeout - Duration::from_millis(100) && waited < timeout * 4,
        "408 came {waited:?} after the last byte, with a {timeout:?} timeout"
    );
    server.stop().await;
}

/// `body_timeout` is a setting like the others: flag, variable, TOML key,
/// default 10s, and 0s is refused.
#[test]
fn body_timeout_is_a_validated_setting() {
    let effective = |args: &[&str], env: &[(&str, &str)]| -> toml::Table {
        let out = roomcast_bin()
            .arg("config")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().parse().unwrap()
    };
    assert_eq!(effective(&[], &[])["body_timeout"].as_str(), Some("10s"));
    assert_eq!(
        effective(&["--body-timeout", "2s"], &[])["body_timeout"].as_str(),
        Some("2s")
    );
    assert_eq!(
        effective(&[], &[("ROOMCAST_BODY_TIMEOUT", "3s")])["body_timeout"].as_str(),
        Some("3s")
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roomcast.toml");
    std::fs::write(&file, "body_timeout = \"4s\"\n").unwrap();
    assert_eq!(
        effective(&["--config", file.to_str().unwrap()], &[])["body_timeout"].as_str(),
        Some("4s")
    );
    for bad in ["0s", "25h"] {
        let out = roomcast_bin()
            .args(["config", "--body-timeout", bad])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--body-timeout {bad} was accepted");
        assert!(err.contains("'body_timeout'"), "{bad}: {err}");
    }
}

// ---- JWTs with an exp beyond any clock ----

const SECRET: &str = JWT_SECRET;

fn token(claims: Value) -> String {
    hs256_token(&claims)
}

fn now() -> u64 {
    unix_now()
}

/// Auth on, and no idle timeout and no pings: the token's expiry is the
/// only timer a session has.
fn only_expiry_config() -> Config {
    Config {
        jwt_secret: Some(SECRET.into()),
        idle_timeout: Duration::ZERO,
        ping_interval: Duration::ZERO,
        ..config()
    }
}

async fn welcomed(req: impl IntoClientRequest + Unpin) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("authorized connect");
    let w = recv_json(&mut ws).await;
    assert_eq!(w["type"], "welcome", "{w}");
    ws
}

/// Join, publish and get the ack and the message back: a session that
/// works.
async fn join_publish_ack(ws: &mut Ws, group: &str) {
    let r = request(ws, json!({"type":"join","group":group,"id":1})).await;
    assert_eq!(r, json!({"type":"ack","id":1}));
    send_json(ws, json!({"type":"publish","group":group,"data":"hi","id":2})).await;
    let mut got = [recv_json(ws).await, recv_json(ws).await];
    got.sort_by_key(|v| v["type"].as_str().unwrap_or("").to_owned());
    assert_eq!(got[0], json!({"type":"ack","id":2}));
    assert_eq!(
        (
            got[1]["type"].as_str(),
            got[1]["data"].as_str(),
            got[1]["user"].as_str()
        ),
        (Some("message"), Some("hi"), Some("ann")),
        "{}",
        got[1]
    );
}

/// `exp` = 18446744073709551615 on connect, in `?token=` and in the
/// subprotocol: the session works (it used to panic right after the 101).
#[tokio::test]
async fn a_token_with_exp_u64_max_connects_and_works() {
    let server = start(only_expiry_config()).await;
    let forever = token(json!({"sub":"ann","exp":u64::MAX}));

    let mut ws = welcomed(format!("{}?token={forever}", server.url("/ws"))).await;
    join_publish_ack(&mut ws, "a").await;

    let mut req = server.url("/ws").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("roomcast, bearer.{forever}").parse().unwrap(),
    );
    let mut ws2 = welcomed(req).await;
    join_publish_ack(&mut ws2, "b").await;

    // Both are still served a moment later: nothing fired.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for ws in [&mut ws, &mut ws2] {
        assert_eq!(request(ws, json!({"type":"ping","id":9})).await["type"], "pong");
    }
    assert_eq!(server.stats().connections, 2);
    server.stop().await;
}

/// `refresh` to such a token keeps the connection past the old token's
/// expiry; refreshing from it to a short token re-arms the timer, and the
/// connection closes with 4003 at the new expiry.
#[tokio::test]
async fn refresh_to_exp_u64_max_and_back_to_a_short_token() {
    let server = start(only_expiry_config()).await;
    let short = token(json!({"sub":"ann","exp": now() + 2}));
    let mut ws = welcomed(format!("{}?token={short}", server.url("/ws"))).await;

    let forever = token(json!({"sub":"ann","exp":u64::MAX}));
    let r = request(&mut ws, json!({"type":"refresh","token":forever,"id":1})).await;
    assert_eq!(r, json!({"type":"ack","id":1}));
    // Past the first token's expiry, still served.
    tokio::time::sleep(Duration::from_secs(3)).await;
    join_publish_ack(&mut ws, "g").await;

    let short_again = token(json!({"sub":"ann","exp": now() + 2}));
    let r = request(&mut ws, json!({"type":"refresh","token":short_again,"id":3})).await;
    assert_eq!(r, json!({"type":"ack","id":3}));
    let started = Instant::now();
    let (_, frame) = recv_until_close(&mut ws).await;
    let frame = frame.expect("a close frame");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (4003, "token expired")
    );
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    server.stop().await;
}

// ---- /api loopback rule behind a trusted proxy ----

/// A POST through a "proxy" on loopback: the TCP peer is 127.0.0.1 and
/// `xff`, when given, is its `X-Forwarded-For`.
async fn api_post_via(addr: SocketAddr, path: &str, xff: Option<&str>, body: Value) -> (u16, Value) {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(x) = xff {
        headers.push(("X-Forwarded-For", x));
    }
    let (status, text) = http(addr, "POST", path, &headers, body.to_string().as_bytes()).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// Start `roomcast serve` with `args` (JSON logs), wait until it listens,
/// stop it, and return every log line written until then.
fn startup_log(args: &[&str]) -> Vec<Value> {
    let server = ServerProcess::start(args);
    let logged = server.startup.clone();
    server.stop();
    logged
}

/// Without an API key, `/api` serves loopback clients, judged by the
/// address the per-IP limits use. Behind a trusted proxy that is the
/// address the proxy forwarded, so a remote client is refused even though
/// the TCP peer (the proxy) is loopback. Without a trusted proxy,
/// `X-Forwarded-For` means nothing and a loopback peer is served whatever
/// the header says.
#[tokio::test]
async fn the_api_loopback_rule_believes_forwarded_for_only_from_a_trusted_proxy() {
    let publish = json!({"group":"g","data":1});
    let broadcast = json!({"data":1});
    let routes = [("/api/publish", &publish), ("/api/broadcast", &broadcast)];

    let proxied = start(Config {
        trusted_proxy: vec!["127.0.0.1".into()],
        ..config()
    })
    .await;
    for (path, body) in routes {
        // Remote clients, however the header looks: the proxy appends the
        // address it saw, so a client's own "127.0.0.1" is left of it.
        for xff in ["203.0.113.7", "127.0.0.1, 203.0.113.7", "203.0.113.7, 127.0.0.1"] {
            let (status, r) = api_post_via(proxied.addr, path, Some(xff), body.clone()).await;
            assert_eq!(
                (status, r["error"]["code"].as_str()),
                (403, Some("forbidden")),
                "{path} XFF {xff}: {r}"
            );
        }
        // Local clients: forwarded as loopback, or not forwarded at all.
        for xff in [Some("127.0.0.1"), Some("::1"), None] {
            let (status, r) = api_post_via(proxied.addr, path, xff, body.clone()).await;
            assert_eq!(
                (status, &r),
                (200, &json!({"published": true})),
                "{path} XFF {xff:?}"
            );
        }
    }
    proxied.stop().await;

    let direct = start(config()).await;
    for (path, body) in routes {
        let (status, r) = api_post_via(direct.addr, path, Some("203.0.113.7"), body.clone()).await;
        assert_eq!(
            (status, &r),
            (200, &json!({"published": true})),
            "{path}: no trusted proxy, the loopback peer is the client"
        );
    }
    direct.stop().await;
}

/// Trusting proxies without an API key is logged once, loudly, at startup;
/// with a key, or without proxies, it is not.
#[test]
fn trusting_a_proxy_without_an_api_key_is_warned_about_at_startup() {
    let warnings = |args: &[&str]| -> Vec<String> {
        startup_log(args)
            .iter()
            .filter(|v| v["level"] == "WARN")
            .filter_map(|v| v["message"].as_str().map(str::to_owned))
            .filter(|m| m.contains("trusted-proxy"))
            .collect()
    };
    let w = warnings(&["--trusted-proxy", "127.0.0.1"]);
    assert_eq!(w.len(), 1, "{w:?}");
    for says in [
        "no --api-key",
        "loopback",
        "X-Forwarded-For",
        "look local",
        "set --api-key",
    ] {
        assert!(w[0].contains(says), "'{says}' missing from: {}", w[0]);
    }
    assert_eq!(
        warnings(&["--trusted-proxy", "127.0.0.1", "--api-key", "0123456789abcdef"]),
        Vec::<String>::new()
    );
    assert_eq!(warnings(&[]), Vec::<String>::new());
    // `roomcast config` shows it too.
    let out = roomcast_bin()
        .args(["config", "--trusted-proxy", "10.0.0.0/8"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning") && err.contains("set --api-key"), "{err}");
}
