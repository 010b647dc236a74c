//! The response body each client of a flight reads, at its own pace, from the shared log.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};

use super::{FlightError, Subscription};

/// One client's view of a flight's body. It starts at chunk 0 whenever the client joined, so a
/// late follower still gets the whole body, and it waits (without polling) for chunks that
/// have not arrived yet. When the fetch fails mid-body it yields the error, which makes the
/// server abort the client's connection instead of ending the response cleanly.
///
/// It owns the client's [`Subscription`], so dropping the body (the client went away) leaves
/// the flight.
pub struct FanoutBody {
    /// `Some` while reading; `None` after the end or an error, which also leaves the flight.
    subscription: Option<Subscription>,
    /// The fetch's error, held back for one poll: see [`Body::poll_frame`].
    held_error: Option<FlightError>,
    /// The body is empty, known with the head ([`super::SharedHead::empty`]).
    empty: bool,
}

impl FanoutBody {
    pub fn new(subscription: Subscription, empty: bool) -> FanoutBody {
        FanoutBody {
            subscription: Some(subscription),
            held_error: None,
            empty,
        }
    }
}

impl Body for FanoutBody {
    type Data = Bytes;
    type Error = FlightError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FlightError>>> {
        if let Some(err) = self.held_error.take() {
            return Poll::Ready(Some(Err(err)));
        }
        let Some(subscription) = self.subscription.as_mut() else {
            return Poll::Ready(None);
        };
        let mut finished = false;
        match std::task::ready!(subscription.poll_next_chunk(cx, &mut finished)) {
            Some(Ok(frame)) => {
                if finished {
                    // The body's last frame: leave the flight now, and say so at once
                    // (`is_end_stream`), so the server ends the response with this frame.
                    self.subscription = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                self.subscription = None;
                Poll::Ready(None)
            }
            // hyper's HTTP/1 server flushes what it has buffered (the head, the chunks so far)
            // only when the body is pending; an error straight after them would close the
            // connection with them unsent, and the client would see no head at all instead
            // of the bytes so far. So the error waits one turn, and hyper flushes first.
            Some(Err(err)) => {
                self.subscription = None;
                self.held_error = Some(err);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.empty || (self.subscription.is_none() && self.held_error.is_none())
    }
}
