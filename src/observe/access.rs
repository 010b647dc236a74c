//! One record per request, written when its response body ends: the access log line and the
//! per-request metrics (bytes sent, duration, outcome).
//!
//! The response body is wrapped in an [`ObservedBody`] that counts the bytes that reach hyper
//! and notices the end, an abort, or a client that went away (the body is dropped early). This
//! module decides nothing about the request; it only writes down what happened to it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::observe::metrics::RouteMetrics;
use crate::observe::outcome::Outcome;

/// What is known about a request when its response head is ready.
#[derive(Debug)]
pub struct RequestRecord {
    pub started: Instant,
    /// The response's Content-Length, when the access log is on (and not for HEAD).
    pub length: Option<u64>,
    pub method: Method,
    /// The path without the query, set only when the access log is on.
    pub path: Option<String>,
    pub route: Arc<RouteMetrics>,
    pub status: StatusCode,
    pub outcome: Outcome,
    /// The flight that served it, which ties followers' lines to their leader's.
    pub flight: Option<u64>,
}

/// A response body that records its request when it ends: any body the proxy sends.
pub struct ObservedBody<B: Body> {
    inner: B,
    record: Option<RequestRecord>,
    bytes: u64,
    access_log: bool,
}

impl<B: Body> ObservedBody<B> {
    pub fn new(inner: B, record: RequestRecord, access_log: bool) -> ObservedBody<B> {
        ObservedBody {
            inner,
            record: Some(record),
            bytes: 0,
            access_log,
        }
    }

    fn finish(&mut self, complete: bool) {
        let Some(record) = self.record.take() else {
            return;
        };
        let elapsed = record.started.elapsed();
        record
            .route
            .request_done(record.outcome, self.bytes, elapsed.as_secs_f64());
        if self.access_log {
            tracing::info!(
                target: "coalesce_proxy::access",
                method = %record.method,
                route = %record.route.route,
                path = record.path.as_deref().unwrap_or(""),
                status = record.status.as_u16(),
                bytes = self.bytes,
                duration_ms = (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0,
                outcome = record.outcome.as_str(),
                flight = record.flight,
                complete,
                "access"
            );
        }
    }
}

impl<B: Body> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away, unless there was nothing more to
        // send. hyper drops a body once Content-Length bytes are written, never polling it
        // to its end, so those count as complete too.
        let length = self.record.as_ref().and_then(|r| r.length);
        let complete = self.inner.is_end_stream() || length == Some(self.bytes);
        self.finish(complete);
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for ObservedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Ready(None) => self.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
