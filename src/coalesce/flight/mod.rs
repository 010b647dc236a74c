//! One in-flight upstream fetch and the response it is producing, shared by its clients.
//!
//! This file holds the flight's state and its writer's side (publishing the head, chunks and
//! end; making room); `wait` holds the readers' side (waiting for the head or the next
//! chunk), and `driver` who runs the fetch: the leader, inline, while nobody else reads, or
//! a task of its own once someone joins.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::Notify;

mod cursors;
mod driver;
mod room;
mod wait;

use cursors::Cursors;
use driver::Fetch;
pub(super) use driver::FetchFuture;

use super::budget::BufferBudget;
use crate::config::CoalescePolicy;
use crate::sharing::{Key, Sharing};
use crate::upstream::FetchError;

/// Why a flight, or one client's read of it, did not deliver a whole response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlightError {
    /// The fetch failed; every client of the flight gets this.
    #[error(transparent)]
    Upstream(#[from] FetchError),
    /// Every client of the flight went away, so its fetch was cancelled.
    #[error("every client of the flight went away")]
    Cancelled,
    /// Not an upstream failure: this one client read nothing for `client_stall_timeout` while
    /// its unread bytes filled the flight's `max_flight_buffer` and every other client waited.
    #[error("client read nothing for {0:?} while its flight's buffer was full")]
    StalledClient(std::time::Duration),
}

impl FlightError {
    /// The status a client gets when this happens before the response head.
    pub fn status(&self) -> http::StatusCode {
        match self {
            FlightError::Upstream(err) => err.status(),
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FlightError::Upstream(err) => err.kind(),
            FlightError::Cancelled => "cancelled",
            FlightError::StalledClient(_) => "stalled_client",
        }
    }
}

/// The route a flight runs under: its name (for logs and the status page) and its policy
/// (the flight's limits).
#[derive(Debug, Clone)]
pub struct Scope {
    pub route: Arc<str>,
    pub policy: Arc<CoalescePolicy>,
}

/// The response head as every client of a flight receives it (already cleaned by `hygiene`),
/// with the verdict on who may share it.
#[derive(Debug)]
pub struct SharedHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub sharing: Sharing,
    /// The cache will store the response once it is complete (`Cache-Status: stored`).
    pub stored: bool,
    /// The body is known to be empty with the head (the upstream ended its stream with it):
    /// each client's response then ends with its head too, as a gRPC trailers-only
    /// response must (a head, then an empty last DATA frame, is a malformed call to gRPC).
    pub empty: bool,
}

/// A fetch in progress and the response so far.
///
/// The fetch is the only writer of the head, the chunks and the end; clients only read, each
/// at its own cursor. A reader that finds nothing to read registers its waker in the same
/// critical section as its look, and every publish wakes the registered readers after its
/// change, so no change can slip between a look and a wait (no polling, no lost wake-ups).
///
/// Memory: while the flight is *open* to joiners it keeps every chunk (a late joiner starts
/// at byte 0), which `max_replay_body` bounds. Once closed, it keeps only chunks that some
/// reader has not read yet, and `max_flight_buffer` bounds those: when the buffer is full the
/// fetch stops reading upstream until the slowest reader frees room, and a reader that frees
/// nothing for `client_stall_timeout` is cut off so the others can go on.
#[derive(Debug)]
pub struct Flight {
    /// Ties together the log lines of one flight's leader and followers.
    pub id: u64,
    pub key: Key,
    /// The route it runs under: its name, and the limits and policy of its coalescing.
    pub scope: Scope,
    /// The leader's request headers, against which followers are compared when the response
    /// carries `Vary`.
    pub leader_headers: HeaderMap,
    pub started: Instant,
    /// The upstream fetch's span, when the leader's request is traced: followers link to it.
    pub trace: std::sync::OnceLock<FetchTrace>,
    /// Guarded by a std mutex: it is held only to read or update a few fields, never across
    /// an `.await` and never while the fetch is polled, so it cannot block the runtime for
    /// longer than a queue push.
    state: Mutex<FlightState>,
    /// The fetch waits on this for room in the buffer. A `Notify` of its own, so that every
    /// reader's progress does not wake every other reader.
    drained: Notify,
}

/// A traced flight's fetch span: its context (what goes upstream in `traceparent`), the
/// leader's server span it belongs under, and when it started.
#[derive(Debug, Clone, Copy)]
pub struct FetchTrace {
    pub context: crate::observe::trace::SpanContext,
    pub parent: [u8; 8],
    pub start: std::time::SystemTime,
}

