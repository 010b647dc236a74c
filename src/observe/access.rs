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
        if let Some(record) = self.record.take() {
            record.write(self.bytes, complete, self.access_log);
        }
    }
}

impl RequestRecord {
    /// Records a request whose client went away before its response head: nginx's 499, with
    /// the outcome `cancelled`.
    pub fn cancelled(mut self, access_log: bool) {
        self.status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
        self.outcome = Outcome::Cancelled;
        self.write(0, false, access_log);
    }

    /// The per-request metrics and the access log line, once the response has ended.
    fn write(self, bytes: u64, complete: bool, access_log: bool) {
        let elapsed = self.started.elapsed();
        self.route
            .request_done(self.outcome, bytes, elapsed.as_secs_f64());
        if access_log {
            tracing::info!(
                target: "coalesce_proxy::access",
                method = %self.method,
                route = %self.route.route,
                path = self.path.as_deref().unwrap_or(""),
                status = self.status.as_u16(),
                bytes,
                duration_ms = (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0,
                outcome = self.outcome.as_str(),
                flight = self.flight,
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
