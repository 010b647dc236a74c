//! The request path: route, classify, then share a flight or pass through.
//!
//! [`Proxy::handle`] is the whole life of one client request. It finds the route, decides
//! whether the request may share a flight (method in the route's policy, no request body,
//! coalescing on), and then either joins the singleflight table or forwards the request on its
//! own with both bodies streamed. Every response carries the outcome header and is counted in
//! the stats exactly once.

pub mod hygiene;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;

use crate::cache::{self, Found, ResponseCache, StoredResponse};
use crate::coalesce::sharing;
use crate::coalesce::{FanoutBody, Fetched, Group, Key, PassMemory, Role};
use crate::config::Config;
use crate::observe::access::{ObservedBody, RequestRecord};
use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::observe::outcome::Outcome;
use crate::observe::stats::Stats;
use crate::route::{Route, RouteTable};
use crate::upstream::{BoxError, FetchError, RequestBody, Upstream, UpstreamBody};

/// Every response body the proxy sends: a flight's fan-out, an upstream stream, or a short
/// message of its own.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// What serving a request produced, before it is counted and observed.
struct Reply {
    response: Response<ProxyBody>,
    outcome: Outcome,
    /// The flight that served it, if any.
    flight: Option<u64>,
}

impl Reply {
    fn pass(response: Response<ProxyBody>) -> Reply {
        Reply {
            response,
            outcome: Outcome::Pass,
            flight: None,
        }
    }
}

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
            .map(|(name, upstream)| (name.as_str(), Arc::new(Upstream::new(upstream.clone()))))
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

    /// The whole life of one request: serve it, count it once, and observe its body to the end.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ObservedBody> {
        let started = Instant::now();
        let routing = self.routing.load_full();
        let method = request.method().clone();
        let path = routing.access_log.then(|| request.uri().path().to_owned());
        let (route, reply) = self.route_and_serve(&routing, request, client).await;
        self.stats.record_request(reply.outcome);
        let (head, body) = reply.response.into_parts();
        let record = RequestRecord {
            started,
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
            self.share(&route, &parts, client).await
        } else {
            let body = body.map_err(BoxError::from).boxed();
            self.pass(&route, &parts, client, body, None).await
        };
        (Some(route), reply)
    }

    /// Joins (or starts) the flight for this request's key and answers from it, unless the
    /// request has to go upstream on its own after all: its key is remembered as not
    /// shareable, it waited longer than `max_wait`, or the response turned out not to be for
    /// it (not shareable, a `Vary` mismatch, an error under `share_errors = false`).
    async fn share(&self, route: &Arc<Route>, parts: &request::Parts, client: SocketAddr) -> Reply {
        let policy = &route.coalesce;
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        // A stale response that may stand in if the upstream fails (stale-if-error).
        let mut fallback = None;
        // A no-cache response to revalidate: the flight asks with its validators, and a 304
        // means clients get it.
        let mut revalidating: Option<Arc<StoredResponse>> = None;
        if let Some(cache) = route.cache.as_ref().filter(|_| cacheable_request(parts)) {
            // HEAD is answered from a stored GET.
            let cache_key = Key::new(route, &Method::GET, path_and_query, &parts.headers);
            match cache.lookup(&cache_key, &parts.headers) {
                Some(Found::Fresh(entry)) => return cached(&entry, parts, route, Outcome::Hit),
                Some(Found::Stale(entry)) => {
                    self.refresh(route, parts, client, cache, cache_key, &entry);
                    self.stats.metrics.cache_stale_served.inc();
                    return cached(&entry, parts, route, Outcome::Stale);
                }
                Some(Found::Expired(entry)) => fallback = Some(entry),
                Some(Found::Revalidate(entry)) => revalidating = Some(entry),
                None => {}
            }
        }
        let validators = revalidating
            .as_ref()
            .map(|entry| entry.validators())
            .unwrap_or_default();
        let mut key = if validators.is_empty() {
            Key::new(route, &parts.method, path_and_query, &parts.headers)
        } else {
            // Keyed with the validators, as a conditional request would be: only clients that
            // found the same stored response share this flight, so its 304 means something to
            // every one of them.
            let mut headers = parts.headers.clone();
            headers.extend(validators.clone());
            Key::new(route, &parts.method, path_and_query, &headers)
        };
        if self.pass_memory.should_pass(&key) {
            return self.pass_alone(route, parts, client, Some(&key)).await;
        }
        loop {
            let (role, subscription) = self.group.join(key.clone(), route, &parts.headers, || {
                self.fetch(
                    route,
                    parts,
                    client,
                    key.clone(),
                    &validators,
                    revalidating.clone(),
                )
            });
            let flight = subscription.flight().clone();
            // Without `max_wait`, a follower waits as long as the flight may take, which the
            // upstream's `response_timeout` bounds; a timer of the same length would only race
            // the flight's own 504.
            let waiting = (role == Role::Follower).then(|| Waiting::new(&self.stats));
            let head = match (role, policy.max_wait) {
                (Role::Leader, _) | (Role::Follower, None) => flight.head().await,
                (Role::Follower, Some(max_wait)) => {
                    match tokio::time::timeout(max_wait, flight.head()).await {
                        Ok(head) => head,
                        Err(_) => {
                            drop(subscription);
                            tracing::debug!(
                                flight = flight.id,
                                "follower waited past max_wait; going upstream alone"
                            );
                            return self.pass_alone(route, parts, client, None).await;
                        }
                    }
                }
            };
            drop(waiting);
            let outcome = match role {
                Role::Leader => Outcome::Leader,
                Role::Follower => Outcome::Follower,
            };
            if let Some(entry) = fallback
                .as_ref()
                .filter(|entry| entry.may_serve_on_error(std::time::Instant::now()))
            {
                let failed = match &head {
                    Err(_) => true,
                    Ok(head) => head.status.is_server_error(),
                };
                if failed {
                    drop(subscription);
                    self.stats.metrics.cache_stale_served.inc();
                    return cached(entry, parts, route, Outcome::Stale);
                }
            }
            if let Some(entry) = revalidating.as_ref() {
                if head
                    .as_ref()
                    .is_ok_and(|h| h.status == StatusCode::NOT_MODIFIED)
                {
                    // Confirmed: the stored response it is (renewed by the fetch).
                    let outcome = match role {
                        Role::Leader => Outcome::Leader,
                        Role::Follower => Outcome::Follower,
                    };
                    let mut reply = cached(entry, parts, route, outcome);
                    reply.flight = Some(flight.id);
                    return reply;
                }
            }
            let head = match head {
                Ok(head) => head,
                Err(_) if role == Role::Follower && !policy.share_errors => {
                    drop(subscription);
                    return self.pass_alone(route, parts, client, None).await;
                }
                Err(err) => {
                    if role == Role::Leader {
                        tracing::warn!(
                            route = %route.name,
                            flight = flight.id,
                            path = flight.key.path(),
                            error = %err,
                            "shared upstream fetch failed"
                        );
                    }
                    return Reply {
                        response: error_reply(policy.outcome_header.as_ref(), outcome, &err),
                        outcome,
                        flight: Some(flight.id),
                    };
                }
            };
            if role == Role::Follower {
                if !head.sharing.shareable() {
                    // Released at once, all together: nobody queues behind a response that
                    // only its leader may have.
                    drop(subscription);
                    return self.pass_alone(route, parts, client, None).await;
                }
                if !sharing::vary_matches(
                    &head.sharing.vary,
                    &parts.headers,
                    &flight.leader_headers,
                ) {
                    drop(subscription);
                    if key.is_variant() {
                        return self.pass_alone(route, parts, client, None).await;
                    }
                    // Share with the clients that sent the same values, in a flight of their own.
                    key = key.variant(&head.sharing.vary, &parts.headers);
                    continue;
                }
            }
            let mut response = Response::new(
                FanoutBody::new(subscription)
                    .map_err(BoxError::from)
                    .boxed_unsync(),
            );
            *response.status_mut() = head.status;
            *response.headers_mut() = head.headers.clone();
            set_outcome(&mut response, policy.outcome_header.as_ref(), outcome);
            return Reply {
                response,
                outcome,
                flight: Some(flight.id),
            };
        }
    }

    /// The upstream fetch of a flight: the leader's request with an empty body, judged for
    /// sharing when its head arrives. Built only for leaders: followers never pay for an
    /// upstream request they do not send.
    fn fetch(
        &self,
        route: &Arc<Route>,
        parts: &request::Parts,
        client: SocketAddr,
        key: Key,
        validators: &HeaderMap,
        revalidating: Option<Arc<StoredResponse>>,
    ) -> impl Future<Output = Result<Fetched, FetchError>> + Send + 'static {
        let response =
            upstream_request(route, parts, client, empty_request_body()).map(|mut request| {
                request.headers_mut().extend(validators.clone());
                send_upstream(&self.stats, route, request)
            });
        let route = route.clone();
        let pass_memory = self.pass_memory.clone();
        // What the cache needs to store this response, when the route has one and the request
        // asked for the plain resource.
        let storing = route
            .cache
            .clone()
            .filter(|_| parts.method == Method::GET && cacheable_request(parts))
            .map(|cache| {
                let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
                let cache_key = Key::new(&route, &Method::GET, path_and_query, &parts.headers);
                (cache, cache_key, parts.headers.clone())
            });
        async move {
            let mut response = response?.await?;

            hygiene::clean_response_headers(response.headers_mut(), Version::HTTP_11);
            let sharing =
                sharing::judge_response(&route.coalesce, response.status(), response.headers());
            if let Some(rule) = &sharing.matched_rule {
                tracing::debug!(route = %route.name, path = key.path(), rule, "response not shareable; releasing followers");
                // Remembered before the flight leaves the table, so no request slips into a
                // new flight in between.
                pass_memory.remember(key, route.coalesce.pass_ttl);
            } else if sharing.shareable() {
                pass_memory.forget(&key);
            }
            if response.status() == StatusCode::NOT_MODIFIED {
                // A revalidation confirmed: renew the stored response; nothing else to store.
                if let (Some(entry), Some((cache, cache_key, request_headers)), Some(policy)) =
                    (revalidating, storing, route.cache_policy.as_ref())
                {
                    let auth = request_headers.contains_key(header::AUTHORIZATION);
                    if let Some((headers, fresh)) =
                        entry.renewed_by(response.headers(), policy, auth)
                    {
                        cache.store(
                            cache_key,
                            &request_headers,
                            entry.status,
                            headers,
                            entry.body.clone(),
                            fresh,
                        );
                    }
                }
                return Ok(Fetched {
                    response,
                    sharing,
                    store: None,
                });
            }
            let store = storing.and_then(|(cache, cache_key, request_headers)| {
                let policy = route.cache_policy.as_ref()?;
                if !sharing.shareable() {
                    return None;
                }
                let has_authorization = request_headers.contains_key(header::AUTHORIZATION);
                let fresh = cache::freshness(
                    policy,
                    response.status(),
                    response.headers(),
                    has_authorization,
                )?;
                let status = response.status();
                let headers = response.headers().clone();
                let store: Box<dyn FnOnce(Bytes) + Send> = Box::new(move |body| {
                    cache.store(cache_key, &request_headers, status, headers, body, fresh);
                });
                Some(store)
            });
            Ok(Fetched {
                response,
                sharing,
                store,
            })
        }
    }

    /// Refreshes a stale cached response in the background, at most once at a time per key:
    /// conditionally when it has validators (a 304 renews the stored one), otherwise by
    /// fetching it again. A failure keeps the stale response.
    fn refresh(
        &self,
        route: &Arc<Route>,
        parts: &request::Parts,
        client: SocketAddr,
        cache: &Arc<ResponseCache>,
        cache_key: Key,
        stale: &Arc<StoredResponse>,
    ) {
        if !cache.begin_refresh(&cache_key) {
            return;
        }
        let Ok(mut request) = upstream_request(route, parts, client, empty_request_body()) else {
            cache.end_refresh(&cache_key);
            return;
        };
        *request.method_mut() = Method::GET;
        if let Some(etag) = stale.headers.get(header::ETAG) {
            request
                .headers_mut()
                .insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = stale.headers.get(header::LAST_MODIFIED) {
            request
                .headers_mut()
                .insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
        self.stats.metrics.cache_revalidations.inc();
        let response = send_upstream(&self.stats, route, request);
        let (route, cache, stale) = (route.clone(), cache.clone(), stale.clone());
        let request_headers = parts.headers.clone();
        tokio::spawn(async move {
            let refreshed = revalidate(&route, &stale, &request_headers, response.await).await;
            if let Some((status, headers, body, freshness)) = refreshed {
                cache.store(
                    cache_key.clone(),
                    &request_headers,
                    status,
                    headers,
                    body,
                    freshness,
                );
            }
            cache.end_refresh(&cache_key);
        });
    }

    /// Forwards an `Upgrade` request (WebSocket above all). When the upstream switches
    /// protocols, the client gets the 101 and both upgraded connections are joined, bytes
    /// untouched, until either side closes. Never coalesced; counted as `pass`.
    async fn tunnel(
        &self,
        route: &Arc<Route>,
        mut parts: request::Parts,
        body: Incoming,
        client: SocketAddr,
    ) -> Reply {
        let client_side = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        let body = body.map_err(BoxError::from).boxed();
        let mut request = match upstream_request(route, &parts, client, body) {
            Ok(request) => request,
            Err(err) => {
                return Reply::pass(error_reply(
                    route.coalesce.outcome_header.as_ref(),
                    Outcome::Pass,
                    &err,
                ))
            }
        };
        // The one place hop-by-hop Upgrade and Connection must cross the proxy.
        if let Some(protocol) = protocol {
            request.headers_mut().insert(header::UPGRADE, protocol);
            request
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let mut response = match send_upstream(&self.stats, route, request).await {
            Ok(response) => response,
            Err(err) => {
                return Reply::pass(error_reply(
                    route.coalesce.outcome_header.as_ref(),
                    Outcome::Pass,
                    &err,
                ))
            }
        };
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upstream_side = switching.then(|| hyper::upgrade::on(&mut response));
        let upgraded_to = response.headers().get(header::UPGRADE).cloned();
        let (mut head, body) = response.into_parts();
        hygiene::clean_response_headers(&mut head.headers, Version::HTTP_11);
        if let (Some(client_side), Some(upstream_side), Some(protocol)) =
            (client_side, upstream_side, upgraded_to)
        {
            head.headers.insert(header::UPGRADE, protocol);
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            tokio::spawn(async move {
                let (Ok(client_io), Ok(upstream_io)) = tokio::join!(client_side, upstream_side)
                else {
                    return;
                };
                let mut client_io = hyper_util::rt::TokioIo::new(client_io);
                let mut upstream_io = hyper_util::rt::TokioIo::new(upstream_io);
                let _ = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await;
            });
        }
        let mut response = Response::from_parts(head, body.map_err(BoxError::from).boxed_unsync());
        set_outcome(
            &mut response,
            route.coalesce.outcome_header.as_ref(),
            Outcome::Pass,
        );
        Reply::pass(response)
    }

    /// A shared request going upstream on its own after all (remembered as not shareable, past
    /// `max_wait`, released by its flight). Boxed: it is the rare path, and `pass`'s state
    /// inline would make every waiting follower's future larger.
    async fn pass_alone(
        &self,
        route: &Arc<Route>,
        parts: &request::Parts,
        client: SocketAddr,
        key: Option<&Key>,
    ) -> Reply {
        Box::pin(self.pass(route, parts, client, empty_request_body(), key)).await
    }

    /// Forwards a request on its own, streaming both bodies. `remembered` is the key of a
    /// request sent here by the pass memory: a shareable answer ends that memory.
    async fn pass(
        &self,
        route: &Arc<Route>,
        parts: &request::Parts,
        client: SocketAddr,
        body: RequestBody,
        remembered: Option<&Key>,
    ) -> Reply {
        let request = match upstream_request(route, parts, client, body) {
            Ok(request) => request,
            Err(err) => {
                let response = text_reply(
                    route.coalesce.outcome_header.as_ref(),
                    Outcome::Pass,
                    err.status(),
                    "request target cannot be forwarded\n".into(),
                );
                return Reply::pass(response);
            }
        };
        let response = match send_upstream(&self.stats, route, request).await {
            Ok(response) => {
                let (mut head, body) = response.into_parts();
                hygiene::clean_response_headers(&mut head.headers, Version::HTTP_11);
                if let Some(key) = remembered {
                    if sharing::judge_response(&route.coalesce, head.status, &head.headers)
                        .shareable()
                    {
                        self.pass_memory.forget(key);
                    }
                }
                let mut response =
                    Response::from_parts(head, body.map_err(BoxError::from).boxed_unsync());
                set_outcome(
                    &mut response,
                    route.coalesce.outcome_header.as_ref(),
                    Outcome::Pass,
                );
                response
            }
            Err(err) => {
                tracing::warn!(route = %route.name, error = %err, "upstream request failed");
                error_reply(route.coalesce.outcome_header.as_ref(), Outcome::Pass, &err)
            }
        };
        Reply::pass(response)
    }
}

/// What a refresh of `stale` produced that should be stored: the renewed stale response after
/// a 304, or the new response after a 200 (read whole, up to `max_replay_body`). `None` keeps
/// the stale one.
async fn revalidate(
    route: &Route,
    stale: &StoredResponse,
    request_headers: &HeaderMap,
    response: Result<Response<UpstreamBody>, FetchError>,
) -> Option<(StatusCode, HeaderMap, Bytes, cache::Freshness)> {
    let policy = route.cache_policy.as_ref()?;
    let mut response = response.ok()?;
    hygiene::clean_response_headers(response.headers_mut(), Version::HTTP_11);
    let has_authorization = request_headers.contains_key(header::AUTHORIZATION);
    if response.status() == StatusCode::NOT_MODIFIED {
        let (headers, freshness) =
            stale.renewed_by(response.headers(), policy, has_authorization)?;
        return Some((stale.status, headers, stale.body.clone(), freshness));
    }
    let sharing = sharing::judge_response(&route.coalesce, response.status(), response.headers());
    if !sharing.shareable() {
        return None;
    }
    let freshness = cache::freshness(
        policy,
        response.status(),
        response.headers(),
        has_authorization,
    )?;
    let (head, body) = response.into_parts();
    let limit = usize::try_from(route.coalesce.max_replay_body).unwrap_or(usize::MAX);
    let body = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some((head.status, head.headers, body, freshness))
}

/// Whether a request asks for the plain resource, so that the cache may answer it: no Range
/// and no conditional headers (those go through flights keyed by their values).
fn cacheable_request(parts: &request::Parts) -> bool {
    !sharing::RANGE_AND_CONDITIONAL
        .iter()
        .any(|name| parts.headers.contains_key(name))
}

/// A response served from the cache, with its current `Age` (HEAD gets the head only).
fn cached(
    entry: &StoredResponse,
    parts: &request::Parts,
    route: &Route,
    outcome: Outcome,
) -> Reply {
    let body = if parts.method == Method::HEAD {
        Bytes::new()
    } else {
        entry.body.clone()
    };
    let mut response = Response::new(Full::new(body).map_err(BoxError::from).boxed_unsync());
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    response
        .headers_mut()
        .insert(header::AGE, entry.age_header(std::time::Instant::now()));
    set_outcome(
        &mut response,
        route.coalesce.outcome_header.as_ref(),
        outcome,
    );
    Reply {
        response,
        outcome,
        flight: None,
    }
}

/// The request to send upstream for a client's request on `route`.
fn upstream_request(
    route: &Route,
    parts: &request::Parts,
    client: SocketAddr,
    body: RequestBody,
) -> Result<Request<RequestBody>, FetchError> {
    let (uri, mut headers) = hygiene::upstream_request(route, parts, client)
        .map_err(|err| FetchError::BadRequest(err.to_string()))?;
    // hyper's HTTP/1 client sends a GET or HEAD whose body has no known length as if it had
    // none ("set the headers explicitly" if it must have one): name the chunked framing, or
    // the body a client sent would be dropped. HTTP/2 frames a body by itself.
    if !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !headers.contains_key(header::CONTENT_LENGTH)
        && !route.upstream.config.http2
    {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
}

/// Counts a follower in `followers_waiting` until its flight's head arrives or it gives up.
struct Waiting<'a>(&'a Stats);

impl<'a> Waiting<'a> {
    fn new(stats: &'a Stats) -> Waiting<'a> {
        stats.metrics.followers_waiting.inc();
        Waiting(stats)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.metrics.followers_waiting.dec();
    }
}

/// Sends a request upstream for `route`, recording the upstream metrics up to the response
/// head: its status class (or `error`), how long the head took, and why it failed.
fn send_upstream(
    stats: &Arc<Stats>,
    route: &Arc<Route>,
    request: Request<RequestBody>,
) -> impl Future<Output = Result<Response<UpstreamBody>, FetchError>> + Send + 'static {
    let started = Instant::now();
    let response = route.upstream.send(request);
    let stats = stats.clone();
    let route = route.clone();
    async move {
        let response = response.await;
        let metrics = &stats.metrics;
        route
            .metrics
            .upstream_duration
            .observe(started.elapsed().as_secs_f64());
        match &response {
            Ok(response) => route.metrics.upstream_response(Some(response.status())),
            Err(err) => {
                route.metrics.upstream_response(None);
                metrics.upstream_error(&route.name, err.kind());
                stats.record_upstream_error();
            }
        }
        response
    }
}

fn empty_request_body() -> RequestBody {
    Empty::<Bytes>::new().map_err(BoxError::from).boxed()
}

fn set_outcome<B>(response: &mut Response<B>, header: Option<&HeaderName>, outcome: Outcome) {
    if let Some(name) = header {
        response
            .headers_mut()
            .insert(name.clone(), outcome.header_value());
    }
}

fn error_reply(
    header: Option<&HeaderName>,
    outcome: Outcome,
    err: &FetchError,
) -> Response<ProxyBody> {
    let message = match err.status() {
        StatusCode::GATEWAY_TIMEOUT => "upstream timed out\n",
        _ => "upstream request failed\n",
    };
    text_reply(header, outcome, err.status(), message.into())
}

fn text_reply(
    header: Option<&HeaderName>,
    outcome: Outcome,
    status: StatusCode,
    message: Bytes,
) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(message).map_err(BoxError::from).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    set_outcome(&mut response, header, outcome);
    response
}
