//! The accept loop, HTTP/1.1 connections, and graceful shutdown.
//!
//! HTTP is served by hyper with our axum router; a WebSocket upgrade hands
//! the raw TCP stream to a session (see [`crate::http`]). Every connection
//! task is spawned on the node's `TaskTracker`, so shutdown can wait for
//! upgraded sessions too, which axum's own graceful shutdown would not.
//!
//! With a certificate configured ([`crate::tls`]) every connection is TLS:
//! the handshake runs in the connection's own task (a slow client never
//! holds up the accept loop), bounded by the handshake timeout, and SIGHUP
//! reloads the certificate for new connections. Without TLS, SIGHUP is
//! logged and otherwise ignored.
//!
//! Every accepted connection first takes a slot among the connections that
//! have not upgraded ([`crate::limits::Limits::accept`]), held until it
//! closes or upgrades; one past the caps is answered with a fixed JSON
//! refusal and closed, before anything of it is read. Request heads are
//! bounded by `max_header_size` (hyper's buffer, then exactly in
//! [`crate::http`]) and `handshake_timeout`.
//!
//! Shutdown drains: sessions are flushed and closed, and meanwhile the
//! listener stays open, so a load balancer's probe of `/readyz` gets `503`
//! rather than connection refused. Connections accepted during the drain
//! serve one request each and are not waited for; the listener closes
//! when the drain ends.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::disconnect::Disconnect;
use crate::limits::HttpPermit;
use crate::node::Node;
use crate::tls::Tls;

/// Listen backlog, large enough for connection ramps in benchmarks.
const BACKLOG: u32 = 4096;

/// Once the drain has ended, how long a request that arrived on a
/// connection accepted during the drain still has to be answered.
const LATE_GRACE: Duration = Duration::from_millis(500);

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    node: Arc<Node>,
    /// Present when a certificate is configured: then every connection is
    /// TLS.
    tls: Option<Arc<Tls>>,
}

