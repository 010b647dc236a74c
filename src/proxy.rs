//! The request path: route, classify, then share a flight or pass through.
//!
//! [`Proxy::handle`] is the whole life of one client request. It finds the route, decides
//! whether the request may share a flight (method in the route's policy, no request body,
//! coalescing on), and then either joins the singleflight table or forwards the request on its
//! own with both bodies streamed. Every response carries the outcome header and is counted in
//! the stats exactly once.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;

use crate::coalesce::{FanoutBody, Group, Key, Role};
use crate::config::Config;
use crate::hygiene;
use crate::routes::{Route, RouteTable};
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
            stats,
        }
    }

    /// The singleflight table, for inspection (tests, the stats reporter).
    pub fn group(&self) -> &Arc<Group> {
        &self.group
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
        let (uri, headers) = match hygiene::upstream_request(&route, &parts, client) {
            Ok(target) => target,
            Err(_) => {
                return self.own_reply(
                    route.coalesce.outcome_header.as_ref(),
                    StatusCode::BAD_REQUEST,
                    "request target cannot be forwarded\n",
                )
            }
        };
        if may_share(&route, &parts, &body) {
            self.share(&route, &parts, uri, headers).await
        } else {
            self.pass(&route, parts, body, uri, headers).await
        }
    }

    /// Joins (or starts) the flight for this request's key and answers from it.
    async fn share(
        &self,
        route: &Arc<Route>,
        parts: &request::Parts,
        uri: Uri,
        headers: HeaderMap,
    ) -> Response<ProxyBody> {
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let key = Key::new(route, &parts.method, path_and_query, &parts.headers);
        let (role, subscription) = self.group.join(key, route, || {
            let mut request = Request::new(empty_request_body());
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = uri;
            *request.headers_mut() = headers;
            let response = route.upstream.send(request);
            async move {
                let mut response = response.await?;
                hygiene::clean_response_headers(response.headers_mut(), Version::HTTP_11);
                Ok(response)
            }
        });
        let outcome = match role {
            Role::Leader => Outcome::Leader,
            Role::Follower => Outcome::Follower,
        };
        self.stats.record_request(outcome);
        let flight = subscription.flight().clone();
        match flight.head().await {
            Ok(head) => {
                let mut response = Response::new(
                    FanoutBody::new(subscription)
                        .map_err(BoxError::from)
                        .boxed_unsync(),
                );
                *response.status_mut() = head.status;
                *response.headers_mut() = head.headers.clone();
                set_outcome(
                    &mut response,
                    route.coalesce.outcome_header.as_ref(),
                    outcome,
                );
                response
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
                error_reply(route.coalesce.outcome_header.as_ref(), outcome, &err)
            }
        }
    }

    /// Forwards a request that may not share, streaming both bodies.
    async fn pass(
        &self,
        route: &Arc<Route>,
        parts: request::Parts,
        body: Incoming,
        uri: Uri,
        headers: HeaderMap,
    ) -> Response<ProxyBody> {
        self.stats.record_request(Outcome::Pass);
        let mut request = Request::new(body.map_err(BoxError::from).boxed());
        *request.method_mut() = parts.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        match route.upstream.send(request).await {
            Ok(response) => {
                let (mut head, body) = response.into_parts();
                hygiene::clean_response_headers(&mut head.headers, Version::HTTP_11);
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

/// A request may share a flight when its route coalesces its method and it has no body.
fn may_share(route: &Route, parts: &request::Parts, body: &Incoming) -> bool {
    let policy = &route.coalesce;
    let declares_body = parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0");
    policy.enabled
        && policy.methods.contains(&parts.method)
        && !declares_body
        && body.is_end_stream()
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
