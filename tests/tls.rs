//! TLS end to end: `wss://` and HTTPS with a CA generated at test time
//! (rcgen), TLS 1.2 and 1.3, ALPN, certificate reload (in process, and on
//! SIGHUP of the real binary), the handshake timeout, and validation of the
//! settings. Clients are real: tokio-tungstenite over tokio-rustls, trusting
//! only the test CA.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{STEP, config, run_bound, start};
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use roomcast::config::Config;
use roomcast::server::Server;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const HTTP11: &[&[u8]] = &[b"http/1.1"];

/// A CA made for one test, and a server certificate it signed for
/// 127.0.0.1 and localhost.
struct Pki {
    ca: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn pki(name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("roomcast test CA {name}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, format!("roomcast test server {name}"));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &*ca).unwrap();
    Pki {
        ca: ca.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Write (or overwrite) `cert.pem` and `key.pem` in `dir`.
fn install(dir: &Path, pki: &Pki) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    (cert, key)
}

fn tls_config(cert: PathBuf, key: PathBuf) -> Config {
    Config {
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..config()
    }
}

/// A client configuration trusting only `ca`.
fn client(
    ca: &CertificateDer<'static>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut c = ClientConfig::builder_with_provider(roomcast::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

fn trusting(pki: &Pki) -> Arc<ClientConfig> {
    client(&pki.ca, BOTH, HTTP11)
}

async fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::from(addr.ip());
    tokio::time::timeout(STEP, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
}

/// Connect to `wss://addr/ws` and read the welcome.
async fn wss_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Wss {
    let tls = tls_connect(addr, config).await.expect("TLS handshake");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/ws"), tls)
        .await
        .expect("WebSocket upgrade over TLS");
    let welcome = recv_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws
}

async fn recv_json<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Value {
    loop {
        let m = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("timed out waiting for a message")
            .expect("stream ended")
            .expect("websocket error");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).expect("server sent JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn request<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, v: Value) -> Value {
    ws.send(Message::text(v.to_string())).await.expect("send");
    recv_json(ws).await
}

/// One HTTP/1.1 request over TLS; returns status and body. The server
/// must end the connection with a TLS close_notify (a clean EOF).
async fn https(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let mut s = tls_connect(addr, config).await.expect("TLS handshake");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("clean TLS close");
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.starts_with("HTTP/1.1 "), "{text}");
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

#[tokio::test]
async fn wss_protocol_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let a = pki("A");
    let (cert, key) = install(dir.path(), &a);
    let mut server = start(tls_config(cert, key)).await;

    let mut alice = wss_connect(server.addr, trusting(&a)).await;
    let mut bob = wss_connect(server.addr, trusting(&a)).await;
    for ws in [&mut alice, &mut bob] {
        let r = request(ws, json!({"type":"join","group":"lobby","id":1})).await;
        assert_eq!(r, json!({"type":"ack","id":1}));
    }
    alice
        .send(Message::text(
            json!({"type":"publish","group":"lobby","data":{"text":"hi"},"id":2}).to_string(),
        ))
        .await
        .unwrap();
    let m = recv_json(&mut bob).await;
    assert_eq!(m["type"], "message");
    assert_eq!(m["data"], json!({"text":"hi"}));
    // Alice gets her own publication and the ack, in either order.
    let mut got = [recv_json(&mut alice).await, recv_json(&mut alice).await];
    got.sort_by_key(|v| v["type"].as_str().unwrap_or("").to_owned());
    assert_eq!(got[0], json!({"type":"ack","id":2}));
    assert_eq!(got[1]["data"], json!({"text":"hi"}));

    // A large message crosses several TLS records both ways (echo).
    let tls = tls_connect(server.addr, trusting(&a)).await.unwrap();
    let (mut echo, _) = tokio_tungstenite::client_async(format!("wss://{}/echo", server.addr), tls)
        .await
        .unwrap();
    let big = vec![7u8; 60_000];
    echo.send(Message::binary(big.clone())).await.unwrap();
    let back = tokio::time::timeout(STEP, echo.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back, Message::binary(big));

    // Shutdown closes TLS sessions with 1001 like plain ones.
    server.begin_shutdown();
    let close = loop {
        match tokio::time::timeout(STEP, bob.next()).await.unwrap() {
            Some(Ok(Message::Close(f))) => break f,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.unwrap().code), 1001);
    server.join().await;
}

#[tokio::test]
async fn https_api_and_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let a = pki("A");
    let (cert, key) = install(dir.path(), &a);
    let server = start(tls_config(cert, key)).await;

    let (status, body) = https(server.addr, trusting(&a), "GET", "/healthz", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    let mut ws = wss_connect(server.addr, trusting(&a)).await;
    request(&mut ws, json!({"type":"join","group":"news","id":1})).await;
    let (status, body) = https(
        server.addr,
        trusting(&a),
        "POST",
        "/api/publish",
        &json!({"group":"news","data":"over https"}).to_string(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"published":true}"#));
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"type":"message","group":"news","data":"over https"})
    );
    server.stop().await;
}

#[tokio::test]
async fn plain_http_on_the_tls_port_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let a = pki("A");
    let (cert, key) = install(dir.path(), &a);
    let server = start(tls_config(cert, key)).await;

    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(STEP, tcp.read_to_end(&mut out))
        .await
        .expect("the server ends the connection");
    // At most a TLS alert record, then EOF (or a reset); never HTTP.
    assert!(!out.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&out));
    if read.is_ok() && !out.is_empty() {
        assert_eq!(out[0], 0x15, "expected a TLS alert, got {out:?}");
    }
    // A WebSocket client speaking plain ws:// fails too.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
            .await
            .is_err()
    );
    // And the server is unaffected.
    let (status, _) = https(server.addr, trusting(&a), "GET", "/healthz", "").await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn tls_12_and_13_both_negotiate_with_http11_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let a = pki("A");
    let (cert, key) = install(dir.path(), &a);
    let server = start(tls_config(cert, key)).await;

    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let config = client(&a.ca, &[version], &[b"h2", b"http/1.1"]);
        let tls = tls_connect(server.addr, config).await.expect("handshake");
        let conn = tls.get_ref().1;
        assert_eq!(conn.protocol_version(), Some(expected));
        assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        // And the session works over it.
        let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{}/ws", server.addr), tls)
            .await
            .expect("upgrade");
        assert_eq!(recv_json(&mut ws).await["type"], "welcome");
    }

    // No ALPN at all is fine; h2 alone is refused (the server is HTTP/1.1).
    let tls = tls_connect(server.addr, client(&a.ca, BOTH, &[])).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    assert!(
        tls_connect(server.addr, client(&a.ca, BOTH, &[b"h2"]))
            .await
            .is_err()
    );
    // A client that does not trust the server's CA gets no session.
    let other = pki("other");
    assert!(tls_connect(server.addr, trusting(&other)).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_connections_only() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (pki("A"), pki("B"));
    let (cert, key) = install(dir.path(), &a);
    let server = Server::bind(tls_config(cert, key.clone())).await.unwrap();
    let tls = server.tls().expect("TLS is configured").clone();
    let server = run_bound(server);

    let mut old = wss_connect(server.addr, trusting(&a)).await;
    request(&mut old, json!({"type":"join","group":"g","id":1})).await;

    install(dir.path(), &b);
    tls.reload().expect("reload");
    assert!(
        tls_connect(server.addr, trusting(&a)).await.is_err(),
        "new connections must get certificate B"
    );
    let mut new = wss_connect(server.addr, trusting(&b)).await;
    // The connection made with certificate A goes on.
    request(
        &mut new,
        json!({"type":"publish","group":"g","data":"still there?","id":3}),
    )
    .await;
    let m = recv_json(&mut old).await;
    assert_eq!(m["data"], "still there?");
    assert_eq!(
        request(&mut old, json!({"type":"ping","id":5})).await["type"],
        "pong"
    );

    // A reload that fails keeps certificate B and says which file is bad.
    std::fs::write(&key, "not a key").unwrap();
    let e = tls.reload().unwrap_err();
    assert_eq!(e.setting, "tls_key", "{e}");
    assert!(e.message.contains("key.pem"), "{e}");
    wss_connect(server.addr, trusting(&b)).await;
    server.stop().await;
}

