//! The admin listener's status page: `GET /` serves one self-contained HTML page (embedded in
//! the binary: no external script, style or font), which polls `GET /status.json` every
//! second. The JSON is also documented for scripts (README, "Status page").
//!
//! What it shows is read from the live state, never stored for it: the flight table, the
//! counters, the balancers' addresses, the caches and the admission limits. Paths only, never
//! a query or a header value, as in the stats line.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::observe::history::History;
use crate::observe::outcome::Outcome;
use crate::proxy::Proxy;

/// The page, from `status.html` next to this file.
pub const PAGE: &str = include_str!("status.html");

/// Flights listed at most (the most-followed first): the page stays small under a flood of
/// distinct keys.
const FLIGHTS_SHOWN: usize = 50;

/// `/status.json`.
pub fn status_json(proxy: &Proxy, history: &History, started: Instant) -> Value {
    let totals = proxy.stats().snapshot();
    json!({
        "uptime_seconds": started.elapsed().as_secs(),
        "totals": {
            "requests": totals.requests,
            "leaders": totals.leaders,
            "followers": totals.followers,
            "passed": totals.passed,
            "cache_hits": totals.hits,
            "upstream_errors": totals.upstream_errors,
            "coalesce_ratio": round3(totals.coalesce_ratio()),
        },
        "flights": flights(proxy),
        "history": history.intervals().iter().map(|i| json!({
            "at": i.at,
            "requests": i.requests,
            "saved": i.saved,
            "coalesce_ratio": round3(i.coalesce_ratio),
        })).collect::<Vec<_>>(),
        "upstreams": upstreams(proxy),
        "routes": routes(proxy),
        "fleet": fleet(proxy, &totals),
        "admission": proxy.stats().metrics.admission_figures().iter().map(|(name, a)| json!({
            "upstream": name,
            "queued": a.queued,
            "limit": a.limit,
            "admitted": a.admitted,
            "rejected": a.rejected,
        })).collect::<Vec<_>>(),
    })
}

/// The fleet layer's counts since start, or `null` when no route has one.
fn fleet(proxy: &Proxy, totals: &crate::observe::stats::StatsSnapshot) -> Value {
    use crate::observe::fleet::FleetEvent;
    let stats = proxy.stats();
    if !stats
        .fleet_configured
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Value::Null;
    }
    let mut fleet = serde_json::Map::new();
    for (event, count) in FleetEvent::ALL.iter().zip(totals.fleet()) {
        fleet.insert(event.as_str().to_owned(), count.into());
    }
    let down = stats.metrics.fleet_redis_down.get().max(0);
    fleet.insert("redis_down".to_owned(), down.into());
    Value::Object(fleet)
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The flights in the air, most followers first: the top keys right now.
fn flights(proxy: &Proxy) -> Vec<Value> {
    let mut flights = proxy.coordinator().flights();
    flights.sort_by_key(|f| std::cmp::Reverse(f.followers()));
    flights
        .iter()
        .take(FLIGHTS_SHOWN)
        .map(|flight| {
            json!({
                "route": &*flight.scope.route,
                "path": flight.key.path(),
                "followers": flight.followers(),
                "bytes": flight.body_bytes(),
                "age_ms": flight.started.elapsed().as_millis() as u64,
            })
        })
        .collect()
}

/// Each upstream's addresses, with their health and requests awaiting a head.
fn upstreams(proxy: &Proxy) -> Vec<Value> {
    let mut seen = std::collections::BTreeMap::new();
    for route in proxy.routes() {
        let upstream = &route.upstream;
        seen.entry(upstream.config.name.clone())
            .or_insert_with(|| Arc::clone(upstream));
    }
    seen.iter()
        .map(|(name, upstream)| {
            let addresses: Vec<Value> = upstream
                .endpoints()
                .iter()
                .map(|e| {
                    json!({
                        "address": e.authority().as_str(),
                        "healthy": e.healthy(),
                        "in_flight": e.in_flight(),
                    })
                })
                .collect();
            json!({ "name": name, "addresses": addresses })
        })
        .collect()
}

/// Each route's requests by outcome, and its cache when it has one.
fn routes(proxy: &Proxy) -> Vec<Value> {
    proxy
        .routes()
        .iter()
        .map(|route| {
            let counts = route.metrics.requests_by_outcome();
            let count = |o: Outcome| counts[o as usize];
            let hits = count(Outcome::Hit) + count(Outcome::Stale);
            let total: u64 = counts.iter().sum();
            let cache = route.cache.as_ref().map(|cache| {
                json!({
                    "entries": cache.entry_count(),
                    "bytes": cache.weighted_size(),
                    "hits": hits,
                    "hit_ratio": if total == 0 { 0.0 } else { round3(hits as f64 / total as f64) },
                })
            });
            json!({
                "name": &*route.name,
                "requests": total,
                "leaders": count(Outcome::Leader),
                "followers": count(Outcome::Follower),
                "passed": count(Outcome::Pass),
                "cache": cache,
            })
        })
        .collect()
}
