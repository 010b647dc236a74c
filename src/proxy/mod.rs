//! The request path: compose the layers, nothing else.
//!
//! [`Proxy::handle`] is the whole life of one client request. The route layer picks the
//! route; a request that may share asks the cache, then joins a flight (the coalesce layer),
//! whose fetch goes to the upstream layer; anything else is forwarded on its own
//! ([`forward`]). Each layer decides one thing and hands the request on; this module only
//! strings them together and turns what they decide into a [`Reply`]. Every response carries
//! the outcome header and is counted in the stats exactly once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::HeaderName;
use http::{request, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;

mod fetch;
mod forward;
pub mod hygiene;
mod ranged;
mod reply;

use crate::cache::status::{CacheStatus, Forward};
use crate::cache::{self, Lookup};
use crate::coalesce::{
    follower_verdict, join_and_wait, sharing, FanoutBody, Group, Key, PassMemory, Role, SharedHead,
    Subscription, Verdict, Waited,
};
use crate::config::Config;
use crate::observe::access::{ObservedBody, RequestRecord};
use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::observe::outcome::Outcome;
use crate::observe::stats::Stats;
use crate::route::{Route, RouteTable};
use crate::upstream::{BoxError, FetchError, Upstream};
use reply::{cached, error_reply, set_outcome, text_reply, with_cache_status, Reply};

/// Every response body the proxy sends: a flight's fan-out, an upstream stream, or a short
/// message of its own.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The parts of the configuration a reload replaces: routes, upstreams, policies.
#[derive(Debug)]
struct Routing {
    routes: RouteTable,
    /// The outcome header for answers given without a route (404), from `[coalesce]`.
    default_outcome_header: Option<HeaderName>,
    access_log: bool,
}

impl Routing {
    fn new(config: &Config, metrics: &Metrics) -> Routing {
        let upstreams: HashMap<&str, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, upstream)| {
                let upstream =
                    Upstream::with_workers(upstream.clone(), config.server.workers, Some(metrics));
                (name.as_str(), Arc::new(upstream))
            })
            .collect();
        Routing {
            routes: RouteTable::new(config, |name| upstreams[name].clone(), metrics),
            default_outcome_header: config.coalesce.outcome_header.clone(),
            access_log: config.log.access,
        }
    }
}

/// Everything needed to serve requests. The routing swaps whole on reload; the flight table,
/// the pass memory and the stats outlive reloads, so flights in the air are not disturbed.
#[derive(Debug)]
pub struct Proxy {
    routing: ArcSwap<Routing>,
    group: Arc<Group>,
    pass_memory: Arc<PassMemory>,
    stats: Arc<Stats>,
    /// Metrics for requests that matched no route.
    unrouted: Arc<RouteMetrics>,
}

impl Proxy {
    pub fn new(config: &Config, stats: Arc<Stats>) -> Proxy {
        Proxy {
            routing: ArcSwap::from_pointee(Routing::new(config, &stats.metrics)),
            group: Arc::new(Group::new(stats.clone())),
            pass_memory: Arc::new(PassMemory::default()),
            unrouted: Arc::new(stats.metrics.for_route("none")),
            stats,
        }
    }

    /// Serves new requests under `config` from now on. Requests and flights already under
    /// way keep the routes, upstreams and policies they started with.
    pub fn reload(&self, config: &Config) {
        self.routing
            .store(Arc::new(Routing::new(config, &self.stats.metrics)));
    }

    /// The routes served now (for the status page).
    pub fn routes(&self) -> Vec<Arc<crate::route::Route>> {
        self.routing.load().routes.iter().cloned().collect()
    }

    /// The singleflight table, for inspection (tests, the stats reporter).
    pub fn group(&self) -> &Arc<Group> {
        &self.group
    }

    /// Keys currently sent straight upstream because their responses were not shareable.
    pub fn pass_memory(&self) -> &Arc<PassMemory> {
        &self.pass_memory
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The Prometheus exposition, with the gauges brought up to date.
    pub fn render_metrics(&self) -> String {
        let metrics = &self.stats.metrics;
        metrics.flights_in_flight.set(self.group.len() as i64);
        metrics.pass_memory_keys.set(self.pass_memory.len() as i64);
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
        routing
            .routes
            .iter()
            .filter_map(|r| r.cache.as_ref())
            .map(|cache| cache.purge(path, exact))
            .sum()
    }

    /// Purges cached responses whose `Surrogate-Key` names `tag`, on every route. Returns how
    /// many were removed.
    pub fn purge_tag(&self, tag: &str) -> u64 {
        let routing = self.routing.load();
        routing
            .routes
            .iter()
            .filter_map(|r| r.cache.as_ref())
            .map(|cache| cache.purge_tag(tag))
            .sum()
    }

    /// The whole life of one request: serve it, count it once, and observe its body to the end.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ObservedBody<ProxyBody>> {
        let started = Instant::now();
        let routing = self.routing.load_full();
        let method = request.method().clone();
        let path = routing.access_log.then(|| request.uri().path().to_owned());
        let (route, reply) = self.route_and_serve(&routing, request, client).await;
        self.stats.record_request(reply.outcome);
        let (head, body) = reply.response.into_parts();
        // hyper stops reading a body once it has written Content-Length bytes, without
        // polling it to its end: the record compares the bytes sent with this instead.
        let length = (routing.access_log && method != http::Method::HEAD)
            .then(|| head.headers.get(http::header::CONTENT_LENGTH))
            .flatten()
            .and_then(|value| value.to_str().ok()?.parse().ok());
        let record = RequestRecord {
            started,
            length,
            method,
            path,
            route: route.map_or_else(|| self.unrouted.clone(), |r| r.metrics.clone()),
            status: head.status,
            outcome: reply.outcome,
            flight: reply.flight,
        };
        Response::from_parts(head, ObservedBody::new(body, record, routing.access_log))
    }

