//! The request path: route, classify, then share a flight or pass through.
//!
//! [`Proxy::handle`] is the whole life of one client request. It finds the route, decides
//! whether the request may share a flight (method in the route's policy, no request body,
//! coalescing on), and then either joins the singleflight table or forwards the request on its
//! own with both bodies streamed. Every response carries the outcome header and is counted in
//! the stats exactly once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;

use crate::coalesce::{FanoutBody, Fetched, Group, Key, PassMemory, Role};
use crate::config::Config;
use crate::hygiene;
use crate::routes::{Route, RouteTable};
use crate::sharing;
use crate::stats::{Outcome, Stats};
use crate::upstream::{BoxError, FetchError, RequestBody, Upstream};

/// Every response body the proxy sends: a flight's fan-out, an upstream stream, or a short
/// message of its own.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Everything needed to serve requests under one configuration.
#[derive(Debug)]
pub struct Proxy {
    routes: RouteTable,
    /// The outcome header for answers given without a route (404), from `[coalesce]`.
    default_outcome_header: Option<HeaderName>,
    group: Arc<Group>,
    pass_memory: Arc<PassMemory>,
    stats: Arc<Stats>,
}

impl Proxy {
    pub fn new(config: &Config, stats: Arc<Stats>) -> Proxy {
        let upstreams: std::collections::HashMap<&str, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, upstream)| (name.as_str(), Arc::new(Upstream::new(upstream.clone()))))
            .collect();
        let routes = RouteTable::new(config, |name| upstreams[name].clone());
        Proxy {
            routes,
            default_outcome_header: config.coalesce.outcome_header.clone(),
            group: Arc::new(Group::new(stats.clone())),
            pass_memory: Arc::new(PassMemory::default()),
            stats,
        }
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

    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ProxyBody> {
        let (parts, body) = request.into_parts();
        if parts.method == Method::CONNECT {
            return self.own_reply(
                self.default_outcome_header.as_ref(),
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported\n",
            );
        }
        let host = hygiene::requested_host(&parts);
        let Some(route) = self.routes.find(host, parts.uri.path()).cloned() else {
            return self.own_reply(
                self.default_outcome_header.as_ref(),
                StatusCode::NOT_FOUND,
                "no route for this request\n",
            );
        };
        let target = match hygiene::upstream_request(&route, &parts, client) {
            Ok(target) => target,
            Err(_) => {
                return self.own_reply(
                    route.coalesce.outcome_header.as_ref(),
                    StatusCode::BAD_REQUEST,
                    "request target cannot be forwarded\n",
                )
            }
        };
        if sharing::request_may_share(&route.coalesce, &parts, body.is_end_stream()) {
            self.share(&route, &parts, target).await
        } else {
            let body = body.map_err(BoxError::from).boxed();
            self.pass(&route, &parts, target, body, None).await
        }
    }

    /// Joins (or starts) the flight for this request's key and answers from it, unless the
    /// request has to go upstream on its own after all: its key is remembered as not
    /// shareable, it waited longer than `max_wait`, or the response turned out not to be for
    /// it (not shareable, a `Vary` mismatch, an error under `share_errors = false`).
    async fn share(
        &self,
        route: &Arc<Route>,
        parts: &request::Parts,
        target: (Uri, HeaderMap),
    ) -> Response<ProxyBody> {
        let policy = &route.coalesce;
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut key = Key::new(route, &parts.method, path_and_query, &parts.headers);
        if self.pass_memory.should_pass(&key) {
            return self
                .pass(route, parts, target, empty_request_body(), Some(&key))
                .await;
        }
        loop {
            let (role, subscription) = self.group.join(key.clone(), route, &parts.headers, || {
                self.fetch(route, parts, target.clone(), key.clone())
            });
            let flight = subscription.flight().clone();
            // Without `max_wait`, a follower waits as long as the flight may take, which the
            // upstream's `response_timeout` bounds; a timer of the same length would only race
            // the flight's own 504.
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
                            return self
                                .pass(route, parts, target, empty_request_body(), None)
                                .await;
                        }
                    }
                }
            };
            let outcome = match role {
                Role::Leader => Outcome::Leader,
                Role::Follower => Outcome::Follower,
            };
            let head = match head {
                Ok(head) => head,
                Err(_) if role == Role::Follower && !policy.share_errors => {
                    drop(subscription);
                    return self
                        .pass(route, parts, target, empty_request_body(), None)
                        .await;
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
                    self.stats.record_request(outcome);
                    return error_reply(policy.outcome_header.as_ref(), outcome, &err);
                }
            };
            if role == Role::Follower {
                if !head.sharing.shareable() {
                    // Released at once, all together: nobody queues behind a response that
                    // only its leader may have.
                    drop(subscription);
                    return self
                        .pass(route, parts, target, empty_request_body(), None)
                        .await;
                }
                if !sharing::vary_matches(
                    &head.sharing.vary,
                    &parts.headers,
                    &flight.leader_headers,
                ) {
                    drop(subscription);
                    if key.is_variant() {
                        return self
                            .pass(route, parts, target, empty_request_body(), None)
                            .await;
                    }
                    // Share with the clients that sent the same values, in a flight of their own.
                    key = key.variant(&head.sharing.vary, &parts.headers);
                    continue;
                }
            }
            self.stats.record_request(outcome);
            let mut response = Response::new(
                FanoutBody::new(subscription)
                    .map_err(BoxError::from)
                    .boxed_unsync(),
            );
            *response.status_mut() = head.status;
            *response.headers_mut() = head.headers.clone();
            set_outcome(&mut response, policy.outcome_header.as_ref(), outcome);
            return response;
        }
    }

    /// The upstream fetch of a flight: the leader's request with an empty body, judged for
    /// sharing when its head arrives.
    fn fetch(
        &self,
        route: &Arc<Route>,
        parts: &request::Parts,
        (uri, headers): (Uri, HeaderMap),
        key: Key,
    ) -> impl Future<Output = Result<Fetched, FetchError>> + Send + 'static {
        let mut request = Request::new(empty_request_body());
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let response = route.upstream.send(request);
        let route = route.clone();
        let pass_memory = self.pass_memory.clone();
        async move {
            let mut response = response.await?;
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
            Ok(Fetched { response, sharing })
        }
    }

    /// Forwards a request on its own, streaming both bodies. `remembered` is the key of a
    /// request sent here by the pass memory: a shareable answer ends that memory.
    async fn pass(
        &self,
        route: &Arc<Route>,
        parts: &request::Parts,
        (uri, headers): (Uri, HeaderMap),
        body: RequestBody,
        remembered: Option<&Key>,
    ) -> Response<ProxyBody> {
        self.stats.record_request(Outcome::Pass);
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        match route.upstream.send(request).await {
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
                self.stats.record_upstream_error();
                tracing::warn!(route = %route.name, error = %err, "upstream request failed");
                error_reply(route.coalesce.outcome_header.as_ref(), Outcome::Pass, &err)
            }
        }
    }

    /// An answer from the proxy itself, counted as `pass`.
    fn own_reply(
        &self,
        outcome_header: Option<&HeaderName>,
        status: StatusCode,
        message: &'static str,
    ) -> Response<ProxyBody> {
        self.stats.record_request(Outcome::Pass);
        text_reply(outcome_header, Outcome::Pass, status, message.into())
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
