//! The upstream response body: `idle_timeout` between chunks, and the admission slot held
//! until the body ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::admission;
use super::error::{error_chain, FetchError};
use super::pool::Checkin;

/// An upstream response body that fails with [`FetchError::IdleTimeout`] when the upstream
/// sends nothing for `idle_timeout` while we wait for it, so a stalled upstream cannot hold
/// its clients forever. Time during which nobody asked for the next frame (a slow client, a
/// full flight buffer) does not count: that is not the upstream's fault.
pub struct UpstreamBody {
    inner: Incoming,
    /// Armed when a wait for the upstream begins. Created on the first wait only: a small
    /// body that arrives with its head never needs a timer. Boxed so the body is `Unpin`.
    idle: Option<Pin<Box<Sleep>>>,
    idle_timeout: Duration,
    /// True while the last poll returned `Pending`, i.e. the timer measures a real wait.
    waiting: bool,
    /// The request's slot under the upstream's concurrency limit, held until the body ends
    /// or is dropped.
    permit: Option<admission::Permit>,
    /// Its HTTP/1 connection, given back to the pool when the body ends (or dropped, which
    /// closes it, when the body is dropped before its end).
    checkin: Option<Checkin>,
}

impl UpstreamBody {
    pub(super) fn new(
        inner: Incoming,
        idle_timeout: Duration,
        permit: Option<admission::Permit>,
        checkin: Option<Checkin>,
    ) -> UpstreamBody {
        UpstreamBody {
            inner,
            idle: None,
            idle_timeout,
            waiting: false,
            permit,
            checkin,
        }
    }

    /// The response is complete: its slot is free and its connection goes back to the pool,
    /// whoever still holds this body.
    fn ended(&mut self) {
        self.permit = None;
        if let Some(checkin) = self.checkin.take() {
            checkin.give_back();
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body nobody polled to its end may still be complete: an empty one (HEAD, 204,
        // 304), or a Content-Length body whose last byte was read.
        if self.inner.is_end_stream() {
            self.ended();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = FetchError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FetchError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let deadline = Instant::now() + this.idle_timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.waiting {
                    // A new wait starts now; the time since the last frame was ours (a slow
                    // client, a full flight), not the upstream's.
                    idle.as_mut().reset(deadline);
                    this.waiting = true;
                }
                ready!(idle.as_mut().poll(cx));
                Poll::Ready(Some(Err(FetchError::IdleTimeout(this.idle_timeout))))
            }
            ready => {
                this.waiting = false;
                if matches!(ready, Poll::Ready(None)) {
                    this.ended();
                }
                ready.map(|frame| {
                    frame.map(|frame| frame.map_err(|err| FetchError::Body(error_chain(&err))))
                })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
