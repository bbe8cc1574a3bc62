//! `roomcast client`: a command-line client for trying and scripting a
//! roomcast server, like `websocat` but speaking the roomcast protocol
//! (`docs/protocol.md`).
//!
//! ```text
//! roomcast client ws://127.0.0.1:8080/ws --join lobby
//! ```
//!
//! connects, reads the `welcome`, joins `lobby` (waiting for the `ack`),
//! prints every message received as one JSON object per line on stdout and
//! publishes every line typed on stdin to `lobby`.
//!
//! The WebSocket is yawc's, because it has permessage-deflate (RFC 7692),
//! which the client offers unless `--no-compression` is given: compressed
//! messages from the server are inflated transparently. `wss://` runs over
//! rustls with roomcast's crypto provider ([`crate::tls::provider`]),
//! trusting the system's CA store plus `--ca-cert`; the server name (SNI and
//! the name verified) is the URL's host.
//!
//! The whole client is [`run`], generic over its stdin, stdout and stderr so
//! that tests drive it in-process; the binary calls [`run_stdio`], which
//! passes the process's streams and turns a [`ClientError`] into an exit
//! code with [`ClientError::exit_code`].
//!
//! Internally one task writes to the socket (fed by a channel) while the
//! main loop reads the socket and stdin, so a server that stops reading
//! from us (backpressure) can never block our reading of its replies. At
//! most [`WINDOW`] requests are unanswered at any time: stdin is not read
//! while the window is full.
//!
//! With `--reconnect` a connection that is lost is replaced: the main loop
//! then also waits for the next attempt (`client/reconnect.rs` says which
//! ends are retried and how long to wait), stdin lines are held until the
//! groups are joined again, and each group that keeps history is rejoined
//! with `recover` from where the client was (`client/positions.rs`), so
//! that what was published meanwhile is printed, once and in order, or
//! reported as lost.

mod positions;
mod reconnect;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::stream::{SplitStream, Stream, StreamExt};
use futures_util::{FutureExt, Sink, SinkExt};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use yawc::close::CloseCode;
use yawc::{Frame, MaybeTlsStream, OpCode, Options, WebSocket, WebSocketError};

/// At most this many requests (joins, publishes, checkpoints) may be
/// waiting for their reply; stdin is not read while the window is full.
pub const WINDOW: usize = 256;

/// How long to wait for the server's reply to our Close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The largest message accepted from the server, compressed or inflated
/// (tungstenite's default, which the client had before yawc; yawc's own is
/// 1 MiB).
const MAX_MESSAGE: usize = 64 << 20;

/// Messages shorter than this go uncompressed: deflate rarely shrinks a
/// few dozen bytes (the server's default `--compression-threshold` too).
const COMPRESSION_THRESHOLD: usize = 256;

/// Exit status: normal end.
pub const EXIT_OK: i32 = 0;
/// Exit status: the server rejected a request, a stdin line could not be
/// published, or the arguments are invalid.
pub const EXIT_PROTOCOL: i32 = 1;
/// Exit status: the server could not be reached.
pub const EXIT_UNREACHABLE: i32 = 2;
/// Exit status: the server closed the connection, or it was lost.
pub const EXIT_CLOSED: i32 = 3;

