//! The load generator's WebSocket client: as lean as the server it loads.
//!
//! `roomcast bench` runs on the same cores as the server it measures, so
//! every cycle it spends is a cycle the server does not get. This client
//! therefore does the least that is correct for talking to roomcast:
//!
//! - reading parses server frames in place in one reusable buffer and hands
//!   out borrowed payloads: no allocation per message;
//! - writing masks each frame with a fresh random key (RFC 6455 §5.3) into
//!   a reusable buffer, so a publisher can batch many frames per write;
//! - connections can start from several loopback source addresses
//!   (127.0.0.2, 127.0.0.3, ...), so tens of thousands of connections do not
//!   exhaust the ephemeral ports of one address pair.
//!
//! Server frames are never fragmented by roomcast; a fragmented or masked
//! server frame is reported as an error rather than reassembled.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::ws::handshake::accept_key;

/// The key of every handshake we send; the accept value is checked.
const KEY: &str = "cm9vbWNhc3QtYmVuY2gtMQ==";
/// Initial (and usual) size of a reader's buffer.
const READ_BUF: usize = 4096;
/// Longest handshake response we accept.
const MAX_RESPONSE: usize = 16 * 1024;

/// Where to connect: a `ws://` or `wss://host:port/path` URL, resolved
/// once.
#[derive(Debug, Clone)]
pub struct Target {
    /// `wss://`: connect with TLS, with this configuration (set by the
    /// caller from `--ca-cert`; `None` for `ws://`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The URL said `wss://`.
    pub secure: bool,
    /// The server's socket address.
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// Path (and query) of the WebSocket endpoint.
    pub path: String,
    /// Offer permessage-deflate (`bench --deflate`); compressed messages
    /// are then inflated before they are looked at.
    pub deflate: bool,
}

impl Target {
    /// Parse a `ws://` or `wss://` URL (TLS costs more than everything
    /// else measured here: compare TLS runs with TLS runs).
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (rest, secure) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => bail!("--url must start with ws:// or wss:// (got {url:?})"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        if authority.is_empty() {
            bail!("--url has no host: {url:?}");
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:{}", if secure { 443 } else { 80 })
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {authority:?}"))?
            .next()
            .with_context(|| format!("{authority:?} resolves to no address"))?;
        Ok(Self {
            tls: None,
            secure,
            addr,
            host: authority.to_string(),
            path: path.to_string(),
            deflate: false,
        })
    }

    /// The same server with another path.
    pub fn with_path(&self, path: &str) -> Self {
        Self {
            path: path.to_string(),
            ..self.clone()
        }
    }
}

/// Source addresses to connect from, used round-robin.
#[derive(Debug)]
pub struct Sources {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl Sources {
    /// `count` loopback source addresses starting at 127.0.0.2 when the
    /// target is on IPv4 loopback (all of 127/8 is local on Linux);
    /// otherwise the system's choice.
    pub fn new(count: usize, target: &Target) -> Self {
        let addrs = match target.addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() && count > 0 => (0..count.min(250))
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            addrs,
            next: AtomicUsize::new(0),
        }
    }

    /// How many addresses are in use (0: the system chooses).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether the system chooses the source address.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    fn pick(&self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.addrs[i % self.addrs.len()])
    }
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP or the handshake failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server answered the upgrade with another status.
    #[error("HTTP {0}")]
    Status(u16),
    /// The server's answer was not a valid upgrade.
    #[error("bad handshake response: {0}")]
    Handshake(&'static str),
}

impl ConnectError {
    /// A short label for counting failures by kind.
    pub fn kind(&self) -> String {
        match self {
            Self::Io(e) => format!("{:?}", e.kind()),
            Self::Status(s) => format!("HTTP {s}"),
            Self::Handshake(_) => "bad handshake".to_string(),
        }
    }
}

/// The reading half of a connection: plain TCP or TLS.
#[derive(Debug)]
pub enum ReadHalf {
    /// `ws://`.
    Tcp(OwnedReadHalf),
    /// `wss://`.
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The writing half of a connection: plain TCP or TLS.
#[derive(Debug)]
pub enum WriteHalf {
    /// `ws://`.
    Tcp(OwnedWriteHalf),
    /// `wss://`.
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            Self::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            Self::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_flush(cx),
            Self::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            Self::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// Open a TCP connection from the next source address, start TLS for
/// `wss://`, and upgrade it.
pub async fn connect(
    target: &Target,
    sources: &Sources,
) -> Result<(Reader<ReadHalf>, Writer<WriteHalf>), ConnectError> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = sources.pick() {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let (leftover, deflate, r, w) = match &target.tls {
        None => {
            let (leftover, deflate) = handshake(&mut stream, target).await?;
            let (r, w) = stream.into_split();
            (leftover, deflate, ReadHalf::Tcp(r), WriteHalf::Tcp(w))
        }
        Some(config) => {
            let host = target
                .host
                .rsplit_once(':')
                .filter(|(_, port)| port.parse::<u16>().is_ok())
                .map_or(target.host.as_str(), |(h, _)| h);
            let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|_| ConnectError::Handshake("the host is not a valid TLS server name"))?;
            let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, stream)
                .await?;
            let (leftover, deflate) = handshake(&mut tls, target).await?;
            let (r, w) = tokio::io::split(tls);
            (leftover, deflate, ReadHalf::Tls(r), WriteHalf::Tls(w))
        }
    };
    let mut reader = Reader::new(r);
    reader.inflate = deflate.then(Inflate::default);
    reader.buf[..leftover.len()].copy_from_slice(&leftover);
    reader.end = leftover.len();
    Ok((reader, Writer::new(w)))
}

/// Append a final client frame with a random mask to `out`.
pub fn masked_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], rng: &mut fastrand::Rng) {
    let mask = rng.u32(..).to_ne_bytes();
    crate::ws::frame::append_client_frame(out, true, opcode, mask, payload);
}

