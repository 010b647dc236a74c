//! Prometheus metrics: the families, their names and help texts, and the text exposition.
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client) with one registry per
//! proxy, so that tests can run many proxies in one process. The hot path never hashes a
//! label set: each route gets its own handles ([`RouteMetrics`]) when the route table is
//! built. Counting itself happens in `stats`, which owns a [`Metrics`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::observe::outcome::Outcome;
use crate::observe::sharded::{Counter, Histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    route: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

/// One upstream's admission figures: the queue and the limit now, counts since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionFigures {
    pub queued: u64,
    pub admitted: u64,
    pub rejected: u64,
    pub limit: u64,
}

/// The metric handles of one upstream's admission (`upstream::admission`).
#[derive(Debug, Clone, Default)]
pub struct AdmissionMetrics {
    pub queued: Gauge,
    pub admitted: Counter,
    pub rejected: Counter,
    pub limit: Gauge,
}

/// The admission-control families (`upstream::admission`), by upstream.
#[derive(Debug, Default)]
struct AdmissionFamilies {
    queued: Family<UpstreamLabels, Gauge>,
    admitted: Family<UpstreamLabels, Counter>,
    rejected: Family<UpstreamLabels, Counter>,
    limit: Family<UpstreamLabels, Gauge>,
    /// The handles given out, by upstream, so the stats line can read them (a `Family` cannot
    /// be iterated). An upstream removed by a reload stays, as its metric series do.
    handed_out: std::sync::Mutex<std::collections::BTreeMap<String, AdmissionMetrics>>,
}

