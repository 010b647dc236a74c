//! The server: listeners, connections, graceful shutdown, and the periodic stats task.
//!
//! Each accepted connection speaks HTTP/1.1 or HTTP/2 over cleartext (prior knowledge) on the
//! same port; a peek at its first bytes decides which, and hyper's builder for that protocol
//! serves it. Shutdown stops accepting, asks every connection to finish its in-flight
//! requests, and waits up to `shutdown_grace`.
//! What a request does is `proxy`'s business.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use crate::admin::{self, Readiness};
use crate::config::Config;
use crate::proxy::Proxy;
use crate::stats::{Stats, StatsReporter};

/// A proxy bound to its listeners, ready to run.
pub struct Server {
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    proxy: Arc<Proxy>,
    config: Config,
    readiness: Arc<Readiness>,
}

/// What outlives `Server::run`'s start: reloading the configuration, and readiness.
#[derive(Clone)]
pub struct ServerHandle {
    proxy: Arc<Proxy>,
    /// The configuration being served, to tell what a reload cannot change.
    current: Arc<std::sync::Mutex<Config>>,
    readiness: Arc<Readiness>,
}

impl ServerHandle {
    /// Serves new requests under `config`. Routes, upstreams and policies change at once for
    /// new requests; connections, flights and requests under way are not disturbed. Listen
    /// addresses, the admin address, logging and the stats interval need a restart, which is
    /// logged.
    pub fn reload(&self, config: Config) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.server.listen != config.server.listen || current.admin != config.admin {
            tracing::warn!(
                "listen and admin addresses only change on restart; still serving the old ones"
            );
        }
        if current.log.format != config.log.format
            || current.log.level != config.log.level
            || current.log.stats_interval != config.log.stats_interval
        {
            tracing::warn!("log format, level and stats_interval only change on restart");
        }
        self.proxy.reload(&config);
        tracing::info!(
            routes = config.routes.len(),
            upstreams = config.upstreams.len(),
            "config reloaded"
        );
        *current = config;
    }

    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }
}

impl Server {
    /// Binds every `[server] listen` address and the admin address.
    pub async fn bind(config: Config) -> io::Result<Server> {
        let bind = |address: SocketAddr| async move {
            TcpListener::bind(address)
                .await
                .map_err(|err| io::Error::new(err.kind(), format!("binding {address}: {err}")))
        };
        let mut listeners = Vec::with_capacity(config.server.listen.len());
        for address in &config.server.listen {
            listeners.push(bind(*address).await?);
        }
        let admin = match config.admin {
            Some(address) => Some(bind(address).await?),
            None => None,
        };
        Ok(Server::with_listeners(listeners, admin, config))
    }

