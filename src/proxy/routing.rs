//! Phase 1, route: which route a request takes (or the proxy's own answer when none), and
//! then which way it goes: shared (look up, coalesce), forwarded alone, or tunnelled.

use std::future::Future;

use http::header::HeaderName;
use http::{request, Method, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::authority;
use super::context::{Connection, RequestContext};
use super::hygiene;
use super::reply::{add_cache_status_header, text_reply, Reply};
use super::Proxy;
use crate::cache;
use crate::config::Config;
use crate::observe::metrics::Metrics;
use crate::observe::outcome::Outcome;
use crate::route::RouteTable;
use crate::sharing;
use crate::upstream::{BoxError, RequestBody};

/// The parts of the configuration a reload replaces: routes, upstreams, policies.
#[derive(Debug)]
pub(super) struct Routing {
    pub(super) routes: RouteTable,
    /// The outcome header for answers given without a route (404), from `[coalesce]`.
    default_outcome_header: Option<HeaderName>,
    pub(super) access_log: bool,
    /// `[server] max_header_bytes`.
    max_header_bytes: usize,
}

impl Routing {
    pub(super) fn new(config: &Config, metrics: &Metrics, previous: Option<&Routing>) -> Routing {
        Routing {
            routes: RouteTable::new(config, metrics, previous.map(|p| &p.routes)),
            default_outcome_header: config.coalesce.outcome_header.clone(),
            access_log: config.log.access,
            max_header_bytes: config.server.max_header_bytes,
        }
    }

    /// The route phase: the request's route by host and path, as the context every later
    /// phase reads; or the proxy's own answer (405 for CONNECT, 404 without a route).
    pub(super) fn route(
        &self,
        parts: request::Parts,
        connection: Connection,
    ) -> Result<RequestContext, Box<Reply>> {
        let header = self.default_outcome_header.as_ref();
        if parts.method == Method::CONNECT {
            let message = "CONNECT is not supported\n";
            let status = StatusCode::METHOD_NOT_ALLOWED;
            let reply = text_reply(header, Outcome::Pass, status, message.into());
            return Err(Box::new(Reply::pass(reply)));
        }
        if head_size(&parts) > self.max_header_bytes {
            let message = "request header fields too large\n";
            let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            let reply = text_reply(header, Outcome::Pass, status, message.into());
            return Err(Box::new(Reply::pass(reply)));
        }
        let authority = match authority::requested_authority(&parts) {
            Ok(authority) => authority,
            Err(message) => {
                let status = StatusCode::BAD_REQUEST;
                let reply = text_reply(header, Outcome::Pass, status, message.into());
                return Err(Box::new(Reply::pass(reply)));
            }
        };
        let host = authority.as_ref().and_then(|a| a.to_str().ok());
        let Some(route) = self.routes.find(host, parts.uri.path()).cloned() else {
            let message = "no route for this request\n";
            let status = StatusCode::NOT_FOUND;
            let reply = text_reply(header, Outcome::Pass, status, message.into());
            return Err(Box::new(Reply::pass(reply)));
        };
        Ok(RequestContext::new(connection, route, parts, authority))
    }
}

/// A request head's size as nginx's `large_client_header_buffers` sees it, the same on both
/// protocols: the target and every field line (name, value, and the ": " and CRLF around
/// them). hyper's own limits are far larger (about 400 KB for HTTP/1.1; HTTP/2's is raised to
/// match in `server::connection`), so that this one decides, with a 431 either way.
fn head_size(parts: &request::Parts) -> usize {
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len()) + fields
}

