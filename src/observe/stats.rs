//! Coalescing counters, read by the periodic stats line (`stats_line`).
//!
//! Every event the proxy counts is recorded by one method of [`Stats`], which bumps both the
//! counter the stats line reads and the Prometheus metric (`metrics` defines the families).
//! A response's end (bytes, duration) is the one event recorded elsewhere: by the access
//! record that sees it (`access`), into its route's metrics. The counters are plain atomics;
//! the reporter diffs two snapshots to describe one interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crate::observe::fleet::FleetEvent;
use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::observe::outcome::Outcome;
use crate::observe::sharded::Counter;

/// Distinct keys tracked per interval for the top-5 list; past it, new keys are not tracked
/// until the next interval (a flood of unique paths must not grow memory).
const MAX_TRACKED_KEYS: usize = 10_000;

/// Declares the counters once: the atomics, the snapshot with a field for each, and the
/// difference of two snapshots.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Sharded per worker: every request bumps some of these, from every worker.
        #[derive(Debug, Default)]
        struct Counters {
            $($name: Counter,)*
        }

        /// Counter values at one moment, or their difference over an interval.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
            /// Since start, not per interval: the most any one flight held.
            pub peak_flight_buffer: u64,
        }

        impl Counters {
            fn load(&self, peak_flight_buffer: u64) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name.get(),)*
                    peak_flight_buffer,
                }
            }
        }

        impl StatsSnapshot {
            pub(super) fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name - earlier.$name,)*
                    peak_flight_buffer: self.peak_flight_buffer,
                }
            }
        }
    };
}

counters! {
    requests,
    leaders,
    followers,
    passed,
    hits,
    /// Requests whose client went away before their response head (`Outcome::Cancelled`).
    cancelled,
    /// Upstream fetches that failed (connect, timeout, reset, stall), shared or not.
    upstream_errors,
    /// Stale stored responses served because the upstream failed or could not be reached.
    stale_on_error,
    flights_done,
    flights_cancelled,
    /// Requests that joined a flight as followers; some are later released to go upstream on
    /// their own, so this can exceed `followers`.
    joined,
    /// Readers cut off for holding up a full flight for `client_stall_timeout`.
    clients_cut_off,
    /// Client connections closed because they read nothing for `send_timeout`.
    send_timeouts,
    fleet_won,
    fleet_waited,
    fleet_served,
    fleet_cache_hit,
    fleet_released,
    fleet_taken_over,
    fleet_fallback,
    fleet_refused,
}

/// Counters since start. Relaxed ordering: each counter is independent and only read for
/// reporting.
#[derive(Debug, Default)]
pub struct Stats {
    pub metrics: Metrics,
    counters: Counters,
    /// Followers per (route, path) of flights that ended this interval, for the top-5 list.
    /// Paths only: never the query or a header value.
    top_keys: Mutex<HashMap<(String, String), u64>>,
    /// The most body bytes any one flight has held in memory at once.
    peak_flight_buffer: AtomicU64,
    /// Largest number of followers of a flight that ended since the last report.
    largest_fanout: AtomicU64,
    /// Whether any route has a fleet layer (the stats line shows its counts only then).
    pub fleet_configured: std::sync::atomic::AtomicBool,
    /// Spans, when `[tracing]` is set (once, at start).
    pub tracer: std::sync::OnceLock<super::trace::Tracer>,
}

impl StatsSnapshot {
    /// The fleet layer's counts, in [`FleetEvent::ALL`]'s order.
    pub fn fleet(&self) -> [u64; 8] {
        [
            self.fleet_won,
            self.fleet_waited,
            self.fleet_served,
            self.fleet_cache_hit,
            self.fleet_released,
            self.fleet_taken_over,
            self.fleet_fallback,
            self.fleet_refused,
        ]
    }

    /// followers / (leaders + followers): the share of eligible requests that cost no upstream
    /// request. 0 when nothing was eligible.
    pub fn coalesce_ratio(&self) -> f64 {
        let shared = self.leaders + self.followers;
        if shared == 0 {
            0.0
        } else {
            self.followers as f64 / shared as f64
        }
    }
}

/// Counts a follower in `followers_waiting` until dropped (its flight's head arrived, or it
/// gave up).
pub struct Waiting<'a>(&'a Stats);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.metrics.followers_waiting.dec();
    }
}

impl Stats {
    pub fn record_request(&self, outcome: Outcome) {
        let c = &self.counters;
        c.requests.inc();
        let counter = match outcome {
            Outcome::Leader => &c.leaders,
            Outcome::Follower => &c.followers,
            Outcome::Pass => &c.passed,
            Outcome::Hit | Outcome::Stale => &c.hits,
            Outcome::Cancelled => &c.cancelled,
        };
        counter.inc();
    }

    pub fn record_send_timeout(&self) {
        self.counters.send_timeouts.inc();
        self.metrics.send_timeouts.inc();
    }

    pub fn record_join(&self) {
        self.counters.joined.inc();
    }