    /// Serves on listeners the caller bound (tests bind `127.0.0.1:0`).
    pub fn with_listeners(
        listeners: Vec<TcpListener>,
        admin: Option<TcpListener>,
        config: Config,
    ) -> Server {
        let proxy = Arc::new(Proxy::new(&config, Arc::new(Stats::default())));
        Server {
            listeners,
            admin,
            proxy,
            config,
            readiness: Arc::new(Readiness::default()),
        }
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            proxy: self.proxy.clone(),
            current: Arc::new(std::sync::Mutex::new(self.config.clone())),
            readiness: self.readiness.clone(),
        }
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Serves until `shutdown` resolves, then drains for up to `shutdown_grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listeners,
            admin,
            proxy,
            config,
            readiness,
        } = self;
        for address in listeners.iter().filter_map(|l| l.local_addr().ok()) {
            tracing::info!(%address, "listening on {address}");
        }
        // The admin listener outlives the drain, so `/readyz` can say so.
        let admin = admin.map(|listener| {
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, "admin listening on {address}");
            }
            tokio::spawn(admin::serve(listener, proxy.clone(), readiness.clone()))
        });

        let mut background = JoinSet::new();
        if !config.log.stats_interval.is_zero() {
            let reporter = StatsReporter::new(proxy.stats().clone(), proxy.group().clone());
            background.spawn(reporter.run(config.log.stats_interval));
        }
        // Each listener accepts on its own task and hands connections to this one, which owns
        // the graceful-shutdown registry.
        let (accepted_tx, mut accepted) = mpsc::channel::<(TcpStream, SocketAddr)>(1024);
        for listener in listeners {
            background.spawn(accept_loop(listener, accepted_tx.clone()));
        }
        drop(accepted_tx);

        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.server.header_read_timeout);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        let protocols = Arc::new(Protocols { http1, http2 });
        // Set when draining starts. Every connection holds a receiver until it ends, so the
        // receivers count the open connections and the drain ends when the last one is gone.
        let (draining_tx, draining) = watch::channel(false);
        // One permit per open client connection.
        let connections = Arc::new(Semaphore::new(config.server.max_connections));

        readiness.set(true);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                next = accepted.recv() => {
                    let Some((stream, peer)) = next else { break };
                    let Ok(permit) = connections.clone().try_acquire_owned() else {
                        tokio::spawn(refuse(stream));
                        continue;
                    };
                    let (send_timeout, stats) = (config.server.send_timeout, proxy.stats().clone());
                    let first_bytes_timeout = config.server.header_read_timeout;
                    let proxy = proxy.clone();
                    let service = service_fn(move |request| {
                        let proxy = proxy.clone();
                        let request = detach_head(request);
                        async move { Ok::<_, Infallible>(proxy.handle(request, peer).await) }
                    });
                    let protocols = protocols.clone();
                    let mut draining = draining.clone();
                    tokio::spawn(async move {
                        let http2 = tokio::select! {
                            peeked = tokio::time::timeout(first_bytes_timeout, speaks_h2(&stream)) => {
                                match peeked {
                                    Ok(Ok(http2)) => http2,
                                    _ => return,
                                }
                            }
                            _ = draining.wait_for(|draining| *draining) => return,
                        };
                        let io = TokioIo::new(StallGuard::new(stream, send_timeout, stats));
                        let result = if http2 {
                            let connection = protocols.http2.serve_connection(io, service);
                            // Boxed: an HTTP/2 connection's state is large, and inline it would
                            // make every HTTP/1 connection's task as large.
                            let draining_connection =
                                until_drained(connection, |c| c.graceful_shutdown(), draining);
                            Box::pin(draining_connection).await
                        } else {
                            let connection =
                                protocols.http1.serve_connection(io, service).with_upgrades();
                            until_drained(connection, |c| c.graceful_shutdown(), draining).await
                        };
                        if let Err(err) = result {
                            tracing::debug!(%peer, error = %err, "connection ended with an error");
                        }
                        drop(permit);
                    });
                }
            }
        }

        readiness.set(false);
        draining_tx.send_replace(true);
        // Waits for the accept loops to end, so their listeners are closed (new connections
        // refused) before the drain is announced.
        background.shutdown().await;
        drop(accepted);
        drop(draining);
        let open = draining_tx.receiver_count();
        let grace = config.server.shutdown_grace;
        tracing::info!(
            open_connections = open,
            grace = %humantime::format_duration(grace),
            "shutting down: no longer accepting, draining open connections"
        );
        if tokio::time::timeout(grace, draining_tx.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                grace = %humantime::format_duration(grace),
                "shutdown grace period ran out; closing the remaining connections"
            );
        } else {
            tracing::info!("all connections drained");
        }
        if let Some(admin) = admin {
            admin.abort();
        }
    }
}

/// hyper's connection builders, one per protocol: [`speaks_h2`] picks one per connection.
struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// Drives `connection` to its end. Once `draining` is set it asks the connection to finish
/// (`start_draining`): HTTP/1 closes after the response in progress, HTTP/2 sends GOAWAY and
/// completes its open streams. Dropping `draining` at the end tells the server this
/// connection is gone.
async fn until_drained<C>(
    connection: C,
    start_draining: impl FnOnce(Pin<&mut C>),
    mut draining: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return result,
        _ = draining.wait_for(|draining| *draining) => {}
    }
    start_draining(connection.as_mut());
    connection.await
}

/// The HTTP/2 connection preface: a client speaking h2c with prior knowledge starts with it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client opens with the HTTP/2 preface, found by peeking at the socket, so that
/// the chosen protocol's parser reads the connection's first bytes from the socket itself.
/// (hyper-util's auto builder reads the first 24 bytes on its own and hands them to hyper's
/// HTTP/1 parser first, whose read buffer then grows from 8 to 16 KiB on every connection:
/// most of the memory a waiting client costs.) A connection that closes before a byte is
/// HTTP/1 (hyper then sees the end at once).
async fn speaks_h2(stream: &TcpStream) -> io::Result<bool> {
    let mut start = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut start).await?;
        if n == 0 || start[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface so far. Peeking again at once would see the same bytes; real
        // HTTP/2 clients send the whole preface in one write, so this wait is rare.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Copies the request target and header values out of hyper's connection read buffer, of
/// which they are slices. hyper hands over the head and then reads the connection again (to
/// notice a client that hangs up); with the buffer no longer shared, that read reuses it,
/// where otherwise every request waiting on a flight would cost a second 8 KiB buffer.
/// (HTTP/2 heads own their bytes already; the copy is cheap beside the rest of a request.)
fn detach_head<B>(request: http::Request<B>) -> http::Request<B> {
    let (mut parts, body) = request.into_parts();
    if let Ok(uri) = parts.uri.to_string().parse() {
        parts.uri = uri;
    }
    let mut headers = http::HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if let Ok(mut copy) = http::HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            headers.append(name.clone(), copy);
        }
    }
    parts.headers = headers;
    http::Request::from_parts(parts, body)
}

/// Answers a connection over `max_connections` with a 503 and closes it, without reading its
/// request: cheap, and clear to an HTTP/1 client. Bounded, so a client that never reads
/// cannot keep it alive.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 38\r\nconnection: close\r\nretry-after: 1\r\n\r\ntoo many connections; try again soon\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
}

/// Accepts until the channel closes. Accept errors (out of file descriptors, above all) are
/// logged and followed by a pause, so the loop neither spins nor dies.
async fn accept_loop(listener: TcpListener, accepted: mpsc::Sender<(TcpStream, SocketAddr)>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                if accepted.send((stream, peer)).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "accept failed; pausing before the next accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A client connection whose writes fail with `TimedOut` once a write has been pending, with
/// no progress, for `send_timeout` (as nginx's `send_timeout`). hyper then closes the connection
/// and drops the response body, which releases the client's place in its flight: a client
/// that stops reading cannot pin a flight's memory, or a file descriptor, for ever.
struct StallGuard {
    inner: TcpStream,
    stall_timeout: Duration,
    /// Armed while a write is pending; created on the first stall only.
    stalled: Option<Pin<Box<Sleep>>>,
    armed: bool,
    stats: Arc<Stats>,
}

impl StallGuard {
    fn new(inner: TcpStream, stall_timeout: Duration, stats: Arc<Stats>) -> StallGuard {
        StallGuard {
            inner,
            stall_timeout,
            stalled: None,
            armed: false,
            stats,
        }
    }

    /// Called when a write returned `Pending`: starts the stall clock if it is not running,
    /// and fails the write once it runs out.
    fn poll_stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let deadline = Instant::now() + self.stall_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.armed = false;
                self.stats.record_send_timeout();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client read nothing for send_timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.poll_stall(cx),
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