/// Send the upgrade request, check the `101`; returns bytes read past it
/// and whether permessage-deflate was agreed.
async fn handshake(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    target: &Target,
) -> Result<(Vec<u8>, bool), ConnectError> {
    // No client_max_window_bits: the load tool never compresses, and the
    // server then keeps no inflater for it.
    let offer = if target.deflate {
        "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    } else {
        ""
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
        target.path, target.host
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(
                io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed during handshake").into(),
            );
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_RESPONSE {
            return Err(ConnectError::Handshake("response headers too long"));
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| ConnectError::Handshake("not UTF-8"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(ConnectError::Handshake("no status code"))?;
    if status != 101 {
        return Err(ConnectError::Status(status));
    }
    let expected = accept_key(KEY.as_bytes());
    let accepted = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == expected
        })
    });
    if !accepted {
        return Err(ConnectError::Handshake("wrong Sec-WebSocket-Accept"));
    }
    if buf.len() - head_end > READ_BUF {
        return Err(ConnectError::Handshake("too much data after the handshake"));
    }
    let deflate = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                && value.trim_start().starts_with("permessage-deflate")
        })
    });
    if target.deflate && !deflate {
        return Err(ConnectError::Handshake("the server declined permessage-deflate"));
    }
    Ok((buf.split_off(head_end), deflate))
}

/// Inflates compressed (RSV1) server messages. roomcast compresses every
/// message on its own (`server_no_context_takeover`), so one stream,
/// reset after each message, serves any number of connections: a reader
/// thread needs one, not one per subscriber.
pub struct Inflate {
    z: flate2::Decompress,
    out: Vec<u8>,
}

impl Default for Inflate {
    fn default() -> Self {
        Self {
            z: flate2::Decompress::new(false),
            out: Vec::new(),
        }
    }
}

impl std::fmt::Debug for Inflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflate").finish_non_exhaustive()
    }
}

impl Inflate {
    /// The inflated payload of one compressed message.
    pub fn message(&mut self, compressed: &[u8]) -> io::Result<&[u8]> {
        self.z.reset(false);
        self.out.clear();
        for input in [compressed, &[0, 0, 0xff, 0xff][..]] {
            let mut at = 0;
            loop {
                if self.out.capacity() - self.out.len() < 4096 {
                    self.out.reserve(self.out.capacity().max(4096));
                }
                let before = self.z.total_in();
                self.z
                    .decompress_vec(&input[at..], &mut self.out, flate2::FlushDecompress::Sync)
                    .map_err(|_| invalid("corrupt compressed message"))?;
                at += (self.z.total_in() - before) as usize;
                if at == input.len() && self.out.len() < self.out.capacity() {
                    break;
                }
                if self.out.len() > 1 << 30 {
                    return Err(invalid("frame too large"));
                }
            }
        }
        Ok(&self.out)
    }
}

