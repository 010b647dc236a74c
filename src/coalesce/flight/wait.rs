//! The readers' side of a flight: waiting for the head, and for the chunk at a reader's
//! cursor. A reader that finds nothing registers its waker in the same critical section as
//! its look (so no publish can slip in between); the leader of a fetch that runs inline polls
//! the fetch itself first (`driver`), so that a GET nobody joins is served by its own task.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;

use super::driver::Fetch;
use super::{Flight, FlightError, FlightState, SharedHead};
use crate::sharing::grpc_error;
use crate::upstream::FetchError;

impl Flight {
    /// The response head, once it arrives, or the error that ended the fetch before it.
    pub(in crate::coalesce) fn poll_head(
        self: &Arc<Self>,
        reader: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Arc<SharedHead>, FlightError>> {
        self.poll_until(reader, cx, |state| match (&state.head, &state.end) {
            (Some(head), _) => Some(Ok(head.clone())),
            (None, Some(Err(err))) => Some(Err(err.clone())),
            (None, Some(Ok(()))) => Some(Err(FetchError::Body("no response head".into()).into())),
            (None, None) => None,
        })
    }

    /// The chunk at reader `reader`'s cursor, moving the cursor on; after the last chunk of a
    /// body that ended with trailers, the trailers (one more step of the cursor); `None` at a
    /// clean end, an error if the fetch failed first or the reader was cut off. `finished` is
    /// set when the frame returned is the body's last (the fetch has ended cleanly and the
    /// reader has everything), so that the client's body can say it has ended with that frame:
    /// hyper then ends an HTTP/2 stream on it rather than with an empty frame of its own, and
    /// the reader leaves the flight without one more look.
    pub(in crate::coalesce) fn poll_chunk(
        self: &Arc<Self>,
        reader: u64,
        cursor: &mut usize,
        finished: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FlightError>>> {
        let stall = self.scope.policy.client_stall_timeout;
        let mut freed = false;
        let polled = self.poll_until(reader, cx, |state| {
            if !state.readers.contains(&(*cursor, reader)) {
                return Some(Some(Err(FlightError::StalledClient(stall))));
            }
            if let Some(chunk) = state.chunks.get(*cursor - state.first_chunk) {
                let chunk = chunk.clone();
                let before = state.buffered;
                state.readers.advance(*cursor, reader);
                *cursor += 1;
                state.trim();
                freed = state.buffered < before && state.fetch_waiting;
                *finished = matches!(state.end, Some(Ok(())))
                    && state.trailers.is_none()
                    && *cursor == state.first_chunk + state.chunks.len();
                return Some(Some(Ok(Frame::data(chunk))));
            }
            let after_last = *cursor == state.first_chunk + state.chunks.len();
            match (&state.end, &state.trailers) {
                (None, _) => None,
                (Some(Ok(())), Some(trailers)) if after_last => {
                    let trailers = trailers.clone();
                    state.readers.advance(*cursor, reader);
                    *cursor += 1;
                    *finished = true;
                    Some(Some(Ok(Frame::trailers(trailers))))
                }
                (Some(Ok(())), _) => Some(None),
                (Some(Err(err)), _) => Some(Some(Err(err.clone()))),
            }
        });
        if freed {
            self.drained.notify_one();
        }
        polled
    }

    /// For a follower of a response whose status comes in its trailers (gRPC, under
    /// `share_errors = false`): whether the trailers carry an error, once the flight ends.
    /// `false` when it failed (the body then ends in that error), and as soon as the flight
    /// can no longer keep the whole body for a reader that has read none of it (past
    /// `max_replay_body`, or its buffer full): the response is then taken as it is.
    pub(in crate::coalesce) fn poll_trailers_error(
        self: &Arc<Self>,
        reader: u64,
        cx: &mut Context<'_>,
    ) -> Poll<bool> {
        self.poll_until(reader, cx, |state| match &state.end {
            Some(Ok(())) => Some(state.trailers.as_ref().is_some_and(grpc_error)),
            Some(Err(_)) => Some(false),
            None if !state.open || state.fetch_waiting => Some(false),
            None => None,
        })
    }

    /// Runs `look` on the state; when it finds nothing, the leader polls an inline fetch and
    /// looks again; then the reader's waker is registered, in the same critical section as the
    /// last look.
    fn poll_until<T>(
        self: &Arc<Self>,
        reader: u64,
        cx: &mut Context<'_>,
        mut look: impl FnMut(&mut FlightState) -> Option<T>,
    ) -> Poll<T> {
        let leader = reader == Flight::LEADER;
        {
            let mut state = self.lock();
            if let Some(found) = look(&mut state) {
                return Poll::Ready(found);
            }
            if !(leader && matches!(state.fetch, Fetch::Inline { .. })) {
                register(&mut state, leader, cx);
                return Poll::Pending;
            }
        }
        self.poll_inline_fetch(cx);
        let mut state = self.lock();
        if let Some(found) = look(&mut state) {
            return Poll::Ready(found);
        }
        register(&mut state, leader, cx);
        Poll::Pending
    }
}

/// Registers a reader's waker for the next publish.
fn register(state: &mut FlightState, leader: bool, cx: &Context<'_>) {
    if !leader {
        state.waiting.push(cx.waker().clone());
        return;
    }
    match &state.leader_waker {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => state.leader_waker = Some(cx.waker().clone()),
    }
}
