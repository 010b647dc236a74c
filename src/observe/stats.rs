//! Coalescing counters and the periodic stats line.
//!
//! Every event the proxy counts is recorded by one method of [`Stats`], which bumps both the
//! counter the stats line reads and the Prometheus metric (`metrics` defines the families).
//! A response's end (bytes, duration) is the one event recorded elsewhere: by the access
//! record that sees it (`access`), into its route's metrics. The counters are plain atomics;
//! the reporter diffs two snapshots to describe one interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::observe::metrics::{AdmissionFigures, Metrics, RouteMetrics};
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
            fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
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
}

impl StatsSnapshot {
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

    fn record_upstream_error(&self, route: &str, kind: &'static str) {
        self.counters.upstream_errors.inc();
        self.metrics.upstream_error(route, kind);
    }

    pub fn record_flight_done(&self, flight: FlightSummary<'_>) {
        self.counters.flights_done.inc();
        // Written only when they move: read-modify-writes of lines every worker shares
        // cost more than the reads.
        if flight.followers > self.largest_fanout.load(Ordering::Relaxed) {
            self.largest_fanout
                .fetch_max(flight.followers, Ordering::Relaxed);
        }
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
        if flight.followers > 0 {
            let mut top = self.top_keys.lock().unwrap_or_else(PoisonError::into_inner);
            let key = (flight.route.to_owned(), flight.path.to_owned());
            if top.len() < MAX_TRACKED_KEYS || top.contains_key(&key) {
                *top.entry(key).or_default() += flight.followers;
            }
        }
    }

