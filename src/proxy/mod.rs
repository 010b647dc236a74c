//! The request pipeline: compose the layers, nothing else.
//!
//! [`Proxy::handle`] is the whole life of one client request, as a list of named phases a
//! [`RequestContext`] goes through:
//!
//! 1. **route** (`routing`): the route by host and path, or the proxy's own 404/405;
//! 2. **look up** (`share`): the route's cache: hit, stale (refreshed in the background), or
//!    a miss that carries what the cache still offers;
//! 3. **coalesce** (`share`): the coordinator's [`Status`](crate::coalesce::Status) for the
//!    request's key, and one reaction to each: lead, follow, take the head, re-elect, re-key,
//!    or go upstream alone;
//! 4. **admit** (`forward::send_upstream`): a slot under the upstream's concurrency limit, for
//!    what really goes upstream (a flight's fetch, a pass-through);
//! 5. **upstream request** (`hygiene`): the head the upstream gets;
//! 6. **response** (`response`): the upstream head cleaned and judged for sharing, and the
//!    cache's store plan; then the reply with its outcome and `Cache-Status` (`reply`);
//! 7. **log** (`log`): counted once, and recorded when its body ends.
//!
//! A request that may not share skips 2 and 3 and is forwarded on its own (`forward`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

pub mod authority;
mod context;
mod fetch;
mod forward;
pub mod hygiene;
mod log;
mod ranged;
mod reply;
mod response;
mod routing;
mod share;
mod trace;

pub use context::{Connection, RequestContext};

use crate::coalesce::Coordinator;
use crate::config::Config;
use crate::observe::access::ObservedBody;
use crate::observe::metrics::RouteMetrics;
use crate::observe::stats::Stats;
use crate::route::Route;
use crate::upstream::BoxError;
use routing::Routing;

/// Every response body the proxy sends: a flight's fan-out, an upstream stream, or a short
/// message of its own.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Everything needed to serve requests. The routing swaps whole on reload (keeping what did
/// not change); the coordinator and the stats outlive reloads, so flights in the air are not
/// disturbed.
#[derive(Debug)]
pub struct Proxy {
    routing: ArcSwap<Routing>,
    coordinator: Arc<Coordinator>,
    stats: Arc<Stats>,
    /// Metrics for requests that matched no route.
    unrouted: Arc<RouteMetrics>,
}

/// The stats line shows the fleet layer's counts once any route has one.
fn note_fleet(config: &Config, stats: &Stats) {
    if config.routes.iter().any(|route| route.fleet.is_some()) {
        let configured = &stats.fleet_configured;
        configured.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Proxy {
    pub fn new(config: &Config, stats: Arc<Stats>) -> Proxy {
        note_fleet(config, &stats);
        Proxy {
            routing: ArcSwap::from_pointee(Routing::new(config, &stats.metrics, None)),
            coordinator: Arc::new(Coordinator::new(
                stats.clone(),
                config.server.max_buffered_bytes,
            )),
            unrouted: Arc::new(stats.metrics.for_route("none")),
            stats,
        }
    }

    /// Serves new requests under `config` from now on. Requests and flights already under
    /// way keep the routes, upstreams and policies they started with; upstreams and routes
    /// whose configuration is unchanged are kept (pools, health, admission, caches).
    pub fn reload(&self, config: &Config) {
        let previous = self.routing.load();
        let routing = Routing::new(config, &self.stats.metrics, Some(&previous));
        self.routing.store(Arc::new(routing));
        note_fleet(config, &self.stats);
        let budget = &self.coordinator.budget;
        budget.set_limit(config.server.max_buffered_bytes);
    }

    /// The routes served now (for the status page).
    pub fn routes(&self) -> Vec<Arc<Route>> {
        self.routing.load().routes.iter().cloned().collect()
    }

    /// The per-key coordinator: the flights in the air and the keys remembered as not
    /// shareable (tests, the stats reporter, the status page).
    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The Prometheus exposition, with the gauges brought up to date.
    pub fn render_metrics(&self) -> String {
        let metrics = &self.stats.metrics;
        metrics.flights_in_flight.set(self.coordinator.len() as i64);
        metrics
            .pass_memory_keys
            .set(self.coordinator.remembered_passes() as i64);
        let routing = self.routing.load();
        let caches = || routing.routes.iter().filter_map(|r| r.cache.as_ref());
        metrics
            .cache_entries
            .set(caches().map(|c| c.entry_count()).sum::<u64>() as i64);
        metrics
            .cache_bytes
            .set(caches().map(|c| c.weighted_size()).sum::<u64>() as i64);
        metrics.render()
    }

    /// Purges cached responses by path, on every route: those under `path`, or exactly at
    /// it. Returns how many were removed.
    pub fn purge(&self, path: &str, exact: bool) -> u64 {
        let routing = self.routing.load();
        let caches = routing.routes.iter().filter_map(|r| r.cache.as_ref());
        caches.map(|cache| cache.purge(path, exact)).sum()
    }

    /// Purges cached responses whose `Surrogate-Key` names `tag`, on every route. Returns how
    /// many were removed.
    pub fn purge_tag(&self, tag: &str) -> u64 {
        let routing = self.routing.load();
        let caches = routing.routes.iter().filter_map(|r| r.cache.as_ref());
        caches.map(|cache| cache.purge_tag(tag)).sum()
    }

    /// The whole life of one request, phase by phase; never an error (hyper's services may
    /// fail, but the proxy answers every request). The route phase runs now, before the
    /// future is made, so the future holds only what the later phases need: one request
    /// context, which they borrow (a value moved from phase to phase would take its room in
    /// every phase's future, and a waiting client pays for each of those bytes).
    pub fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        connection: Connection,
    ) -> impl Future<Output = Result<Response<ObservedBody<ProxyBody>>, Infallible>> + Send + 'static
    {
        let started = Instant::now();
        let routing = self.routing.load_full();
        let log = log::Entry::begin(&request, started, routing.access_log);
        let http2 = request.version() == http::Version::HTTP_2;
        let (parts, body) = request.into_parts();
        let mut span = trace::ServerSpan::start(&self.stats, &parts);
        let mut routed = routing.route(parts, connection);
        // Only an upstream's gRPC response needs its trailers declared; a request the route
        // phase answered gets none.
        let http1_trailers = !http2 && routed.as_ref().is_ok_and(|r| r.accepts_trailers);
        let metrics = match &routed {
            Err(_) => self.unrouted.clone(),
            Ok(request) => request.route.metrics.clone(),
        };
        let mut pending = log::Pending::new(log, metrics);
        let proxy = self.clone();
        // Nothing the future captures is moved into a local of its own (the request is
        // borrowed in place, `ref mut`): a captured value moved so takes its room twice.
        async move {
            let unanswered = log::Unanswered::new(&mut pending, &proxy.stats);
            let mut reply = match routed {
                Err(reply) => *reply,
                Ok(ref mut request) => {
                    if let Some(span) = &mut span {
                        request.trace = Some(Box::new(span.context));
                        span.route = Some(request.route.name.clone());
                    }
                    proxy.serve(&routing, request, body).await
                }
            };
            if let Some(span) = span {
                span.finish(&proxy.stats, &reply);
            }
            if http2 {
                reply::add_date(&mut reply.response);
            } else if http1_trailers {
                reply::declare_grpc_trailers(&mut reply.response);
            }
            Ok(unanswered.answer(reply))
        }
    }
}
