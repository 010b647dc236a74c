//! What the proxy answers: the reply of one request with its outcome, the outcome and
//! `Cache-Status` headers, and the short messages the proxy writes itself (404, 405, 502,
//! 503, 504).

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::context::RequestContext;
use super::ProxyBody;
use crate::cache::status::{CacheStatus, Forward, CACHE_STATUS};
use crate::cache::{self, StoredResponse};
use crate::observe::outcome::Outcome;
use crate::observe::trace::SpanContext;
use crate::sharing;
use crate::upstream::BoxError;

/// What serving a request produced, before it is counted and observed.
pub struct Reply {
    pub response: Response<ProxyBody>,
    pub outcome: Outcome,
    /// The flight that served it, if any.
    pub flight: Option<ServedBy>,
    /// How the cache layer handled it, when that is decided along the way; otherwise
    /// [`add_cache_status_header`] works it out at the end.
    pub cache_status: Option<CacheStatus>,
}

/// The flight a reply came from: its id (in the access log), and its fetch's span when traced
/// (a follower's span links to it; boxed, since few replies are traced and every reply moves
/// through the layers by value).
#[derive(Debug, Clone)]
pub struct ServedBy {
    pub id: u64,
    pub fetch_span: Option<Box<SpanContext>>,
}

impl ServedBy {
    pub fn of(flight: &crate::coalesce::Flight) -> ServedBy {
        ServedBy {
            id: flight.id,
            fetch_span: flight.trace.get().map(|trace| Box::new(trace.context)),
        }
    }
}

impl Reply {
    pub fn pass(response: Response<ProxyBody>) -> Reply {
        Reply {
            response,
            outcome: Outcome::Pass,
            flight: None,
            cache_status: None,
        }
    }

    /// Records how the cache layer handled it.
    pub fn with_cache_status(mut self, status: CacheStatus) -> Reply {
        self.cache_status = Some(status);
        self
    }
}

/// Sets the outcome header, when the route has one (not on a gRPC trailers-only response:
/// [`sharing::grpc_trailers_only`]).
pub fn set_outcome<B>(response: &mut Response<B>, header: Option<&HeaderName>, outcome: Outcome) {
    if let Some(name) = header {
        if sharing::grpc_trailers_only(response.headers()) {
            return;
        }
        response
            .headers_mut()
            .insert(name.clone(), outcome.header_value());
    }
}

/// Adds `Date` (RFC 9110 §6.6.1) to a response for an HTTP/2 client when the upstream sent
/// none. hyper's HTTP/2 server is told not to (`server::connection`): it would add one to a
/// gRPC trailers-only response too, whose head the client takes as the call's trailing
/// metadata, which must arrive as the server sent it.
pub fn add_date<B>(response: &mut Response<B>) {
    let headers = response.headers();
    if headers.contains_key(header::DATE) || sharing::grpc_trailers_only(headers) {
        return;
    }
    response.headers_mut().insert(header::DATE, date_now());
}

/// Declares gRPC's status trailers on a gRPC response to an HTTP/1.1 client that asked for
/// trailers (`TE: trailers`) when the upstream declared none: hyper's HTTP/1.1 server sends
/// only the trailer fields a `Trailer` header names (RFC 9110 §6.6.2 asks senders to declare
/// them), and gRPC servers, speaking HTTP/2, never do. The call's outcome is in these three;
/// trailing metadata of other names is not known before it arrives, and stays behind.
pub fn declare_grpc_trailers<B>(response: &mut Response<B>) {
    let headers = response.headers();
    if !sharing::is_grpc(headers)
        || sharing::grpc_trailers_only(headers)
        || headers.contains_key(header::TRAILER)
    {
        return;
    }
    response.headers_mut().insert(
        header::TRAILER,
        HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"),
    );
}

thread_local! {
    /// The date made last on this thread, and its second: made once a second, not per
    /// response.
    static DATE: std::cell::RefCell<(u64, HeaderValue)> =
        const { std::cell::RefCell::new((0, HeaderValue::from_static(""))) };
}

fn date_now() -> HeaderValue {
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(made, value)| {
        if *made != second {
            let text = httpdate::fmt_http_date(now);
            *value = HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
            *made = second;
        }
        value.clone()
    })
}

/// The answer to a fetch that failed before the head with `status`: 502, 504 for a timeout,
/// 503 at the upstream's concurrency limit.
pub fn error_reply(
    header: Option<&HeaderName>,
    outcome: Outcome,
    status: StatusCode,
) -> Response<ProxyBody> {
    let message = match status {
        StatusCode::GATEWAY_TIMEOUT => "upstream timed out\n",
        StatusCode::SERVICE_UNAVAILABLE => "upstream is at its concurrency limit; try again soon\n",
        _ => "upstream request failed\n",
    };
    let mut response = text_reply(header, outcome, status, message.into());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// A short plain-text answer from the proxy itself.
pub fn text_reply(
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

/// A response served from the cache, with its current `Age` (HEAD gets the head only).
pub fn cached(entry: &StoredResponse, request: &RequestContext, outcome: Outcome) -> Reply {
    let (parts, route) = (&request.parts, &request.route);
    let response = cache::response(entry, &parts.method, &parts.headers);
    let mut response = response.map(|body| Full::new(body).map_err(BoxError::from).boxed_unsync());
    set_outcome(
        &mut response,
        route.coalesce.outcome_header.as_ref(),
        outcome,
    );
    let ttl = entry.ttl(std::time::Instant::now());
    Reply {
        response,
        outcome,
        flight: None,
        cache_status: Some(CacheStatus::Hit { ttl }),
    }
}

/// Adds `Cache-Status` (RFC 9211) to a reply on a route with a cache or with coalescing:
/// what the layers recorded, or, for a request that went upstream on its own, why.
pub fn add_cache_status_header(request: &RequestContext, mut reply: Reply) -> Reply {
    let (parts, route) = (&request.parts, &request.route);
    if route.cache.is_none() && !route.coalesce.enabled {
        return reply;
    }
    if sharing::grpc_trailers_only(reply.response.headers()) {
        return reply;
    }
    let status = reply.cache_status.unwrap_or_else(|| {
        let reason = if route.cache.is_none() {
            Forward::Bypass
        } else if parts.method != Method::GET && parts.method != Method::HEAD {
            Forward::Method
        } else {
            Forward::Request
        };
        CacheStatus::Forward {
            reason,
            status: Some(reply.response.status()),
            stored: false,
            collapsed: false,
            ttl: None,
        }
    });
    let name = route
        .cache_policy()
        .map_or("coalesce-proxy", |policy| policy.status_name.as_str());
    reply
        .response
        .headers_mut()
        .insert(CACHE_STATUS.clone(), status.header_value(name));
    reply
}