const AFTER_HELP: &str = "\
Output (stdout):
  One line per message received: the server's `message` frame as compact
  JSON, e.g. {\"type\":\"message\",\"group\":\"lobby\",\"from\":\"3\",\"data\":\"hi\"}
  (in a group that keeps history it carries its \"offset\" too).
  A binary delivery (type 4) is printed as
  {\"type\":\"message\",\"group\":\"lobby\",\"binary\":\"<base64 of the message bytes>\"},
  with \"offset\":N after the group for one with an offset (type 8).
  With --json every frame received is printed the same way, one per line:
  welcome, ack, pong, error and message frames (the client sends a `ping`
  with an id after each binary publish, so its `pong` shows up too).
  The server echoes your own publications to you while you are in the
  group (unless it runs with --no-echo): they are printed and counted.

Connection:
  ws://HOST:PORT/PATH or wss://HOST:PORT/PATH (TLS 1.2/1.3). For wss:// the
  server's certificate must be valid for HOST and signed by a CA in the
  system's store (SSL_CERT_FILE / SSL_CERT_DIR override it) or in the
  --ca-cert file (for a private or self-signed CA).
  permessage-deflate (RFC 7692) is offered: if the server accepts it, large
  messages travel compressed both ways and are printed as usual.
  --no-compression does not offer it.

Input (stdin):
  Each line is published to the first --join group. A line that is valid
  JSON is sent as that JSON value (42 is a number, \"42\" a string, {\"a\":1}
  an object); any other line is sent as a JSON string. Empty lines are
  skipped. With --send-binary the line's bytes (without the newline) are
  sent as a binary publish (type 3) instead. Without --join, lines are not
  published: each one gets an error on stderr.

End of input:
  When stdin ends, the client first waits for the server's replies to
  everything it sent. Then, if it is in a group or --count is given, it
  keeps printing messages until --count is reached or the server closes
  the connection (with --reconnect: until --count, or an end that is not
  retried; stop it with Ctrl-C). Otherwise there is nothing left to
  wait for: it closes the connection (code 1000) and exits 0.
  To publish and exit: `echo hi | roomcast client URL --join lobby --count 1`
  (waits for the echo of your own message).

Reconnecting (--reconnect):
  Once connected, a connection that is lost (socket error or end, or any
  close by the server except 1002 and 1007, which mean this client broke
  the protocol) is replaced: the client waits 100ms, doubling up to 5s
  (each wait drawn between half and all of it; back to 100ms after a
  connection that stayed up 10s), connects again, rejoins its groups and
  goes on. Each loss and attempt is reported on stderr. In a group that
  keeps history the rejoin asks for what was published meanwhile: those
  messages are printed in order, each once, and count for --count; when
  the server cannot replay them (no longer kept, or its history was lost,
  e.g. by a restart) one line on stderr says so: `group 'G': N publications
  could not be recovered after the reconnect (...); reload state`. Groups
  without history are simply rejoined. With --json the new welcome and
  acks are printed too.
  Not retried: a first connection that fails (exit 2, as without
  --reconnect), a handshake refused with HTTP 401 or 403 (the token in the
  URL is refused and would be again: exit 2), a rejected rejoin (exit 1).
  Stdin lines read while disconnected are held (at most 256; stdin is not
  read further meanwhile) and published once the groups are joined again.
  Lines sent but not yet acknowledged when the connection was lost are
  not sent again, since they may have been published: each is reported on
  stderr as possibly not published and counts as not published (exit 1).
  A silent connection is lost too: when nothing comes for --keepalive
  (30s; the server's own pings count) the client sends a Ping, and when
  nothing comes for --keepalive more it reconnects (a network can drop a
  connection without telling either end).
  Ctrl-C ends the client at any time, waiting or not.

Exit status:
  0  normal end: --count reached, or stdin ended with nothing left to wait for
  1  the server answered a join or publish with an error frame, a stdin
     line could not be published (or, with --reconnect, was not
     acknowledged before the connection was lost), or the arguments are
     invalid (including an unreadable --ca-cert file)
  2  cannot connect: server unreachable, TLS handshake failed (e.g. a
     certificate that is not trusted), upgrade refused, or no welcome
     within --connect-timeout; with --reconnect also a reconnect refused
     with HTTP 401 or 403
  3  the server closed the connection (close code and reason on stderr),
     or the connection was lost (with --reconnect: closed with 1002 or
     1007)";

/// Options of `roomcast client`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct ClientArgs {
    /// WebSocket URL of the server's roomcast endpoint, e.g.
    /// ws://127.0.0.1:8080/ws or wss://chat.example.com/ws.
    #[arg(value_name = "URL")]
    pub url: String,

    /// Join GROUP after connecting; repeat to join several. Lines from
    /// stdin are published to the first one.
    #[arg(long = "join", value_name = "GROUP")]
    pub join: Vec<String>,

    /// Publish stdin lines as binary (type 3) publishes: the line's bytes
    /// without the newline.
    #[arg(long)]
    pub send_binary: bool,

    /// Exit 0 after printing N messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Print every frame received (welcome, ack, pong, error, message), not
    /// only messages.
    #[arg(long)]
    pub json: bool,

    /// Give up when the connection and the server's welcome take longer
    /// than DUR (exit 2).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Do not offer permessage-deflate: every message travels uncompressed.
    #[arg(long)]
    pub no_compression: bool,

    /// For wss:// URLs: also trust the CA certificate(s) in this PEM file,
    /// e.g. a private CA or the server's self-signed certificate.
    #[arg(long, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,

    /// When the connection is lost, connect again (with backoff), rejoin
    /// the groups and recover what was published meanwhile in groups that
    /// keep history (see "Reconnecting" below).
    #[arg(long)]
    pub reconnect: bool,

    /// With --reconnect: when nothing has come from the server for DUR,
    /// send it a WebSocket Ping; when nothing comes for DUR more, the
    /// connection is taken as lost (a network can drop a connection
    /// without either end hearing of it). 0s turns this off.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration, requires = "reconnect")]
    pub keepalive: Duration,
}

impl ClientArgs {
    /// Arguments for `url` with every option at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            join: Vec::new(),
            send_binary: false,
            count: None,
            json: false,
            connect_timeout: Duration::from_secs(10),
            no_compression: false,
            ca_cert: None,
            reconnect: false,
            keepalive: Duration::from_secs(30),
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 10s, 500ms, 1m)"))
}

/// How a client session ended normally (exit status 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientExit {
    /// Our connection id, from the `welcome` (the last one, after
    /// reconnects).
    pub conn: String,
    /// Messages printed (the number `--count` compares with).
    pub messages: u64,
    /// Stdin lines published and acknowledged by the server.
    pub published: u64,
}

/// Why the client stopped with a non-zero exit status. The `Display` text
/// is the message for stderr (the binary prefixes `roomcast client: `).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Invalid arguments (exit 1).
    #[error("{0}")]
    Usage(String),
    /// The server answered one of our requests with an `error` frame (exit 1).
    #[error("the server rejected {request}: {code}: {message}")]
    Rejected {
        /// What we asked for, e.g. `join of group 'lobby'`.
        request: String,
        /// The error frame's `code`.
        code: String,
        /// The error frame's `message`.
        message: String,
    },
    /// The server broke the protocol, e.g. no `welcome` first (exit 1).
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
    /// Some stdin lines could not be published (each one was reported on
    /// stderr as it was read) (exit 1).
    #[error("{0} line(s) from stdin were not published")]
    NotPublished(u64),
    /// Reading stdin or writing stdout failed (exit 1).
    #[error("{0}")]
    Io(String),
    /// The server could not be reached, the TLS handshake failed, or the
    /// server refused the WebSocket upgrade (exit 2).
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL given.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server refused the WebSocket upgrade with HTTP 401 or 403: the
    /// credentials in the URL (or the client's address or origin) are not
    /// accepted, and would not be on a retry (exit 2).
    #[error("cannot connect to {url}: {reason}")]
    Denied {
        /// The URL given.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server closed the connection with a Close frame (exit 3).
    #[error("the server closed the connection: {code}{}", if reason.is_empty() { String::new() } else { format!(" ({reason})") })]
    Closed {
        /// Close code (1005 when the Close frame had none).
        code: u16,
        /// Close reason, possibly empty.
        reason: String,
    },
    /// The connection ended without a Close frame (exit 3).
    #[error("connection lost: {0}")]
    Lost(String),
}

impl ClientError {
    /// The process exit status for this error: 1 protocol or usage, 2
    /// unreachable, 3 closed by the server.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_)
            | Self::Rejected { .. }
            | Self::Protocol(_)
            | Self::NotPublished(_)
            | Self::Io(_) => EXIT_PROTOCOL,
            Self::Connect { .. } | Self::Denied { .. } => EXIT_UNREACHABLE,
            Self::Closed { .. } | Self::Lost(_) => EXIT_CLOSED,
        }
    }
}

/// yawc's socket as a stream of results and a sink of frames. yawc's own
/// `Stream` ends at an error without saying which, and the client reports
/// why a connection was lost.
struct Ws(WebSocket<MaybeTlsStream<TcpStream>>);

