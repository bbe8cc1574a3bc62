//! Helpers shared by the integration tests: start a real server on port 0
//! and talk to it with a real WebSocket client (tokio-tungstenite).
#![allow(dead_code)]

pub mod brokers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roomcast::config::Config;
use roomcast::http::stats::Snapshot;
use roomcast::node::Node;
use roomcast::server::Server;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take before a test fails.
pub const STEP: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Test defaults: loopback, port 0, and a short drain so that stopping a
/// server whose test clients no longer read does not wait 10 s.
pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        drain_timeout: Duration::from_secs(1),
        ..Config::default()
    }
}

pub async fn start(config: Config) -> TestServer {
    run_bound(Server::bind(config).await.expect("bind"))
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Start graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Shut down and wait for `run` to return.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server run");
    }

    /// Wait for `run` to return after [`TestServer::begin_shutdown`].
    pub async fn join(self) {
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server run");
    }

    pub fn stats(&self) -> Snapshot {
        Snapshot::of(&self.node)
    }

    /// Wait until `pred` holds for the stats (the server updates them
    /// asynchronously after a client goes away).
    pub async fn wait_stats(&self, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let s = self.stats();
            if pred(&s) {
                return s;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("stats never reached '{what}': {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Connect to `/ws` and read the welcome; returns the socket and its id.
pub async fn connect(server: &TestServer) -> (Ws, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/ws"))
        .await
        .expect("connect");
    let welcome = recv_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let id = welcome["conn"].as_str().expect("conn id is a string").to_owned();
    (ws, id)
}

/// Connect over a socket with a tiny receive buffer (a client that can
/// be made slow by not reading).
pub async fn connect_small_rcvbuf(server: &TestServer) -> (Ws, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(server.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(server.url("/ws"), MaybeTlsStream::Plain(tcp))
        .await
        .expect("connect");
    let welcome = recv_json(&mut ws).await;
    let id = welcome["conn"].as_str().unwrap().to_owned();
    (ws, id)
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

pub async fn send_text(ws: &mut Ws, s: &str) {
    ws.send(Message::text(s)).await.expect("send");
}

/// Next data message (pings are skipped), with a timeout.
pub async fn recv(ws: &mut Ws) -> Message {
    // One deadline for the whole wait: pings arriving must not extend it.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("timed out waiting for a message")
            .expect("stream ended")
            .expect("websocket error");
        match m {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

/// Next message, parsed as JSON.
pub async fn recv_json(ws: &mut Ws) -> Value {
    match recv(ws).await {
        Message::Text(t) => serde_json::from_str(&t).expect("server sent JSON"),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Send a request and return its one reply.
pub async fn request(ws: &mut Ws, v: Value) -> Value {
    send_json(ws, v).await;
    recv_json(ws).await
}

/// Read until the server's Close frame; data messages before it are
/// returned too.
pub async fn recv_until_close(ws: &mut Ws) -> (Vec<Message>, Option<CloseFrame>) {
    let mut before = Vec::new();
    loop {
        let m = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("timed out waiting for close");
        match m {
            Some(Ok(Message::Close(frame))) => return (before, frame),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(m)) => before.push(m),
            Some(Err(e)) => panic!("error before close frame: {e}; got {} messages", before.len()),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// The close code the server closes with.
pub async fn close_code(ws: &mut Ws) -> u16 {
    let (_, frame) = recv_until_close(ws).await;
    u16::from(frame.expect("close frame has a code").code)
}

/// A plain HTTP/1.1 GET; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http(addr, "GET", path, headers, &[]).await
}

/// A raw WebSocket client over TCP, for checking exactly which frames the
/// server sends and in what order (tungstenite hides some of that).
pub struct RawClient {
    pub tcp: TcpStream,
    buf: Vec<u8>,
    /// The server's 101 response head.
    pub head: String,
    /// The server agreed to permessage-deflate: RSV1 frames are allowed.
    pub deflate: bool,
}

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    /// Set on compressed (permessage-deflate) messages.
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        Self::handshake(TcpStream::connect(addr).await.unwrap(), addr, path, "").await
    }

    /// Connect offering `extensions` (a `Sec-WebSocket-Extensions` value).
    pub async fn connect_offering(addr: SocketAddr, path: &str, extensions: &str) -> Self {
        let extra = format!("Sec-WebSocket-Extensions: {extensions}\r\n");
        Self::handshake(TcpStream::connect(addr).await.unwrap(), addr, path, &extra).await
    }

    /// Connect with a tiny receive buffer, so the server's writes block
    /// as soon as this client stops reading.
    pub async fn connect_small_rcvbuf(addr: SocketAddr, path: &str) -> Self {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        Self::handshake(sock.connect(addr).await.unwrap(), addr, path, "").await
    }

    async fn handshake(mut tcp: TcpStream, addr: SocketAddr, path: &str, extra: &str) -> Self {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(STEP, tcp.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        buf.drain(..end);
        let deflate = head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate");
        Self {
            tcp,
            buf,
            head,
            deflate,
        }
    }

    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let f = roomcast::ws::decoder::client_frame(fin, opcode, [0x11, 0x22, 0x33, 0x44], payload);
        self.tcp.write_all(&f).await.unwrap();
    }

    pub async fn send_text(&mut self, s: &str) {
        self.send_frame(true, 1, s.as_bytes()).await;
    }

    /// The next frame, or `None` at EOF.
    pub async fn frame(&mut self) -> Option<RawFrame> {
        let f = read_frame(&mut self.tcp, &mut self.buf).await?;
        assert!(
            self.deflate || !f.rsv1,
            "RSV1 without a negotiated extension: {f:?}"
        );
        Some(f)
    }
}

/// Parse one unmasked server frame from the front of `b`.
fn parse_server_frame(b: &[u8]) -> Option<(RawFrame, usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "server frames must not be masked");
    assert_eq!(b[0] & 0x30, 0, "no extension uses RSV2 or RSV3");
    let (len, at) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        l => (l as usize, 2),
    };
    if b.len() < at + len {
        return None;
    }
    let frame = RawFrame {
        fin: b[0] & 0x80 != 0,
        rsv1: b[0] & 0x40 != 0,
        opcode: b[0] & 0x0F,
        payload: b[at..at + len].to_vec(),
    };
    Some((frame, at + len))
}

/// A plain HTTP/1.1 request with a body; returns status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, headers, body).await;
    (status, body)
}

/// A plain HTTP/1.1 request; returns status, the response head (status
/// line and headers) and the body.
pub async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

/// POST a JSON body to the API; returns status and parsed JSON body.
pub async fn api_post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// GET from the API; returns status and parsed JSON body.
pub async fn api_get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, text) = http_get(addr, path, &[]).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// Run an already bound server (for tests that need the [`Server`] itself
/// before it runs, e.g. its TLS handle).
pub fn run_bound(server: Server) -> TestServer {
    let addr = server.local_addr();
    let node = server.node().clone();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    TestServer {
        addr,
        node,
        stop: Some(tx),
        task,
    }
}

// ---- helpers of tests/hostile.rs ----

/// Resident set size of this whole process (the server and every test
/// client share it), from `/proc/self/status`, in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// The WebSocket upgrade request [`RawClient`] sends, for clients that
/// send it in pieces or not at all.
pub fn upgrade_request(addr: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Make dropping `tcp` reset the connection (RST) instead of closing it
/// (FIN): the most abrupt way a client can vanish.
pub fn reset_on_drop(tcp: &TcpStream) {
    socket2::SockRef::from(tcp)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
}

impl RawClient {
    /// Write bytes as they are: malformed or partial frames.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// Read until the server's Close frame; returns the frames before it
    /// (Pings excluded) and the close code (`None` on EOF without Close).
    pub async fn until_close(&mut self) -> (Vec<RawFrame>, Option<u16>) {
        until_close(&mut self.tcp, &mut self.buf).await
    }

    /// The next frame that is not a Ping or Pong, parsed as JSON.
    pub async fn json(&mut self) -> Value {
        next_json(&mut self.tcp, &mut self.buf).await
    }
}

/// Server frames read from one half of a split socket, for a client that
/// writes and reads concurrently.
pub struct FrameReader<R> {
    io: R,
    buf: Vec<u8>,
}

impl RawClient {
    /// Split into a frame reader and the raw write half.
    pub fn split(
        self,
    ) -> (
        FrameReader<tokio::net::tcp::OwnedReadHalf>,
        tokio::net::tcp::OwnedWriteHalf,
    ) {
        let (rd, wr) = self.tcp.into_split();
        (
            FrameReader {
                io: rd,
                buf: self.buf,
            },
            wr,
        )
    }
}

impl RawClient {
    /// Split into the raw halves, for a client that reads at its own pace
    /// (nothing after the handshake must have been read yet).
    pub fn split_raw(self) -> (tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf) {
        assert!(self.buf.is_empty(), "bytes already read: {:?}", self.buf);
        self.tcp.into_split()
    }
}

impl<R: tokio::io::AsyncRead + Unpin> FrameReader<R> {
    /// The next frame, or `None` at EOF.
    pub async fn frame(&mut self) -> Option<RawFrame> {
        read_frame(&mut self.io, &mut self.buf).await
    }

    /// The next frame that is not a Ping or Pong, parsed as JSON.
    pub async fn json(&mut self) -> Value {
        next_json(&mut self.io, &mut self.buf).await
    }

    /// Read until the server's Close frame; see [`RawClient::until_close`].
    pub async fn until_close(&mut self) -> (Vec<RawFrame>, Option<u16>) {
        until_close(&mut self.io, &mut self.buf).await
    }
}

/// The next server frame from `io`, with `buf` holding bytes already read;
/// `None` at EOF.
async fn read_frame(io: &mut (impl tokio::io::AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<RawFrame> {
    loop {
        if let Some((frame, used)) = parse_server_frame(buf) {
            buf.drain(..used);
            return Some(frame);
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(STEP, io.read(&mut chunk))
            .await
            .expect("timed out reading a frame")
            .unwrap_or(0);
        if n == 0 {
            assert!(buf.is_empty(), "EOF inside a frame: {} bytes left", buf.len());
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn next_json(io: &mut (impl tokio::io::AsyncRead + Unpin), buf: &mut Vec<u8>) -> Value {
    loop {
        let f = read_frame(io, buf).await.expect("a frame before EOF");
        match f.opcode {
            0x9 | 0xA => continue,
            0x1 => return serde_json::from_slice(&f.payload).expect("server sent JSON"),
            op => panic!("expected a text frame, got opcode {op}: {f:?}"),
        }
    }
}

async fn until_close(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> (Vec<RawFrame>, Option<u16>) {
    let mut before = Vec::new();
    while let Some(f) = read_frame(io, buf).await {
        match f.opcode {
            0x8 => {
                let code = (f.payload.len() >= 2).then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
                return (before, code);
            }
            0x9 | 0xA => {}
            _ => before.push(f),
        }
    }
    (before, None)
}

impl RawClient {
    /// Connect with tiny socket buffers both ways: the client's writes
    /// block as soon as the server stops reading, and the server's as soon
    /// as this client stops reading.
    pub async fn connect_small_buffers(addr: SocketAddr, path: &str) -> Self {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.set_send_buffer_size(4096).unwrap();
        Self::handshake(sock.connect(addr).await.unwrap(), addr, path, "").await
    }
}

// ---- JWTs ----

/// The HS256 secret of the auth tests.
pub const JWT_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";

/// An HS256 token with `claims`, signed with [`JWT_SECRET`].
pub fn hs256_token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Seconds since the Unix epoch (for `exp`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---- the real binary ----

/// `roomcast serve` in a child process on a free loopback port, with JSON
/// logs on a pipe and no `ROOMCAST_*` variable of the test's environment.
pub struct ServerProcess {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
    /// Where it listens (from its startup log line).
    pub addr: SocketAddr,
    /// The log lines up to and including the one saying it listens.
    pub startup: Vec<Value>,
}

impl ServerProcess {
    /// Start with `args` after `serve --listen 127.0.0.1:0 --log-format
    /// json --log-level info`, and wait until it listens.
    pub fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"));
        for (k, _) in std::env::vars() {
            if k.starts_with("ROOMCAST_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--log-level", "info"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut startup = Vec::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server exited before listening: {startup:?}");
            };
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            startup.push(v.clone());
            if let Some(a) = v["addr"].as_str() {
                break a.parse().unwrap();
            }
        };
        Self {
            child,
            lines,
            addr,
            startup,
        }
    }

    /// Kill it; returns the log lines written after the startup ones.
    pub fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.map_while(Result::ok).collect()
    }
}
