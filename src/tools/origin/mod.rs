//! A small scriptable HTTP/1.1 origin for the demo, the tests and the benchmarks.
//!
//! It is written on raw TCP, not on hyper, so that it can misbehave on purpose: close or reset
//! before the head or mid-body, stall, and notice a proxy that hangs up on it (a cancelled
//! fetch). [`Origin::start_tls`] serves the same over TLS, for `https://` upstreams. Each
//! request scripts its own response through query parameters, so one origin serves every
//! case:
//!
//! | parameter | effect |
//! |---|---|
//! | `delay=MS` | wait before the head (default: [`OriginSettings::delay`]) |
//! | `capacity=N` | past N requests in progress, the delay grows as (in progress / N)² (a saturated backend) |
//! | `size=N` | body of N bytes of [`body`] (default: [`OriginSettings::body_size`]) |
//! | `status=N` | response status (default 200) |
//! | `chunked=1` | `Transfer-Encoding: chunked` instead of `Content-Length` |
//! | `chunks=N`, `gap=MS` | write the body in N pieces, MS apart |
//! | `hold_head=NAME` | before the head (and before any `fail`), wait until [`Origin::open_gate`]`(NAME)` |
//! | `hold=NAME` | after the first body piece, wait until [`Origin::open_gate`]`(NAME)` |
//! | `fail=WHAT` | `close_before_head`, `reset_before_head`, `stall_before_head`, `garbage_head`, `huge_head`, `close_mid_body`, `reset_mid_body`, `stall_mid_body` |
//! | `informational=1` | send a `103 Early Hints` before the final head |
//! | `trailers=1` | with `chunked=1`, end the body with a trailer field |
//! | `body_anyway=1` | send the body even on a 204 or 304 (a broken upstream) |
//! | `fail_after=N` | answer 503 once the origin has served more than N requests |
//! | `close_after=N` | once the origin has had more than N requests, close the connection before the head (after any gate): an origin gone down |
//! | `header=NAME:VALUE` | add a response header (repeatable) |
//! | `hold_rest=NAME` | like `hold_head`, but the first request naming NAME passes without waiting |
//! | `cookie=1` | add `Set-Cookie: id=HIT`, unique per response (unless [`Origin::set_cookies`] turned them off) |
//! | `echo_header=NAME` | the body is `NAME=VALUE` with the request's value of that header |
//! | `partial=N` | a request without `Range` gets a 206 of the first N bytes (an origin that sends parts) |
//!
//! A request with an `Upgrade` header is switched (101) and everything sent on the connection
//! afterwards is echoed back, byte for byte. A request with a body gets its body echoed back. Every response carries `x-origin-hit`,
//! the origin's running request count, so a test can tell which fetch produced it, and
//! `ETag: "v1"`: a request with `If-None-Match: "v1"` gets 304, and one with a single
//! `Range: bytes=A-B` gets 206 with that slice.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

mod respond;
mod script;
mod wire;

use wire::serve_connection;

/// Defaults for requests that do not script their own.
#[derive(Debug, Clone)]
pub struct OriginSettings {
    pub delay: Duration,
    pub body_size: usize,
}

impl Default for OriginSettings {
    fn default() -> Self {
        OriginSettings {
            delay: Duration::ZERO,
            body_size: 64,
        }
    }
}

/// The body the origin sends for `size` bytes: a repeating, position-dependent pattern, so a
/// missing, repeated or reordered chunk shows up in a byte-for-byte comparison.
pub fn body(size: usize) -> Bytes {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-";
    // 63 is prime to the usual chunk sizes, so chunk boundaries never line up with the cycle.
    (0..size).map(|i| ALPHABET[i % ALPHABET.len()]).collect()
}

/// One request as the origin received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// Every value of header `name`, in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }
}

#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) settings: Mutex<OriginSettings>,
    pub(super) hits: AtomicU64,
    /// Connections accepted.
    pub(super) connections: AtomicU64,
    /// Connections open now, and the most open at once since `take_peak_open_connections`.
    pub(super) open_connections: AtomicU64,
    pub(super) peak_open_connections: AtomicU64,
    /// Requests whose client hung up before the response was complete.
    pub(super) cancelled: AtomicU64,
    pub(super) requests: Mutex<Vec<RecordedRequest>>,
    /// Gates named by `hold=` that were reached, and those the test opened.
    pub(super) held: Mutex<HashSet<String>>,
    /// `hold_rest=` gates that let their first request through already.
    pub(super) passed_once: Mutex<HashSet<String>>,
    /// Requests being answered right now, and the most there ever were at once.
    pub(super) in_progress: AtomicU64,
    pub(super) peak_in_progress: AtomicU64,
    pub(super) no_cookies: std::sync::atomic::AtomicBool,
    pub(super) opened: Mutex<HashSet<String>>,
    /// Bumped on every event above, so waiters wake without polling.
    pub(super) events: watch::Sender<()>,
}

