//! One client connection: which protocol it speaks, serving it with hyper's builder for that
//! protocol, and finishing it when the server drains.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::stall_guard::StallGuard;
use super::Phase;
use crate::config::ServerConfig;
use crate::proxy::{Connection, Proxy};
use crate::runtime::Workers;

/// What every connection is served with.
pub(super) struct ConnectionServer {
    protocols: Protocols,
    proxy: Arc<Proxy>,
    workers: Workers,
    send_timeout: Duration,
    /// TLS towards clients, when `[server] tls` is set.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// How long a new connection may take to send its first bytes (hyper's
    /// `header_read_timeout` takes over from there).
    first_bytes_timeout: Duration,
}

impl ConnectionServer {
    pub(super) fn new(
        config: &ServerConfig,
        proxy: Arc<Proxy>,
        workers: Workers,
        certificate: Option<Arc<super::tls::ListenerCertificate>>,
    ) -> ConnectionServer {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // `Date` is the proxy's to add (`proxy::reply::add_date`): not on a gRPC
        // trailers-only response, whose head is the call's trailing metadata.
        http2.timer(TokioTimer::new()).auto_date_header(false);
        // Large enough that the proxy's own `max_header_bytes` answers an oversized head
        // with a 431 (`proxy::routing`); at h2's default of 16 KiB a 100 KB header block
        // was a connection error instead.
        let header_list = config.max_header_bytes.saturating_mul(4).max(1 << 20);
        http2.max_header_list_size(u32::try_from(header_list).unwrap_or(u32::MAX));
        ConnectionServer {
            protocols: Protocols { http1, http2 },
            proxy,
            workers,
            send_timeout: config.send_timeout,
            tls: certificate.map(super::tls::acceptor),
            first_bytes_timeout: config.header_read_timeout,
        }
    }

