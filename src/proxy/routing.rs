//! Phase 1, route: which route a request takes (or the proxy's own answer when none), and
//! then which way it goes: shared (look up, coalesce), forwarded alone, or tunnelled.

use http::header::HeaderName;
use http::{request, Method, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

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
use crate::upstream::BoxError;

/// The parts of the configuration a reload replaces: routes, upstreams, policies.
#[derive(Debug)]
pub(super) struct Routing {
    pub(super) routes: RouteTable,
    /// The outcome header for answers given without a route (404), from `[coalesce]`.
    default_outcome_header: Option<HeaderName>,
    pub(super) access_log: bool,
}

impl Routing {
    pub(super) fn new(config: &Config, metrics: &Metrics, previous: Option<&Routing>) -> Routing {
        Routing {
            routes: RouteTable::new(config, metrics, previous.map(|p| &p.routes)),
            default_outcome_header: config.coalesce.outcome_header.clone(),
            access_log: config.log.access,
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
        let authority = hygiene::requested_authority(&parts);
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

impl Proxy {
    /// A routed request's way through the rest: a tunnel for `Upgrade`; the shared path
    /// (look up, coalesce) when the route lets it share; otherwise forwarded on its own, after
    /// which an unsafe method invalidates what it may have changed (RFC 9111 §4.4).
    pub(super) async fn serve(
        &self,
        routing: &Routing,
        request: &mut RequestContext,
        body: Incoming,
    ) -> Reply {
        if hygiene::is_upgrade(&request.parts) {
            // Boxed: rare, and large inline.
            return Box::pin(self.tunnel(request, body)).await;
        }
        let policy = &request.route.coalesce;
        let reply = if sharing::request_may_share(policy, &request.parts, body.is_end_stream()) {
            // Boxed: only a shared request with a body (a POST on a route with `body_max`)
            // reads one, and inline this state would grow every request's.
            let read = match body.is_end_stream() {
                true => Ok(()),
                false => Box::pin(read_shared_body(request, body))
                    .await
                    .map(|whole| request.body = whole),
            };
            match read {
                Ok(()) => self.share(request).await,
                Err(reply) => reply,
            }
        } else {
            let body = body.map_err(BoxError::from).boxed();
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
            reply
        };
        add_cache_status_header(request, reply)
    }
}

/// The body of a request that may share, read whole when the route lets bodies share
/// (`body_max`), so that it can be part of the key. A client that does not send the body it
/// announced gets a 400.
async fn read_shared_body(request: &RequestContext, body: Incoming) -> Result<bytes::Bytes, Reply> {
    let policy = &request.route.coalesce;
    let limit = sharing::shareable_body_length(policy, &request.parts).unwrap_or(0);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(Reply::pass(text_reply(
            policy.outcome_header.as_ref(),
            Outcome::Pass,
            StatusCode::BAD_REQUEST,
            "the request body could not be read whole\n".into(),
        ))),
    }
}