/// One frame from the server, borrowed from the reader's buffer.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A text message.
    Text(&'a [u8]),
    /// A binary message.
    Binary(&'a [u8]),
    /// A Ping: answer it with [`Writer::pong`] or the server's idle
    /// timeout ends the connection.
    Ping(&'a [u8]),
    /// A Pong.
    Pong,
    /// A Close frame with its code (1005 when it carried none).
    Close(u16),
}

impl<'a> Frame<'a> {
    /// The frame with `opcode` (one [`parse`] accepted) and `payload`.
    pub fn new(opcode: u8, payload: &'a [u8]) -> Self {
        match opcode {
            0x1 => Frame::Text(payload),
            0x2 => Frame::Binary(payload),
            0x9 => Frame::Ping(payload),
            0xA => Frame::Pong,
            _ => Frame::Close(if payload.len() >= 2 {
                u16::from_be_bytes([payload[0], payload[1]])
            } else {
                1005
            }),
        }
    }
}

/// The reading half of a connection.
#[derive(Debug)]
pub struct Reader<R> {
    io: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Set when permessage-deflate was agreed.
    inflate: Option<Inflate>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(io: R) -> Self {
        Self {
            io,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            inflate: None,
        }
    }

    /// The stream and the bytes buffered but not yet handed out.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        let rest = self.buf[self.start..self.end].to_vec();
        (self.io, rest)
    }

    /// Whether the connection agreed to permessage-deflate.
    pub fn deflate(&self) -> bool {
        self.inflate.is_some()
    }

    /// Whether a whole or partial frame is already buffered (a caller that
    /// batches its bookkeeping flushes it when this turns false, before
    /// the next read may wait).
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// Whether a whole frame is buffered, so [`Reader::next`] returns
    /// without reading.
    pub fn has_frame(&self) -> bool {
        matches!(parse(&self.buf[self.start..self.end]), Ok(Parsed::Frame { .. }))
    }

    /// The next frame; `Ok(None)` when the server closed TCP.
    pub async fn next(&mut self) -> io::Result<Option<Frame<'_>>> {
        loop {
            match parse(&self.buf[self.start..self.end])? {
                Parsed::Frame {
                    opcode,
                    header,
                    len,
                    compressed,
                } => {
                    let from = self.start + header;
                    let to = from + len;
                    self.start = to;
                    if self.start == self.end {
                        self.start = 0;
                        self.end = 0;
                    }
                    let payload = &self.buf[from..to];
                    if !compressed {
                        return Ok(Some(Frame::new(opcode, payload)));
                    }
                    let inflate = self
                        .inflate
                        .as_mut()
                        .ok_or_else(|| invalid("compressed frame without permessage-deflate"))?;
                    return Ok(Some(Frame::new(opcode, inflate.message(payload)?)));
                }
                Parsed::Need(total) => {
                    // Make room: move the partial frame to the front, grow
                    // the buffer only for a frame larger than it.
                    if self.start > 0 {
                        self.buf.copy_within(self.start..self.end, 0);
                        self.end -= self.start;
                        self.start = 0;
                    }
                    if total > self.buf.len() {
                        self.buf.resize(total, 0);
                    }
                    let n = self.io.read(&mut self.buf[self.end..]).await?;
                    if n == 0 {
                        return Ok(None);
                    }
                    self.end += n;
                }
            }
        }
    }
}

/// The result of [`parse`].
pub enum Parsed {
    /// A whole frame: its opcode, header length and payload length, and
    /// whether it is compressed (RSV1).
    Frame {
        opcode: u8,
        header: usize,
        len: usize,
        compressed: bool,
    },
    /// Not enough bytes: at least this many are needed from the start.
    Need(usize),
}

/// Parse one server frame header at the start of `b`.
pub fn parse(b: &[u8]) -> io::Result<Parsed> {
    if b.len() < 2 {
        return Ok(Parsed::Need(2));
    }
    let fin = b[0] & 0x80 != 0;
    let opcode = b[0] & 0x0F;
    if !fin || opcode == 0 {
        return Err(invalid("fragmented frame from the server"));
    }
    if b[1] & 0x80 != 0 {
        return Err(invalid("masked frame from the server"));
    }
    if !matches!(opcode, 0x1 | 0x2 | 0x8 | 0x9 | 0xA) {
        return Err(invalid("unknown opcode from the server"));
    }
    let (header, len) = match b[1] & 0x7F {
        126 if b.len() < 4 => return Ok(Parsed::Need(4)),
        126 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
        127 if b.len() < 10 => return Ok(Parsed::Need(10)),
        127 => {
            let len = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
            (10, usize::try_from(len).map_err(|_| invalid("frame too large"))?)
        }
        n => (2, n as usize),
    };
    if len > 1 << 30 {
        return Err(invalid("frame too large"));
    }
    if b.len() < header + len {
        return Ok(Parsed::Need(header + len));
    }
    Ok(Parsed::Frame {
        opcode,
        header,
        len,
        compressed: b[0] & 0x40 != 0,
    })
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The writing half of a connection: frames are encoded into a reusable
/// buffer with [`Writer::text`] and sent together by [`Writer::flush`].
#[derive(Debug)]
pub struct Writer<W> {
    io: W,
    out: Vec<u8>,
    rng: fastrand::Rng,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    fn new(io: W) -> Self {
        Self {
            io,
            out: Vec::new(),
            rng: fastrand::Rng::new(),
        }
    }

    /// Append a masked text frame to the pending output.
    pub fn text(&mut self, payload: &[u8]) {
        self.frame(0x1, payload);
    }

    /// Append a masked frame with `opcode`.
    pub fn frame(&mut self, opcode: u8, payload: &[u8]) {
        masked_frame(&mut self.out, opcode, payload, &mut self.rng);
    }

    /// The stream.
    pub fn into_inner(self) -> W {
        self.io
    }

    /// Bytes encoded and not yet flushed.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Write everything pending.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Answer a Ping at once.
    pub async fn pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.frame(0xA, payload);
        self.flush().await
    }

    /// Send a Close frame with `code` (and shut down our side of TCP).
    pub async fn close(&mut self, code: u16) -> io::Result<()> {
        self.frame(0x8, &code.to_be_bytes());
        self.flush().await?;
        self.io.shutdown().await
    }
}

