//! Which address of an upstream a request goes to, and which addresses are healthy.
//!
//! Health is passive, as nginx's `max_fails`/`fail_timeout`: an address that fails `max_fails`
//! times within `fail_window` (connection refused, no head in time, a broken head) is taken
//! out for `fail_timeout`, then tried again. An upstream with a single address never takes it
//! out. `hash` uses rendezvous hashing on the request's
//! path and query (the heart of its coalescing key): a key always reaches the same address
//! while it is healthy, and only the keys of an address that fails move elsewhere.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::HeaderValue;

use crate::config::{Balance, UpstreamConfig};

#[derive(Debug)]
struct Endpoint {
    authority: Authority,
    /// `authority` as a `Host` header value.
    host: Option<HeaderValue>,
    /// Requests sent and not yet answered with a head, for `least_requests`.
    in_flight: AtomicUsize,
    health: Mutex<Health>,
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
    endpoints: Vec<Endpoint>,
    policy: Balance,
    next: AtomicUsize,
    max_fails: usize,
    fail_window: Duration,
    fail_timeout: Duration,
}

/// Counts a request in its address's `in_flight` until dropped.
pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn mix(key: u64, index: usize) -> u64 {
    // SplitMix64 of the pair: a well-spread score per (key, address).
    let mut z = key ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Balancer {
    pub fn new(config: &UpstreamConfig) -> Balancer {
        Balancer {
            endpoints: config
                .origins
                .iter()
                .filter_map(|uri| uri.authority().cloned())
                .map(|authority| Endpoint {
                    host: HeaderValue::from_str(authority.as_str()).ok(),
                    authority,
                    in_flight: AtomicUsize::new(0),
                    health: Mutex::new(Health::default()),
                })
                .collect(),
            policy: config.balance,
            next: AtomicUsize::new(0),
            max_fails: config.max_fails.max(1),
            fail_window: config.fail_window,
            fail_timeout: config.fail_timeout,
        }
    }

    fn available(&self, index: usize, now: Instant) -> bool {
        let health = self.endpoints[index]
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        health.ejected_until.is_none_or(|until| until <= now)
    }

    /// The address for a request whose path and query are `path_and_query`, or `None` when
    /// every address is out.
    pub fn pick(&self, path_and_query: &str) -> Option<usize> {
        let now = Instant::now();
        let count = self.endpoints.len();
        let candidates: Vec<usize> = (0..count).filter(|&i| self.available(i, now)).collect();
        if candidates.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        Some(match self.policy {
            Balance::RoundRobin => candidates[start % candidates.len()],
            Balance::LeastRequests => {
                let rotated = candidates
                    .iter()
                    .cycle()
                    .skip(start % candidates.len())
                    .take(candidates.len());
                *rotated
                    .min_by_key(|&&i| self.endpoints[i].in_flight.load(Ordering::Relaxed))
                    .unwrap_or(&candidates[0])
            }
            Balance::Hash => {
                let mut hasher = DefaultHasher::new();
                path_and_query.hash(&mut hasher);
                let key = hasher.finish();
                *candidates
                    .iter()
                    .max_by_key(|&&i| mix(key, i))
                    .unwrap_or(&candidates[0])
            }
        })
    }

    pub fn authority(&self, index: usize) -> &Authority {
        &self.endpoints[index].authority
    }

    /// The `Host` header for address `index`, made once: cloning it costs no allocation.
    pub fn host(&self, index: usize) -> Option<&HeaderValue> {
        self.endpoints[index].host.as_ref()
    }

    pub fn start(&self, index: usize) -> InFlight<'_> {
        let counter = &self.endpoints[index].in_flight;
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }

    /// Records a failure of `index`; takes it out once it has failed `max_fails` times within
    /// `fail_window`.
    pub fn failed(&self, index: usize) {
        // As nginx does: a lone address is never taken out; there is nowhere else to go, and
        // answering 502 without trying would only stretch an outage.
        if self.endpoints.len() == 1 {
            return;
        }
        let now = Instant::now();
        let mut health = self.endpoints[index]
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
                address = %self.endpoints[index].authority,
                out_for = %humantime::format_duration(self.fail_timeout),
                "upstream address taken out after failing"
            );
        }
    }
}
