//! One in-flight upstream fetch and the response it is producing, shared by its clients.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::Key;
use crate::routes::Route;
use crate::upstream::FetchError;

/// The response head as every client of a flight receives it (already cleaned by `hygiene`).
#[derive(Debug)]
pub struct SharedHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// A fetch in progress and the response so far.
///
/// The fetch task is the only writer: it publishes the head, appends chunks, then publishes
/// the end. Clients only read. Every change is followed by `changed.notify_waiters()`, and
/// readers register for that notification *before* they look at the state, so no change can
/// slip between a look and a wait (no polling, no lost wake-ups).
#[derive(Debug)]
pub struct Flight {
    /// Ties together the log lines of one flight's leader and followers.
    pub id: u64,
    pub key: Key,
    pub route: Arc<Route>,
    pub started: Instant,
    /// Guarded by a std mutex: it is held only to read or append, never across an `.await`,
    /// so it cannot block the runtime for longer than a `Vec` push.
    state: Mutex<FlightState>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct FlightState {
    /// Set once, by the fetch task, when the upstream head arrives.
    head: Option<Arc<SharedHead>>,
    /// Every body chunk so far, in order. `Bytes` clones are reference counts, so every client
    /// shares these allocations.
    chunks: Vec<Bytes>,
    body_bytes: u64,
    /// `None` while the fetch runs; then `Ok` (whole body received) or why it failed.
    end: Option<Result<(), FetchError>>,
    /// Clients currently holding a `Subscription`. When this reaches zero before `end`, the
    /// fetch is aborted: nobody is left to read it.
    subscribers: usize,
    /// How many clients joined after the leader.
    followers: usize,
    /// Aborts the fetch task; set right after the task is spawned.
    fetch: Option<AbortHandle>,
}

impl Flight {
    pub(super) fn new(id: u64, key: Key, route: Arc<Route>) -> Flight {
        Flight {
            id,
            key,
            route,
            started: Instant::now(),
            state: Mutex::new(FlightState {
                subscribers: 1,
                ..FlightState::default()
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FlightState> {
        // A panic elsewhere must not take every later client of this flight down with it;
        // the state is only ever appended to, so it is consistent at any point.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `look` on the state until it yields a value, sleeping between changes.
    async fn wait_for<T>(&self, mut look: impl FnMut(&FlightState) -> Option<T>) -> T {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(value) = look(&self.lock()) {
                return value;
            }
            changed.await;
        }
    }

    /// The response head, once it arrives, or the error that ended the fetch before it.
    pub async fn head(&self) -> Result<Arc<SharedHead>, FetchError> {
        self.wait_for(|state| match (&state.head, &state.end) {
            (Some(head), _) => Some(Ok(head.clone())),
            (None, Some(Err(err))) => Some(Err(err.clone())),
            (None, Some(Ok(()))) => Some(Err(FetchError::Body("no response head".into()))),
            (None, None) => None,
        })
        .await
    }

    /// Body chunk number `index`: `None` at a clean end, an error if the fetch failed first.
    pub async fn chunk(&self, index: usize) -> Option<Result<Bytes, FetchError>> {
        self.wait_for(|state| {
            if let Some(chunk) = state.chunks.get(index) {
                return Some(Some(Ok(chunk.clone())));
            }
            match &state.end {
                None => None,
                Some(Ok(())) => Some(None),
                Some(Err(err)) => Some(Some(Err(err.clone()))),
            }
        })
        .await
    }

    pub fn followers(&self) -> usize {
        self.lock().followers
    }

    /// The upstream status, once the head has arrived.
    pub fn status(&self) -> Option<StatusCode> {
        self.lock().head.as_ref().map(|head| head.status)
    }

    pub fn body_bytes(&self) -> u64 {
        self.lock().body_bytes
    }

    /// Adds a client if the fetch is still running. Called with the group's table locked.
    pub(super) fn try_join(&self) -> bool {
        let mut state = self.lock();
        if state.end.is_some() {
            return false;
        }
        state.subscribers += 1;
        state.followers += 1;
        true
    }

    /// Removes a client. Returns true when it was the last one and the fetch, still running,
    /// has been aborted.
    pub(super) fn leave(&self) -> bool {
        let mut state = self.lock();
        state.subscribers -= 1;
        if state.subscribers > 0 || state.end.is_some() {
            return false;
        }
        state.end = Some(Err(FetchError::Cancelled));
        if let Some(fetch) = state.fetch.take() {
            fetch.abort();
        }
        true
    }

    pub(super) fn set_fetch(&self, fetch: AbortHandle) {
        let mut state = self.lock();
        if state.end.is_none() {
            state.fetch = Some(fetch);
        } else {
            fetch.abort();
        }
    }

    pub(super) fn publish_head(&self, head: SharedHead) {
        self.lock().head = Some(Arc::new(head));
        self.changed.notify_waiters();
    }

    pub(super) fn publish_chunk(&self, chunk: Bytes) {
        {
            let mut state = self.lock();
            state.body_bytes += chunk.len() as u64;
            state.chunks.push(chunk);
        }
        self.changed.notify_waiters();
    }

    /// Records how the fetch ended. Returns false if it had already ended (cancelled).
    pub(super) fn publish_end(&self, end: Result<(), FetchError>) -> bool {
        let first = {
            let mut state = self.lock();
            state.fetch = None;
            if state.end.is_some() {
                false
            } else {
                state.end = Some(end);
                true
            }
        };
        self.changed.notify_waiters();
        first
    }
}
