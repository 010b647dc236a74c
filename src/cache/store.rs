//! One route's store: entries by key (a variant key under `Vary`), bounded by size with moka's
//! eviction, found by lookup, removed by purge or invalidation.

use std::sync::Arc;
use std::time::Instant;

use crate::observe::sharded::Counter;
use http::header::{self, HeaderMap, HeaderName};

use super::stored::StoredResponse;
use crate::config::CachePolicy;
use crate::observe::metrics::Metrics;
use crate::sharing::{self, Key};

/// What a lookup found.
#[derive(Debug)]
pub enum Found {
    Fresh(Arc<StoredResponse>),
    /// Past freshness but within its stale-while-revalidate window: serve it, refresh it.
    Stale(Arc<StoredResponse>),
    /// Past that too: a miss, though it may still stand in for an upstream failure.
    Expired(Arc<StoredResponse>),
    /// A `no-cache` response: served only after the upstream answers 304 to its validators.
    Revalidate(Arc<StoredResponse>),
}

impl Found {
    pub fn entry(&self) -> &Arc<StoredResponse> {
        match self {
            Found::Fresh(entry)
            | Found::Stale(entry)
            | Found::Expired(entry)
            | Found::Revalidate(entry) => entry,
        }
    }
}

/// One route's cache.
pub struct ResponseCache {
    /// What it was built with: a reload keeps the cache only while this stays the same.
    policy: CachePolicy,
    entries: moka::sync::Cache<Key, Arc<StoredResponse>>,
    /// Keys whose last stored response had `Vary`, with the header names it varied on.
    varies: moka::sync::Cache<Key, Arc<Vec<HeaderName>>>,
    /// When each recently invalidated path and query was invalidated (RFC 9111 §4.4), so
    /// that a response fetched before that moment is not stored after it.
    invalidated: moka::sync::Cache<String, Instant>,
    hits: Counter,
    misses: Counter,
    revalidations: Counter,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

/// Roughly what an entry costs: its body, its headers, and the bookkeeping around them.
fn weight(key: &Key, response: &Arc<StoredResponse>) -> u32 {
    let headers: usize = response
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    let total = response.body.len() + headers + key.path().len() + 256;
    u32::try_from(total).unwrap_or(u32::MAX)
}

impl ResponseCache {
    pub fn new(policy: &CachePolicy, metrics: &Metrics) -> ResponseCache {
        let evictions = metrics.cache_evictions.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(policy.max_size)
            .weigher(weight)
            .support_invalidation_closures()
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        ResponseCache {
            policy: policy.clone(),
            entries,
            varies: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .support_invalidation_closures()
                .build(),
            // Bounded, so a flood of unsafe requests costs little memory; no expiry, since an
            // entry invalidated long ago must stay invalid until it is gone.
            invalidated: moka::sync::Cache::builder().max_capacity(100_000).build(),
            hits: metrics.cache_hits.clone(),
            misses: metrics.cache_misses.clone(),
            revalidations: metrics.cache_revalidations.clone(),
        }
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// The stored response for a request with `key` (built as for a GET) and `headers`.
    pub fn lookup(&self, key: &Key, headers: &HeaderMap) -> Option<Found> {
        let entry = match self.varies.get(key) {
            Some(vary) => self.entries.get(&key.variant(&vary, headers)),
            None => self.entries.get(key),
        }
        .filter(|entry| !self.invalidated_since(key, entry.stored_at));
        let now = Instant::now();
        let found = entry.map(|entry| {
            if entry.always_revalidate {
                Found::Revalidate(entry)
            } else if entry.is_fresh(now) {
                Found::Fresh(entry)
            } else if entry.stale_for(now) <= entry.stale_while_revalidate {
                Found::Stale(entry)
            } else {
                Found::Expired(entry)
            }
        });
        let counter = match found {
            Some(Found::Fresh(_)) | Some(Found::Stale(_)) => &self.hits,
            _ => &self.misses,
        };
        counter.inc();
        found
    }

    /// Whether responses for `key` were last stored per `Vary` variant (a miss then is a
    /// `vary-miss`).
    pub fn varies_on(&self, key: &Key) -> bool {
        self.varies.contains_key(key)
    }

    /// Counts a background refresh sent upstream.
    pub fn count_revalidation(&self) {
        self.revalidations.inc();
    }

    /// Stores `entry`, a complete response fetched for a request with `key` and
    /// `request_headers` and sent upstream at `sent` (unless its resource was invalidated
    /// since).
    pub(super) fn store(
        &self,
        key: Key,
        request_headers: &HeaderMap,
        sent: Instant,
        entry: StoredResponse,
    ) {
        if self.invalidated_since(&key, sent) {
            return;
        }
        let vary: Vec<HeaderName> = sharing::tokens(&entry.headers, &header::VARY)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        let entry = Arc::new(entry);
        if vary.is_empty() {
            self.varies.invalidate(&key);
            self.entries.insert(key, entry);
        } else {
            let variant = key.variant(&vary, request_headers);
            self.varies.insert(key, Arc::new(vary));
            self.entries.insert(variant, entry);
        }
    }

    /// Removes every entry whose path matches (starts with `path`, or equals it when
    /// `exact`); returns how many.
    pub fn purge(&self, path: &str, exact: bool) -> u64 {
        let matches = move |key: &Key, path: &str| {
            if exact {
                key.path() == path
            } else {
                key.path().starts_with(path)
            }
        };
        let doomed: Vec<Arc<Key>> = self
            .entries
            .iter()
            .filter(|(key, _)| matches(key, path))
            .map(|(key, _)| key)
            .collect();
        for key in &doomed {
            self.entries.invalidate(key.as_ref());
        }
        let path = path.to_owned();
        let _ = self
            .varies
            .invalidate_entries_if(move |key, _| matches(key, &path));
        doomed.len() as u64
    }

    /// Removes every entry whose `Surrogate-Key` names `tag`; returns how many.
    pub fn purge_tag(&self, tag: &str) -> u64 {
        let doomed: Vec<Arc<Key>> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.has_surrogate_key(tag))
            .map(|(key, _)| key)
            .collect();
        for key in &doomed {
            self.entries.invalidate(key.as_ref());
        }
        doomed.len() as u64
    }

    /// Invalidates every stored response for `path_and_query`, all its variants (RFC 9111
    /// §4.4): from now on lookups do not find them, and a response fetched before now is not
    /// stored. O(1): the entries themselves go when next looked up, evicted or replaced.
    pub fn invalidate(&self, path_and_query: &str) {
        self.invalidated
            .insert(path_and_query.to_owned(), Instant::now());
    }

    /// Whether `entry`, stored under `key`, was invalidated after it was stored.
    fn invalidated_since(&self, key: &Key, stored_at: Instant) -> bool {
        self.invalidated
            .get(key.path_and_query())
            .is_some_and(|at| at >= stored_at)
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}
