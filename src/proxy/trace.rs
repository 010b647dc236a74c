//! A request's spans (`observe::trace`), when `[tracing]` is on and the request is sampled:
//! its server span, ended when its response head is ready; the upstream fetch it leads (a
//! child span, whose context goes upstream in `traceparent` and is kept on the flight so that
//! followers link to it, ended by the flight); a pass-through's upstream request (a child span
//! ended at its head). Nothing is made for a request that is not traced.

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;

use super::reply::Reply;
use crate::coalesce::{FetchTrace, Flight};
use crate::observe::outcome::Outcome;
use crate::observe::stats::Stats;
use crate::observe::trace::{Attribute, FinishedSpan, Kind, SpanContext, TRACEPARENT};

/// A traced request's own span, open until its response head is ready. Boxed wherever it
/// waits with its request: an untraced request's future carries one pointer for it.
pub(super) struct ServerSpan {
    pub context: SpanContext,
    parent: Option<[u8; 8]>,
    start: SystemTime,
    method: http::Method,
    path: String,
    /// The route's name, once routed.
    pub route: Option<Arc<str>>,
}

impl ServerSpan {
    /// The span for a request with these parts, if tracing is on and it is sampled.
    pub fn start(stats: &Stats, parts: &http::request::Parts) -> Option<Box<ServerSpan>> {
        let (context, parent) = stats.tracer.get()?.start_server(&parts.headers)?;
        Some(Box::new(ServerSpan {
            context,
            parent,
            start: SystemTime::now(),
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            route: None,
        }))
    }

    /// Ends it with what `reply` says: the outcome, the status, and for a flight's client its
    /// flight (a follower's span links to the flight's fetch).
    pub fn finish(self, stats: &Stats, reply: &Reply) {
        let Some(tracer) = stats.tracer.get() else {
            return;
        };
        let status = reply.response.status();
        let mut attributes = vec![
            (
                "http.request.method",
                Attribute::Text(self.method.to_string()),
            ),
            ("url.path", Attribute::Text(self.path)),
            (
                "http.response.status_code",
                Attribute::Int(i64::from(status.as_u16())),
            ),
            (
                "coalesce.role",
                Attribute::Text(reply.outcome.as_str().to_owned()),
            ),
        ];
        if let Some(route) = self.route {
            attributes.push(("coalesce.route", Attribute::Text(route.to_string())));
        }
        let mut links = Vec::new();
        if let Some(flight) = &reply.flight {
            attributes.push(("coalesce.flight", Attribute::Int(flight.id as i64)));
            // The fetch's leader is its parent; everyone else waited on it (the fetch's span
            // has the key and the fan-out).
            if reply.outcome != Outcome::Leader {
                links.extend(flight.fetch_span.as_deref().copied());
            }
        }
        tracer.finish(FinishedSpan {
            context: self.context,
            parent: self.parent,
            name: "request",
            kind: Kind::Server,
            start: self.start,
            end: SystemTime::now(),
            attributes,
            links,
            error: status.is_server_error(),
        });
    }
}

/// The span of the fetch `flight` makes for a traced leader: kept on the flight (followers
/// link to it, the flight ends it), its context written into the upstream request.
pub(super) fn fetch_span(leader: Option<&SpanContext>, flight: &Flight, upstream: &mut HeaderMap) {
    let Some(leader) = leader else {
        return;
    };
    let context = leader.child();
    let trace = FetchTrace {
        context,
        parent: leader.span_id,
        start: SystemTime::now(),
    };
    if flight.trace.set(trace).is_ok() {
        upstream.insert(&TRACEPARENT, context.traceparent());
    }
}

/// A traced pass-through's upstream request: a child span, written into its headers, and
/// the function that ends it at the response head.
pub(super) fn pass_span(
    stats: &Arc<Stats>,
    request: Option<&SpanContext>,
    upstream: &mut HeaderMap,
) -> Option<impl FnOnce(Option<http::StatusCode>)> {
    let request = *request?;
    let context = request.child();
    upstream.insert(&TRACEPARENT, context.traceparent());
    let (stats, start) = (stats.clone(), SystemTime::now());
    Some(move |status: Option<http::StatusCode>| {
        let Some(tracer) = stats.tracer.get() else {
            return;
        };
        let attributes = status
            .map(|s| {
                (
                    "http.response.status_code",
                    Attribute::Int(i64::from(s.as_u16())),
                )
            })
            .into_iter()
            .collect();
        tracer.finish(FinishedSpan {
            context,
            parent: Some(request.span_id),
            name: "upstream request",
            kind: Kind::Client,
            start,
            end: SystemTime::now(),
            attributes,
            links: Vec::new(),
            error: status.is_none_or(|s| s.is_server_error()),
        });
    })
}