impl Server {
    /// Validate `config` and bind its listen address.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(Tls::load(cert, key)?)),
            _ => None,
        };
        let addr = config.listen;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket
            .bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let listener = socket.listen(BACKLOG)?;
        Ok(Self {
            listener,
            node: Node::with_auth(config.clone(), config.auth()?),
            tls,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// The node this server runs.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The TLS state, when a certificate is configured. SIGHUP calls its
    /// [`Tls::reload`]; holding a clone lets a caller reload too.
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.tls.as_ref()
    }

    /// Serve until `shutdown` completes, then drain: flush every client's
    /// queue and close it with 1001, wait at most the drain timeout for
    /// sessions to end. During the drain new connections are still
    /// accepted, for one request each, which gets `503 shutting_down` on
    /// `/readyz`, `/ws` and `/echo`; the listener closes when the drain
    /// ends. With TLS, SIGHUP reloads the certificate meanwhile.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self { listener, node, tls } = self;
        // Registered before the first accept, so a SIGHUP sent once the
        // server answers never hits the default action (exit). Without TLS
        // there is nothing to reload, but process managers send SIGHUP to
        // mean "reload", and that must not end the server.
        spawn_reload_on_sighup(tls.clone(), node.shutdown.clone());
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        info!(
            addr = %listener.local_addr()?,
            node = %node.name,
            "roomcast node {} listening ({scheme}:// on /ws)",
            node.name
        );
        let fd_limit = crate::limits::raise_open_file_limit();
        let max = node.config.max_connections;
        info!(
            open_file_limit = fd_limit,
            "open-file limit {fd_limit}: at most about {} connections",
            fd_limit.saturating_sub(100)
        );
        if max == 0 || max as u64 > fd_limit.saturating_sub(100) {
            warn!(
                "--max-connections ({}) is above what the open-file limit ({fd_limit}) allows: \
                 connections past the limit fail at accept; raise the hard limit (ulimit -Hn, LimitNOFILE)",
                if max == 0 {
                    "unlimited".to_string()
                } else {
                    max.to_string()
                }
            );
        }
        // Once a minute: connect-rate state of addresses not seen lately is
        // dropped, so a flood of distinct addresses cannot grow it for ever,
        // and memory freed since is given back to the system.
        let limits = node.limits.clone();
        let stop = node.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        limits.forget_idle();
                        // A few milliseconds with a busy heap: not on a worker.
                        let _ = tokio::task::spawn_blocking(release_free_memory).await;
                    }
                }
            }
        });
        if let Some(history) = node.memory_history.clone() {
            // Expired history entries are freed within a second.
            let stop = node.shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => history.sweep(),
                    }
                }
            });
        }
        if let Some(presence) = node.presence.clone() {
            // Every sixth of the TTL this node beats and reaps dead nodes'
            // members (sending their left events); every other time it
            // also refreshes its own entries and checks them against the
            // hub (see crate::presence).
            let stop = node.shutdown.clone();
            let node = node.clone();
            let every = crate::presence::beat_every(node.config.presence_ttl);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n: u64 = 0;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {
                            crate::roster::reap(&node).await;
                            if n.is_multiple_of(2) {
                                presence.refresh(node.hub.clone()).await;
                            }
                            n += 1;
                        }
                    }
                }
            });
        }
        node.hub.start_flushers();
        let drained = CancellationToken::new();
        // Connections accepted during the drain. They are not sessions and
        // not on the node's tracker, so a stream of probes cannot keep the
        // drain from ending.
        let late = TaskTracker::new();
        let accept = tokio::spawn(accept_loop(
            listener,
            node.clone(),
            tls,
            drained.clone(),
            late.clone(),
        ));
        shutdown.await;
        info!("shutting down: closing connections");
        node.shutdown.cancel();
        node.hub.close_all(&Disconnect::Shutdown);
        node.tracker.close();
        let grace = node.config.drain_timeout + Duration::from_millis(500);
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, node.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = node.tracker.len(),
                "drain timeout: exiting with connections still open"
            );
        }
        // The accept loop owns the listener: once it returns, connecting
        // is refused.
        drained.cancel();
        let _ = accept.await;
        late.close();
        let late_deadline = deadline.min(tokio::time::Instant::now() + LATE_GRACE);
        let _ = tokio::time::timeout_at(late_deadline, late.wait()).await;
        info!("shutdown complete");
        Ok(())
    }
}

/// Give memory that the allocator holds free back to the system. glibc's
/// malloc keeps what a burst freed (say, the backlogs of slow consumers that
/// were closed) in its arenas, so the process's RSS would stay at its peak:
/// 100 closed `/echo` clients with 1.9 MB of echoes each left it at 168 MB,
/// trimmed 8.7 MB. Measured at 1.6 to 3.8 ms per call during a fan-out to
/// 10,000 members at 400k deliveries/s, hence once a minute.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Reload the certificate on every SIGHUP until shutdown. A failed reload
/// keeps the certificate in use; without TLS, SIGHUP is only logged.
fn spawn_reload_on_sighup(tls: Option<Arc<Tls>>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP: a SIGHUP will end the process");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = hup.recv() => if r.is_none() { return },
            }
            let Some(tls) = &tls else {
                info!("SIGHUP: nothing to reload (no TLS certificate configured)");
                continue;
            };
            match tls.reload() {
                Ok(()) => info!(cert = %tls.cert_path().display(), "SIGHUP: TLS certificate reloaded"),
                Err(e) => error!(error = %e, "SIGHUP: TLS reload failed; keeping the previous certificate"),
            }
        }
    });
}

