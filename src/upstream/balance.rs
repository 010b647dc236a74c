//! Which address of an upstream a request goes to, and which addresses are healthy.
//!
//! Health is passive, as nginx's `max_fails`/`fail_timeout`: an address that fails `max_fails`
//! times within `fail_window` (connection refused, no head in time, a broken head) is taken
//! out for `fail_timeout`, then tried again. An upstream with a single address never takes it
//! out. `hash` uses rendezvous hashing on the request's
//! path and query (the heart of its coalescing key): a key always reaches the same address
//! while it is healthy, and only the keys of an address that fails move elsewhere.
//!
//! The set of addresses can change while requests use it (`upstream::dns` replaces it when
//! DNS answers change): a request holds its address by `Arc`, so one that leaves the set
//! finishes its requests under way and is then gone; one that stays keeps its health.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::Authority;
use http::HeaderValue;

use crate::config::{Balance, UpstreamConfig};

/// One address of an upstream.
#[derive(Debug)]
pub struct Endpoint {
    /// Where connections go: as configured, or a resolved `IP:port`.
    authority: Authority,
    /// The `Host` header its requests carry: the configured authority, also for a resolved
    /// address (a backend behind a name expects that name).
    host: Option<HeaderValue>,
    /// Whether requests need their authority or `Host` rewritten from what hygiene wrote
    /// (the first configured address's).
    readdressed: bool,
    /// Rendezvous hashing's identity for it: from its authority, so that it stays put when
    /// other addresses come and go.
    id: u64,
    /// Requests sent and not yet answered with a head, for `least_requests`.
    in_flight: AtomicUsize,
    health: Mutex<Health>,
}

impl Endpoint {
    /// An address reached at `authority`, named `host` in requests.
    pub fn new(authority: Authority, host: &Authority, primary: &Authority) -> Endpoint {
        let mut hasher = DefaultHasher::new();
        authority.as_str().hash(&mut hasher);
        Endpoint {
            readdressed: authority != *primary || host != primary,
            host: HeaderValue::from_str(host.as_str()).ok(),
            id: hasher.finish(),
            authority,
            in_flight: AtomicUsize::new(0),
            health: Mutex::new(Health::default()),
        }
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The `Host` header for this address, made once: cloning it costs no allocation.
    pub fn host(&self) -> Option<&HeaderValue> {
        self.host.as_ref()
    }

    /// Whether a request addressed to the first configured address must be readdressed.
    pub fn readdressed(&self) -> bool {
        self.readdressed
    }

    /// Whether it takes requests now (not taken out by passive health).
    pub fn healthy(&self) -> bool {
        self.available(Instant::now())
    }

    /// Requests sent to it and not yet answered with a head.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn available(&self, now: Instant) -> bool {
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        health.ejected_until.is_none_or(|until| until <= now)
    }
}

#[derive(Debug, Default)]
struct Health {
    /// Failures within the window, oldest first.
    failures: VecDeque<Instant>,
    ejected_until: Option<Instant>,
}

/// The addresses of one upstream.
#[derive(Debug)]
pub struct Balancer {
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// The first configured address, which hygiene addresses requests to.
    primary: Authority,
    primary_host: Option<HeaderValue>,
    policy: Balance,
    next: AtomicUsize,
    max_fails: usize,
    fail_window: Duration,
    fail_timeout: Duration,
}

/// Counts a request in its address's `in_flight` until dropped.
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn mix(key: u64, id: u64) -> u64 {
    // SplitMix64 of the pair: a well-spread score per (key, address).
    let mut z = key ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Balancer {
    /// The configured addresses, as written (names are left to `upstream::dns`).
    pub fn new(config: &UpstreamConfig) -> Balancer {
        let authorities: Vec<Authority> = config
            .origins
            .iter()
            .filter_map(|uri| uri.authority().cloned())
            .collect();
        let primary = authorities
            .first()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("invalid"));
        let endpoints = authorities
            .into_iter()
            .map(|a| Arc::new(Endpoint::new(a.clone(), &a, &primary)))
            .collect();
        Balancer {
            endpoints: ArcSwap::from_pointee(endpoints),
            primary_host: HeaderValue::from_str(primary.as_str()).ok(),
            primary,
            policy: config.balance,
            next: AtomicUsize::new(0),
            max_fails: config.max_fails.max(1),
            fail_window: config.fail_window,
            fail_timeout: config.fail_timeout,
        }
    }

    /// The `Host` header hygiene gives requests: the first configured address's.
    pub fn primary_host(&self) -> Option<&HeaderValue> {
        self.primary_host.as_ref()
    }

    pub fn primary(&self) -> &Authority {
        &self.primary
    }

    /// The addresses now.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Replaces the addresses; requests under way keep the ones they hold.
    pub fn replace(&self, endpoints: Vec<Arc<Endpoint>>) {
        self.endpoints.store(Arc::new(endpoints));
    }

    /// The address for a request whose path and query are `path_and_query`, or `None` when
    /// every address is out.
    pub fn pick(&self, path_and_query: &str) -> Option<Arc<Endpoint>> {
        let now = Instant::now();
        let endpoints = self.endpoints.load();
        if let [only] = endpoints.as_slice() {
            // A lone address is never taken out (see `failed`).
            return Some(only.clone());
        }
        let candidates: Vec<&Arc<Endpoint>> =
            endpoints.iter().filter(|e| e.available(now)).collect();
        if candidates.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let picked = match self.policy {
            Balance::RoundRobin => candidates[start % candidates.len()],
            Balance::LeastRequests => {
                let rotated = candidates
                    .iter()
                    .cycle()
                    .skip(start % candidates.len())
                    .take(candidates.len());
                rotated
                    .min_by_key(|e| e.in_flight.load(Ordering::Relaxed))
                    .unwrap_or(&candidates[0])
            }
            Balance::Hash => {
                let mut hasher = DefaultHasher::new();
                path_and_query.hash(&mut hasher);
                let key = hasher.finish();
                candidates
                    .iter()
                    .max_by_key(|e| mix(key, e.id))
                    .unwrap_or(&candidates[0])
            }
        };
        Some(picked.clone())
    }

    pub fn start(&self, endpoint: &Arc<Endpoint>) -> InFlight {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(endpoint.clone())
    }

    /// Records a failure of `endpoint`; takes it out once it has failed `max_fails` times
    /// within `fail_window`.
    pub fn failed(&self, endpoint: &Endpoint) {
        // As nginx does: a lone address is never taken out; there is nowhere else to go, and
        // answering 502 without trying would only stretch an outage.
        if self.endpoints.load().len() <= 1 {
            return;
        }
        let now = Instant::now();
        let mut health = endpoint
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while health
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.fail_window)
        {
            health.failures.pop_front();
        }
        health.failures.push_back(now);
        if health.failures.len() >= self.max_fails {
            health.failures.clear();
            health.ejected_until = Some(now + self.fail_timeout);
            tracing::warn!(
                address = %endpoint.authority,
                out_for = %humantime::format_duration(self.fail_timeout),
                "upstream address taken out after failing"
            );
        }
    }
}
