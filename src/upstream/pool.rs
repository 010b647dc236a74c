//! Upstream connections: one pool per worker thread, on hyper's own `client::conn`.
//!
//! Why not hyper-util's pooled client (what the proxy used before, and what a bare hyper proxy
//! uses): it moves every request through several layers and a channel, and for HTTP/1 it
//! spawns a task per request just to put the connection back once its response body has
//! streamed. Here a connection goes back to its worker's pool when the response body ends
//! (`UpstreamBody`), from the task that read it, with no spawn and no lock shared between
//! workers: a request, its upstream connection and that connection's task all stay on one
//! worker (`runtime`).
//!
//! HTTP/1: idle connections per address, the most recently used first; a connection found
//! closed when taken (the upstream closed it while idle) is dropped and the next one tried, and
//! a request that a reused connection could not send is sent once more on a fresh one. HTTP/2:
//! one multiplexed connection per address and worker. Idle connections are closed after
//! `pool_idle_timeout` (checked when one is taken, and by a sweeper while the pool holds any);
//! `pool_max_idle` caps what each worker keeps.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;

use super::error::error_chain;
use super::tls::UpstreamConnector;
use super::RequestBody;
use crate::config::UpstreamConfig;

/// Why a request got no response head from the pool.
pub(super) enum SendError {
    /// No connection could be made (TCP, TLS, or the HTTP/2 handshake).
    Connect(String),
    /// The connection failed before the response head.
    BeforeHead(String),
}

/// An HTTP/1 connection lent to one request, to go back to its worker's pool when the
/// response body ends (`UpstreamBody`); dropped instead, it closes.
pub struct Checkin {
    pool: Arc<Pool>,
    worker: usize,
    authority: Authority,
    sender: http1::SendRequest<RequestBody>,
}

impl Checkin {
    pub(super) fn give_back(self) {
        self.pool
            .give_back(self.worker, self.authority, self.sender);
    }
}

impl std::fmt::Debug for Checkin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Checkin({})", self.authority)
    }
}

/// One upstream's connections.
pub(super) struct Pool {
    connector: UpstreamConnector,
    http2: bool,
    /// Idle HTTP/1 connections each worker keeps (`pool_max_idle` shared out).
    max_idle: usize,
    idle_timeout: Duration,
    workers: Box<[Mutex<WorkerPool>]>,
    /// Set while a sweeper runs for this pool.
    sweeping: AtomicBool,
}

/// One worker's connections. Only that worker takes them (its own lock, never contended but
/// by the sweeper).
#[derive(Default)]
struct WorkerPool {
    http1: HashMap<Authority, Vec<Idle>, ByAuthority>,
    /// With when it last sent a request.
    http2: HashMap<Authority, (http2::SendRequest<RequestBody>, Instant), ByAuthority>,
}

/// FNV-1a for the pools' maps. `Authority` hashes byte by byte (lower-cased), and SipHash
/// costs about 30 instructions a byte that way: some 900 per lookup, twice per request
/// (callgrind). The keys are the upstream's own addresses, from the config or DNS, never a
/// client's, so nobody can choose them to collide.
type ByAuthority = std::hash::BuildHasherDefault<Fnv>;

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("http2", &self.http2).finish()
    }
}

impl Pool {
    pub(super) fn new(
        config: &UpstreamConfig,
        connector: UpstreamConnector,
        workers: usize,
    ) -> Pool {
        Pool {
            connector,
            http2: config.http2,
            max_idle: config.pool_max_idle.div_ceil(workers),
            idle_timeout: config.pool_idle_timeout,
            workers: (0..workers).map(|_| Mutex::default()).collect(),
            sweeping: AtomicBool::new(false),
        }
    }