/// Accept until `drained` is cancelled. Before shutdown a connection is
/// served on the node's tracker until shutdown; once shutdown has begun,
/// one request without keep-alive, on `late`, until `drained`.
async fn accept_loop(
    listener: TcpListener,
    node: Arc<Node>,
    tls: Option<Arc<Tls>>,
    drained: CancellationToken,
    late: TaskTracker,
) {
    let router = crate::http::router(node.clone());
    loop {
        let accepted = tokio::select! {
            _ = drained.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Held until the connection closes or upgrades.
                let permit = match node.limits.accept(peer.ip()) {
                    Ok(p) => p,
                    Err(refusal) => {
                        node.metrics.record_refused(refusal);
                        node.limits.note_refusal(peer.ip(), refusal);
                        refuse(stream, refusal, tls.is_none());
                        continue;
                    }
                };
                if node.config.socket_send_buffer > 0 {
                    let _ =
                        socket2::SockRef::from(&stream).set_send_buffer_size(node.config.socket_send_buffer);
                }
                let _ = stream.set_nodelay(true);
                let draining = node.shutdown.is_cancelled();
                let (tracker, token) = if draining {
                    (&late, drained.clone())
                } else {
                    (&node.tracker, node.shutdown.clone())
                };
                let http = Http {
                    router: router.clone(),
                    peer,
                    token,
                    header_timeout: node.config.handshake_timeout,
                    max_head: node.config.max_header_size,
                    keep_alive: !draining,
                    _permit: permit,
                };
                // Two task types, so a plain connection's future does not
                // carry room for a TLS handshake.
                match &tls {
                    None => {
                        tracker.spawn(serve_http(TokioIo::new(stream), http));
                    }
                    Some(tls) => {
                        tracker.spawn(serve_tls(tls.acceptor(), stream, http));
                    }
                }
            }
            Err(e) => {
                // Usually out of file descriptors: back off a little so the
                // loop does not spin, and do not flood the log.
                crate::warn_limited!(crate::logging::LogKind::AcceptError, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Refuse a connection at accept, before reading anything: a plain one
/// gets the JSON answer if its socket takes it at once (a fresh socket's
/// buffer does), a TLS one is just closed (answering would need the TLS
/// handshake the refusal is meant to save).
fn refuse(stream: TcpStream, refusal: crate::limits::Refusal, plain: bool) {
    if plain {
        let _ = stream.try_write(&crate::http::upgrade::early_refusal(refusal));
    }
    debug!(
        reason = refusal.as_str(),
        "connection refused at accept, before its request was read"
    );
}

/// One HTTP connection's settings, and its slot in the limits for
/// connections that have not upgraded.
struct Http {
    router: axum::Router,
    peer: SocketAddr,
    /// Cancelled when the connection is to close (shutdown, or the end of
    /// the drain for connections accepted during it).
    token: CancellationToken,
    /// Bounds the wait for request headers (and the TLS handshake).
    header_timeout: Duration,
    /// Most bytes of a request head; more gets 431.
    max_head: usize,
    /// Without it the connection closes after one response.
    keep_alive: bool,
    _permit: HttpPermit,
}

/// Complete the TLS handshake within the header timeout, then serve HTTP
/// over it. A client that fails the handshake (a plain HTTP request, an
/// unknown CA, no common version) or never finishes it is dropped.
async fn serve_tls(acceptor: TlsAcceptor, stream: TcpStream, http: Http) {
    let peer = http.peer;
    let handshake = tokio::time::timeout(http.header_timeout, acceptor.accept(stream));
    let stream = tokio::select! {
        _ = http.token.cancelled() => return,
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    serve_http(TokioIo::new(stream), http).await;
}

/// Serve HTTP/1.1 on one connection until it ends, is upgraded, or its
/// token is cancelled (then an idle connection closes and one with a
/// request in flight closes after answering it). The connection's slot for
/// not-yet-upgraded connections is given back when this returns.
async fn serve_http<S>(io: TokioIo<S>, http: Http)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Http {
        router,
        peer,
        token,
        header_timeout,
        max_head,
        keep_alive,
        _permit,
    } = http;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        // The API's loopback rule needs the peer address.
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        router.clone().oneshot(req)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(max_head)
        .keep_alive(keep_alive)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
