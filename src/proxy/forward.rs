//! Sending upstream: the request a client's request becomes, the send with its upstream
//! metrics, and the requests that go upstream on their own (pass-through, and Upgrade
//! tunnels) with both bodies streamed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{request, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use super::hygiene;
use super::reply::{error_reply, set_outcome, text_reply, Reply};
use super::Proxy;
use crate::cache;
use crate::coalesce::{sharing, Key};
use crate::observe::outcome::Outcome;
use crate::observe::stats::Stats;
use crate::route::Route;
use crate::upstream::admission::Priority;
use crate::upstream::{BoxError, FetchError, RequestBody, UpstreamBody};

impl Proxy {
    /// Forwards an `Upgrade` request (WebSocket above all). When the upstream switches
    /// protocols, the client gets the 101 and both upgraded connections are joined, bytes
    /// untouched, until either side closes. Never coalesced; counted as `pass`.
    pub(super) async fn tunnel(
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
        let mut response = match send_upstream(&self.stats, route, request, Priority::Pass).await {
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
    pub(super) async fn pass_alone(
        &self,
        route: &Arc<Route>,
        parts: &request::Parts,
        client: SocketAddr,
        key: Option<&Key>,
        body: &Bytes,
    ) -> Reply {
        Box::pin(self.pass(route, parts, client, request_body(body), key)).await
    }

    /// Forwards a request on its own, streaming both bodies. `remembered` is the key of a
    /// request sent here by the pass memory: a shareable answer ends that memory.
    pub(super) async fn pass(
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
        let response = match send_upstream(&self.stats, route, request, Priority::Pass).await {
            Ok(response) => {
                let (mut head, body) = response.into_parts();
                hygiene::clean_response_headers(&mut head.headers, Version::HTTP_11);
                if let Some(key) = remembered {
                    let targeted = cache::as_targeted(route.cache_policy.as_ref(), &head.headers);
                    if sharing::judge_response(&route.coalesce, head.status, &targeted).shareable()
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
                crate::observe::failure_log::upstream_failed(
                    &route.name,
                    err.kind(),
                    &err,
                    "upstream request failed",
                );
                error_reply(route.coalesce.outcome_header.as_ref(), Outcome::Pass, &err)
            }
        };
        Reply::pass(response)
    }
}

/// The request to send upstream for a client's request on `route`.
pub(super) fn upstream_request(
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

/// Sends a request upstream for `route`, recording the upstream metrics up to the response
/// head: its status class (or `error`), how long the head took, and why it failed.
pub(super) fn send_upstream(
    stats: &Arc<Stats>,
    route: &Arc<Route>,
    request: Request<RequestBody>,
    priority: Priority,
) -> impl Future<Output = Result<Response<UpstreamBody>, FetchError>> + Send + 'static {
    let started = Instant::now();
    let response = route.upstream.send(request, priority);
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

/// A request body already read whole (a shared POST's), or none.
pub(super) fn request_body(body: &Bytes) -> RequestBody {
    if body.is_empty() {
        return empty_request_body();
    }
    http_body_util::Full::new(body.clone())
        .map_err(BoxError::from)
        .boxed()
}

pub(super) fn empty_request_body() -> RequestBody {
    Empty::<Bytes>::new().map_err(BoxError::from).boxed()
}
