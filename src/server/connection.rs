//! One client connection: which protocol it speaks, serving it with hyper's builder for that
//! protocol, and finishing it when the server drains.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::OwnedSemaphorePermit;

use super::drain::{Open, Phase};
use super::stall_guard::StallGuard;
use crate::config::ServerConfig;
use crate::observe::access::ObservedBody;
use crate::proxy::{Connection, Proxy, ProxyBody};
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
    /// `open` (the server counts open connections by them) and `permit` (its
    /// `max_connections` slot) until then.
    pub(super) fn spawn(
        self: &Arc<Self>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        open: Open,
        permit: OwnedSemaphorePermit,
    ) {
        let server = self.clone();
        self.workers.spawn(move || {
            // The start (which protocol; over TLS, the handshake) is boxed and let go once
            // it is done: its state is not needed after, and inline it would take room in
            // the task for the connection's whole life. What it hands over is hyper's
            // connection, inline for plain HTTP/1.1 (most connections, and every client
            // waiting in a herd over HTTP/1.1), and `UntilDrained`'s few bytes.
            let start = Box::pin(server.start(stream, peer, open, permit));
            futures_util::FutureExt::flatten(start)
        });
    }

    /// Registers the socket (here, on the worker), finds the protocol, and returns the
    /// connection to serve, or [`Served::Nothing`] when the client left or the drain began
    /// first.
    async fn start(
        self: Arc<Self>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        open: Open,
        permit: OwnedSemaphorePermit,
    ) -> Served<impl Future<Output = Result<(), hyper::Error>> + Send> {
        // Registered with the worker's reactor here, on the worker.
        let Ok(stream) = TcpStream::from_std(stream) else {
            return Served::Nothing;
        };
        let finish = Finish {
            open,
            _permit: permit,
        };
        if let Some(acceptor) = self.tls.clone() {
            return Served::Boxed {
                connection: Box::pin(self.serve_tls(acceptor, stream, peer, finish)),
            };
        }
        // In the clear, the first bytes say which protocol.
        let http2 = tokio::select! {
            peeked = tokio::time::timeout(self.first_bytes_timeout, speaks_h2(&stream)) => {
                match peeked {
                    Ok(Ok(http2)) => http2,
                    _ => return Served::Nothing,
                }
            }
            () = finish.open.reached(Phase::Draining) => return Served::Nothing,
        };
        let connection = Connection { peer, tls: false };
        if http2 {
            let serving = self.serve_http2(stream, connection, finish);
            return Served::Boxed {
                connection: Box::pin(async move { log_end(peer, serving.await) }),
            };
        }
        Served::Http1 {
            connection: self.serve_http1(stream, connection, finish),
            peer,
        }
    }

    /// hyper's HTTP/1 connection for `stream`, with upgrades, until it ends or is drained.
    fn serve_http1<S>(
        &self,
        stream: S,
        connection: Connection,
        finish: Finish,
    ) -> UntilDrained<impl Future<Output = Result<(), hyper::Error>> + Send>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (service, io) = self.service_and_io(stream, connection);
        let connection = self
            .protocols
            .http1
            .serve_connection(io, service)
            .with_upgrades();
        UntilDrained::new(connection, |c| c.graceful_shutdown(), finish)
    }

    /// hyper's HTTP/2 connection for `stream`, until it ends or is drained. Its owner boxes
    /// it: its state is large, and inline it would make every HTTP/1 connection's task as
    /// large.
    fn serve_http2<S>(
        &self,
        stream: S,
        connection: Connection,
        finish: Finish,
    ) -> UntilDrained<impl Future<Output = Result<(), hyper::Error>> + Send>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (service, io) = self.service_and_io(stream, connection);
        let connection = self.protocols.http2.serve_connection(io, service);
        UntilDrained::new(connection, |c| c.graceful_shutdown(), finish)
    }

    /// The service every request on one connection goes to, and the connection's I/O.
    fn service_and_io<S>(
        &self,
        stream: S,
        connection: Connection,
    ) -> (
        impl hyper::service::HttpService<
                hyper::body::Incoming,
                ResBody = ObservedBody<ProxyBody>,
                Error = std::convert::Infallible,
                Future: Send,
            > + Send
            + Clone,
        TokioIo<StallGuard<S>>,
    )
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let proxy = self.proxy.clone();
        // The request's future itself, not `async move { future.await }`: an async block would
        // hold it twice (once captured, once awaited), and a waiting client pays for each of
        // its bytes.
        let service = service_fn(move |request| proxy.handle(request, connection));
        let stats = self.proxy.stats().clone();
        (
            service,
            TokioIo::new(StallGuard::new(stream, self.send_timeout, stats)),
        )
    }
}