impl AdmissionFamilies {
    fn register(registry: &mut Registry) -> AdmissionFamilies {
        let families = AdmissionFamilies::default();
        registry.register(
            "upstream_queued",
            "Requests waiting for a slot under the upstream's concurrency limit now",
            families.queued.clone(),
        );
        registry.register(
            "upstream_admitted",
            "Requests admitted under the upstream's concurrency limit",
            families.admitted.clone(),
        );
        registry.register(
            "upstream_rejected",
            "Requests refused with 503: the upstream's queue was full or they waited past queue_timeout",
            families.rejected.clone(),
        );
        registry.register(
            "upstream_concurrency_limit",
            "The upstream's concurrency limit now",
            families.limit.clone(),
        );
        families
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    route: String,
    kind: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::latency()
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Declares every metric once: its field, its type and how it is made, its exported name and
/// its help text. Generates [`Metrics`] and [`Metrics::new`], which registers each.
macro_rules! families {
    ($($vis:vis $field:ident: $ty:ty = $make:expr, $name:literal, $help:literal;)*) => {
        /// Every metric the proxy exports, under the `coalesce_proxy_` prefix.
        pub struct Metrics {
            registry: Registry,
            admission: AdmissionFamilies,
            /// The upstreams given a connections counter, so the stats line can read them (a
            /// `Family` cannot be iterated).
            upstream_connection_names: std::sync::Mutex<std::collections::BTreeSet<String>>,
            $($vis $field: $ty,)*
        }

        impl Metrics {
            pub fn new() -> Metrics {
                let mut registry = Registry::with_prefix("coalesce_proxy");
                $(
                    let $field: $ty = $make;
                    registry.register($name, $help, $field.clone());
                )*
                let admission = AdmissionFamilies::register(&mut registry);
                Metrics {
                    registry,
                    admission,
                    upstream_connection_names: Default::default(),
                    $($field,)*
                }
            }
        }
    };
}

type ByOutcome<M> = Family<OutcomeLabels, M>;
type LatencyBy<L> = Family<L, Histogram, fn() -> Histogram>;

families! {
    requests: ByOutcome<Counter> = Family::default(), "requests", "Client requests answered, by route and outcome (leader, follower, pass, hit, stale)";
    response_bytes: ByOutcome<Counter> = Family::default(), "response_bytes", "Response body bytes sent to clients, by route and outcome";
    request_duration: LatencyBy<OutcomeLabels> = Family::new_with_constructor(latency_histogram), "request_duration_seconds", "From a request's arrival to the last byte of its response, by route and outcome";
    upstream_requests: Family<StatusLabels, Counter> = Family::default(), "upstream_requests", "Requests sent upstream, by route and response status class (error: no response)";
    upstream_errors: Family<ErrorLabels, Counter> = Family::default(), "upstream_errors", "Upstream fetches that failed, by route and kind (connect, response_timeout, before_head, idle_timeout, body, overloaded)";
    upstream_duration: LatencyBy<RouteLabels> = Family::new_with_constructor(latency_histogram), "upstream_duration_seconds", "From sending a request upstream to its response head, by route";
    upstream_addresses: Family<UpstreamLabels, Gauge> = Family::default(), "upstream_addresses", "Addresses an upstream balances over now (each DNS record of a name is one)";
    upstream_connections: Family<UpstreamLabels, Counter> = Family::default(), "upstream_connections_opened", "Connections opened to an upstream (TCP, and TLS when https): many more than requests in flight means the pool churns";
    pub flight_followers: Histogram = Histogram::new(FANOUT_BUCKETS, 1.0), "flight_followers", "Followers per completed flight: upstream requests each flight saved";
    pub flights_in_flight: Gauge = Gauge::default(), "flights_in_flight", "Flights in the singleflight table now";
    pub followers_waiting: Gauge = Gauge::default(), "followers_waiting", "Followers waiting for their flight's response head now";
    pub buffered_bytes: Gauge = Gauge::default(), "buffered_bytes", "Response body bytes all flights hold now for clients that have not read them ([server] max_buffered_bytes bounds them)";
    pub fetches_waiting_for_room: Gauge = Gauge::default(), "fetches_waiting_for_room", "Flights whose fetch waits for room (its own buffer or max_buffered_bytes full) instead of reading upstream";
    pub clients_cut_off: Counter = Counter::default(), "clients_cut_off", "Clients cut off for holding up a full flight for client_stall_timeout";
    pub send_timeouts: Counter = Counter::default(), "send_timeouts", "Client connections closed because writes to them made no progress for send_timeout";
    pub pass_memory_keys: Gauge = Gauge::default(), "pass_memory_keys", "Keys currently sent straight upstream because their last response was not shareable";
    pub cache_hits: Counter = Counter::default(), "cache_hits", "Requests answered from a route's response cache";
    pub cache_misses: Counter = Counter::default(), "cache_misses", "Cache lookups that found nothing fresh (the request went on to a flight)";
    pub cache_evictions: Counter = Counter::default(), "cache_evictions", "Responses evicted from a cache to stay within its max_size";
    pub cache_stale_served: Counter = Counter::default(), "cache_stale_served", "Stale responses served while being refreshed, or because the upstream failed";
    pub cache_stale_on_error: Counter = Counter::default(), "cache_stale_on_error", "Stale responses served because the upstream failed or could not be reached";
    pub cache_revalidations: Counter = Counter::default(), "cache_revalidations", "Background refreshes of stale responses (conditional when the response had validators)";
    pub cache_entries: Gauge = Gauge::default(), "cache_entries", "Responses stored in the caches now";
    pub cache_bytes: Gauge = Gauge::default(), "cache_bytes", "Bytes held by the caches now (bodies, headers and bookkeeping)";
    fleet_events: Family<FleetLabels, Counter> = Family::default(), "fleet_events", "What the fleet layer did for local flights: leases won, waits, results served from the fleet, shared cache hits, releases, takeovers, fallbacks to local coalescing, refused results";
    pub fleet_redis_down: Gauge = Gauge::default(), "fleet_redis_down", "Redis servers of fleet routes now unreachable (their routes coalesce locally until Redis answers again)";
}

/// Followers per flight: from none to a herd of ten thousand.
const FANOUT_BUCKETS: [f64; 11] = [
    0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0,
];

impl Metrics {
    /// The handles one route counts into.
    pub fn for_route(&self, route: &str) -> RouteMetrics {
        let outcome = |family: &Family<OutcomeLabels, Counter>, outcome: Outcome| {
            family.get_or_create_owned(&OutcomeLabels {
                route: route.to_owned(),
                outcome: outcome.as_str(),
            })
        };
        let duration = |outcome: Outcome| {
            self.request_duration.get_or_create_owned(&OutcomeLabels {
                route: route.to_owned(),
                outcome: outcome.as_str(),
            })
        };
        let status = |status_class: &'static str| {
            self.upstream_requests.get_or_create_owned(&StatusLabels {
                route: route.to_owned(),
                status_class,
            })
        };
        RouteMetrics {
            route: route.to_owned(),
            upstream_requests: STATUS_CLASSES.map(status),
            requests: Outcome::ALL.map(|o| outcome(&self.requests, o)),
            response_bytes: Outcome::ALL.map(|o| outcome(&self.response_bytes, o)),
            request_duration: Outcome::ALL.map(duration),
            upstream_duration: self.upstream_duration.get_or_create_owned(&RouteLabels {
                route: route.to_owned(),
            }),
        }
    }

    /// The admission handles of upstream `name`.
    pub fn for_upstream_admission(&self, name: &str) -> AdmissionMetrics {
        let labels = UpstreamLabels {
            upstream: name.to_owned(),
        };
        let handles = AdmissionMetrics {
            queued: self.admission.queued.get_or_create_owned(&labels),
            admitted: self.admission.admitted.get_or_create_owned(&labels),
            rejected: self.admission.rejected.get_or_create_owned(&labels),
            limit: self.admission.limit.get_or_create_owned(&labels),
        };
        self.admission
            .handed_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(labels.upstream, handles.clone());
        handles
    }

    /// The counter of connections opened to upstream `name`.
    pub fn for_upstream_connections(&self, name: &str) -> Counter {
        self.upstream_connection_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned());
        self.upstream_connections
            .get_or_create_owned(&UpstreamLabels {
                upstream: name.to_owned(),
            })
    }