impl Stream for Ws {
    type Item = Result<Frame, WebSocketError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(Some(ready!(self.get_mut().0.poll_next_frame(cx))))
    }
}

impl Sink<Frame> for Ws {
    type Error = WebSocketError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Frame) -> Result<(), Self::Error> {
        Pin::new(&mut self.get_mut().0).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }
}

/// Run the client: connect to `args.url`, join the groups, publish the
/// lines of `stdin`, print what arrives on `stdout`, and report non-fatal
/// problems (lines that cannot be published, reconnects) on `stderr`.
///
/// Returns when `--count` is reached, when stdin has ended and there is
/// nothing left to wait for (see the `--help` text), or with an error when
/// the server rejects a request, cannot be reached or closes the
/// connection (with `--reconnect`: when it cannot be retried).
pub async fn run<I, O, E>(args: ClientArgs, stdin: I, stdout: O, stderr: E) -> Result<ClientExit, ClientError>
where
    I: AsyncBufRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    validate(&args)?;
    let connected = connect(&args).await?;
    let mut client = Client {
        args,
        link: Some(Link::new(connected.ws)),
        retry: None,
        backoff: reconnect::Backoff::default(),
        positions: positions::Positions::default(),
        out: stdout,
        err: stderr,
        conn: connected.conn,
        next_id: 1,
        pending: BTreeMap::new(),
        held: VecDeque::new(),
        messages: 0,
        published: 0,
        not_published: 0,
        lines: 0,
    };
    let result = client.session(connected.welcome, stdin).await;
    if let Some(link) = client.link.take() {
        link.finish().await;
    }
    client.report_held().await;
    let _ = client.out.flush().await;
    let _ = client.err.flush().await;
    match result {
        Ok(()) if client.not_published > 0 => Err(ClientError::NotPublished(client.not_published)),
        Ok(()) => Ok(ClientExit {
            conn: client.conn,
            messages: client.messages,
            published: client.published,
        }),
        Err(e) => Err(e),
    }
}

/// [`run`] on the process's stdin, stdout and stderr, for the binary:
/// prints a failure on stderr as `roomcast client: <error>` and returns the
/// exit status (0, or [`ClientError::exit_code`]).
///
/// The caller should exit the process with it right away
/// (`std::process::exit`): tokio reads stdin on a blocking thread that
/// cannot be interrupted, so dropping the runtime would wait for the next
/// line typed.
pub async fn run_stdio(args: ClientArgs) -> i32 {
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    match run(args, stdin, tokio::io::stdout(), tokio::io::stderr()).await {
        Ok(_) => EXIT_OK,
        Err(e) => {
            eprintln!("roomcast client: {e}");
            e.exit_code()
        }
    }
}

/// Aborts the writer task if its [`Link`] is dropped (the connection was
/// lost, or [`run`] returns early).
struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    async fn wait(mut self) {
        let _ = (&mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One connection: the socket's reading half, and the channel to the task
/// that writes (so that a server that stops reading from us can never
/// block our reading of its replies).
struct Link {
    stream: SplitStream<Ws>,
    tx: mpsc::UnboundedSender<Frame>,
    writer: AbortOnDrop,
    /// When it was established (a connection that stayed up resets the
    /// backoff).
    since: Instant,
    /// When the server was last heard from (`--keepalive`).
    heard: Instant,
    /// Whether a Ping went out since then.
    pinged: bool,
}

impl Link {
    fn new(ws: Ws) -> Self {
        let (mut sink, stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
        // Sends what the main loop queues, in order, and stops after a
        // Close frame or the first error (the reading side sees it).
        let writer = AbortOnDrop(tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let close = m.opcode() == OpCode::Close;
                if sink.send(m).await.is_err() || close {
                    break;
                }
            }
        }));
        let now = Instant::now();
        Self {
            stream,
            tx,
            writer,
            since: now,
            heard: now,
            pinged: false,
        }
    }

    fn send(&self, frame: Frame) {
        // A send error means the writer stopped: the reading side reports
        // why.
        let _ = self.tx.send(frame);
    }

    /// Let the writer send what is queued (a Close last), for at most
    /// [`CLOSE_WAIT`].
    async fn finish(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(CLOSE_WAIT, self.writer.wait()).await;
    }
}

/// A connection that is up: the socket, after the server's `welcome`.
struct Connected {
    ws: Ws,
    /// Our connection id.
    conn: String,
    /// The welcome frame as received, on one line.
    welcome: String,
}

/// The next reconnect attempt: a wait, then [`connect`].
type Retry = Pin<Box<dyn Future<Output = Result<Connected, ClientError>> + Send>>;

/// The next frame from the connection; never, while there is none.
async fn next_frame(link: &mut Option<Link>) -> Option<Result<Frame, WebSocketError>> {
    match link {
        Some(link) => link.stream.next().await,
        None => std::future::pending().await,
    }
}

/// When `at` comes; never, for `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The outcome of the reconnect attempt under way; never, while there is
/// none.
async fn next_attempt(retry: &mut Option<Retry>) -> Result<Connected, ClientError> {
    match retry {
        Some(attempt) => attempt.await,
        None => std::future::pending().await,
    }
}

fn validate(args: &ClientArgs) -> Result<(), ClientError> {
    let url = args.url.trim();
    if !url.starts_with("ws://") && !url.starts_with("wss://") {
        return Err(ClientError::Usage(format!(
            "invalid URL '{url}': expected ws://HOST:PORT/PATH or wss://HOST:PORT/PATH, e.g. ws://127.0.0.1:8080/ws"
        )));
    }
    if args.ca_cert.is_some() && !url.starts_with("wss://") {
        return Err(ClientError::Usage(format!(
            "--ca-cert is for wss:// URLs; '{url}' is not TLS"
        )));
    }
    match args.join.first() {
        Some(group) if args.send_binary && group.len() > usize::from(u8::MAX) => Err(ClientError::Usage(
            format!("--send-binary: group name '{group}' is longer than 255 bytes"),
        )),
        _ => Ok(()),
    }
}

