//! The singleflight table: at most one live flight per key.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::Body;
use http_body_util::BodyExt;

use super::{Flight, Key, SharedHead};
use crate::coalesce::sharing::Sharing;
use crate::observe::stats::{FlightSummary, Stats};
use crate::route::Route;
use crate::upstream::{FetchError, UpstreamBody};

/// What a flight's fetch produces: the upstream response (head received, body to come) and
/// the verdict on who may share it.
pub struct Fetched {
    pub response: Response<UpstreamBody>,
    pub sharing: Sharing,
    /// Called with the whole body when the fetch completes, if the flight still holds all of
    /// it: how a cache stores what a flight fetched.
    pub store: Option<Box<dyn FnOnce(Bytes) + Send>>,
}

/// Whether a client started its flight or joined one already in the air.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// The table of live flights (Go's `singleflight.Group`).
///
/// A flight is in `flights` from the moment its leader arrives until its fetch ends, or until
/// its last client leaves. Requests that arrive in that window join it; the first one after it
/// starts a new flight ("forget on completion"), so the table never serves stale responses.
#[derive(Debug)]
pub struct Group {
    /// Guarded by a std mutex, held only for one lookup and insert or remove, never across
    /// an `.await` (see mini-redis's `db.rs`): a tokio mutex would cost more and buy nothing.
    /// Lock order: this table, then a flight's state, never the other way round.
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
    next_id: AtomicU64,
    stats: Arc<Stats>,
}

/// A client's place in a flight, and how far it has read. Dropping it leaves the flight; when
/// the last client leaves before the fetch ends, the fetch is cancelled. The leader holds one
/// too, so the fetch belongs to whoever is still waiting, not to the client that started it.
#[derive(Debug)]
pub struct Subscription {
    flight: Arc<Flight>,
    group: Arc<Group>,
    reader: u64,
    /// Index of the next body chunk this client reads.
    cursor: usize,
}

impl Subscription {
    pub fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    /// The next body chunk for this client: `None` at a clean end, an error if the fetch
    /// failed or this client fell too far behind.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, FetchError>> {
        self.flight.next_chunk(self.reader, &mut self.cursor).await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.flight.leave(self.reader, self.cursor) {
            self.group.forget(&self.flight);
            self.group.stats.record_flight_cancelled();
            tracing::debug!(
                flight = self.flight.id,
                route = %self.flight.route.name,
                key = %format_args!("{:016x}", self.flight.key.digest()),
                "flight cancelled: every client left"
            );
        }
    }
}

impl Group {
    pub fn new(stats: Arc<Stats>) -> Group {
        Group {
            flights: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stats,
        }
    }

    fn table(&self) -> MutexGuard<'_, HashMap<Key, Arc<Flight>>> {
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The number of flights in the air now.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flights in the air now (for the status page).
    pub fn flights(&self) -> Vec<Arc<Flight>> {
        self.table().values().cloned().collect()
    }

