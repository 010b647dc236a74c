//! The readers' side of a flight: waiting for the head, and for the chunk at a reader's
//! cursor. A reader that finds nothing registers its waker in the same critical section as
//! its look (so no publish can slip in between); the leader of a fetch that runs inline polls
//! the fetch itself first (`driver`), so that a GET nobody joins is served by its own task.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::driver::Fetch;
use super::{Flight, FlightError, FlightState, SharedHead};
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

    /// The chunk at reader `reader`'s cursor, moving the cursor on: `None` at a clean end, an
    /// error if the fetch failed first or the reader was cut off.
    pub(in crate::coalesce) fn poll_chunk(
        self: &Arc<Self>,
        reader: u64,
        cursor: &mut usize,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, FlightError>>> {
        let stall = self.scope.policy.client_stall_timeout;
        let mut freed = false;
        let polled = self.poll_until(reader, cx, |state| {
            if !state.readers.contains(&(*cursor, reader)) {
                return Some(Some(Err(FlightError::StalledClient(stall))));
            }
            if let Some(chunk) = state.chunks.get(*cursor - state.first_chunk) {
                let chunk = chunk.clone();
                let before = state.buffered;
                state.readers.remove(&(*cursor, reader));
                *cursor += 1;
                state.readers.insert((*cursor, reader));
                state.trim();
                freed = state.buffered < before && state.fetch_waiting;
                return Some(Some(Ok(chunk)));
            }
            match &state.end {
                None => None,
                Some(Ok(())) => Some(None),
                Some(Err(err)) => Some(Some(Err(err.clone()))),
            }
        });
        if freed {
            self.drained.notify_one();
        }
        polled
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
