//! The per-key coordinator's table: for every key, at most one fetch in the air, or a note
//! that the key's answers are not shareable. Flights, background refreshes and
//! remembered-not-shareable keys all live in this one table, so that one key never costs two
//! fetches at once. What a request is told for its key is `status`'s business; this file
//! keeps the table consistent (insert, forget, remember, finish).
//!
//! It is Go's `singleflight.Group` (a map behind a mutex), split into shards by the key's
//! hash so that workers entering different keys never wait on each other.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::budget::BufferBudget;
use super::flight::{Flight, FlightError};
use crate::observe::stats::{FlightSummary, Stats};
use crate::sharing::{Key, KeyHash};

/// Shards of the table: a power of two, several times the workers of any machine the proxy
/// runs on, so that two keys rarely share a lock.
const SHARDS: usize = 64;

/// Above this many remembered passes in one shard, expired ones are swept on insert; if that
/// is not enough the new key is not remembered (it will simply queue once more). Keeps a
/// flood of unique private URLs from growing memory without bound (100,000 in all).
const MAX_PASSES_PER_SHARD: usize = 100_000 / SHARDS;

/// What the table holds for a key.
#[derive(Debug)]
pub(super) enum Slot {
    /// A fetch in the air; requests for the key join it while it is open.
    Flight(Arc<Flight>),
    /// The key's last response was not shareable: until then, requests go upstream alone
    /// instead of queueing behind a leader whose answer they will not be given ("hit-for-pass"
    /// in Varnish's words).
    Pass { until: Instant },
}

/// The table. Each shard is a std mutex held only for one lookup and insert or remove, never
/// across an `.await` (mini-redis's `db.rs` says why a std mutex is right here). Lock order:
/// a shard, then a flight's state, never the other way round.
#[derive(Debug)]
pub struct Coordinator {
    shards: Box<[Mutex<HashMap<Key, Slot, KeyHash>>]>,
    pub(super) next_id: AtomicU64,
    pub(super) stats: Arc<Stats>,
    /// What every flight holds for its readers, against `[server] max_buffered_bytes`.
    pub budget: Arc<BufferBudget>,
}

impl Coordinator {
    pub fn new(stats: Arc<Stats>, max_buffered_bytes: u64) -> Coordinator {
        let budget = BufferBudget::exported(max_buffered_bytes, &stats.metrics);
        Coordinator {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next_id: AtomicU64::new(1),
            stats,
            budget: Arc::new(budget),
        }
    }