    /// Joins the live flight for `key`, or starts one whose fetch is `fetch(&flight)`. The fetch runs
    /// on its own task, so it outlives the leader's request if followers still wait. A flight
    /// that is closed to joiners (past `max_replay_body`) or full (`max_followers`) is replaced
    /// in the table by the new one; it goes on serving its own clients.
    pub fn join<F, Fut>(
        self: &Arc<Self>,
        key: Key,
        route: &Arc<Route>,
        request_headers: &HeaderMap,
        fetch: F,
    ) -> (Role, Subscription)
    where
        F: FnOnce(&Arc<Flight>) -> Fut,
        Fut: Future<Output = Result<Fetched, FetchError>> + Send + 'static,
    {
        let flight = {
            let mut table = self.table();
            if let Some(flight) = table.get(&key) {
                if let Some(reader) = flight.try_join() {
                    self.stats.record_join();
                    let subscription = Subscription {
                        flight: flight.clone(),
                        group: self.clone(),
                        reader,
                        cursor: 0,
                    };
                    return (Role::Follower, subscription);
                }
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let flight = Arc::new(Flight::new(
                id,
                key.clone(),
                route.clone(),
                request_headers.clone(),
            ));
            table.insert(key, flight.clone());
            flight
        };
        let fetch = fetch(&flight);
        let task = tokio::spawn({
            let flight = flight.clone();
            let group = self.clone();
            async move {
                let end = drive(&group, &flight, fetch).await;
                group.finish(&flight, end);
            }
        });
        flight.set_fetch(task.abort_handle());
        let subscription = Subscription {
            flight,
            group: self.clone(),
            reader: Flight::LEADER,
            cursor: 0,
        };
        (Role::Leader, subscription)
    }

    /// Removes `flight` from the table if the table still holds that very flight (a newer
    /// one for the same key may have replaced it).
    fn forget(&self, flight: &Arc<Flight>) {
        let mut table = self.table();
        if table
            .get(&flight.key)
            .is_some_and(|f| Arc::ptr_eq(f, flight))
        {
            table.remove(&flight.key);
        }
    }

    fn finish(&self, flight: &Arc<Flight>, end: Result<(), FetchError>) {
        // Forget before publishing, so that a request arriving after the end always starts a
        // new flight instead of finding a finished one.
        self.forget(flight);
        // Failures before the head were counted when the upstream request failed; only
        // mid-body failures are the flight's to report.
        let failure = end.as_ref().err().map(FetchError::kind);
        let mid_body_failure = failure.filter(|_| flight.status().is_some());
        if !flight.publish_end(end) {
            return;
        }
        let followers = flight.followers();
        self.stats.record_flight_done(FlightSummary {
            route: &flight.route.name,
            path: flight.key.path(),
            followers: followers as u64,
            error: mid_body_failure,
            peak_buffered: flight.peak_buffered(),
            cut_off: flight.cut_off() as u64,
        });
        tracing::debug!(
            flight = flight.id,
            route = %flight.route.name,
            key = %format_args!("{:016x}", flight.key.digest()),
            path = flight.key.path(),
            followers,
            status = flight.status().map(|s| s.as_u16()),
            bytes = flight.body_bytes(),
            peak_buffered = flight.peak_buffered(),
            cut_off = flight.cut_off(),
            duration_ms = flight.started.elapsed().as_millis() as u64,
            error = failure,
            "flight done"
        );
    }
}

/// The fetch task's work: wait for the head, then copy every body chunk into the flight,
/// pausing until the flight's buffer has room for it.
async fn drive<Fut>(group: &Group, flight: &Arc<Flight>, fetch: Fut) -> Result<(), FetchError>
where
    Fut: Future<Output = Result<Fetched, FetchError>>,
{
    let Fetched {
        response,
        sharing,
        mut store,
    } = fetch.await?;
    let (parts, mut body) = response.into_parts();
    let shareable = sharing.shareable();
    flight.publish_head(SharedHead {
        status: parts.status,
        headers: parts.headers,
        sharing,
        stored: store.is_some(),
    });
    if !shareable {
        // New requests must not queue behind a response only the leader may have.
        group.forget(flight);
    }
    while let Some(frame) = body.frame().await {
        // Trailers are dropped: the hop to the client may not carry them (HTTP/1.1 without
        // `TE: trailers`), and nothing the proxy promises depends on them.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if body.is_end_stream() {
            // The last chunk of a Content-Length body: clients will see a complete response as
            // soon as it is published, so store it first, or a client's next request could
            // miss the cache.
            if let Some(store) = store.take() {
                if let Some(whole) = flight.whole_body_with(&data) {
                    store(whole);
                }
            }
        }
        if flight.make_room(data.len() as u64).await {
            group.forget(flight);
        }
        flight.publish_chunk(data);
    }
    if let Some(store) = store {
        if let Some(body) = flight.whole_body() {
            store(body);
        }
    }
    Ok(())
}