#[derive(Debug)]
struct FlightState {
    /// Set once, by the fetch task, when the upstream head arrives.
    head: Option<Arc<SharedHead>>,
    /// The head's fields as the fetch received them, until the leader takes them for its own
    /// response (`Subscription::take_leaders_fields`); the shared head holds a copy.
    leaders_fields: Option<HeaderMap>,
    /// Body chunks still held. `Bytes` clones are reference counts, so every client shares
    /// these allocations.
    chunks: VecDeque<Bytes>,
    /// Index (in the whole body) of `chunks[0]`; grows as chunks every reader has read are
    /// dropped.
    first_chunk: usize,
    /// Bytes received so far.
    body_bytes: u64,
    /// Bytes in `chunks`, and the most that were ever there at once.
    buffered: u64,
    /// The process-wide budget `buffered` is also counted against.
    budget: Arc<BufferBudget>,
    peak_buffered: u64,
    /// The trailer fields that ended the body, if it had any (gRPC's `grpc-status` is one).
    /// Every reader gets them after its last chunk, as one more step of its cursor.
    trailers: Option<HeaderMap>,
    /// `None` while the fetch runs; then `Ok` (whole body received) or why it failed.
    end: Option<Result<(), FlightError>>,
    /// `(next chunk index, reader id)` of every client still reading, slowest first (a lone
    /// reader inline: `cursors`). A reader missing from here while its subscription lives was
    /// cut off for falling too far behind.
    readers: Cursors,
    next_reader: u64,
    /// How many clients joined after the leader.
    followers: usize,
    /// How many of them the stats line has counted already (`take_unreported_followers`).
    followers_reported: usize,
    /// Readers cut off for lagging.
    cut_off: usize,
    /// New requests may join while this is true.
    open: bool,
    /// Set while the fetch waits for the buffer to drain.
    fetch_waiting: bool,
    /// Who runs the fetch: the leader inline, or a task (`driver`).
    fetch: Fetch,
    /// The leader's waker while it waits, and the followers' (each woken and cleared at the
    /// next publish; `spare` keeps the list's capacity between rounds).
    leader_waker: Option<Waker>,
    waiting: Vec<Waker>,
    spare: Vec<Waker>,
}

impl FlightState {
    /// Drops chunks every reader has read. Only once the flight is closed: until then a late
    /// joiner may still need them.
    fn trim(&mut self) {
        if self.open {
            return;
        }
        let slowest = self.readers.slowest().unwrap_or(usize::MAX);
        while self.first_chunk < slowest {
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            self.first_chunk += 1;
            self.buffered -= chunk.len() as u64;
            self.budget.release(chunk.len() as u64);
        }
    }

    /// Records a cancellation if nobody is left to read a fetch that is still running, and
    /// stops the fetch: aborts its task, or hands back an inline fetch for the caller to drop
    /// once the lock is released (dropping it runs the upstream response's drop code).
    fn cancel_if_abandoned(&mut self) -> Option<Option<FetchFuture>> {
        // A head with an empty body is the whole response: its clients may leave at once,
        // before the fetch publishes the end it has already reached.
        let whole = self.head.as_ref().is_some_and(|head| head.empty);
        if !self.readers.is_empty() || self.end.is_some() || whole {
            return None;
        }
        self.end = Some(Err(FlightError::Cancelled));
        self.open = false;
        Some(self.fetch.stop())
    }

    /// The wakers to wake for a change just made: every waiting follower's, and the leader's
    /// unless it is polling the fetch itself right now (it looks again when that poll
    /// returns).
    fn take_wakers(&mut self) -> Wakers {
        let leader = match self.fetch.is_being_polled() {
            true => None,
            false => self.leader_waker.take(),
        };
        let followers = match self.waiting.is_empty() {
            true => Vec::new(),
            false => std::mem::replace(&mut self.waiting, std::mem::take(&mut self.spare)),
        };
        Wakers { leader, followers }
    }
}

impl Drop for FlightState {
    /// What the flight still held goes back to the process's budget.
    fn drop(&mut self) {
        self.budget.release(self.buffered);
        self.set_fetch_waiting(false);
    }
}

impl Flight {
    pub(super) fn new(
        id: u64,
        key: Key,
        scope: Scope,
        leader_headers: HeaderMap,
        budget: Arc<BufferBudget>,
    ) -> Flight {
        Flight {
            id,
            key,
            scope,
            leader_headers,
            started: Instant::now(),
            trace: std::sync::OnceLock::new(),
            state: Mutex::new(FlightState {
                head: None,
                leaders_fields: None,
                chunks: VecDeque::new(),
                first_chunk: 0,
                body_bytes: 0,
                buffered: 0,
                budget,
                peak_buffered: 0,
                trailers: None,
                end: None,
                readers: Cursors::leader(Flight::LEADER),
                next_reader: 1,
                followers: 0,
                followers_reported: 0,
                cut_off: 0,
                open: true,
                fetch_waiting: false,
                fetch: Fetch::NotStarted { task: false },
                leader_waker: None,
                waiting: Vec::new(),
                spare: Vec::new(),
            }),
            drained: Notify::new(),
        }
    }

    /// The leader's reader id (it is created with the flight).
    pub(super) const LEADER: u64 = 0;

