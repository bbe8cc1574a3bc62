//! Graceful shutdown: queued messages are flushed, then every client gets
//! close 1001; during the drain new requests get 503 (`/readyz`, upgrades);
//! the real binary exits 0 on SIGTERM and keeps running on SIGHUP.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn shutdown_flushes_queues_then_closes_1001() {
    let mut server = start(config()).await;
    let (mut sub, _) = connect(&server).await;
    let (mut idle, _) = connect(&server).await;
    let mut echo = RawClient::connect(server.addr, "/echo").await;
    let (mut publisher, _) = connect(&server).await;
    request(&mut sub, json!({"type":"join","group":"g","id":1})).await;
    // 200 messages queued for `sub`, which is not reading yet.
    for i in 0..200 {
        let ack = request(
            &mut publisher,
            json!({"type":"publish","group":"g","data":i,"id":i}),
        )
        .await;
        assert_eq!(ack["type"], "ack");
    }
    server.begin_shutdown();
    let (before, frame) = recv_until_close(&mut sub).await;
    assert_eq!(u16::from(frame.unwrap().code), 1001);
    let seqs: Vec<i64> = before
        .iter()
        .map(|m| {
            serde_json::from_str::<serde_json::Value>(m.to_text().unwrap()).unwrap()["data"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        (0..200).collect::<Vec<_>>(),
        "everything queued arrives before the close"
    );
    assert_eq!(close_code(&mut idle).await, 1001);
    // Echo connections are closed too.
    let f = echo.frame().await.unwrap();
    assert_eq!((f.opcode, &f.payload[..2]), (8, &1001u16.to_be_bytes()[..]));
    assert_eq!(close_code(&mut publisher).await, 1001);
    server.join().await;
}

const SHUTTING_DOWN: &str = r#"{"error":{"code":"shutting_down","message":"server is shutting down"}}"#;

/// Send a WebSocket upgrade request on a new connection and read the whole
/// reply; returns the status, the head (lower-cased) and the body.
async fn upgrade_reply(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(upgrade_request(addr, path).as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(STEP, tcp.read_to_end(&mut out))
        .await
        .expect("the server closes the connection after its answer")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    (
        head[9..12].parse().unwrap(),
        head.to_ascii_lowercase(),
        body.to_owned(),
    )
}

#[tokio::test]
async fn new_requests_during_the_drain_get_503_then_the_listener_closes() {
    let mut server = start(config()).await;
    let addr = server.addr;
    // A client that never answers the close keeps the drain going for 1 s.
    let (_stuck, _) = connect(&server).await;
    assert_eq!(
        http_get(addr, "/readyz", &[]).await,
        (
            200,
            r#"{"broker":{"kind":"memory","up":true},"status":"ready"}"#.into()
        )
    );
    server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are still accepted: a probe learns "not ready"
    // instead of failing to connect.
    let (status, head, body) = http_full(addr, "GET", "/readyz", &[], &[]).await;
    assert_eq!((status, body.as_str()), (503, SHUTTING_DOWN), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(
        http_get(addr, "/healthz", &[]).await,
        (200, r#"{"status":"ok"}"#.into())
    );
    for path in ["/ws", "/echo"] {
        let (status, head, body) = upgrade_reply(addr, path).await;
        assert_eq!((status, body.as_str()), (503, SHUTTING_DOWN), "{path}: {head}");
        assert!(head.contains("connection: close"), "{path}: {head}");
    }
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 503);
            assert_eq!(r.body().as_deref(), Some(SHUTTING_DOWN.as_bytes()));
        }
        other => panic!("upgrade must get 503 while shutting down: {other:?}"),
    }
    server.join().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener closes when the drain ends"
    );
}

/// Probes arriving all through the drain are answered, but do not keep it
/// open: once the last session has ended, shutdown completes at once,
/// long before the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_probes_does_not_hold_the_drain_open() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let mut server = start(roomcast::config::Config {
        drain_timeout: Duration::from_secs(5),
        ..config()
    })
    .await;
    let addr = server.addr;
    let (mut client, _) = connect(&server).await;
    let not_ready = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..4 {
        let (not_ready, stop) = (not_ready.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let req = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
                if tcp.write_all(req.as_bytes()).await.is_err() {
                    continue;
                }
                let mut out = Vec::new();
                let _ = tcp.read_to_end(&mut out).await;
                if out.starts_with(b"HTTP/1.1 503") {
                    not_ready.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    server.begin_shutdown();
    let (_, frame) = recv_until_close(&mut client).await;
    assert_eq!(u16::from(frame.unwrap().code), 1001);
    // Connections that send nothing, as a slow client or a port scan would:
    // the drain must not wait for their headers.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The drain is held open by `client` for a while, under the flood.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = client.close(None).await;
    drop(client);
    let started = std::time::Instant::now();
    server.join().await;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    assert!(
        took < Duration::from_secs(2),
        "shutdown took {took:?} after the last session ended (drain timeout 5 s)"
    );
    assert!(
        not_ready.load(Ordering::Relaxed) > 0,
        "no probe got 503 during the drain"
    );
}

#[test]
fn binary_exits_zero_on_sigterm_after_closing_clients() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--drain-timeout",
            "2s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let code = rt.block_on(async {
        let url = format!("ws://127.0.0.1:{port}/ws");
        let mut ws = None;
        for _ in 0..100 {
            if let Ok((s, _)) = tokio_tungstenite::connect_async(&url).await {
                ws = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut ws = ws.expect("server came up");
        let welcome = recv_json(&mut ws).await;
        assert_eq!(welcome["type"], "welcome");
        // SIGTERM via the kill command (no libc dependency in tests).
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let (_, frame) = recv_until_close(&mut ws).await;
        let _ = ws.close(None).await;
        u16::from(frame.unwrap().code)
    });
    assert_eq!(code, 1001);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Send `sig` (`-HUP`, `-TERM`) via the kill command (no libc dependency).
fn kill(child: &std::process::Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn binary_without_tls_logs_and_keeps_running_on_sighup() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--log-level", "info", "--drain-timeout", "1s"])
        .env_remove("ROOMCAST_TLS_CERT")
        .env_remove("ROOMCAST_TLS_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line).unwrap_or_else(|_| json!({ "message": line }));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    let next_line = |what: &str| {
        let v = rx
            .recv_timeout(STEP)
            .unwrap_or_else(|e| panic!("no log line while waiting for {what}: {e}"));
        eprintln!("server: {v}");
        v
    };
    let addr = loop {
        if let Some(addr) = next_line("listening")["addr"].as_str() {
            break addr.to_owned();
        }
    };
    let healthz = || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    };
    assert!(healthz().starts_with("HTTP/1.1 200"));
    kill(&child, "-HUP");
    loop {
        let v = next_line("the SIGHUP line");
        if v["message"].as_str().unwrap_or("").contains("SIGHUP") {
            assert_eq!(v["level"], "INFO", "{v}");
            assert!(
                v["message"].as_str().unwrap().contains("nothing to reload"),
                "{v}"
            );
            break;
        }
    }
    assert_eq!(child.try_wait().unwrap(), None, "SIGHUP ended the server");
    let reply = healthz();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    kill(&child, "-TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("server did not exit on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
