//! Phase 7, log: every request is counted once, when its response head is ready, and
//! recorded (access log line, per-route metrics) when its body ends, completely or not.

use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, Request, Response};

use super::reply::Reply;
use super::ProxyBody;
use crate::observe::access::{ObservedBody, RequestRecord};
use crate::observe::metrics::RouteMetrics;
use crate::observe::stats::Stats;

/// What the log phase keeps of a request from its arrival.
pub(super) struct Entry {
    started: Instant,
    method: Method,
    /// The path without the query, kept only for the access log.
    path: Option<String>,
    access_log: bool,
}

impl Entry {
    pub(super) fn begin<B>(request: &Request<B>, started: Instant, access_log: bool) -> Entry {
        Entry {
            started,
            method: request.method().clone(),
            path: access_log.then(|| request.uri().path().to_owned()),
            access_log,
        }
    }

    /// Counts the request and wraps its body so that it is recorded when it ends.
    pub(super) fn finish(
        self,
        stats: &Stats,
        route: Arc<RouteMetrics>,
        reply: Reply,
    ) -> Response<ObservedBody<ProxyBody>> {
        stats.record_request(reply.outcome);
        let (head, body) = reply.response.into_parts();
        // hyper stops reading a body once it has written Content-Length bytes, without
        // polling it to its end: the record compares the bytes sent with this instead.
        let length = (self.access_log && self.method != Method::HEAD)
            .then(|| head.headers.get(header::CONTENT_LENGTH))
            .flatten()
            .and_then(|value| value.to_str().ok()?.parse().ok());
        let record = RequestRecord {
            started: self.started,
            length,
            method: self.method,
            path: self.path,
            route,
            status: head.status,
            outcome: reply.outcome,
            flight: reply.flight,
        };
        Response::from_parts(head, ObservedBody::new(body, record, self.access_log))
    }
}