    /// Serves `stream` on a task of its own, on the next worker, until it ends. It holds
    /// `draining` (the server counts open connections by its receivers) and `permit` (its
    /// `max_connections` slot) until then.
    pub(super) fn spawn(
        self: &Arc<Self>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        mut draining: watch::Receiver<Phase>,
        permit: OwnedSemaphorePermit,
    ) {
        let server = self.clone();
        self.workers.spawn(move || async move {
            // Registered with the worker's reactor here, on the worker.
            let Ok(stream) = TcpStream::from_std(stream) else {
                return;
            };
            // Over TLS, ALPN says which protocol; in the clear, the first bytes do.
            let http2 = if server.tls.is_some() {
                false
            } else {
                tokio::select! {
                    peeked = tokio::time::timeout(server.first_bytes_timeout, speaks_h2(&stream)) => {
                        match peeked {
                            Ok(Ok(http2)) => http2,
                            _ => return,
                        }
                    }
                    _ = draining.wait_for(|phase| *phase >= Phase::Draining) => return,
                }
            };
            let result = match &server.tls {
                None => {
                    let connection = Connection { peer, tls: false };
                    server.serve(stream, connection, http2, draining).await
                }
                // Boxed: a TLS connection's state (rustls' buffers, the handshake) is large,
                // and inline it would make every plain connection's task as large.
                Some(acceptor) => Box::pin(server.serve_tls(acceptor, stream, peer, draining)).await,
            };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

impl ConnectionServer {
    /// The TLS handshake, under `header_read_timeout` as the first bytes of a plain connection
    /// are, then the connection with the protocol ALPN chose.
    async fn serve_tls(
        &self,
        acceptor: &tokio_rustls::TlsAcceptor,
        stream: TcpStream,
        peer: SocketAddr,
        mut draining: watch::Receiver<Phase>,
    ) -> Result<(), hyper::Error> {
        let deadline = tokio::time::Instant::now() + self.first_bytes_timeout;
        let first = tokio::select! {
            peeked = tokio::time::timeout_at(deadline, first_byte(&stream)) => peeked,
            _ = draining.wait_for(|phase| *phase >= Phase::Draining) => return Ok(()),
        };
        match first {
            // A TLS record starts with its content type, 22 for a handshake; a letter is an
            // HTTP method: a client that meant http://.
            Ok(Some(byte)) if byte.is_ascii_alphabetic() => {
                tracing::debug!(%peer, "plain HTTP on a TLS listener");
                answer_plain_http_on_tls(stream).await;
                return Ok(());
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Ok(()),
        }
        let handshake = tokio::select! {
            done = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => done,
            _ = draining.wait_for(|phase| *phase >= Phase::Draining) => return Ok(()),
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                return Ok(());
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake took longer than header_read_timeout");
                return Ok(());
            }
        };
        let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let connection = Connection { peer, tls: true };
        self.serve(stream, connection, http2, draining).await
    }

    /// Serves one connection, plain or TLS, with the builder for its protocol, until it ends
    /// or the drain finishes it.
    async fn serve<S>(
        &self,
        stream: S,
        connection: Connection,
        http2: bool,
        mut draining: watch::Receiver<Phase>,
    ) -> Result<(), hyper::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = self.proxy.clone();
        // The request's future itself, not `async move { future.await }`: an async block would
        // hold it twice (once captured, once awaited), and hyper keeps room for one in every
        // connection.
        let service = service_fn(move |request| proxy.handle(request, connection));
        let stats = self.proxy.stats().clone();
        let io = TokioIo::new(StallGuard::new(stream, self.send_timeout, stats));
        // Each connection is pinned here and lent to `until_drained`: passed by value, it
        // would take its room twice in that future (as the argument and as the pinned local),
        // and every connection's task would hold 720 bytes more. `draining` is lent too, so
        // that it is dropped (telling the server this connection is gone) after the
        // connection and the requests it still serves.
        if http2 {
            // Boxed: an HTTP/2 connection's state is large, and inline it would make every
            // HTTP/1 connection's task as large.
            let mut connection = Box::pin(self.protocols.http2.serve_connection(io, service));
            until_drained(
                connection.as_mut(),
                |c| c.graceful_shutdown(),
                &mut draining,
            )
            .await
        } else {
            let connection = self
                .protocols
                .http1
                .serve_connection(io, service)
                .with_upgrades();
            let connection = std::pin::pin!(connection);
            until_drained(connection, |c| c.graceful_shutdown(), &mut draining).await
        }
    }
}

/// hyper's connection builders, one per protocol: [`speaks_h2`] picks one per connection.
struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// Drives `connection` to its end. Once `draining` says so it asks the connection to finish
/// (`start_draining`): HTTP/1 closes after the response in progress, HTTP/2 sends GOAWAY and
/// completes its open streams; once it says `Cut`, it returns, and the caller drops the
/// connection. The caller drops `draining` after that, telling the server the connection is
/// gone.
async fn until_drained<C>(
    mut connection: Pin<&mut C>,
    start_draining: impl FnOnce(Pin<&mut C>),
    draining: &mut watch::Receiver<Phase>,
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::select! {
        result = connection.as_mut() => return result,
        _ = draining.wait_for(|phase| *phase >= Phase::Draining) => {}
    }
    start_draining(connection.as_mut());
    tokio::select! {
        result = connection => result,
        // The grace ran out: the caller drops the connection now, with the requests it
        // still serves, so that they are counted (as cancelled, before their head) in the last
        // stats line rather than vanishing with the process.
        _ = draining.wait_for(|phase| *phase == Phase::Cut) => Ok(()),
    }
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

/// The first byte a client sent, without taking it; `None` when it closed without one.
async fn first_byte(stream: &TcpStream) -> Option<u8> {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte).await {
        Ok(1) => Some(byte[0]),
        _ => None,
    }
}

/// A plain HTTP request on a TLS listener gets a 400 that says why, in words curl shows, as
/// nginx's 497 page does; a TLS alert would read as garbage ("Received HTTP/0.9").
async fn answer_plain_http_on_tls(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str =
        "This port speaks HTTPS: the request was sent as plain HTTP. Use https://.\n";
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Read what the client sent before closing (for a second at most), or the close resets
    // the connection and the client may lose the answer unread.
    let mut unread = [0u8; 4096];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        use tokio::io::AsyncReadExt;
        for _ in 0..16 {
            if matches!(stream.read(&mut unread).await, Ok(0) | Err(_)) {
                break;
            }
        }
    })
    .await;
}