/// Connect and read the welcome, all within `--connect-timeout`.
async fn connect(args: &ClientArgs) -> Result<Connected, ClientError> {
    let url = args.url.trim();
    let deadline = Instant::now() + args.connect_timeout;
    let timeout = humantime::format_duration(args.connect_timeout);
    let unreachable = |reason: String| ClientError::Connect {
        url: url.to_owned(),
        reason,
    };
    let parsed = url
        .parse()
        .map_err(|e| ClientError::Usage(format!("invalid URL '{url}': {e}")))?;
    let mut options = Options::default()
        .with_limits(MAX_MESSAGE, MAX_MESSAGE)
        // Text frames that are not UTF-8 end the connection, as they did
        // with tungstenite: the main loop reads text as `str`.
        .with_utf8()
        .with_no_delay();
    if !args.no_compression {
        options = options
            .with_balanced_compression()
            .with_compression_threshold(COMPRESSION_THRESHOLD);
    }
    let mut builder = WebSocket::connect(parsed).with_options(options);
    if url.starts_with("wss://") {
        builder = builder.with_connector(tls_connector(args.ca_cert.as_deref(), url)?);
    }
    let mut ws = match tokio::time::timeout_at(deadline, builder).await {
        Err(_) => return Err(unreachable(format!("timed out after {timeout}"))),
        Ok(Err(e)) => return Err(connect_error(url, e)),
        Ok(Ok(ws)) => Ws(ws),
    };
    let first = loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                return Err(unreachable(format!(
                    "no welcome from the server within {timeout} (is this a roomcast /ws endpoint?)"
                )));
            }
            Ok(Some(Ok(f))) if matches!(f.opcode(), OpCode::Ping | OpCode::Pong) => continue,
            Ok(other) => break other,
        }
    };
    let text = match first {
        Some(Ok(f)) if f.opcode() == OpCode::Text => text_of(&f)?.to_owned(),
        Some(Ok(f)) if f.opcode() == OpCode::Binary => {
            return Err(ClientError::Protocol(
                "expected a welcome frame first, got a binary frame (is this a roomcast /ws endpoint?)"
                    .into(),
            ));
        }
        other => return Err(end_error(other)),
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v["type"] == "welcome" => {
            let conn = v["conn"].as_str().unwrap_or_default().to_owned();
            Ok(Connected {
                ws,
                conn,
                welcome: one_line(&text),
            })
        }
        _ => Err(ClientError::Protocol(format!(
            "expected a welcome frame first, got {}",
            one_line(&text)
        ))),
    }
}