    /// A follower starts waiting for its flight's head.
    pub fn follower_waiting(&self) -> Waiting<'_> {
        self.metrics.followers_waiting.inc();
        Waiting(self)
    }

    /// A stale stored response stood in for an upstream that failed or could not be
    /// reached (a stale serve too).
    pub fn record_stale_on_error(&self) {
        self.counters.stale_on_error.inc();
        self.metrics.cache_stale_on_error.inc();
        self.record_stale_served();
    }

    /// A stale cached response was served (while refreshed, or standing in for a failure).
    pub fn record_stale_served(&self) {
        self.metrics.cache_stale_served.inc();
    }

    /// An upstream request sent at `sent` on `route` got its head (`Ok(status)`) or failed
    /// before it (`Err(kind)`).
    pub fn record_upstream_response(
        &self,
        route: &RouteMetrics,
        sent: Instant,
        result: Result<http::StatusCode, &'static str>,
    ) {
        route
            .upstream_duration
            .observe(sent.elapsed().as_secs_f64());
        route.upstream_response(result.ok());
        if let Err(kind) = result {
            self.record_upstream_error(&route.route, kind);
        }
    }

    /// A response body that failed after its head on a request that went upstream alone
    /// (a flight's is counted with the flight).
    pub fn record_upstream_body_error(&self, route: &str, kind: &'static str) {
        self.record_upstream_error(route, kind);
    }

    fn record_upstream_error(&self, route: &str, kind: &'static str) {
        self.counters.upstream_errors.inc();
        self.metrics.upstream_error(route, kind);
    }

    pub fn record_flight_done(&self, flight: FlightSummary<'_>) {
        self.counters.flights_done.inc();
        // Written only when they move: read-modify-writes of lines every worker shares
        // cost more than the reads.
        if flight.peak_buffered > self.peak_flight_buffer.load(Ordering::Relaxed) {
            self.peak_flight_buffer
                .fetch_max(flight.peak_buffered, Ordering::Relaxed);
        }
        if flight.cut_off > 0 {
            self.counters.clients_cut_off.inc_by(flight.cut_off);
            self.metrics.clients_cut_off.inc_by(flight.cut_off);
        }
        self.metrics
            .flight_followers
            .observe(flight.followers as f64);
        if let Some(kind) = flight.error {
            self.record_upstream_error(flight.route, kind);
        }
        let (route, path) = (flight.route, flight.path);
        self.record_fanout(route, path, flight.unreported_followers, flight.followers);
    }

    /// `new` followers joined a flight for `path` on `route` this interval, `total` in all:
    /// the interval's top keys and largest fan-out. Nothing when none joined this interval.
    pub fn record_fanout(&self, route: &str, path: &str, new: u64, total: u64) {
        if new == 0 {
            return;
        }
        if total > self.largest_fanout.load(Ordering::Relaxed) {
            self.largest_fanout.fetch_max(total, Ordering::Relaxed);
        }
        let mut top = self.top_keys.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (route.to_owned(), path.to_owned());
        if top.len() < MAX_TRACKED_KEYS || top.contains_key(&key) {
            *top.entry(key).or_default() += new;
        }
    }

    /// The interval's five keys with the most followers; starts a new interval.
    pub(super) fn take_top_keys(&self) -> Vec<(String, String, u64)> {
        let top =
            std::mem::take(&mut *self.top_keys.lock().unwrap_or_else(PoisonError::into_inner));
        let mut top: Vec<(String, String, u64)> = top
            .into_iter()
            .map(|((route, path), n)| (route, path, n))
            .collect();
        top.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.1.cmp(&b.1)));
        top.truncate(5);
        top
    }

    /// What the fleet layer did for a flight.
    pub fn record_fleet(&self, event: FleetEvent) {
        let c = &self.counters;
        let counter = match event {
            FleetEvent::Won => &c.fleet_won,
            FleetEvent::Waited => &c.fleet_waited,
            FleetEvent::Served => &c.fleet_served,
            FleetEvent::CacheHit => &c.fleet_cache_hit,
            FleetEvent::Released => &c.fleet_released,
            FleetEvent::TakenOver => &c.fleet_taken_over,
            FleetEvent::Fallback => &c.fleet_fallback,
            FleetEvent::Refused => &c.fleet_refused,
        };
        counter.inc();
        self.metrics.fleet_event(event);
    }

    pub fn record_flight_cancelled(&self) {
        self.counters.flights_cancelled.inc();
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.counters
            .load(self.peak_flight_buffer.load(Ordering::Relaxed))
    }

    /// Takes the largest fan-out seen since the previous call.
    pub(super) fn take_largest_fanout(&self) -> u64 {
        self.largest_fanout.swap(0, Ordering::Relaxed)
    }
}

/// What the group reports about a flight that ended.
#[derive(Debug)]
pub struct FlightSummary<'a> {
    pub route: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    pub followers: u64,
    /// Followers the stats line has not counted yet (a flight in the air at an interval's
    /// end has had its followers so far counted in that interval).
    pub unreported_followers: u64,
    /// The kind of upstream failure, if the fetch failed.
    pub error: Option<&'static str>,
    pub peak_buffered: u64,
    pub cut_off: u64,
}