    async fn route_and_serve(
        &self,
        routing: &Routing,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> (Option<Arc<Route>>, Reply) {
        let (parts, body) = request.into_parts();
        let default_header = routing.default_outcome_header.as_ref();
        if parts.method == Method::CONNECT {
            let reply = text_reply(
                default_header,
                Outcome::Pass,
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported\n".into(),
            );
            return (None, Reply::pass(reply));
        }
        let host = hygiene::requested_host(&parts);
        let Some(route) = routing.routes.find(host, parts.uri.path()).cloned() else {
            let reply = text_reply(
                default_header,
                Outcome::Pass,
                StatusCode::NOT_FOUND,
                "no route for this request\n".into(),
            );
            return (None, Reply::pass(reply));
        };
        if hygiene::is_upgrade(&parts) {
            // Boxed, as `pass_alone`: rare, and large inline.
            let reply = Box::pin(self.tunnel(&route, parts, body, client)).await;
            return (Some(route), reply);
        }
        let reply = if sharing::request_may_share(&route.coalesce, &parts, body.is_end_stream()) {
            match read_shared_body(&route, &parts, body).await {
                Ok(body) => self.share(&route, &parts, client, &body).await,
                Err(reply) => reply,
            }
        } else {
            let body = body.map_err(BoxError::from).boxed();
            let reply = self.pass(&route, &parts, client, body, None).await;
            let response = &reply.response;
            cache::after_unsafe_request(
                |host, path| routing.routes.find(host, path),
                &parts,
                response.status(),
                response.headers(),
            );
            reply
        };
        let reply = with_cache_status(&route, &parts, reply);
        (Some(route), reply)
    }

    /// Answers a request that may share: from the cache, else from the flight for its key,
    /// unless it has to go upstream on its own after all (its key is remembered as not
    /// shareable, it waited longer than `max_wait`, or the response turned out not to be for
    /// it: not shareable, a `Vary` mismatch, an error under `share_errors = false`).
    async fn share(
        &self,
        route: &Arc<Route>,
        parts: &request::Parts,
        client: SocketAddr,
        body: &Bytes,
    ) -> Reply {
        let miss = match cache::look_up(route, parts) {
            Lookup::Fresh(entry) => return cached(&entry, parts, route, Outcome::Hit),
            Lookup::Stale(entry, refresh) => {
                if let Some(refresh) = refresh {
                    self.refresh(route, parts, client, *refresh);
                }
                self.stats.metrics.cache_stale_served.inc();
                return cached(&entry, parts, route, Outcome::Stale);
            }
            Lookup::Miss(miss) => miss,
        };
        if let Some(whole) = ranged::whole_resource(route, parts) {
            // Fetched whole so the cache stores it; the client gets its range of it. Boxed:
            // `share` cannot hold itself inline.
            let range = parts
                .headers
                .get(http::header::RANGE)
                .and_then(|v| v.to_str().ok());
            let range = range.unwrap_or_default().to_owned();
            let reply = Box::pin(self.share(route, &whole, client, body)).await;
            return ranged::cut(reply, &range);
        }
        let validators = miss.validators();
        let mut key = flight_key(route, parts, &validators, body);
        let alone = |reply: Reply| {
            let status = CacheStatus::Forward {
                reason: miss.reason,
                status: Some(reply.response.status()),
                stored: false,
                collapsed: false,
                ttl: None,
            };
            reply.with_cache_status(status)
        };
        if self.pass_memory.should_pass(&key) {
            return alone(
                self.pass_alone(route, parts, client, Some(&key), body)
                    .await,
            );
        }
        loop {
            let fetch = |flight: &Arc<_>| {
                self.fetch(route, parts, client, key.clone(), &miss, body, flight)
            };
            let waited = join_and_wait(
                &self.group,
                &self.stats,
                key.clone(),
                route,
                &parts.headers,
                fetch,
            );
            let Waited::Head {
                role,
                subscription,
                head,
            } = waited.await
            else {
                return alone(self.pass_alone(route, parts, client, None, body).await);
            };
            let outcome = outcome_of(role);
            let collapsed = role == Role::Follower;
            if let Some(entry) = miss.stands_in_for(&head) {
                drop(subscription);
                self.stats.metrics.cache_stale_served.inc();
                let reply = cached(entry, parts, route, Outcome::Stale);
                let status = CacheStatus::Forward {
                    reason: miss.reason,
                    status: head.as_ref().ok().map(|h| h.status),
                    stored: false,
                    collapsed,
                    ttl: Some(entry.ttl(std::time::Instant::now())),
                };
                return reply.with_cache_status(status);
            }
            if let Some(entry) = miss.confirmed_by(&head, route, &parts.headers) {
                let mut reply = cached(&entry, parts, route, outcome);
                reply.flight = Some(subscription.flight().id);
                return reply.with_cache_status(CacheStatus::Forward {
                    reason: Forward::Stale,
                    status: Some(StatusCode::NOT_MODIFIED),
                    stored: true,
                    collapsed,
                    ttl: None,
                });
            }
            let head = match head {
                Ok(head) => head,
                Err(_) if role == Role::Follower && !route.coalesce.share_errors => {
                    drop(subscription);
                    return alone(self.pass_alone(route, parts, client, None, body).await);
                }
                Err(err) => return shared_error(route, role, miss.reason, &subscription, &err),
            };
            if role == Role::Follower {
                let flight = subscription.flight();
                match follower_verdict(&head, flight, &key, &parts.headers) {
                    Verdict::Take => {}
                    Verdict::GoAlone => {
                        drop(subscription);
                        return alone(self.pass_alone(route, parts, client, None, body).await);
                    }
                    Verdict::Rejoin(variant) => {
                        drop(subscription);
                        key = variant;
                        continue;
                    }
                }
            }
            return fan_out(route, outcome, miss.reason, &head, subscription);
        }
    }
}

/// The key of a request's flight. A revalidation is keyed with the validators, as a
/// conditional request would be: only clients that found the same stored response share its
/// flight, so its 304 means something to every one of them.
fn flight_key(
    route: &Route,
    parts: &request::Parts,
    validators: &http::HeaderMap,
    body: &[u8],
) -> Key {
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    if validators.is_empty() {
        return Key::with_body(route, &parts.method, path_and_query, &parts.headers, body);
    }
    let mut headers = parts.headers.clone();
    headers.extend(validators.clone());
    Key::with_body(route, &parts.method, path_and_query, &headers, body)
}

/// The body of a request that may share: empty, or read whole when the route lets bodies
/// share (`body_max`), so that it can be part of the key. A client that does not send the
/// body it announced gets a 400.
async fn read_shared_body(
    route: &Route,
    parts: &request::Parts,
    body: Incoming,
) -> Result<Bytes, Reply> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let limit = sharing::shareable_body_length(&route.coalesce, parts).unwrap_or(0);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(Reply::pass(text_reply(
            route.coalesce.outcome_header.as_ref(),
            Outcome::Pass,
            StatusCode::BAD_REQUEST,
            "the request body could not be read whole\n".into(),
        ))),
    }
}