/// The TLS connector for a `wss://` URL (see [`crate::tls::client_config`]).
fn tls_connector(ca_cert: Option<&Path>, url: &str) -> Result<TlsConnector, ClientError> {
    match crate::tls::client_config(ca_cert) {
        Ok(config) => Ok(TlsConnector::from(config)),
        Err(e @ crate::tls::ClientTlsError::CaCert { .. }) => Err(ClientError::Usage(e.to_string())),
        Err(e @ crate::tls::ClientTlsError::NoRoots) => Err(ClientError::Connect {
            url: url.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Map a failed WebSocket connect to exit 1 (bad URL) or 2 (unreachable,
/// TLS, refused upgrade).
fn connect_error(url: &str, e: WebSocketError) -> ClientError {
    let reason = match e {
        WebSocketError::UrlParseError(u) => return ClientError::Usage(format!("invalid URL '{url}': {u}")),
        WebSocketError::InvalidHttpScheme => {
            return ClientError::Usage(format!("invalid URL '{url}': expected ws:// or wss://"));
        }
        WebSocketError::IoError(io) => {
            // yawc hands TLS failures back as I/O errors wrapping rustls'.
            match io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                Some(tls @ rustls::Error::InvalidCertificate(_)) => format!(
                    "TLS handshake failed: {tls} (a private or self-signed CA can be trusted with --ca-cert FILE)"
                ),
                Some(tls) => format!("TLS handshake failed: {tls}"),
                None => io.to_string(),
            }
        }
        WebSocketError::InvalidStatusCode(code) => {
            // yawc keeps only the status, not the body with our
            // {"error":{..}} detail.
            let status =
                http::StatusCode::from_u16(code).map_or_else(|_| code.to_string(), |s| s.to_string());
            let mut reason = format!("the server refused the WebSocket upgrade: HTTP {status}");
            if code == http::StatusCode::NOT_FOUND.as_u16() {
                reason.push_str(" (the roomcast endpoint is /ws)");
            }
            if matches!(code, 401 | 403) {
                return ClientError::Denied {
                    url: url.to_owned(),
                    reason,
                };
            }
            reason
        }
        WebSocketError::Redirected {
            status_code,
            location,
        } => {
            format!("the server refused the WebSocket upgrade: HTTP {status_code}, redirected to {location}")
        }
        other => other.to_string(),
    };
    ClientError::Connect {
        url: url.to_owned(),
        reason,
    }
}

/// A text frame's payload as `str` (yawc checked it is UTF-8: `with_utf8`).
fn text_of(f: &Frame) -> Result<&str, ClientError> {
    std::str::from_utf8(f.payload()).map_err(|_| ClientError::Protocol("text frame that is not UTF-8".into()))
}

/// The error for a stream that yielded a Close frame, ended, or failed.
fn end_error(m: Option<Result<Frame, WebSocketError>>) -> ClientError {
    match m {
        Some(Ok(f)) if f.opcode() == OpCode::Close => match f.close_code() {
            Some(code) => ClientError::Closed {
                code: code.into(),
                reason: f.close_reason().ok().flatten().unwrap_or_default().to_owned(),
            },
            None => ClientError::Closed {
                code: 1005,
                reason: "no close code".into(),
            },
        },
        // yawc's word for the socket's end, when no Close frame came first.
        Some(Err(WebSocketError::ConnectionClosed)) | None => {
            ClientError::Lost("closed without a close frame (1006)".into())
        }
        Some(Err(e)) => ClientError::Lost(e.to_string()),
        Some(Ok(f)) => ClientError::Protocol(format!("unexpected {:?} frame", f.opcode())),
    }
}

/// Collapse a JSON text onto one line. Raw newlines can only be whitespace
/// between JSON tokens (inside strings they must be escaped), so replacing
/// them keeps the JSON valid and equal.
fn one_line(text: &str) -> String {
    if text.contains(['\n', '\r']) {
        text.replace(['\n', '\r'], " ")
    } else {
        text.to_owned()
    }
}

/// What a request waiting for its reply was.
#[derive(Debug)]
enum Pending {
    Join(String),
    /// A JSON publish of stdin line `n`.
    Publish(u64),
    /// The `ping` sent after the binary publish of stdin line `n`.
    Checkpoint(u64),
}

impl Pending {
    fn describe(&self, group: Option<&str>) -> String {
        let group = group.unwrap_or_default();
        match self {
            Pending::Join(g) => format!("the join of group '{g}'"),
            Pending::Publish(n) => format!("the publish of stdin line {n} to group '{group}'"),
            Pending::Checkpoint(n) => format!("the binary publish of stdin line {n} to group '{group}'"),
        }
    }
}

/// A stdin line ready to publish (held as such while disconnected).
#[derive(Debug)]
enum Outgoing {
    /// A JSON publish of stdin line `n`; `data` is JSON text.
    Json { n: u64, group: String, data: String },
    /// A binary publish (type 3) of stdin line `n`: the whole frame.
    Binary { n: u64, frame: Vec<u8> },
}

impl Outgoing {
    fn line(&self) -> u64 {
        match self {
            Outgoing::Json { n, .. } | Outgoing::Binary { n, .. } => *n,
        }
    }
}

/// Whether the session goes on.
enum Flow {
    Continue,
    Done,
}

/// What woke the main loop.
enum Event {
    Stdin(std::io::Result<usize>),
    Socket(Option<Result<Frame, WebSocketError>>),
    /// Nothing came from the server for `--keepalive`.
    Quiet,
    /// Boxed: a socket is large, and this is the rare event.
    Attempt(Box<Result<Connected, ClientError>>),
}

struct Client<O, E> {
    args: ClientArgs,
    /// The connection; `None` while reconnecting.
    link: Option<Link>,
    /// The reconnect attempt under way (its wait, then its connect).
    retry: Option<Retry>,
    backoff: reconnect::Backoff,
    /// Where we are in each group that keeps history.
    positions: positions::Positions,
    out: O,
    err: E,
    conn: String,
    next_id: u64,
    /// Requests waiting for their reply, by id (ids increase, so the first
    /// entry is the oldest).
    pending: BTreeMap<u64, Pending>,
    /// Stdin lines read while disconnected or rejoining, published once the
    /// groups are joined again.
    held: VecDeque<Outgoing>,
    messages: u64,
    published: u64,
    not_published: u64,
    /// Stdin lines read so far (for messages).
    lines: u64,
}

impl<O: AsyncWrite + Unpin, E: AsyncWrite + Unpin> Client<O, E> {
    async fn session(
        &mut self,
        welcome: String,
        mut stdin: impl AsyncBufRead + Unpin,
    ) -> Result<(), ClientError> {
        if self.args.json && matches!(self.print(&welcome).await?, Flow::Done) {
            return self.close().await;
        }
        self.join_all();
        let waits_for_messages = !self.args.join.is_empty() || self.args.count.is_some();
        let mut line = Vec::new();
        let mut stdin_open = true;
        loop {
            if !stdin_open && self.pending.is_empty() && self.held.is_empty() && !waits_for_messages {
                return self.close().await;
            }
            let reads_stdin = stdin_open && self.reads_stdin();
            let quiet_at = self.quiet_at();
            let event = tokio::select! {
                r = stdin.read_until(b'\n', &mut line), if reads_stdin => Event::Stdin(r),
                m = next_frame(&mut self.link) => Event::Socket(m),
                r = next_attempt(&mut self.retry) => Event::Attempt(Box::new(r)),
                () = sleep_until(quiet_at) => Event::Quiet,
            };
            let flow = match event {
                Event::Stdin(r) => {
                    let n = r.map_err(|e| ClientError::Io(format!("reading stdin: {e}")))?;
                    if n == 0 {
                        stdin_open = false;
                    }
                    if !line.is_empty() {
                        self.line(&line).await;
                        line.clear();
                    }
                    Flow::Continue
                }
                Event::Socket(m) => self.socket(m).await?,
                Event::Quiet => self.quiet().await?,
                Event::Attempt(r) => {
                    self.retry = None;
                    self.attempted(*r).await?
                }
            };
            if matches!(flow, Flow::Done) {
                return self.close().await;
            }
        }
    }

    /// When the silence of the server becomes news (`--keepalive`, only
    /// with `--reconnect`): a Ping is due, or the answer to it is overdue.
    fn quiet_at(&self) -> Option<Instant> {
        let keepalive = self.args.keepalive;
        let link = self
            .link
            .as_ref()
            .filter(|_| self.args.reconnect && !keepalive.is_zero())?;
        Some(link.heard + if link.pinged { keepalive * 2 } else { keepalive })
    }

    /// The server was heard from: handle what the socket produced. An end
    /// that `--reconnect` retries starts the reconnect; other errors end
    /// the session.
    async fn socket(&mut self, m: Option<Result<Frame, WebSocketError>>) -> Result<Flow, ClientError> {
        if let Some(link) = &mut self.link {
            link.heard = Instant::now();
            link.pinged = false;
        }
        match self.received(m).await {
            Err(e) if self.args.reconnect && reconnect::retries(&e) => {
                self.lost(e).await;
                Ok(Flow::Continue)
            }
            other => other,
        }
    }

    /// Nothing came from the server for `--keepalive`: ping it, or, when
    /// that Ping is unanswered too, take the connection as lost.
    async fn quiet(&mut self) -> Result<Flow, ClientError> {
        let Some(link) = &mut self.link else {
            return Ok(Flow::Continue);
        };
        // A frame that waited while we were busy (a slow stdout) is no
        // silence.
        if let Some(m) = link.stream.next().now_or_never() {
            return self.socket(m).await;
        }
        if !link.pinged {
            link.pinged = true;
            link.send(Frame::ping(&b""[..]));
            return Ok(Flow::Continue);
        }
        let silence = humantime::format_duration(self.args.keepalive * 2);
        let why = format!("nothing from the server for {silence}, not even the answer to a ping");
        self.lost(ClientError::Lost(why)).await;
        Ok(Flow::Continue)
    }

    /// Whether to read stdin now. Not while joins are unanswered: lines
    /// are published once the groups are joined, and a join that is
    /// rejected must not leave lines read but never sent. Not while
    /// [`WINDOW`] requests and held lines wait.
    fn reads_stdin(&self) -> bool {
        !(self.link.is_some() && self.joining()) && self.pending.len() + self.held.len() < WINDOW
    }

    /// Whether a join is waiting for its ack.
    fn joining(&self) -> bool {
        self.pending.values().any(|p| matches!(p, Pending::Join(_)))
    }

    /// Join every group, asking to recover from where we are in those that
    /// keep history (after a reconnect).
    fn join_all(&mut self) {
        for group in self.args.join.clone() {
            let id = self.request(Pending::Join(group.clone()));
            let recover = match self.positions.recover(&group) {
                Some((offset, epoch)) => {
                    format!(
                        r#","recover":{{"offset":{offset},"epoch":{}}}"#,
                        Value::from(epoch)
                    )
                }
                None => String::new(),
            };
            self.send_text(format!(
                r#"{{"type":"join","group":{},"id":{id}{recover}}}"#,
                Value::from(group.as_str())
            ));
        }
    }

    /// Register a request; returns its id.
    fn request(&mut self, what: Pending) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, what);
        id
    }

    fn send(&self, frame: Frame) {
        if let Some(link) = &self.link {
            link.send(frame);
        }
    }

    fn send_text(&self, text: String) {
        self.send(Frame::text(text));
    }

    /// Publish one stdin line (newline included, if any), or hold it until
    /// the groups are joined again.
    async fn line(&mut self, raw: &[u8]) {
        self.lines += 1;
        let Some(out) = self.prepare(self.lines, raw).await else {
            return;
        };
        if self.link.is_some() && !self.joining() {
            self.publish(out);
        } else {
            if self.held.is_empty() {
                self.warn(&format!(
                    "not connected: stdin lines are held (at most {WINDOW}) and published once the groups \
                     are joined again"
                ))
                .await;
            }
            self.held.push_back(out);
        }
    }

    /// Stdin line `n` as a publication, or `None` (reported on stderr when
    /// it cannot be published; empty lines are skipped).
    async fn prepare(&mut self, n: u64, raw: &[u8]) -> Option<Outgoing> {
        let mut bytes = raw.strip_suffix(b"\n").unwrap_or(raw);
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if bytes.is_empty() {
            return None;
        }
        let Some(group) = self.args.join.first().cloned() else {
            self.not_published += 1;
            self.warn(&format!(
                "stdin line {n} not published: no group joined (use --join GROUP)"
            ))
            .await;
            return None;
        };
        if self.args.send_binary {
            let mut frame = Vec::with_capacity(5 + group.len() + bytes.len());
            frame.extend_from_slice(&3u32.to_le_bytes());
            // validate() checked that the first group fits in one byte.
            frame.push(group.len() as u8);
            frame.extend_from_slice(group.as_bytes());
            frame.extend_from_slice(bytes);
            return Some(Outgoing::Binary { n, frame });
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            self.not_published += 1;
            self.warn(&format!(
                "stdin line {n} not published: not valid UTF-8 (use --send-binary to send bytes)"
            ))
            .await;
            return None;
        };
        // Valid JSON goes as is (the server copies `data` verbatim);
        // anything else as a JSON string.
        let data = match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) => raw.get().to_owned(),
            Err(_) => Value::from(text).to_string(),
        };
        Some(Outgoing::Json { n, group, data })
    }

    fn publish(&mut self, out: Outgoing) {
        match out {
            Outgoing::Json { n, group, data } => {
                let id = self.request(Pending::Publish(n));
                self.send_text(format!(
                    r#"{{"type":"publish","group":{},"data":{data},"id":{id}}}"#,
                    Value::from(group.as_str())
                ));
            }
            Outgoing::Binary { n, frame } => {
                self.send(Frame::binary(frame));
                // Binary requests have no id: a ping behind each one tells
                // us it was handled (and which line an id-less error is
                // about).
                let id = self.request(Pending::Checkpoint(n));
                self.send_text(format!(r#"{{"type":"ping","id":{id}}}"#));
            }
        }
    }

    /// Publish the lines held while disconnected, in order.
    fn publish_held(&mut self) {
        while let Some(out) = self.held.pop_front() {
            self.publish(out);
        }
    }

    /// Report the held lines that will not be sent: the client is stopping.
    async fn report_held(&mut self) {
        while let Some(out) = self.held.pop_front() {
            self.not_published += 1;
            let n = out.line();
            self.warn(&format!(
                "stdin line {n} not published: the client stopped before it could be sent"
            ))
            .await;
        }
    }

    /// The connection ended in a way that `--reconnect` retries: give up
    /// on what it had in flight and schedule the first attempt.
    async fn lost(&mut self, why: ClientError) {
        if let Some(link) = self.link.take()
            && link.since.elapsed() >= reconnect::STABLE_AFTER
        {
            self.backoff.reset();
        }
        self.schedule(&why.to_string()).await;
        self.unconfirmed().await;
    }

    /// Report the publications the lost connection had not acknowledged.
    /// They may or may not have been published, so they are not sent again
    /// (that could publish them twice); joins are sent again on the next
    /// connection anyway.
    async fn unconfirmed(&mut self) {
        for p in std::mem::take(&mut self.pending).into_values() {
            if let Pending::Publish(n) | Pending::Checkpoint(n) = p {
                self.not_published += 1;
                self.warn(&format!(
                    "stdin line {n} may not have been published: the connection was lost before the \
                     server acknowledged it (not sent again)"
                ))
                .await;
            }
        }
    }

    /// Start the next reconnect attempt, after its backoff wait; `why` says
    /// what happened to the last connection or attempt.
    async fn schedule(&mut self, why: &str) {
        let (attempt, wait) = self.backoff.next();
        let shown = Duration::from_millis(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        self.warn(&format!(
            "{why}; reconnecting in {} (attempt {attempt})",
            humantime::format_duration(shown)
        ))
        .await;
        let args = self.args.clone();
        self.retry = Some(Box::pin(async move {
            tokio::time::sleep(wait).await;
            connect(&args).await
        }));
    }

    /// A reconnect attempt ended: go on with the new connection (rejoin,
    /// then publish the held lines), try again, or stop.
    async fn attempted(&mut self, r: Result<Connected, ClientError>) -> Result<Flow, ClientError> {
        let attempt = self.backoff.attempt();
        let connected = match r {
            Ok(c) => c,
            Err(e) if reconnect::retries_attempt(&e) => {
                self.schedule(&format!("reconnect attempt {attempt} failed: {e}"))
                    .await;
                return Ok(Flow::Continue);
            }
            Err(e) => {
                if matches!(e, ClientError::Denied { .. }) {
                    self.warn(&format!(
                        "reconnect attempt {attempt} refused: not retrying, the same credentials would be \
                         refused again (start the client again with a new token)"
                    ))
                    .await;
                }
                return Err(e);
            }
        };
        self.link = Some(Link::new(connected.ws));
        self.conn = connected.conn;
        self.warn(&format!(
            "reconnected (attempt {attempt}) as connection {}",
            self.conn
        ))
        .await;
        if self.args.json && matches!(self.print(&connected.welcome).await?, Flow::Done) {
            return Ok(Flow::Done);
        }
        self.join_all();
        if !self.joining() {
            self.publish_held();
        }
        Ok(Flow::Continue)
    }

    /// Handle what the socket produced.
    async fn received(&mut self, m: Option<Result<Frame, WebSocketError>>) -> Result<Flow, ClientError> {
        match m {
            // yawc reassembles fragments and inflates compressed messages:
            // a Text or Binary frame here is a whole message.
            Some(Ok(f)) => match f.opcode() {
                OpCode::Text => self.text(text_of(&f)?).await,
                OpCode::Binary => self.binary(f.payload()).await,
                // yawc answers pings itself.
                OpCode::Ping | OpCode::Pong => Ok(Flow::Continue),
                _ => Err(end_error(Some(Ok(f)))),
            },
            other => Err(end_error(other)),
        }
    }

    async fn text(&mut self, text: &str) -> Result<Flow, ClientError> {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            if self.args.json {
                return self.print(&one_line(text)).await;
            }
            return Ok(Flow::Continue);
        };
        let kind = v["type"].as_str().unwrap_or_default();
        if kind == "message" && !self.fresh(&v) {
            return Ok(Flow::Continue);
        }
        if (self.args.json || kind == "message") && matches!(self.print(&one_line(text)).await?, Flow::Done) {
            return Ok(Flow::Done);
        }
        match kind {
            "message" => return Ok(self.counted()),
            "ack" | "pong" => self.answered(&v).await,
            "error" => {
                // An error without id answers a binary publish: the oldest
                // unanswered one.
                let what = match v["id"].as_u64() {
                    Some(id) => self.pending.remove(&id),
                    None => self
                        .pending
                        .iter()
                        .find(|(_, p)| matches!(p, Pending::Checkpoint(_)))
                        .map(|(id, _)| *id)
                        .and_then(|id| self.pending.remove(&id)),
                };
                let request = match what {
                    Some(p) => p.describe(self.args.join.first().map(String::as_str)),
                    None => "a request".to_owned(),
                };
                return Err(ClientError::Rejected {
                    request,
                    code: v["code"].as_str().unwrap_or_default().to_owned(),
                    message: v["message"].as_str().unwrap_or_default().to_owned(),
                });
            }
            _ => {}
        }
        Ok(Flow::Continue)
    }

    /// Whether a `message` frame is to be printed: all are but one with an
    /// offset printed already (see [`positions::Positions::delivered`]).
    fn fresh(&mut self, v: &Value) -> bool {
        match (v["group"].as_str(), v["offset"].as_u64()) {
            (Some(group), Some(offset)) => self.positions.delivered(group, offset),
            _ => true,
        }
    }

    /// An `ack` or `pong`: the request it answers is done. A join's ack
    /// carries the group's position in a group with history; after a
    /// reconnect it says whether what we missed follows, and when it does
    /// not, that is reported. The last join's ack releases the held lines.
    async fn answered(&mut self, v: &Value) {
        let Some(done) = v["id"].as_u64().and_then(|id| self.pending.remove(&id)) else {
            return;
        };
        match done {
            Pending::Publish(_) | Pending::Checkpoint(_) => self.published += 1,
            Pending::Join(group) => {
                if let Some(missed) = self.positions.joined(&group, positions::Ack::of(v)) {
                    self.warn(&missed.describe(&group)).await;
                }
                if !self.joining() {
                    self.publish_held();
                }
            }
        }
    }

    /// A binary frame: a type-4 or type-8 delivery prints as
    /// `{"type":"message","group":..,"offset":N,"binary":"<base64>"}`
    /// (`offset` for type 8 only); anything else (which a roomcast server
    /// does not send) only with `--json`, as
    /// `{"type":"binary","binary":"<base64 of the whole frame>"}`.
    async fn binary(&mut self, b: &[u8]) -> Result<Flow, ClientError> {
        match decode_delivery(b) {
            Some(d) => {
                if let Some(offset) = d.offset
                    && !self.positions.delivered(d.group, offset)
                {
                    return Ok(Flow::Continue);
                }
                // Built by hand to keep the key order of the JSON frames.
                let offset = d.offset.map(|o| format!(r#","offset":{o}"#)).unwrap_or_default();
                let line = format!(
                    r#"{{"type":"message","group":{}{offset},"binary":"{}"}}"#,
                    Value::from(d.group),
                    BASE64.encode(d.bytes)
                );
                if matches!(self.print(&line).await?, Flow::Done) {
                    return Ok(Flow::Done);
                }
                Ok(self.counted())
            }
            None if self.args.json => {
                let line = format!(r#"{{"type":"binary","binary":"{}"}}"#, BASE64.encode(b));
                self.print(&line).await
            }
            None => Ok(Flow::Continue),
        }
    }

    /// Count a printed message; `Done` when `--count` is reached.
    fn counted(&mut self) -> Flow {
        self.messages += 1;
        match self.args.count {
            Some(n) if self.messages >= n => Flow::Done,
            _ => Flow::Continue,
        }
    }

    /// Print one line on stdout. A closed stdout (`| head -1`) ends the
    /// session normally.
    async fn print(&mut self, line: &str) -> Result<Flow, ClientError> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let r = async {
            self.out.write_all(&buf).await?;
            self.out.flush().await
        }
        .await;
        match r {
            Ok(()) => Ok(Flow::Continue),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Flow::Done),
            Err(e) => Err(ClientError::Io(format!("writing stdout: {e}"))),
        }
    }

    async fn warn(&mut self, text: &str) {
        let _ = self
            .err
            .write_all(format!("roomcast client: {text}\n").as_bytes())
            .await;
        let _ = self.err.flush().await;
    }

    /// Close with 1000 and wait (briefly) for the server's Close. While
    /// reconnecting there is nothing to close: the attempt is dropped.
    async fn close(&mut self) -> Result<(), ClientError> {
        self.retry = None;
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        link.send(Frame::close(CloseCode::Normal, b""));
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(_)) = link.stream.next().await {}
        })
        .await;
        Ok(())
    }
}