/// Read frames until a text frame arrives, answering Pings on the way;
/// returns it copied (for the rare setup replies, not the hot path).
pub async fn next_text<R, W>(r: &mut Reader<R>, w: &mut Writer<W>) -> anyhow::Result<Vec<u8>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        match r.next().await? {
            Some(Frame::Text(t)) => return Ok(t.to_vec()),
            Some(Frame::Ping(p)) => {
                let p = p.to_vec();
                w.pong(&p).await?;
            }
            Some(Frame::Binary(_) | Frame::Pong) => {}
            Some(Frame::Close(code)) => bail!("server closed the connection with {code}"),
            None => bail!("server closed TCP"),
        }
    }
}

/// Read the `welcome`, join `group` and wait for its `ack`.
pub async fn welcome_and_join<R, W>(r: &mut Reader<R>, w: &mut Writer<W>, group: &str) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let welcome = next_text(r, w).await?;
    if memchr::memmem::find(&welcome, br#""type":"welcome""#).is_none() {
        bail!("expected welcome, got {}", String::from_utf8_lossy(&welcome));
    }
    if group.is_empty() {
        return Ok(());
    }
    w.text(format!(r#"{{"type":"join","group":"{group}","id":0}}"#).as_bytes());
    w.flush().await?;
    let reply = next_text(r, w).await?;
    // A group with history answers with its position too.
    let ack = br#"{"type":"ack","id":0"#;
    if !(reply.starts_with(ack) && matches!(reply.get(ack.len()), Some(b'}' | b','))) {
        bail!("join {group}: {}", String::from_utf8_lossy(&reply));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_frames_and_asks_for_more() {
        assert!(matches!(parse(&[0x81]).unwrap(), Parsed::Need(2)));
        assert!(matches!(parse(&[0x81, 3, b'a']).unwrap(), Parsed::Need(5)));
        assert!(matches!(
            parse(&[0x81, 3, b'a', b'b', b'c', 0x81]).unwrap(),
            Parsed::Frame {
                opcode: 1,
                header: 2,
                len: 3,
                compressed: false
            }
        ));
        assert!(matches!(parse(&[0x82, 126, 1]).unwrap(), Parsed::Need(4)));
        assert!(matches!(parse(&[0x82, 126, 1, 0]).unwrap(), Parsed::Need(260)));
        assert!(parse(&[0x01, 0]).is_err(), "fragment");
        assert!(parse(&[0x81, 0x80]).is_err(), "masked");
        assert!(parse(&[0x83, 0]).is_err(), "reserved opcode");
    }

    #[test]
    fn parses_ws_urls() {
        let t = Target::parse("ws://127.0.0.1:9000/ws?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(t.path, "/ws?x=1");
        assert_eq!(Target::parse("ws://127.0.0.1:9000").unwrap().path, "/ws");
        assert!(Target::parse("http://127.0.0.1/ws").is_err());
        let t = Target::parse("wss://127.0.0.1/ws").unwrap();
        assert!(
            t.secure && t.tls.is_none(),
            "the caller adds the TLS configuration"
        );
        assert_eq!(t.addr.port(), 443);
        assert!(Target::parse("wss:/x").is_err());
    }

    #[test]
    fn loopback_sources_start_at_127_0_0_2() {
        let t = Target::parse("ws://127.0.0.1:9000/ws").unwrap();
        let s = Sources::new(3, &t);
        let picked: Vec<_> = (0..4).map(|_| s.pick().unwrap().to_string()).collect();
        assert_eq!(picked, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2"]);
        assert!(Sources::new(0, &t).pick().is_none());
    }
}
