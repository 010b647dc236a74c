//! The upstream client: one pooled client per `[upstreams.*]` table (HTTP/1.1 or HTTP/2, over
//! TCP or TLS), and the three timeouts that bound a fetch (connect, response head, gap between
//! body chunks).
//!
//! Every way a fetch can fail is a [`FetchError`], which is `Clone` because a coalesced flight
//! hands the same error to all of its clients. This module sends requests and reports what
//! happened; it does not rewrite headers (`hygiene`) or decide who shares a response
//! (`coalesce`).

pub mod admission;
pub mod balance;
mod body;
pub mod dns;
mod error;
mod pool;
pub mod tls;

pub use body::UpstreamBody;
pub use error::{BoxError, FetchError};

/// Any request body the proxy forwards: empty for a shared fetch, the client's own stream for
/// a pass-through.
pub type RequestBody = BoxBody<Bytes, BoxError>;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::config::UpstreamConfig;
use admission::{Admission, Permit, Priority, Refused};
use balance::Balancer;

use pool::{Pool, SendError};

/// One upstream: its settings and its connection pools. Shared by every route that names it.
#[derive(Debug)]
pub struct Upstream {
    pub config: UpstreamConfig,
    /// Its connections, a pool per worker thread (`pool`), so that a request, its upstream
    /// connection and that connection's task all run on one thread: a connection pooled by
    /// another worker would wake that worker twice per request. `pool_max_idle`, when set, is
    /// shared out between them; by default a pool keeps every connection the load needed
    /// until it has been idle for `pool_idle_timeout`.
    pool: Arc<Pool>,
    balancer: Arc<Balancer>,
    /// Until DNS has first answered for an upstream that follows names (`dns`): requests
    /// wait for it, up to `connect_timeout`.
    first_resolution: Option<tokio::sync::watch::Receiver<bool>>,
    /// The concurrency limit and its queue, when the upstream has one.
    admission: Option<Arc<Admission>>,
}

impl Upstream {
    /// An upstream for a server with one worker (tests, tools).
    pub fn new(config: UpstreamConfig) -> Upstream {
        Upstream::with_workers(config, 1, None)
    }

    /// An upstream with a connection pool for each of `workers` worker threads.
    pub fn with_workers(
        config: UpstreamConfig,
        workers: usize,
        metrics: Option<&crate::observe::metrics::Metrics>,
    ) -> Upstream {
        let workers = workers.max(1);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let opened = metrics
            .map(|m| m.for_upstream_connections(&config.name))
            .unwrap_or_default();
        let connector = tls::connector(&config, connector, opened);
        let pool = Arc::new(Pool::new(&config, connector, workers));
        let admission = config.concurrency.map(|limit| {
            let handles = metrics
                .map(|m| m.for_upstream_admission(&config.name))
                .unwrap_or_default();
            Arc::new(Admission::new(limit, handles))
        });
        let balancer = Arc::new(Balancer::new(&config));
        let addresses = metrics
            .map(|m| m.for_upstream_addresses(&config.name))
            .unwrap_or_default();
        let first_resolution = dns::follow(&balancer, &config, addresses);
        Upstream {
            balancer,
            first_resolution,
            config,
            pool,
            admission,
        }
    }

    /// The `Host` header for the upstream's first address, which hygiene addresses requests
    /// to.
    pub fn host(&self) -> Option<&HeaderValue> {
        self.balancer.primary_host()
    }

    /// Its addresses now (for the status page).
    pub fn endpoints(&self) -> Arc<Vec<Arc<balance::Endpoint>>> {
        self.balancer.endpoints()
    }

    /// Waits for a slot under the upstream's concurrency limit, as `priority`, when it has
    /// one: the admission phase of a request that really goes upstream (a flight's fetch or a
    /// pass-through; never a follower). The response timeout runs from when the request may go.
    pub async fn admit(&self, priority: Priority) -> Result<Option<Permit>, FetchError> {
        let Some(admission) = &self.admission else {
            return Ok(None);
        };
        admission
            .admit(priority)
            .await
            .map(Some)
            .map_err(|refused| FetchError::Overloaded {
                upstream: self.config.name.clone(),
                reason: match refused {
                    Refused::QueueFull => "its queue is full".to_owned(),
                    Refused::QueueTimeout(wait) => format!("waited {wait:?} in its queue"),
                },
            })
    }

