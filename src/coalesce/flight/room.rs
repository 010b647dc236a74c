//! Room in a flight's buffer: the fetch's side of backpressure. Before it publishes a chunk,
//! the fetch waits until the chunk fits in the flight's own `max_flight_buffer` and in the
//! process's `max_buffered_bytes` (`coalesce::budget`), or its readers have read everything;
//! readers that free nothing for `client_stall_timeout` meanwhile are cut off.

use super::{Flight, FlightState};

impl FlightState {
    /// Records whether the fetch waits for room, and counts it in the budget's waiting
    /// fetches. Returns true if it has just started waiting.
    pub(super) fn set_fetch_waiting(&mut self, waiting: bool) -> bool {
        let was = std::mem::replace(&mut self.fetch_waiting, waiting);
        match (was, waiting) {
            (false, true) => self.budget.fetch_waits(true),
            (true, false) => self.budget.fetch_waits(false),
            _ => {}
        }
        !was && waiting
    }

    /// Whether a chunk of `incoming` bytes may be published now: it fits in the flight's own
    /// `max_flight_buffer` and in the process's budget, or the flight holds nothing unread
    /// (its readers keep up, so they always get their next chunk).
    fn has_room(&self, incoming: u64, limit: u64) -> bool {
        self.buffered == 0 || (self.buffered + incoming <= limit && self.budget.has_room(incoming))
    }

    /// Cuts off the readers furthest behind: they read nothing for `client_stall_timeout`
    /// while the buffer was full and everyone else waited. Returns how many.
    pub(super) fn cut_slowest(&mut self) -> usize {
        let laggards = self.readers.remove_slowest();
        self.cut_off += laggards;
        self.trim();
        laggards
    }
}

impl Flight {
    /// The flight's own limit, `max_flight_buffer`.
    fn budget(&self) -> u64 {
        self.scope.policy.max_flight_buffer
    }

    /// Gets the flight ready for a chunk of `incoming` bytes, before it is published. If the
    /// chunk takes the body past `max_replay_body`, the flight closes to joiners first (and
    /// returns true), so that from then on it keeps only what readers have not read. Then it
    /// waits until the chunk fits in `max_flight_buffer` (readers caught up, left or were cut
    /// off), so that the flight never holds more than its budget. Whenever
    /// `client_stall_timeout` passes with nobody freeing anything, the readers furthest behind
    /// are cut off: everyone else is waiting on them. A chunk larger than the whole budget
    /// waits only for the buffer to empty.
    pub(in crate::coalesce) async fn make_room(&self, incoming: u64) -> bool {
        let budget = self.budget();
        let closed = {
            let mut state = self.lock();
            // Past `max_replay_body`, or the process's budget spent: late joiners would need
            // every chunk kept from the first.
            let closes = state.open
                && (state.body_bytes + incoming > self.scope.policy.max_replay_body
                    || !state.budget.has_room(incoming));
            if closes {
                state.open = false;
                state.trim();
            }
            // Nearly always: room already. Then no registration with `drained` at all.
            if state.has_room(incoming, budget) {
                state.set_fetch_waiting(false);
                return closes;
            }
            closes
        };
        let stall = self.scope.policy.client_stall_timeout;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let mut state = self.lock();
                if state.has_room(incoming, budget) || state.readers.is_empty() {
                    state.set_fetch_waiting(false);
                    return closed;
                }
                // Followers waiting for the trailers stop waiting when the buffer is full.
                let now_waiting = state.set_fetch_waiting(true);
                let wakers = now_waiting.then(|| state.take_wakers());
                drop(state);
                if let Some(wakers) = wakers {
                    self.wake(wakers);
                }
            }
            if tokio::time::timeout(stall, drained).await.is_err() {
                let mut state = self.lock();
                let cut = state.cut_slowest();
                let stopped = state.cancel_if_abandoned();
                drop(state);
                let cancelled = stopped.is_some();
                drop(stopped);
                if cut > 0 || cancelled {
                    tracing::debug!(
                        flight = self.id,
                        cut,
                        "cut off readers that held a full flight for client_stall_timeout"
                    );
                    let wakers = self.lock().take_wakers();
                    self.wake(wakers);
                }
            }
        }
    }
}