    fn worker(&self, index: usize) -> MutexGuard<'_, WorkerPool> {
        self.workers[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `request` (its URI absolute, addressed to `authority`) on a connection of the
    /// calling worker's pool; for HTTP/1, also the connection, to give back when the response
    /// body ends. Not an `async fn`: the request then sits in the returned future once, not
    /// also as an argument.
    pub(super) fn send(
        self: &Arc<Self>,
        request: Request<RequestBody>,
        authority: Authority,
    ) -> impl Future<Output = Result<(Response<Incoming>, Option<Checkin>), SendError>> + Send + 'static
    {
        use futures_util::future::{Either, FutureExt};
        let worker = crate::runtime::current() % self.workers.len();
        let pool = self.clone();
        if self.http2 {
            let sent = pool.send_http2(worker, into_http2(request), authority);
            return Either::Left(sent.map(|response| response.map(|r| (r, None))));
        }
        Either::Right(pool.send_http1(worker, request, authority))
    }

    async fn send_http1(
        self: Arc<Self>,
        worker: usize,
        mut request: Request<RequestBody>,
        authority: Authority,
    ) -> Result<(Response<Incoming>, Option<Checkin>), SendError> {
        let authority = &authority;
        let uri = request.uri().clone();
        // HTTP/1 sends the origin form; the authority is in `Host`.
        let origin_form = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(origin_form);
        loop {
            let (mut sender, reused) = match self.take_idle(worker, authority) {
                Some(sender) => (sender, true),
                // Boxed: rare once the pool is warm, and a connection being set up (a TLS
                // stream held by value) would otherwise take room in every request's future.
                None => (Box::pin(self.connect_http1(&uri)).await?, false),
            };
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let checkin = Checkin {
                        pool: self.clone(),
                        worker,
                        authority: authority.clone(),
                        sender,
                    };
                    return Ok((response, Some(checkin)));
                }
                Err(mut failed) => match failed.take_message() {
                    // Not sent: the connection was closed just as it was taken. Once more, on
                    // the next connection (a fresh one at the latest), as hyper-util does.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::BeforeHead(error_chain(&failed.into_error()))),
                },
            }
        }
    }

    async fn send_http2(
        self: Arc<Self>,
        worker: usize,
        request: Request<RequestBody>,
        authority: Authority,
    ) -> Result<Response<Incoming>, SendError> {
        let authority = &authority;
        let cached = {
            let mut pool = self.worker(worker);
            pool.http2.get_mut(authority).and_then(|(sender, used)| {
                let usable = !sender.is_closed() && used.elapsed() < self.idle_timeout;
                *used = Instant::now();
                usable.then(|| sender.clone())
            })
        };
        let mut sender = match cached {
            Some(sender) => sender,
            None => {
                let target = connect_target(request.uri(), authority);
                let sender = Box::pin(self.connect_http2(&target)).await?;
                self.worker(worker)
                    .http2
                    .insert(authority.clone(), (sender.clone(), Instant::now()));
                self.start_sweeper();
                sender
            }
        };
        if let Err(err) = sender.ready().await {
            self.worker(worker).http2.remove(authority);
            return Err(SendError::BeforeHead(error_chain(&err)));
        }
        sender
            .send_request(request)
            .await
            .map_err(|err| SendError::BeforeHead(error_chain(&err)))
    }

    /// The most recently used idle connection to `authority` that is still open and young
    /// enough; older or closed ones are dropped on the way.
    fn take_idle(
        &self,
        worker: usize,
        authority: &Authority,
    ) -> Option<http1::SendRequest<RequestBody>> {
        let mut pool = self.worker(worker);
        let idle = pool.http1.get_mut(authority)?;
        while let Some(Idle { sender, since }) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    /// Puts an HTTP/1 connection back after its response ended, unless it closed or the
    /// worker keeps enough idle connections already.
    fn give_back(
        self: &Arc<Self>,
        worker: usize,
        authority: Authority,
        sender: http1::SendRequest<RequestBody>,
    ) {
        if sender.is_closed() {
            return;
        }
        let mut pool = self.worker(worker);
        let idle = pool.http1.entry(authority).or_default();
        if idle.len() >= self.max_idle {
            return;
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
        drop(pool);
        self.start_sweeper();
    }

    async fn connect_http1(&self, uri: &Uri) -> Result<http1::SendRequest<RequestBody>, SendError> {
        let io = self.connect(uri).await?;
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|err| SendError::Connect(error_chain(&err)))?;
        // With upgrades: a 101 hands the connection to a tunnel (`proxy::forward`).
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(error = %err, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn connect_http2(&self, uri: &Uri) -> Result<http2::SendRequest<RequestBody>, SendError> {
        let io = self.connect(uri).await?;
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|err| SendError::Connect(error_chain(&err)))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn connect(&self, uri: &Uri) -> Result<super::tls::Connection, SendError> {
        use tower_service::Service;
        let mut connector = self.connector.clone();
        connector
            .call(uri.clone())
            .await
            .map_err(|err| SendError::Connect(error_chain(&*err)))
    }

    /// Starts the sweeper if none runs: it closes idle connections past `pool_idle_timeout`
    /// while the pool holds any, and ends when it holds none (or the upstream is gone).
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::downgrade(self);
        let period = (self.idle_timeout / 2).max(Duration::from_secs(1));
        tokio::spawn(sweep(pool, period));
    }

    /// Drops what has been idle too long; says whether anything is left.
    fn sweep_once(&self) -> bool {
        let mut left = false;
        for worker in 0..self.workers.len() {
            let mut pool = self.worker(worker);
            for idle in pool.http1.values_mut() {
                idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() < self.idle_timeout);
            }
            pool.http1.retain(|_, idle| !idle.is_empty());
            pool.http2.retain(|_, (sender, used)| {
                !sender.is_closed() && used.elapsed() < self.idle_timeout
            });
            left |= !pool.http1.is_empty() || !pool.http2.is_empty();
        }
        left
    }
}

/// A request as HTTP/2 sends it (RFC 9113 §8.3.1): the authority in `:authority` (from the
/// `Host` the request carries, which names the upstream) and no `host` field beside it (nginx
/// answers a request with both 400), and no connection-specific fields (`te: trailers` aside).
fn into_http2(mut request: Request<RequestBody>) -> Request<RequestBody> {
    if let Some(host) = request.headers_mut().remove(http::header::HOST) {
        let mut parts = request.uri().clone().into_parts();
        if let Ok(authority) = Authority::try_from(host.as_bytes()) {
            parts.authority = Some(authority);
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    request.headers_mut().remove(http::header::CONNECTION);
    request
}

/// Where to connect for `uri`: its scheme, at the address `authority` (the request's own
/// authority may be the name the upstream expects rather than the address chosen).
fn connect_target(uri: &Uri, authority: &Authority) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = uri.scheme().cloned();
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(PathAndQuery::from_static("/"));
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

async fn sweep(pool: Weak<Pool>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if !pool.sweep_once() {
            pool.sweeping.store(false, Ordering::Release);
            // A connection given back between the sweep and the flag found a sweeper still
            // running and started none: look once more, and carry on if one was.
            if !pool.sweep_once() || pool.sweeping.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }
}
