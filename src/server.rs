//! The accept loop, HTTP/1.1 connections, and graceful shutdown.
//!
//! HTTP is served by hyper with our axum router; a WebSocket upgrade hands
//! the raw TCP stream to a session (see [`crate::http`]). Every connection
//! task is spawned on the node's `TaskTracker`, so shutdown can wait for
//! upgraded sessions too, which axum's own graceful shutdown would not.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tower::ServiceExt as _;
use tracing::{info, warn};

use crate::config::Config;
use crate::disconnect::Disconnect;
use crate::node::Node;

/// A client must finish sending its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Listen backlog, large enough for connection ramps in benchmarks.
const BACKLOG: u32 = 4096;

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    node: Arc<Node>,
}

impl Server {
    /// Validate `config` and bind its listen address.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
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
            node: Node::new(config),
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

    /// Serve until `shutdown` completes, then drain: stop accepting, flush
    /// every client's queue and close it with 1001, wait at most the drain
    /// timeout for sessions to end.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self { listener, node } = self;
        info!(addr = %listener.local_addr()?, "roomcast listening (WebSocket on /ws)");
        let accept = tokio::spawn(accept_loop(listener, node.clone()));
        shutdown.await;
        info!("shutting down: closing connections");
        node.shutdown.cancel();
        let _ = accept.await;
        node.hub.close_all(Disconnect::Shutdown);
        node.tracker.close();
        let grace = node.config.drain_timeout + Duration::from_millis(500);
        if tokio::time::timeout(grace, node.tracker.wait()).await.is_err() {
            warn!(
                remaining = node.tracker.len(),
                "drain timeout: exiting with connections still open"
            );
        }
        info!("shutdown complete");
        Ok(())
    }
}

async fn accept_loop(listener: TcpListener, node: Arc<Node>) {
    let router = crate::http::router(node.clone());
    loop {
        let accepted = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                if node.config.socket_send_buffer > 0 {
                    let _ =
                        socket2::SockRef::from(&stream).set_send_buffer_size(node.config.socket_send_buffer);
                }
                let router = router.clone();
                let token = node.shutdown.clone();
                node.tracker.spawn(serve_http(stream, peer, router, token));
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

async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    router: axum::Router,
    token: tokio_util::sync::CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        // The API's loopback rule needs the peer address.
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        router.clone().oneshot(req)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
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
