//! A herd client: many connections, opened first, then every request released at once.
//!
//! The demo and the benchmarks use it to make a real thundering herd (a barrier, not a
//! trickle) and to time each client from release to its last body byte. It checks nothing
//! itself; callers compare the results with what they expected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Barrier, Semaphore};

/// What one client saw.
#[derive(Debug)]
pub struct ClientResult {
    pub status: StatusCode,
    /// The `x-coalesce` header, or "" without one.
    pub outcome: String,
    pub body: Bytes,
    /// From the release of the herd to the last body byte.
    pub latency: Duration,
}

/// The `p`th percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Opens one connection per path, then releases every request at once (a barrier), so the
/// proxy sees a real herd rather than a trickle.
pub async fn send_all(
    addr: SocketAddr,
    method: Method,
    paths: Vec<String>,
) -> Vec<Result<ClientResult, anyhow::Error>> {
    send_all_when(addr, method, paths, std::future::ready(())).await
}

/// Like [`send_all`], but once every connection is open the requests wait for `release` too:
/// a moment agreed with other herd processes, so that herds sent to several proxies start
/// together however long each took to connect.
pub async fn send_all_when(
    addr: SocketAddr,
    method: Method,
    paths: Vec<String>,
    release: impl std::future::Future<Output = ()>,
) -> Vec<Result<ClientResult, anyhow::Error>> {
    let connected = Arc::new(Barrier::new(paths.len() + 1));
    let barrier = Arc::new(Barrier::new(paths.len() + 1));
    // Connecting thousands at once overflows the listener's accept backlog, and the kernel
    // then retries SYNs a second later; a few hundred at a time keeps set-up quick. The
    // requests themselves are still released all at once.
    let connecting = Arc::new(Semaphore::new(256));
    let tasks: Vec<_> = paths
        .into_iter()
        .map(|path| {
            let connected = connected.clone();
            let barrier = barrier.clone();
            let connecting = connecting.clone();
            let method = method.clone();
            tokio::spawn(async move {
                let permit = connecting.acquire_owned().await;
                let sender = connect(addr).await;
                drop(permit);
                connected.wait().await;
                barrier.wait().await;
                send(sender?, method, &path, Bytes::new()).await
            })
        })
        .collect();
    connected.wait().await;
    release.await;
    barrier.wait().await;
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.unwrap_or_else(|err| Err(err.into())));
    }
    results
}

pub async fn send_one(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<ClientResult> {
    let sender = connect(addr).await?;
    send(sender, method, path, body).await
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn send(
    mut sender: Sender,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<ClientResult> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "demo.local")
        .body(Full::new(body))?;
    let started = Instant::now();
    let response = sender.send_request(request).await?;
    let status = response.status();
    let outcome = response
        .headers()
        .get("x-coalesce")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(ClientResult {
        status,
        outcome,
        body,
        latency: started.elapsed(),
    })
}

/// What a herd saw, against the body every client should have received.
#[derive(Debug, Default)]
pub struct HerdSummary {
    /// Latencies of the clients that got a 200 with exactly the expected body, sorted.
    pub latencies: Vec<Duration>,
    pub leaders: usize,
    pub followers: usize,
    pub passed: usize,
    /// Clients that failed or got anything else.
    pub bad: usize,
    /// What the first bad client got, for the report.
    pub first_problem: Option<String>,
}

impl HerdSummary {
    pub fn new(results: &[Result<ClientResult, anyhow::Error>], expected: &Bytes) -> HerdSummary {
        let mut summary = HerdSummary::default();
        for result in results {
            let problem = match result {
                Ok(r) if r.status == StatusCode::OK && r.body == *expected => {
                    summary.latencies.push(r.latency);
                    match r.outcome.as_str() {
                        "leader" => summary.leaders += 1,
                        "follower" => summary.followers += 1,
                        _ => summary.passed += 1,
                    }
                    continue;
                }
                Ok(r) => format!("status {}, {} body bytes", r.status, r.body.len()),
                Err(err) => format!("{err:#}"),
            };
            summary.bad += 1;
            summary.first_problem.get_or_insert(problem);
        }
        summary.latencies.sort();
        summary
    }

    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }

    pub fn max(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }
}