    /// Sends a request whose URI and headers are already upstream-ready, holding `permit`
    /// (from [`Upstream::admit`]) until its response body ends. Resolves when the response
    /// head arrives; the body then arrives through [`UpstreamBody`], which enforces
    /// `idle_timeout`. Dropping the future or the body closes the upstream connection.
    pub fn send(
        self: &Arc<Self>,
        request: Request<RequestBody>,
        permit: Option<Permit>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, FetchError>> + Send + 'static {
        use futures_util::future::Either;
        let unresolved = self.first_resolution.as_ref().filter(|r| !*r.borrow());
        match unresolved.cloned() {
            None => Either::Left(self.send_now(request, permit)),
            // Boxed: only the first requests to an upstream that follows DNS wait here, and
            // inline this state would grow every fetch task's future by its size.
            Some(mut resolved) => {
                let upstream = self.clone();
                Either::Right(Box::pin(async move {
                    let wait = resolved.wait_for(|done| *done);
                    let _ = tokio::time::timeout(upstream.config.connect_timeout, wait).await;
                    upstream.send_now(request, permit).await
                }))
            }
        }
    }

    fn send_now(
        self: &Arc<Self>,
        mut request: Request<RequestBody>,
        permit: Option<Permit>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, FetchError>> + Send + 'static {
        let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let picked = self.balancer.pick(path_and_query);
        if let Some(endpoint) = picked.as_ref().filter(|e| e.readdressed()) {
            // Hygiene addressed the first configured address; this request goes to another.
            let mut parts = request.uri().clone().into_parts();
            if let Some(host) = endpoint.host() {
                request
                    .headers_mut()
                    .insert(http::header::HOST, host.clone());
            }
            parts.authority = Some(endpoint.authority().clone());
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
        use futures_util::future::{ready, Either, FutureExt};
        let Some(endpoint) = picked else {
            let name = self.config.name.clone();
            return Either::Left(ready(Err(FetchError::NoHealthyAddress { upstream: name })));
        };
        // Built now and finished by `map`: an async block would hold the send future twice
        // (captured, and awaited), and this future sits in every fetch.
        let in_flight = self.balancer.start(&endpoint);
        let response_timeout = self.config.response_timeout;
        let sent = self.pool.send(request, endpoint.authority().clone());
        let sent = tokio::time::timeout(response_timeout, sent);
        let upstream = self.clone();
        let idle_timeout = self.config.idle_timeout;
        Either::Right(sent.map(move |response| {
            let name = || upstream.config.name.clone();
            drop(in_flight);
            if !matches!(response, Ok(Ok(_))) {
                upstream.balancer.failed(&endpoint);
            }
            let response = match response {
                Err(_) => {
                    return Err(FetchError::ResponseTimeout {
                        upstream: name(),
                        timeout: response_timeout,
                    })
                }
                Ok(Err(SendError::Connect(reason))) => {
                    return Err(FetchError::Connect {
                        upstream: name(),
                        reason: explain_connect(reason),
                    })
                }
                Ok(Err(SendError::BeforeHead(reason))) => {
                    return Err(FetchError::BeforeHead {
                        upstream: name(),
                        reason,
                    })
                }
                Ok(Ok(response)) => response,
            };
            let (response, checkin) = response;
            Ok(response.map(|body| UpstreamBody::new(body, idle_timeout, permit, checkin)))
        }))
    }
}

/// A connect failure in words an operator can act on, where rustls' own are cryptic.
fn explain_connect(reason: String) -> String {
    if reason.contains("InvalidContentType") {
        // rustls read something that is no TLS record: a plain-HTTP server, most likely.
        return format!(
            "the upstream did not answer with TLS (does it speak plain HTTP? then use http://): {reason}"
        );
    }
    reason
}
