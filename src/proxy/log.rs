//! Phase 7, log: every request is counted once, when its response head is ready (in the
//! totals and its route's counts alike), and recorded (access log line, bytes and duration)
//! when its body ends, completely or not; a
//! request whose client went away before its head is counted and recorded as `cancelled`.

use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, Request, Response, StatusCode};

use super::reply::Reply;
use super::ProxyBody;
use crate::observe::access::{ObservedBody, RequestRecord};
use crate::observe::metrics::RouteMetrics;
use crate::observe::outcome::Outcome;
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
        count(stats, &route, reply.outcome);
        let (head, body) = reply.response.into_parts();
        // hyper stops reading a body once it has written Content-Length bytes, without
        // polling it to its end: the record compares the bytes sent with this instead.
        let length = (self.access_log && self.method != Method::HEAD)
            .then(|| head.headers.get(header::CONTENT_LENGTH))
            .flatten()
            .and_then(|value| value.to_str().ok()?.parse().ok());
        let access_log = self.access_log;
        let flight = reply.flight.as_ref().map(|flight| flight.id);
        let record = self.record(route, head.status, reply.outcome, flight, length);
        Response::from_parts(head, ObservedBody::new(body, record, access_log))
    }

    fn record(
        self,
        route: Arc<RouteMetrics>,
        status: StatusCode,
        outcome: Outcome,
        flight: Option<u64>,
        length: Option<u64>,
    ) -> RequestRecord {
        RequestRecord {
            started: self.started,
            length,
            method: self.method,
            path: self.path,
            route,
            status,
            outcome,
            flight,
        }
    }
}

/// Counts a request when it is answered, in the totals and in its route's counts at once:
/// counted at the end of its body instead, a route's counts lag the totals for as long as
/// bodies stream.
fn count(stats: &Stats, route: &RouteMetrics, outcome: Outcome) {
    stats.record_request(outcome);
    route.request_answered(outcome);
}

/// A request not answered yet. Dropped so, its future was dropped: the client went away
/// (closed its connection, or reset its stream, as a gRPC client does at its deadline)
/// before the response head was ready, and it is recorded as `cancelled`, nginx's 499.
/// It borrows its [`Pending`] rather than owning it, so that the request's future, which
/// makes the pending entry before it starts and this inside, holds the entry once.
pub(super) struct Unanswered<'a> {
    pending: &'a mut Pending,
    stats: &'a Stats,
}

/// A request's log entry and its route's metrics, until the answer (or [`Unanswered`]'s
/// drop) takes them.
pub(super) struct Pending(Option<(Entry, Arc<RouteMetrics>)>);

impl Pending {
    pub(super) fn new(entry: Entry, route: Arc<RouteMetrics>) -> Pending {
        Pending(Some((entry, route)))
    }
}

impl<'a> Unanswered<'a> {
    pub(super) fn new(pending: &'a mut Pending, stats: &'a Stats) -> Unanswered<'a> {
        Unanswered { pending, stats }
    }

    pub(super) fn answer(self, reply: Reply) -> Response<ObservedBody<ProxyBody>> {
        let (entry, route) = self.pending.0.take().expect("answered once");
        entry.finish(self.stats, route, reply)
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let Some((entry, route)) = self.pending.0.take() else {
            return;
        };
        count(self.stats, &route, Outcome::Cancelled);
        let access_log = entry.access_log;
        let record = entry.record(route, StatusCode::OK, Outcome::Cancelled, None, None);
        record.cancelled(access_log);
    }
}
