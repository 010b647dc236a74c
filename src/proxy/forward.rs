//! Going upstream: the request a client's request becomes (the upstream-request phase), the
//! send with its admission and upstream metrics (the admit phase), and the requests that go
//! upstream on their own (pass-through, and Upgrade tunnels) with both bodies streamed.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use super::context::RequestContext;
use super::hygiene;
use super::reply::{error_reply, set_outcome, text_reply, Reply};
use super::response;
use super::Proxy;
use crate::observe::outcome::Outcome;
use crate::observe::stats::Stats;
use crate::route::Route;
use crate::sharing::Key;
use crate::upstream::admission::Priority;
use crate::upstream::{BoxError, FetchError, RequestBody, UpstreamBody};

impl Proxy {
    /// Forwards an `Upgrade` request (WebSocket above all). When the upstream switches
    /// protocols, the client gets the 101 and both upgraded connections are joined, bytes
    /// untouched, until either side closes. Never coalesced; counted as `pass`.
    pub(super) async fn tunnel(&self, request: &mut RequestContext, body: Incoming) -> Reply {
        let route = request.route.clone();
        let client_side = request
            .parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>();
        let protocol = request.parts.headers.get(header::UPGRADE).cloned();
        let body = body.map_err(BoxError::from).boxed();
        let mut upstream = match upstream_request(request, body) {
            Ok(request) => request,
            Err(err) => {
                return Reply::pass(error_reply(
                    route.coalesce.outcome_header.as_ref(),
                    Outcome::Pass,
                    err.status(),
                ))
            }
        };
        // The one place hop-by-hop Upgrade and Connection must cross the proxy.
        if let Some(protocol) = protocol {
            upstream.headers_mut().insert(header::UPGRADE, protocol);
            upstream
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let mut response = match send_upstream(&self.stats, &route, upstream, Priority::Pass).await
        {
            Ok(response) => response,
            Err(err) => {
                return Reply::pass(error_reply(
                    route.coalesce.outcome_header.as_ref(),
                    Outcome::Pass,
                    err.status(),
                ))
            }
        };
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upstream_side = switching.then(|| hyper::upgrade::on(&mut response));
        let upgraded_to = response.headers().get(header::UPGRADE).cloned();
        let (mut head, body) = response.into_parts();
        response::clean_head(&mut head.headers, head.version);
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

    /// What a pass-through body's failure after its head does before the client sees it: it
    /// is counted and logged as a flight's is (`upstream_errors_total{kind}`, the failure log).
    fn mid_body_failure(&self, route: &Arc<Route>) -> impl FnMut(FetchError) -> BoxError {
        let (route, stats) = (route.clone(), self.stats.clone());
        move |err| {
            stats.record_upstream_body_error(&route.name, err.kind());
            let what = "upstream body failed mid-response";
            crate::observe::failure_log::upstream_failed(&route.name, err.kind(), &err, what);
            BoxError::from(err)
        }
    }

    /// Forwards a request on its own, streaming both bodies. `remembered` is the key of a
    /// request sent here by the pass memory: a shareable answer ends that memory.
    pub(super) async fn pass(
        &self,
        request: &RequestContext,
        body: RequestBody,
        remembered: Option<&Key>,
    ) -> Reply {
        let route = &request.route;
        let mut upstream = match upstream_request(request, body) {
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
        let traced = request.trace.as_deref();
        let span = super::trace::pass_span(&self.stats, traced, upstream.headers_mut());
        let sent = send_upstream(&self.stats, route, upstream, Priority::Pass).await;
        if let Some(end) = span {
            end(sent.as_ref().ok().map(|response| response.status()));
        }
        let response = match sent {
            Ok(response) => {
                let response = response::clean(response);
                if let Some(key) = remembered {
                    if response::judge(route, &response).shareable() {
                        self.coordinator.forget_pass(key);
                    }
                }
                let failed = self.mid_body_failure(route);
                let mut response = response.map(|body| body.map_err(failed).boxed_unsync());
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
                error_reply(
                    route.coalesce.outcome_header.as_ref(),
                    Outcome::Pass,
                    err.status(),
                )
            }
        };
        Reply::pass(response)
    }
}

/// The upstream-request phase: the request to send upstream for `request`, with `body`.
pub(super) fn upstream_request(
    request: &RequestContext,
    body: RequestBody,
) -> Result<Request<RequestBody>, FetchError> {
    let (uri, mut headers) = hygiene::upstream_request(request)
        .map_err(|err| FetchError::BadRequest(err.to_string()))?;
    // hyper's HTTP/1 client sends a GET or HEAD whose body has no known length as if it had
    // none ("set the headers explicitly" if it must have one): name the chunked framing, or
    // the body a client sent would be dropped. HTTP/2 frames a body by itself.
    if !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !headers.contains_key(header::CONTENT_LENGTH)
        && !request.route.upstream.config.http2
    {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    let mut upstream = Request::new(body);
    *upstream.method_mut() = request.parts.method.clone();
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = headers;
    Ok(upstream)
}

/// The admit phase and the send: a slot under the upstream's concurrency limit as
/// `priority`, then the request, recording the upstream metrics up to the response head (its
/// status class or why it failed, and how long the head took from when it could go).
pub(super) async fn send_upstream(
    stats: &Stats,
    route: &Arc<Route>,
    request: Request<RequestBody>,
    priority: Priority,
) -> Result<Response<UpstreamBody>, FetchError> {
    let upstream = &route.upstream;
    let admitted = upstream.admit(priority).await;
    let sent = Instant::now();
    let response = match admitted {
        Ok(permit) => upstream.send(request, permit).await,
        Err(refused) => Err(refused),
    };
    let result = response
        .as_ref()
        .map(|r| r.status())
        .map_err(FetchError::kind);
    stats.record_upstream_response(&route.metrics, sent, result);
    response
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