#[tokio::test]
async fn handshake_timeout_drops_clients_that_never_finish_tls() {
    let dir = tempfile::tempdir().unwrap();
    let a = pki("A");
    let (cert, key) = install(dir.path(), &a);
    let timeout = Duration::from_millis(300);
    let server = start(Config {
        handshake_timeout: timeout,
        ..tls_config(cert, key)
    })
    .await;

    // One sends nothing; one stops in the middle of a ClientHello record.
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    for mut tcp in [silent, partial] {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(STEP, tcp.read_to_end(&mut buf))
            .await
            .expect("the server drops the client");
        assert!(buf.is_empty() || buf[0] == 0x15, "{buf:?}");
    }
    assert!(started.elapsed() >= timeout - Duration::from_millis(50));
    // A real client within the timeout is unaffected.
    let (status, _) = https(server.addr, trusting(&a), "GET", "/healthz", "").await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[test]
fn settings_are_validated_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (pki("A"), pki("B"));
    let (cert, key) = install(dir.path(), &a);
    let key_b = dir.path().join("key-b.pem");
    std::fs::write(&key_b, &b.key_pem).unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    let missing = dir.path().join("missing.pem");

    let check = |cert: Option<&Path>, key: Option<&Path>| {
        Config {
            tls_cert: cert.map(Path::to_owned),
            tls_key: key.map(Path::to_owned),
            ..Config::default()
        }
        .validate()
    };
    check(Some(&cert), Some(&key)).expect("a good pair");
    for (c, k, blamed, says) in [
        (Some(&*cert), None, "tls_key", "required"),
        (None, Some(&*key), "tls_cert", "required"),
        (Some(&*missing), Some(&*key), "tls_cert", "missing.pem"),
        (Some(&*junk), Some(&*key), "tls_cert", "CERTIFICATE"),
        (Some(&*cert), Some(&*missing), "tls_key", "missing.pem"),
        (Some(&*cert), Some(&*junk), "tls_key", "no private key"),
        (Some(&*cert), Some(&*cert), "tls_key", "no private key"),
        (Some(&*cert), Some(&*key_b), "tls_key", "does not match"),
    ] {
        let e = check(c, k).unwrap_err();
        assert_eq!(e.key, blamed, "{c:?} {k:?}: {e}");
        assert!(e.message.contains(says), "{c:?} {k:?}: {e}");
    }

    // The binary accepts the settings from the environment, and refuses a
    // bad file before binding, naming the setting.
    let out = roomcast_cmd()
        .arg("config")
        .env("ROOMCAST_TLS_CERT", &cert)
        .env("ROOMCAST_TLS_KEY", &key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(shown["tls_cert"].as_str(), cert.to_str());
    let out = roomcast_cmd()
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&missing)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tls_cert") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}

/// The binary, with no `ROOMCAST_*` variables from the test environment.
fn roomcast_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ROOMCAST_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A child process killed when the test ends, whatever happens; its log is
/// printed if the test failed.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "server log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn signal(child: &Child, sig: &str) {
    // Via the kill command: no libc dependency in tests.
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_the_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (pki("A"), pki("B"));
    let (cert, key) = install(dir.path(), &a);
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let log = dir.path().join("server.log");
    let child = roomcast_cmd()
        .args(["serve", "--listen", &addr.to_string(), "--drain-timeout", "1s"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut proc = Proc { child, log };

    let mut up = false;
    for _ in 0..200 {
        if tls_connect(addr, trusting(&a)).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "server came up with certificate A");
    let mut old = wss_connect(addr, trusting(&a)).await;
    request(&mut old, json!({"type":"join","group":"g","id":1})).await;

    install(dir.path(), &b);
    signal(&proc.child, "-HUP");
    let deadline = tokio::time::Instant::now() + STEP;
    while tls_connect(addr, trusting(&b)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificate B never served after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tls_connect(addr, trusting(&a)).await.is_err());
    let mut new = wss_connect(addr, trusting(&b)).await;
    request(
        &mut new,
        json!({"type":"publish","group":"g","data":"after reload","id":3}),
    )
    .await;
    assert_eq!(recv_json(&mut old).await["data"], "after reload");

    // A SIGHUP with a broken key file neither kills the server nor drops
    // certificate B.
    std::fs::write(&key, "broken").unwrap();
    signal(&proc.child, "-HUP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(proc.child.try_wait().unwrap().is_none(), "server died");
    wss_connect(addr, trusting(&b)).await;
    assert_eq!(
        request(&mut old, json!({"type":"ping","id":2})).await["type"],
        "pong"
    );

    signal(&proc.child, "-TERM");
    let deadline = std::time::Instant::now() + STEP;
    loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "server did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = std::fs::read_to_string(&proc.log).unwrap();
    assert!(text.contains("TLS certificate reloaded"), "{text}");
    assert!(text.contains("keeping the previous certificate"), "{text}");
}