impl Shared {
    pub(super) fn changed(&self) {
        self.events.send_replace(());
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running origin on `127.0.0.1`. Dropping it stops accepting.
/// Counts a request in `in_progress` until its response's last bytes go to the socket: ended
/// just before that write, so that a client holding the whole response (and sending its next
/// request at once) never finds the origin still counting the previous one.
pub(super) struct InProgress<'a> {
    shared: &'a Shared,
    counted: bool,
}

impl InProgress<'_> {
    pub(super) fn start(shared: &Shared) -> InProgress<'_> {
        let now = shared.in_progress.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_in_progress.fetch_max(now, Ordering::SeqCst);
        InProgress {
            shared,
            counted: true,
        }
    }

    pub(super) fn end(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.shared.in_progress.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

#[derive(Debug)]
pub struct Origin {
    addr: SocketAddr,
    /// Whether it speaks TLS ([`Origin::start_tls`]).
    tls: bool,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

/// A connection the origin answers on: plain TCP or TLS over it.
pub trait OriginStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Makes closing the connection send a reset instead of a FIN.
    fn reset_on_close(&self);
}

impl OriginStream for TcpStream {
    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }
}

impl OriginStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn reset_on_close(&self) {
        let _ = self.get_ref().0.set_zero_linger();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Origin {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start(settings: OriginSettings) -> std::io::Result<Origin> {
        Origin::start_on("127.0.0.1:0".parse().expect("literal address"), settings).await
    }

    pub async fn start_on(
        address: SocketAddr,
        settings: OriginSettings,
    ) -> std::io::Result<Origin> {
        Origin::listen(address, settings, None).await
    }

    /// Starts on an ephemeral port of 127.0.0.1, speaking HTTPS with `tls` (its certificate
    /// and key). Every script works as over plain TCP; a failed handshake is not a request.
    pub async fn start_tls(
        settings: OriginSettings,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Origin> {
        let address = "127.0.0.1:0".parse().expect("literal address");
        Origin::start_tls_on(address, settings, tls).await
    }

    pub async fn start_tls_on(
        address: SocketAddr,
        settings: OriginSettings,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Origin> {
        Origin::listen(address, settings, Some(TlsAcceptor::from(tls))).await
    }

    async fn listen(
        address: SocketAddr,
        settings: OriginSettings,
        tls: Option<TlsAcceptor>,
    ) -> std::io::Result<Origin> {
        let listener = TcpListener::bind(address).await?;
        let addr = listener.local_addr()?;
        let speaks_tls = tls.is_some();
        let shared = Arc::new(Shared {
            settings: Mutex::new(settings),
            ..Shared::default()
        });
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let open = shared.open_connections.fetch_add(1, Ordering::SeqCst) + 1;
                    shared
                        .peak_open_connections
                        .fetch_max(open, Ordering::SeqCst);
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let tls = tls.clone();
                    drop(tokio::spawn(async move {
                        match tls {
                            None => serve_connection(stream, shared.clone()).await,
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(stream).await {
                                    serve_connection(stream, shared.clone()).await;
                                }
                            }
                        }
                        shared.open_connections.fetch_sub(1, Ordering::SeqCst);
                    }));
                }
            }
        });
        Ok(Origin {
            addr,
            tls: speaks_tls,
            shared,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://` for a TLS origin.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared.settings).delay = delay;
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Requests whose client hung up before the whole response was sent.
    pub fn cancelled(&self) -> u64 {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Requests whose target starts with `prefix`.
    pub fn hits_for(&self, prefix: &str) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.target.starts_with(prefix))
            .count()
    }

    /// The most requests the origin was answering at the same moment.
    pub fn peak_concurrency(&self) -> u64 {
        self.shared.peak_in_progress.load(Ordering::SeqCst)
    }

    /// The most connections open at once since the previous call (or the start); the next
    /// period starts from those open now.
    pub fn take_peak_open_connections(&self) -> u64 {
        let now = self.shared.open_connections.load(Ordering::SeqCst);
        self.shared
            .peak_open_connections
            .swap(now, Ordering::SeqCst)
    }

    /// Turns `cookie=1` on (the default) or off for later responses.
    pub fn set_cookies(&self, on: bool) {
        self.shared.no_cookies.store(!on, Ordering::SeqCst);
    }

    /// Lets every response held at gate `name` continue.
    pub fn open_gate(&self, name: &str) {
        lock(&self.shared.opened).insert(name.to_owned());
        self.shared.changed();
    }

    /// Whether some response has reached gate `name` (its first body piece is out).
    pub fn reached(&self, name: &str) -> bool {
        lock(&self.shared.held).contains(name)
    }

    /// Waits until `condition` holds, waking on every origin event. Bounded by `timeout`;
    /// returns whether the condition held.
    pub async fn wait_until(&self, timeout: Duration, condition: impl Fn(&Origin) -> bool) -> bool {
        let mut events = self.shared.events.subscribe();
        let wait = async {
            loop {
                if condition(self) {
                    return;
                }
                if events.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok() && condition(self)
    }
}