impl ConnectionServer {
    /// The TLS handshake, under `header_read_timeout` as the first bytes of a plain connection
    /// are, then the connection with the protocol ALPN chose.
    async fn serve_tls(
        self: Arc<Self>,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: TcpStream,
        peer: SocketAddr,
        finish: Finish,
    ) {
        let deadline = tokio::time::Instant::now() + self.first_bytes_timeout;
        let first = tokio::select! {
            peeked = tokio::time::timeout_at(deadline, first_byte(&stream)) => peeked,
            () = finish.open.reached(Phase::Draining) => return,
        };
        match first {
            // A TLS record starts with its content type, 22 for a handshake; a letter is an
            // HTTP method: a client that meant http://.
            Ok(Some(byte)) if byte.is_ascii_alphabetic() => {
                tracing::debug!(%peer, "plain HTTP on a TLS listener");
                answer_plain_http_on_tls(stream).await;
                return;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
        let handshake = tokio::select! {
            done = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => done,
            () = finish.open.reached(Phase::Draining) => return,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake took longer than header_read_timeout");
                return;
            }
        };
        let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let connection = Connection { peer, tls: true };
        let result = if http2 {
            Box::pin(self.serve_http2(stream, connection, finish)).await
        } else {
            self.serve_http1(stream, connection, finish).await
        };
        log_end(peer, result);
    }
}

/// hyper's connection builders, one per protocol: [`speaks_h2`] picks one per connection.
struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// What a connection holds until it ends, and lets go after hyper's connection and the
/// requests it still serves: the server counts it open until then.
struct Finish {
    open: Open,
    /// Its `max_connections` slot.
    _permit: OwnedSemaphorePermit,
}

pin_project! {
    /// What a connection's start hands over to be served.
    #[project = ServedProjection]
    enum Served<H1> {
        /// Plain HTTP/1.1, inline in the connection's task.
        Http1 {
            #[pin]
            connection: UntilDrained<H1>,
            peer: SocketAddr,
        },
        /// HTTP/2 and TLS connections (large, and rarely one per client), boxed.
        Boxed { connection: Pin<Box<dyn Future<Output = ()> + Send>> },
        /// The client left, or the drain began, before there was anything to serve.
        Nothing,
    }
}

impl<H1> Future for Served<H1>
where
    H1: Future<Output = Result<(), hyper::Error>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project() {
            ServedProjection::Http1 { connection, peer } => {
                let result = ready!(connection.poll(cx));
                log_end(*peer, result);
                Poll::Ready(())
            }
            ServedProjection::Boxed { connection } => connection.as_mut().poll(cx),
            ServedProjection::Nothing => Poll::Ready(()),
        }
    }
}

fn log_end(peer: SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}

pin_project! {
    /// Drives hyper's connection to its end. Once the server announces the drain it asks the
    /// connection to finish (`shutdown`: HTTP/1 closes after the response in progress, HTTP/2
    /// sends GOAWAY and completes its open streams); at the cut it ends at once, and its
    /// owner drops the connection with the requests it still serves, so that they are
    /// counted (as cancelled, before their head) in the last stats line rather than vanishing
    /// with the process.
    ///
    /// Each poll reads the phase (one atomic load); the announcement is polled only until it
    /// has registered the task's waker, which stays the same for the task's life.
    struct UntilDrained<C> {
        // Declared first: dropped before `finish`.
        #[pin]
        connection: C,
        shutdown: fn(Pin<&mut C>),
        #[pin]
        announcement: OwnedNotified,
        registered: bool,
        draining: bool,
        finish: Finish,
    }
}

impl<C> UntilDrained<C> {
    fn new(connection: C, shutdown: fn(Pin<&mut C>), finish: Finish) -> UntilDrained<C> {
        UntilDrained {
            connection,
            shutdown,
            announcement: finish.open.next_announcement(),
            registered: false,
            draining: false,
            finish,
        }
    }
}

impl<C> Future for UntilDrained<C>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    type Output = Result<(), hyper::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Poll::Ready(result) = this.connection.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            // Read after the announcement was made: one after this read wakes it.
            match this.finish.open.phase() {
                Phase::Cut => return Poll::Ready(Ok(())),
                Phase::Draining if !*this.draining => {
                    *this.draining = true;
                    (this.shutdown)(this.connection.as_mut());
                    // A new one, for the cut.
                    this.announcement.set(this.finish.open.next_announcement());
                    *this.registered = false;
                    continue;
                }
                _ => {}
            }
            if !*this.registered {
                if this.announcement.as_mut().poll(cx).is_ready() {
                    this.announcement.set(this.finish.open.next_announcement());
                    continue;
                }
                *this.registered = true;
            }
            return Poll::Pending;
        }
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