    pub(super) fn shard(&self, key: &Key) -> MutexGuard<'_, HashMap<Key, Slot, KeyHash>> {
        // The hash's middle bits: the map in the shard uses its low bits for the bucket and
        // its top bits for the tags, which must still vary within a shard.
        let shard = &self.shards[(key.hash64() >> 32) as usize % SHARDS];
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn each_shard(&self) -> impl Iterator<Item = MutexGuard<'_, HashMap<Key, Slot, KeyHash>>> {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The flights in the air now.
    pub fn len(&self) -> usize {
        self.each_shard()
            .map(|shard| {
                shard
                    .values()
                    .filter(|s| matches!(s, Slot::Flight(_)))
                    .count()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flights in the air now, after counting their followers so far in the stats, so
    /// that a herd still waiting at the end of a stats interval is counted in it (its
    /// fan-out and top keys), not in the interval its flight ends in.
    pub fn census(&self) -> usize {
        let flights = self.flights();
        for flight in &flights {
            let (new, total) = flight.take_unreported_followers();
            let (route, path) = (&flight.scope.route, flight.key.path());
            self.stats
                .record_fanout(route, path, new as u64, total as u64);
        }
        flights.len()
    }

    /// The flights in the air now (for the status page).
    pub fn flights(&self) -> Vec<Arc<Flight>> {
        let mut flights = Vec::new();
        for shard in self.each_shard() {
            flights.extend(shard.values().filter_map(|slot| match slot {
                Slot::Flight(flight) => Some(flight.clone()),
                Slot::Pass { .. } => None,
            }));
        }
        flights
    }

    /// Keys remembered as not shareable now, expired or not.
    pub fn remembered_passes(&self) -> usize {
        self.each_shard()
            .map(|shard| {
                shard
                    .values()
                    .filter(|s| matches!(s, Slot::Pass { .. }))
                    .count()
            })
            .sum()
    }

    /// Removes `flight` from the table if the table still holds that very flight (a newer
    /// one for the same key may have replaced it): from now on its key starts a new flight.
    pub(super) fn forget(&self, flight: &Arc<Flight>) {
        let mut shard = self.shard(&flight.key);
        if let Some(Slot::Flight(current)) = shard.get(&flight.key) {
            if Arc::ptr_eq(current, flight) {
                shard.remove(&flight.key);
            }
        }
    }

    /// `flight`'s response was not shareable: its key goes upstream alone for `pass_ttl`.
    /// Replaces the flight in one step, so no request slips into a new flight in between.
    pub(super) fn remember_pass(&self, flight: &Arc<Flight>) {
        let ttl = flight.scope.policy.pass_ttl;
        let mut shard = self.shard(&flight.key);
        let ours =
            matches!(shard.get(&flight.key), Some(Slot::Flight(f)) if Arc::ptr_eq(f, flight));
        if !ours {
            return;
        }
        shard.remove(&flight.key);
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        if shard.len() >= MAX_PASSES_PER_SHARD {
            shard.retain(|_, slot| !matches!(slot, Slot::Pass { until } if *until <= now));
            if shard.len() >= MAX_PASSES_PER_SHARD {
                return;
            }
        }
        shard.insert(flight.key.clone(), Slot::Pass { until: now + ttl });
    }

    /// A request for `key` that went upstream alone got a shareable answer: stop passing it.
    pub fn forget_pass(&self, key: &Key) {
        let mut shard = self.shard(key);
        if matches!(shard.get(key), Some(Slot::Pass { .. })) {
            shard.remove(key);
        }
    }

    /// Ends `flight` with `end`: out of the table first, so that a request arriving after the
    /// end always starts a new flight instead of finding a finished one; then the end is
    /// published to its clients and the flight is counted.
    pub(super) fn finish(&self, flight: &Arc<Flight>, end: Result<(), FlightError>) {
        self.forget(flight);
        // Failures before the head were counted when the upstream request failed; only
        // mid-body failures are the flight's to report.
        let failure = end.as_ref().err().map(FlightError::kind);
        let mid_body_failure = failure.filter(|_| flight.status().is_some());
        if let (Some(kind), Err(FlightError::Upstream(err))) = (mid_body_failure, &end) {
            let what = "upstream body failed mid-response";
            crate::observe::failure_log::upstream_failed(&flight.scope.route, kind, err, what);
        }
        if !flight.publish_end(end) {
            return;
        }
        let (unreported, followers) = flight.take_unreported_followers();
        if let Some(tracer) = self.stats.tracer.get() {
            fetch_span(tracer, flight, followers, failure);
        }
        self.stats.record_flight_done(FlightSummary {
            route: &flight.scope.route,
            // Only the interval's top keys read it, for a flight someone joined; finding it
            // in the key (UTF-8 checked) cost every other flight a few hundred instructions.
            path: if unreported > 0 {
                flight.key.path()
            } else {
                ""
            },
            followers: followers as u64,
            unreported_followers: unreported as u64,
            error: mid_body_failure,
            peak_buffered: flight.peak_buffered(),
            cut_off: flight.cut_off() as u64,
        });
        tracing::debug!(
            flight = flight.id,
            route = %flight.scope.route,
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

/// A traced flight's fetch span, ended with the flight: its route, key digest, status and
/// fan-out (the followers who waited on it, each of whose spans links here).
fn fetch_span(
    tracer: &crate::observe::trace::Tracer,
    flight: &Flight,
    followers: usize,
    failure: Option<&'static str>,
) {
    use crate::observe::trace::{Attribute, FinishedSpan, Kind};
    let Some(trace) = flight.trace.get() else {
        return;
    };
    let mut attributes = vec![
        (
            "coalesce.route",
            Attribute::Text(flight.scope.route.to_string()),
        ),
        (
            "coalesce.key",
            Attribute::Text(format!("{:016x}", flight.key.digest())),
        ),
        ("coalesce.fanout", Attribute::Int(followers as i64)),
        ("url.path", Attribute::Text(flight.key.path().to_owned())),
    ];
    if let Some(status) = flight.status() {
        attributes.push((
            "http.response.status_code",
            Attribute::Int(i64::from(status.as_u16())),
        ));
    }
    if let Some(kind) = failure {
        attributes.push(("error.type", Attribute::Text(kind.to_owned())));
    }
    tracer.finish(FinishedSpan {
        context: trace.context,
        parent: Some(trace.parent),
        name: "upstream fetch",
        kind: Kind::Client,
        start: trace.start,
        end: std::time::SystemTime::now(),
        attributes,
        links: Vec::new(),
        error: failure.is_some(),
    });
}
