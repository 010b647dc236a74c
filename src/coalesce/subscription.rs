//! One client's place in a flight: reading the body at its own cursor, and leaving (which
//! cancels the fetch when the last client leaves before it ends). What the flight's head
//! means for the client is `status`'s business.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;

use super::coordinator::Coordinator;
use super::flight::{Flight, FlightError};

/// A client's place in a flight, and how far it has read. Dropping it leaves the flight; when
/// the last client leaves before the fetch ends, the fetch is cancelled. The leader holds one
/// too, so the fetch belongs to whoever is still waiting, not to the client that started it.
#[derive(Debug)]
pub struct Subscription {
    flight: Arc<Flight>,
    coordinator: Arc<Coordinator>,
    reader: u64,
    /// Index of the next body chunk this client reads.
    cursor: usize,
}

impl Subscription {
    pub(super) fn leader(coordinator: Arc<Coordinator>, flight: Arc<Flight>) -> Subscription {
        Subscription {
            flight,
            coordinator,
            reader: Flight::LEADER,
            cursor: 0,
        }
    }

    pub(super) fn follower(
        coordinator: &Arc<Coordinator>,
        flight: &Arc<Flight>,
        reader: u64,
    ) -> Subscription {
        Subscription {
            flight: flight.clone(),
            coordinator: coordinator.clone(),
            reader,
            cursor: 0,
        }
    }

    pub fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    pub(super) fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    pub fn is_leader(&self) -> bool {
        self.reader == Flight::LEADER
    }

    /// Its reader id in the flight.
    pub(super) fn reader(&self) -> u64 {
        self.reader
    }

    /// The next body frame for this client (a chunk, or the trailers after the last one):
    /// `None` at a clean end, an error if the fetch failed or this client fell too far behind.
    /// `finished` is set when the frame is the body's last (kept by the caller: the
    /// subscription waits inside every follower's request future, where a field more costs
    /// each waiting client).
    pub fn poll_next_chunk(
        &mut self,
        cx: &mut Context<'_>,
        finished: &mut bool,
    ) -> Poll<Option<Result<Frame<Bytes>, FlightError>>> {
        self.flight
            .poll_chunk(self.reader, &mut self.cursor, finished, cx)
    }

    /// The leader's own copy of the head's fields, the first time it asks; `None` for a
    /// follower, which copies the shared head's.
    pub fn take_leaders_fields(&self) -> Option<http::HeaderMap> {
        match self.is_leader() {
            true => self.flight.take_leaders_fields(),
            false => None,
        }
    }

    /// [`Subscription::poll_next_chunk`] as a future.
    pub async fn next_chunk(&mut self) -> Option<Result<Frame<Bytes>, FlightError>> {
        std::future::poll_fn(|cx| self.poll_next_chunk(cx, &mut false)).await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.flight.leave(self.reader, self.cursor) {
            self.coordinator.forget(&self.flight);
            self.coordinator.stats.record_flight_cancelled();
            tracing::debug!(
                flight = self.flight.id,
                route = %self.flight.scope.route,
                key = %format_args!("{:016x}", self.flight.key.digest()),
                "flight cancelled: every client left"
            );
        }
    }
}
