//! The stats line: one interval's figures (the difference of two [`Stats`] snapshots, the
//! flights in the air, the top keys, admission and upstream connections), as text or as
//! structured fields, written every `stats_interval` and once more on shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::observe::fleet::FleetEvent;
use crate::observe::metrics::AdmissionFigures;
use crate::observe::stats::{Stats, StatsSnapshot};

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
    /// Whether any route has a fleet layer: its counts are on the line only then.
    pub fleet: bool,
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

    /// ` fleet=won:W,waited:A,...` over the interval (every [`FleetEvent`]), or nothing when
    /// no route has a fleet layer.
    pub fn fleet_text(&self) -> String {
        if !self.fleet {
            return String::new();
        }
        let counts = self.interval.fleet();
        let pairs = FleetEvent::ALL
            .iter()
            .zip(counts)
            .map(|(event, n)| format!("{}:{n}", event.as_str()))
            .collect::<Vec<_>>();
        format!(" fleet={}", pairs.join(","))
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
            "requests={} leaders={} followers={} passed={} cache_hits={} stale_on_error={} cancelled={} upstream_errors={} coalesce_ratio={:.3} flights_in_flight={} largest_fanout={} top_keys={} admission={} upstream_connections={}{}",
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
            self.connections_text(),
            self.fleet_text()
        )
    }
}

/// Writes the stats line for each interval. `report` is called by the periodic task and can
/// be called directly (the demo prints one at the end).
pub struct StatsReporter {
    stats: Arc<Stats>,
    /// How many flights are in the air now (the singleflight table's size), after their
    /// followers so far were recorded (`Coordinator::census`).
    flights_in_flight: Box<dyn Fn() -> usize + Send>,
    /// When the previous line was written: a line says how long its interval really was.
    last_at: std::time::Instant,
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
            last_at: std::time::Instant::now(),
            last_admission: HashMap::new(),
            last_connections: HashMap::new(),
        }
    }

    /// The figures for the interval since the previous call.
    pub fn next_line(&mut self) -> StatsLine {
        // First: the census records the followers of flights still in the air.
        let flights_in_flight = (self.flights_in_flight)();
        let now = self.stats.snapshot();
        let interval = now.since(&self.last);
        self.last = now;
        StatsLine {
            interval,
            flights_in_flight,
            largest_fanout: self.stats.take_largest_fanout(),
            top_keys: self.stats.take_top_keys(),
            admission: self.admission_interval(),
            connections_opened: self.connections_interval(),
            fleet: self
                .stats
                .fleet_configured
                .load(std::sync::atomic::Ordering::Relaxed),
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

    /// Logs the line for the interval since the previous report, with its real length (the
    /// last one, at shutdown, is shorter than `stats_interval`).
    pub fn report(&mut self) {
        let elapsed = std::mem::replace(&mut self.last_at, std::time::Instant::now()).elapsed();
        let interval = readable(elapsed);
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
            fleet = %line.fleet_text().trim_start().trim_start_matches("fleet="),
            "stats"
        );
    }
}

/// `elapsed` rounded as a person reads it: to the second from 10 s, to a tenth of one from a
/// second, else to 10 ms ("10s", not "10s 1ms 318us 60ns").
fn readable(elapsed: Duration) -> Duration {
    let step = match elapsed.as_secs() {
        10.. => 1000,
        1.. => 100,
        _ => 10,
    };
    let millis = elapsed.as_millis() as u64;
    Duration::from_millis((millis + step / 2) / step * step)
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
        reporter.report();
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
    use crate::observe::outcome::Outcome;
    use crate::observe::stats::FlightSummary;

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
            unreported_followers: followers,
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
    fn the_stats_line_shows_the_fleet_only_when_a_route_has_one() {
        let stats = Arc::new(Stats::default());
        let mut reporter = StatsReporter::new(stats.clone(), || 0);
        stats.record_fleet(FleetEvent::Won);
        assert!(!reporter.next_line().to_string().contains("fleet="));
        stats
            .fleet_configured
            .store(true, std::sync::atomic::Ordering::Relaxed);
        stats.record_fleet(FleetEvent::Waited);
        stats.record_fleet(FleetEvent::Served);
        stats.record_fleet(FleetEvent::Fallback);
        let line = reporter.next_line().to_string();
        assert!(
            line.ends_with(" fleet=won:0,waited:1,served:1,cache_hit:0,released:0,taken_over:0,fallback:1,refused:0"),
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