    /// Connections opened so far, by upstream (for the stats line).
    pub fn upstream_connections_opened(&self) -> Vec<(String, u64)> {
        let names = self
            .upstream_connection_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let labels = |name: String| UpstreamLabels { upstream: name };
        names
            .into_iter()
            .map(|name| {
                let count = self
                    .upstream_connections
                    .get_or_create(&labels(name.clone()))
                    .get();
                (name, count)
            })
            .collect()
    }

    /// The gauge of upstream `name`'s address count.
    pub fn for_upstream_addresses(&self, name: &str) -> Gauge {
        self.upstream_addresses
            .get_or_create_owned(&UpstreamLabels {
                upstream: name.to_owned(),
            })
    }

    /// Each limited upstream's admission figures now (totals since start), by name.
    pub fn admission_figures(&self) -> Vec<(String, AdmissionFigures)> {
        let handed_out = self
            .admission
            .handed_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        handed_out
            .iter()
            .map(|(name, m)| {
                let figures = AdmissionFigures {
                    queued: m.queued.get().max(0) as u64,
                    admitted: m.admitted.get(),
                    rejected: m.rejected.get(),
                    limit: m.limit.get().max(0) as u64,
                };
                (name.clone(), figures)
            })
            .collect()
    }

    pub fn upstream_error(&self, route: &str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&ErrorLabels {
                route: route.to_owned(),
                kind,
            })
            .inc();
    }

    pub fn fleet_event(&self, event: crate::observe::fleet::FleetEvent) {
        self.fleet_events
            .get_or_create(&FleetLabels {
                event: event.as_str(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Upstream status classes, in the order of `RouteMetrics::upstream_requests`.
const STATUS_CLASSES: [&str; 6] = ["error", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// One route's metric handles, created once per route table.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    pub route: String,
    /// By status class: error (no response), then 1xx to 5xx.
    upstream_requests: [Counter; 6],
    requests: [Counter; Outcome::ALL.len()],
    response_bytes: [Counter; Outcome::ALL.len()],
    request_duration: [Histogram; Outcome::ALL.len()],
    pub upstream_duration: Histogram,
}

impl RouteMetrics {
    /// Counts an upstream request by the class of its status, or as `error` without one.
    pub fn upstream_response(&self, status: Option<http::StatusCode>) {
        let class = status.map_or(0, |s| usize::from(s.as_u16() / 100));
        self.upstream_requests[if (1..=5).contains(&class) { class } else { 0 }].inc();
    }

    /// Requests answered since start, by outcome, in [`Outcome::ALL`]'s order.
    pub fn requests_by_outcome(&self) -> [u64; Outcome::ALL.len()] {
        std::array::from_fn(|i| self.requests[i].get())
    }

    /// A request answered (its response head ready, or its client gone before one): counted
    /// at the same moment as the process totals (`Stats::record_request`), so the per-route
    /// counts always add up to them.
    pub fn request_answered(&self, outcome: Outcome) {
        self.requests[outcome as usize].inc();
    }

    /// A response that ended: its bytes and how long the request took.
    pub fn request_done(&self, outcome: Outcome, bytes: u64, seconds: f64) {
        let i = outcome as usize;
        self.response_bytes[i].inc_by(bytes);
        self.request_duration[i].observe(seconds);
    }
}