impl Proxy {
    /// A routed request's way through the rest: a tunnel for `Upgrade`; the shared path
    /// (look up, coalesce) when the route lets it share; otherwise forwarded on its own, after
    /// which an unsafe method invalidates what it may have changed (RFC 9111 §4.4).
    // Not an `async fn`: its arguments would take their room twice in the future (as
    // arguments and as the locals they are moved into), and a waiting client pays for each.
    #[allow(clippy::manual_async_fn)] // the argument's room, above
    pub(super) fn serve<'a>(
        &'a self,
        routing: &'a Routing,
        request: &'a mut RequestContext,
        body: Incoming,
    ) -> impl Future<Output = Reply> + 'a {
        async move {
            if hygiene::is_upgrade(&request.parts) {
                // Boxed: rare, and large inline.
                return Box::pin(self.tunnel(request, body)).await;
            }
            let policy = &request.route.coalesce;
            let body = if sharing::request_may_share(policy, &request.parts, body.is_end_stream()) {
                // Boxed: only a shared request with a body (a POST on a route with `body_max`)
                // reads one, and inline this state would grow every request's.
                let read = match body.is_end_stream() {
                    true => Ok(SharedBody::Whole(bytes::Bytes::new())),
                    false => Box::pin(read_shared_body(request, body)).await,
                };
                // The share happens after this match, not inside it: `read` (184 bytes) would
                // stay in the future for as long as the request waits.
                match read {
                    Ok(SharedBody::Whole(whole)) => {
                        request.body = whole;
                        None
                    }
                    Ok(SharedBody::Longer(body)) => Some(body),
                    Err(reply) => return add_cache_status_header(request, reply),
                }
            } else {
                Some(body.map_err(BoxError::from).boxed())
            };
            let Some(body) = body else {
                let reply = self.share(request).await;
                return add_cache_status_header(request, reply);
            };
            // Boxed: the upstream send's state (a request held through admission and hyper's
            // send) would otherwise sit in every request's future, and hyper keeps room for one
            // in every connection; a shared request never needs it inline (its fetch is a
            // flight's, boxed there).
            let reply = Box::pin(self.pass(request, body, None)).await;
            let response = &reply.response;
            cache::after_unsafe_request(
                |host, path| routing.routes.find(host, path)?.cache.as_deref(),
                &request.parts,
                response.status(),
                response.headers(),
            );
            add_cache_status_header(request, reply)
        }
    }
}

/// A request body read for sharing: whole, or found longer than the route lets share (or
/// ending in trailers) and then passed through as it came, the bytes read so far first.
enum SharedBody {
    Whole(bytes::Bytes),
    Longer(RequestBody),
}

/// The body of a request that may share, read when the route lets bodies share (`body_max`),
/// so that it can be part of the key: up to its `Content-Length`, or, when it declares none,
/// up to `body_max`, beyond which it passes through with no byte lost. A client that does not
/// send the body it announced gets a 400.
async fn read_shared_body(
    request: &RequestContext,
    mut body: Incoming,
) -> Result<SharedBody, Reply> {
    let policy = &request.route.coalesce;
    let limit = sharing::shareable_body_length(policy, &request.parts).unwrap_or(0);
    let mut chunks: Vec<bytes::Bytes> = Vec::new();
    let mut read = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Reply::pass(text_reply(
                policy.outcome_header.as_ref(),
                Outcome::Pass,
                StatusCode::BAD_REQUEST,
                "the request body could not be read whole\n".into(),
            )));
        };
        match frame.into_data() {
            Ok(data) => {
                read += data.len() as u64;
                chunks.push(data);
                if read > limit {
                    return Ok(SharedBody::Longer(replay(chunks, None, body)));
                }
            }
            // Trailers reach the upstream, and are not in the key: the request goes alone.
            Err(trailers) => return Ok(SharedBody::Longer(replay(chunks, Some(trailers), body))),
        }
    }
    Ok(SharedBody::Whole(match chunks.len() {
        1 => chunks.pop().unwrap_or_default(),
        _ => chunks.concat().into(),
    }))
}

/// A body that gives `read` (and `trailers`) first, then the rest of `body` as it comes.
fn replay(
    read: Vec<bytes::Bytes>,
    trailers: Option<http_body::Frame<bytes::Bytes>>,
    body: Incoming,
) -> RequestBody {
    use futures_util::StreamExt;
    let first = read
        .into_iter()
        .map(http_body::Frame::data)
        .chain(trailers)
        .map(Ok::<_, BoxError>);
    let rest = http_body_util::BodyStream::new(body.map_err(BoxError::from));
    BodyExt::boxed(http_body_util::StreamBody::new(
        futures_util::stream::iter(first).chain(rest),
    ))
}