fn outcome_of(role: Role) -> Outcome {
    match role {
        Role::Leader => Outcome::Leader,
        Role::Follower => Outcome::Follower,
    }
}

/// A flight's response for one of its clients: the shared head, and a body that reads the
/// flight's chunks at this client's own pace.
fn fan_out(
    route: &Route,
    outcome: Outcome,
    reason: Forward,
    head: &SharedHead,
    subscription: Subscription,
) -> Reply {
    let flight = subscription.flight().id;
    let body = FanoutBody::new(subscription).map_err(BoxError::from);
    let mut response = Response::new(body.boxed_unsync());
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers.clone();
    set_outcome(
        &mut response,
        route.coalesce.outcome_header.as_ref(),
        outcome,
    );
    Reply {
        response,
        outcome,
        flight: Some(flight),
        cache_status: Some(CacheStatus::Forward {
            reason,
            status: Some(head.status),
            stored: head.stored,
            collapsed: outcome == Outcome::Follower,
            ttl: None,
        }),
    }
}

/// The answer every client of a flight gets when its fetch failed before the head.
fn shared_error(
    route: &Route,
    role: Role,
    reason: Forward,
    subscription: &Subscription,
    err: &FetchError,
) -> Reply {
    let flight = subscription.flight();
    if role == Role::Leader {
        crate::observe::failure_log::upstream_failed(
            &route.name,
            err.kind(),
            err,
            "shared upstream fetch failed",
        );
    }
    let outcome = outcome_of(role);
    Reply {
        response: error_reply(route.coalesce.outcome_header.as_ref(), outcome, err),
        outcome,
        flight: Some(flight.id),
        cache_status: Some(CacheStatus::Forward {
            reason,
            status: None,
            stored: false,
            collapsed: role == Role::Follower,
            ttl: None,
        }),
    }
}
