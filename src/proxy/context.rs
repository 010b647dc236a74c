//! What a request carries through the phases: the facts of its connection, the route the
//! route phase chose, its head, the authority it was routed by, and (for a shared request
//! with a body) the body read whole. Each phase reads what it needs from here instead of
//! taking a list of arguments.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{request, HeaderMap, HeaderValue, Method};

use crate::observe::trace::SpanContext;
use crate::route::Route;
use crate::sharing::{self, Key, KeyParts};

/// What the server knows of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub peer: SocketAddr,
    /// The client spoke TLS to this proxy (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

/// One request on its way through the phases.
#[derive(Debug)]
pub struct RequestContext {
    pub connection: Connection,
    pub route: Arc<Route>,
    pub parts: request::Parts,
    /// The authority the request was routed by, as the client sent it: the one in its keys
    /// and in `X-Forwarded-Host`.
    pub authority: Option<HeaderValue>,
    /// A shared request's body, read whole (a read-only POST's); empty otherwise.
    pub body: Bytes,
    /// The request's span, when it is traced: its fetch or pass-through is a child of it.
    /// Boxed: every request carries the field, few are traced.
    pub trace: Option<Box<SpanContext>>,
    /// Its `TE` accepts trailers ([`sharing::accepts_trailers`]): found once, for its key,
    /// its upstream request and its response.
    pub accepts_trailers: bool,
}

impl RequestContext {
    pub fn new(
        connection: Connection,
        route: Arc<Route>,
        parts: request::Parts,
        authority: Option<HeaderValue>,
    ) -> RequestContext {
        RequestContext {
            connection,
            route,
            accepts_trailers: sharing::accepts_trailers(&parts.headers),
            parts,
            authority,
            body: Bytes::new(),
            trace: None,
        }
    }

    /// What its keys are made of; `validators` replace its own conditional headers (a
    /// revalidation's).
    fn key_parts<'a>(&'a self, validators: Option<&'a HeaderMap>) -> KeyParts<'a> {
        KeyParts {
            method: &self.parts.method,
            authority: self.authority.as_ref(),
            path_and_query: self
                .parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str()),
            headers: &self.parts.headers,
            trailers: self.accepts_trailers,
            body: &self.body,
            validators,
        }
    }

    /// The key of its flight (sent with `validators` when it revalidates a stored response).
    pub fn flight_key(&self, validators: Option<&HeaderMap>) -> Key {
        self.route.keys.flight_key(&self.key_parts(validators))
    }

    /// The key its stored response is found under.
    pub fn cache_key(&self) -> Key {
        self.route.keys.cache_key(&self.key_parts(None))
    }

    /// The same request as a plain GET of the resource with `headers` (no Range, no
    /// conditions of its own, no body): what a background refresh or a range's whole-resource
    /// fetch sends.
    pub fn as_get(&self, headers: HeaderMap) -> RequestContext {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = Method::GET;
        parts.uri = self.parts.uri.clone();
        parts.version = self.parts.version;
        parts.headers = headers;
        RequestContext {
            connection: self.connection,
            route: self.route.clone(),
            accepts_trailers: sharing::accepts_trailers(&parts.headers),
            parts,
            authority: self.authority.clone(),
            body: Bytes::new(),
            trace: self.trace.clone(),
        }
    }
}