/// A binary delivery: type 4, or type 8 with the group's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The group it was published to.
    pub group: &'a str,
    /// Its offset in the group (type 8: a group that keeps history).
    pub offset: Option<u64>,
    /// The message's bytes.
    pub bytes: &'a [u8],
}

/// Decode a type-4 (`04 00 00 00 | L | group | bytes`) or type-8
/// (`08 00 00 00 | L | group | offset u64 LE | bytes`) binary delivery.
pub fn decode_delivery(b: &[u8]) -> Option<Delivery<'_>> {
    let (kind, rest) = b.split_first_chunk::<4>()?;
    let with_offset = match u32::from_le_bytes(*kind) {
        4 => false,
        8 => true,
        _ => return None,
    };
    let (&len, rest) = rest.split_first()?;
    let (group, rest) = rest.split_at_checked(usize::from(len))?;
    let group = std::str::from_utf8(group).ok()?;
    let (offset, bytes) = if with_offset {
        let (offset, rest) = rest.split_first_chunk::<8>()?;
        (Some(u64::from_le_bytes(*offset)), rest)
    } else {
        (None, rest)
    };
    Some(Delivery { group, offset, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ClientArgs,
    }

    #[test]
    fn parses_options() {
        let cli = Cli::try_parse_from([
            "client",
            "ws://h:1/ws",
            "--join",
            "a",
            "--join",
            "b",
            "--send-binary",
            "--count",
            "3",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.args.join, ["a", "b"]);
        assert!(cli.args.send_binary && cli.args.json);
        assert_eq!(cli.args.count, Some(3));
        assert_eq!(cli.args.connect_timeout, Duration::from_secs(10));
        assert!(!cli.args.no_compression && cli.args.ca_cert.is_none() && !cli.args.reconnect);
        let cli =
            Cli::try_parse_from(["client", "wss://h/ws", "--no-compression", "--ca-cert", "ca.pem"]).unwrap();
        assert!(cli.args.no_compression);
        assert_eq!(cli.args.ca_cert.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert!(Cli::try_parse_from(["client", "ws://h:1/ws", "--count", "0"]).is_err());
        let cli = Cli::try_parse_from(["client", "ws://h:1/ws", "--reconnect"]).unwrap();
        assert!(cli.args.reconnect);
        assert_eq!(cli.args.keepalive, Duration::from_secs(30));
        let cli =
            Cli::try_parse_from(["client", "ws://h:1/ws", "--reconnect", "--keepalive", "500ms"]).unwrap();
        assert_eq!(cli.args.keepalive, Duration::from_millis(500));
        assert!(
            Cli::try_parse_from(["client", "ws://h:1/ws", "--keepalive", "5s"]).is_err(),
            "--keepalive needs --reconnect"
        );
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit status:"), "{help}");
        assert!(help.contains("3  the server closed the connection"), "{help}");
        for option in [
            "wss://",
            "--no-compression",
            "--ca-cert <PEM>",
            "permessage-deflate",
            "--reconnect",
            "Reconnecting (--reconnect):",
            "could not be recovered after the reconnect",
            "HTTP 401 or 403",
        ] {
            assert!(help.contains(option), "{option}: {help}");
        }
    }

    #[test]
    fn decodes_deliveries() {
        let d = |group, offset, bytes| Some(Delivery { group, offset, bytes });
        assert_eq!(
            decode_delivery(b"\x04\0\0\0\x05lobbyhello"),
            d("lobby", None, &b"hello"[..])
        );
        assert_eq!(decode_delivery(b"\x04\0\0\0\x01g"), d("g", None, &b""[..]));
        assert_eq!(decode_delivery(b"\x03\0\0\0\x01g"), None);
        assert_eq!(decode_delivery(b"\x04\0\0\0\x05lob"), None);
        assert_eq!(decode_delivery(b"\x04\0\0"), None);
        // Type 8: the offset after the group.
        assert_eq!(
            decode_delivery(b"\x08\0\0\0\x02ab\x2a\0\0\0\0\0\0\0xyz"),
            d("ab", Some(42), &b"xyz"[..])
        );
        assert_eq!(
            decode_delivery(b"\x08\0\0\0\x02ab\x01\0\0\0\0\0\0\0"),
            d("ab", Some(1), &b""[..])
        );
        assert_eq!(decode_delivery(b"\x08\0\0\0\x02ab\x01\0\0"), None, "a cut offset");
        assert_eq!(decode_delivery(b"\x08\0\0\0\x02\xff\xfe\x01\0\0\0\0\0\0\0"), None);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ClientError::Usage("x".into()).exit_code(), 1);
        assert_eq!(
            ClientError::Connect {
                url: "u".into(),
                reason: "r".into()
            }
            .exit_code(),
            2
        );
        let closed = ClientError::Closed {
            code: 1001,
            reason: "server shutting down".into(),
        };
        assert_eq!(closed.exit_code(), 3);
        assert_eq!(
            closed.to_string(),
            "the server closed the connection: 1001 (server shutting down)"
        );
    }

    #[test]
    fn one_line_keeps_json() {
        let s = "{\"a\":\r\n[1,\n2]}";
        let v: Value = serde_json::from_str(&one_line(s)).unwrap();
        assert_eq!(v, serde_json::json!({"a":[1,2]}));
    }
}