    fn lock(&self) -> MutexGuard<'_, FlightState> {
        // A panic elsewhere must not take every later client of this flight down with it;
        // every update leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn followers(&self) -> usize {
        self.lock().followers
    }

    /// The followers that joined since the previous call, and all of them: the stats line
    /// counts a herd in the interval its requests arrived in, whether or not the flight has
    /// ended by then.
    pub fn take_unreported_followers(&self) -> (usize, usize) {
        let mut state = self.lock();
        let new = state.followers - state.followers_reported;
        state.followers_reported = state.followers;
        (new, state.followers)
    }

    /// The upstream status, once the head has arrived.
    pub fn status(&self) -> Option<StatusCode> {
        self.lock().head.as_ref().map(|head| head.status)
    }

    pub fn body_bytes(&self) -> u64 {
        self.lock().body_bytes
    }

    /// The most body bytes this flight held at once.
    pub fn peak_buffered(&self) -> u64 {
        self.lock().peak_buffered
    }

    /// Readers cut off for falling too far behind.
    pub fn cut_off(&self) -> usize {
        self.lock().cut_off
    }

    /// Adds a client if the flight is open and has room for another follower. Called with
    /// the coordinator's shard locked. Returns the new reader's id. From now on the fetch
    /// must not depend on the leader reading: it moves to a task of its own (`driver`).
    pub(super) fn try_join(&self) -> Option<u64> {
        let mut state = self.lock();
        if !state.open || state.end.is_some() || state.followers >= self.scope.policy.max_followers
        {
            return None;
        }
        let id = state.next_reader;
        state.next_reader += 1;
        state.readers.insert((0, id));
        state.followers += 1;
        state.fetch.needs_task();
        Some(id)
    }

    /// Removes a client. Returns true when it was the last one and the fetch, still running,
    /// has been stopped.
    pub(super) fn leave(&self, id: u64, cursor: usize) -> bool {
        let mut state = self.lock();
        state.readers.remove(&(cursor, id));
        if id == Flight::LEADER {
            state.leaders_fields = None;
        }
        let waiting = state.fetch_waiting;
        let before = state.buffered;
        state.trim();
        let stopped = state.cancel_if_abandoned();
        let freed = state.buffered < before && waiting;
        let wakers = stopped.is_some().then(|| state.take_wakers());
        drop(state);
        if freed {
            self.drained.notify_one();
        }
        if let Some(wakers) = wakers {
            self.wake(wakers);
        }
        // Dropped here, outside the lock: an inline fetch's drop runs the upstream body's.
        stopped.is_some()
    }

    /// Publishes the head, and keeps `fields` (the fields as received, of which the head
    /// holds a copy) for the leader. A head that may not be shared closes the flight to
    /// joiners.
    pub(super) fn publish_head(&self, head: SharedHead, fields: HeaderMap) {
        let mut state = self.lock();
        if !head.sharing.shareable() {
            state.open = false;
        }
        // No chunk before the head: a leader still reading is at cursor 0.
        if state.readers.contains(&(0, Flight::LEADER)) {
            state.leaders_fields = Some(fields);
        }
        state.head = Some(Arc::new(head));
        let wakers = state.take_wakers();
        drop(state);
        self.wake(wakers);
    }

    /// Appends a chunk to the log and wakes the readers. The fetch calls
    /// [`Flight::make_room`] first.
    pub(super) fn publish_chunk(&self, chunk: Bytes) {
        let mut state = self.lock();
        state.body_bytes += chunk.len() as u64;
        state.buffered += chunk.len() as u64;
        state.budget.hold(chunk.len() as u64);
        state.peak_buffered = state.peak_buffered.max(state.buffered);
        state.chunks.push_back(chunk);
        state.trim();
        let wakers = state.take_wakers();
        drop(state);
        self.wake(wakers);
    }

    /// The head's fields as received, for the leader's own response, once.
    pub(super) fn take_leaders_fields(&self) -> Option<HeaderMap> {
        self.lock().leaders_fields.take()
    }

    /// Keeps the trailers that ended the body, for every reader; [`Flight::publish_end`]
    /// follows and wakes them.
    pub(super) fn publish_trailers(&self, trailers: HeaderMap) {
        self.lock().trailers = Some(trailers);
    }

    /// Records how the fetch ended and closes the flight. Returns false if it had already
    /// ended (cancelled).
    pub(super) fn publish_end(&self, end: Result<(), FlightError>) -> bool {
        let mut state = self.lock();
        state.open = false;
        let first = state.end.is_none();
        if first {
            state.end = Some(end);
        }
        state.trim();
        let wakers = state.take_wakers();
        drop(state);
        self.wake(wakers);
        first
    }
}

/// Readers to wake after a change, taken from the state to be woken outside its lock.
#[must_use]
struct Wakers {
    leader: Option<Waker>,
    followers: Vec<Waker>,
}

impl Flight {
    /// Wakes `wakers`, and keeps the followers' list for the next round (a herd re-registers
    /// at every chunk; growing a fresh list each time would cost a reallocation per doubling).
    fn wake(&self, mut wakers: Wakers) {
        if let Some(leader) = wakers.leader {
            leader.wake();
        }
        if wakers.followers.capacity() == 0 {
            return;
        }
        for follower in wakers.followers.drain(..) {
            follower.wake();
        }
        let mut state = self.lock();
        if state.spare.capacity() < wakers.followers.capacity() {
            state.spare = wakers.followers;
        }
    }
}

impl crate::upstream::admission::Followers for Flight {
    fn followers(&self) -> usize {
        Flight::followers(self)
    }
}

#[cfg(test)]
mod tests;