    /// The interval's five keys with the most followers; starts a new interval.
    fn take_top_keys(&self) -> Vec<(String, String, u64)> {
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

    pub fn record_flight_cancelled(&self) {
        self.counters.flights_cancelled.inc();
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.counters
            .load(self.peak_flight_buffer.load(Ordering::Relaxed))
    }

    /// Takes the largest fan-out seen since the previous call.
    fn take_largest_fanout(&self) -> u64 {
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
    /// The kind of upstream failure, if the fetch failed.
    pub error: Option<&'static str>,
    pub peak_buffered: u64,
    pub cut_off: u64,
}

/// One interval's figures, as the stats line shows them.
#[derive(Debug, Clone)]
pub struct StatsLine {
    pub interval: StatsSnapshot,
    pub flights_in_flight: usize,
    pub largest_fanout: u64,
    /// `(route, path, followers)` of the interval's five most-followed keys.
    pub top_keys: Vec<(String, String, u64)>,
    /// Each limited upstream's queue and limit now, with its admitted and rejected counts
    /// over the interval.
    pub admission: Vec<(String, AdmissionFigures)>,
    /// Connections opened to each upstream over the interval: far more than the requests in
    /// flight means the pool churns.
    pub connections_opened: Vec<(String, u64)>,
}

impl StatsLine {
    /// `route:path=followers` for each top key, space-free so it stays one key=value field.
    pub fn top_keys_text(&self) -> String {
        self.top_keys
            .iter()
            .map(|(route, path, followers)| format!("{route}:{path}={followers}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `name:N` per upstream that opened connections this interval, comma-separated.
    pub fn connections_text(&self) -> String {
        self.connections_opened
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name}:{n}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `name(queued=Q,admitted=A,rejected=R,limit=L)` per limited upstream, `;`-separated and
    /// space-free; empty when no upstream has a concurrency limit.
    pub fn admission_text(&self) -> String {
        self.admission
            .iter()
            .map(|(name, a)| {
                format!(
                    "{name}(queued={},admitted={},rejected={},limit={})",
                    a.queued, a.admitted, a.rejected, a.limit
                )
            })
            .collect::<Vec<_>>()
            .join(";")
    }
}

impl std::fmt::Display for StatsLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.interval;
        write!(
            f,
            "requests={} leaders={} followers={} passed={} cache_hits={} stale_on_error={} cancelled={} upstream_errors={} coalesce_ratio={:.3} flights_in_flight={} largest_fanout={} top_keys={} admission={} upstream_connections={}",
            d.requests,
            d.leaders,
            d.followers,
            d.passed,
            d.hits,
            d.stale_on_error,
            d.cancelled,
            d.upstream_errors,
            d.coalesce_ratio(),
            self.flights_in_flight,
            self.largest_fanout,
            self.top_keys_text(),
            self.admission_text(),
            self.connections_text()
        )
    }
}

/// Writes the stats line for each interval. `report` is called by the periodic task and can
/// be called directly (the demo prints one at the end).
pub struct StatsReporter {
    stats: Arc<Stats>,
    /// How many flights are in the air now (the singleflight table's size).
    flights_in_flight: Box<dyn Fn() -> usize + Send>,
    last: StatsSnapshot,
    /// Admission totals at the previous report, by upstream.
    last_admission: HashMap<String, AdmissionFigures>,
    /// Connections opened by the previous report, by upstream.
    last_connections: HashMap<String, u64>,
}

impl StatsReporter {
    pub fn new(
        stats: Arc<Stats>,
        flights_in_flight: impl Fn() -> usize + Send + 'static,
    ) -> StatsReporter {
        StatsReporter {
            stats,
            flights_in_flight: Box::new(flights_in_flight),
            last: StatsSnapshot::default(),
            last_admission: HashMap::new(),
            last_connections: HashMap::new(),
        }
    }

    /// The figures for the interval since the previous call.
    pub fn next_line(&mut self) -> StatsLine {
        let now = self.stats.snapshot();
        let interval = now.since(&self.last);
        self.last = now;
        StatsLine {
            interval,
            flights_in_flight: (self.flights_in_flight)(),
            largest_fanout: self.stats.take_largest_fanout(),
            top_keys: self.stats.take_top_keys(),
            admission: self.admission_interval(),
            connections_opened: self.connections_interval(),
        }
    }

    /// Admission figures with the counts made per interval.
    fn admission_interval(&mut self) -> Vec<(String, AdmissionFigures)> {
        let now = self.stats.metrics.admission_figures();
        now.into_iter()
            .map(|(name, total)| {
                let before = self.last_admission.insert(name.clone(), total);
                let before = before.unwrap_or_default();
                let interval = AdmissionFigures {
                    admitted: total.admitted - before.admitted,
                    rejected: total.rejected - before.rejected,
                    ..total
                };
                (name, interval)
            })
            .collect()
    }

    /// Connections opened per upstream over the interval.
    fn connections_interval(&mut self) -> Vec<(String, u64)> {
        let now = self.stats.metrics.upstream_connections_opened();
        now.into_iter()
            .map(|(name, total)| {
                let before = self.last_connections.insert(name.clone(), total);
                (name, total - before.unwrap_or_default())
            })
            .collect()
    }

    /// Logs the line for the interval since the previous report.
    pub fn report(&mut self, interval: Duration) {
        let line = self.next_line();
        let delta = &line.interval;
        tracing::info!(
            target: "coalesce_proxy::stats",
            interval = %humantime::format_duration(interval),
            requests = delta.requests,
            leaders = delta.leaders,
            followers = delta.followers,
            passed = delta.passed,
            cache_hits = delta.hits,
            stale_on_error = delta.stale_on_error,
            cancelled = delta.cancelled,
            upstream_errors = delta.upstream_errors,
            // A number (three decimals), so JSON logs carry it as one.
            coalesce_ratio = (delta.coalesce_ratio() * 1000.0).round() / 1000.0,
            flights_in_flight = line.flights_in_flight,
            largest_fanout = line.largest_fanout,
            top_keys = %line.top_keys_text(),
            admission = %line.admission_text(),
            upstream_connections = %line.connections_text(),
            "stats"
        );
    }
}

/// The stats line every `interval`, from a reporter the server's shutdown shares, so that it
/// can write one last line for the requests since the previous one.
pub struct PeriodicReport {
    reporter: Mutex<StatsReporter>,
    interval: Duration,
}

impl PeriodicReport {
    pub fn new(reporter: StatsReporter, interval: Duration) -> Arc<PeriodicReport> {
        Arc::new(PeriodicReport {
            reporter: Mutex::new(reporter),
            interval,
        })
    }

    /// Logs the line for the interval so far.
    pub fn report_now(&self) {
        let mut reporter = self.reporter.lock().unwrap_or_else(PoisonError::into_inner);
        reporter.report(self.interval);
    }

    /// Reports every interval until dropped.
    pub async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            self.report_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_line_counts_one_interval() {
        let stats = Arc::new(Stats::default());
        let mut reporter = StatsReporter::new(stats.clone(), || 0);
        stats.record_request(Outcome::Leader);
        for _ in 0..3 {
            stats.record_request(Outcome::Follower);
        }
        stats.record_request(Outcome::Pass);
        let flight = |path, followers| FlightSummary {
            route: "api",
            path,
            followers,
            error: None,
            peak_buffered: 0,
            cut_off: 0,
        };
        stats.record_flight_done(flight("/hot", 3));
        stats.record_flight_done(flight("/hot", 2));
        stats.record_flight_done(flight("/warm", 1));
        stats.record_flight_done(flight("/cold", 0));
        let line = reporter.next_line().to_string();
        assert_eq!(
            line,
            "requests=5 leaders=1 followers=3 passed=1 cache_hits=0 stale_on_error=0 cancelled=0 upstream_errors=0 coalesce_ratio=0.750 flights_in_flight=0 largest_fanout=3 top_keys=api:/hot=5,api:/warm=1 admission= upstream_connections="
        );
        // The next interval starts from zero.
        stats.record_request(Outcome::Pass);
        let line = reporter.next_line().to_string();
        assert!(
            line.starts_with("requests=1 leaders=0 followers=0 passed=1"),
            "{line}"
        );
        assert!(
            line.ends_with("largest_fanout=0 top_keys= admission= upstream_connections="),
            "{line}"
        );
    }

    #[test]
    fn the_stats_line_shows_each_limited_upstreams_queue_limit_and_interval_counts() {
        let stats = Arc::new(Stats::default());
        let mut reporter = StatsReporter::new(stats.clone(), || 0);
        let api = stats.metrics.for_upstream_admission("api");
        api.queued.set(7);
        api.limit.set(32);
        api.admitted.inc_by(120);
        api.rejected.inc_by(3);
        let line = reporter.next_line().to_string();
        assert!(
            line.contains(" admission=api(queued=7,admitted=120,rejected=3,limit=32) "),
            "{line}"
        );
        api.admitted.inc_by(5);
        api.queued.set(0);
        let line = reporter.next_line().to_string();
        assert!(
            line.contains(" admission=api(queued=0,admitted=5,rejected=0,limit=32) "),
            "{line}"
        );
    }
}
