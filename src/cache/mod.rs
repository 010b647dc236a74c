//! The response cache in front of the singleflight table, opt-in per route.
//!
//! A request looks here first; a fresh entry is served from memory (outcome `hit`) with an
//! `Age` header. A miss goes through the singleflight as usual, and the flight stores its
//! response when it completes, if the response may be stored: shareable, not `no-store`, not
//! `no-cache` (revalidation is not built yet), a cacheable status, fresh for a while (from
//! `s-maxage`, `max-age`, `Expires` and `Age`, else the route's `default_ttl`), and small
//! enough that the flight still held all of it (`max_replay_body`). `Vary` is honoured by
//! storing each variant under its own key. Memory is bounded by size with moka's eviction.
//!
//! This module decides what is fresh and stores and finds entries; the proxy decides when to
//! look and serves what it finds.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use crate::coalesce::sharing;
use crate::coalesce::Key;
use crate::config::CachePolicy;
use crate::observe::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;

/// A stored response.
#[derive(Debug)]
pub struct StoredResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    stored_at: Instant,
    /// The response's age when it was stored (its `Age` header).
    initial_age: Duration,
    /// How long after `stored_at` it stays fresh.
    fresh_for: Duration,
    /// How long past freshness it may be served while one refresh runs (RFC 5861
    /// `stale-while-revalidate`, else the route's `grace`).
    stale_while_revalidate: Duration,
    /// How long past freshness it may be served when the upstream fails (`stale-if-error`,
    /// else `grace`).
    stale_if_error: Duration,
    /// `Cache-Control: no-cache`: never served without a successful revalidation.
    always_revalidate: bool,
}

impl StoredResponse {
    fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        !self.always_revalidate && now.saturating_duration_since(self.stored_at) < self.fresh_for
    }

    /// The conditional headers that revalidate it: `If-None-Match` from its `ETag`,
    /// `If-Modified-Since` from its `Last-Modified`. Empty when it has neither.
    pub fn validators(&self) -> HeaderMap {
        let mut validators = HeaderMap::new();
        if let Some(etag) = self.headers.get(header::ETAG) {
            validators.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = self.headers.get(header::LAST_MODIFIED) {
            validators.insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
        validators
    }

    /// The stored response renewed by a 304's header fields (RFC 9111 §4.3.4), with the
    /// freshness they give it; `None` if it may no longer be stored.
    pub fn renewed_by(
        &self,
        not_modified: &HeaderMap,
        policy: &CachePolicy,
        request_has_authorization: bool,
    ) -> Option<(HeaderMap, Freshness)> {
        let mut headers = self.headers.clone();
        let replaced =
            |name: &HeaderName| name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING;
        for name in not_modified.keys().filter(|n| replaced(n)) {
            headers.remove(name);
        }
        for (name, value) in not_modified.iter().filter(|(n, _)| replaced(n)) {
            headers.append(name.clone(), value.clone());
        }
        let freshness = freshness(policy, self.status, &headers, request_has_authorization)?;
        Some((headers, freshness))
    }

    fn stale_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
            .saturating_sub(self.fresh_for)
    }

    /// Whether it may stand in for an upstream failure now.
    pub fn may_serve_on_error(&self, now: Instant) -> bool {
        self.stale_for(now) <= self.stale_if_error
    }

    /// The value of the `Age` header to send now, in whole seconds.
    pub fn age_header(&self, now: Instant) -> HeaderValue {
        HeaderValue::from(self.age(now).as_secs())
    }
}

/// How long a stored response may be served, fresh and stale.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// Zero for a `no-cache` response, which is stored only to be revalidated.
    pub fresh_for: Duration,
    pub initial_age: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub always_revalidate: bool,
}

/// How long a response may be served from the cache, or `None` if it must not be stored.
pub fn freshness(
    policy: &CachePolicy,
    status: StatusCode,
    headers: &HeaderMap,
    request_has_authorization: bool,
) -> Option<Freshness> {
    // RFC 9111 §3: statuses a shared cache may store, with explicit or default freshness.
    if !matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 404 | 410) {
        return None;
    }
    let directives: Vec<(String, Option<u64>)> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            let (name, value) = d.split_once('=').unwrap_or((d, ""));
            let value = value.trim().trim_matches('"').parse().ok();
            (name.trim().to_ascii_lowercase(), value)
        })
        .collect();
    let has = |name: &str| directives.iter().any(|(n, _)| n == name);
    let seconds = |name: &str| {
        directives
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| *v)
    };
    if has("no-store") || has("private") {
        return None;
    }
    // no-cache: stored, but only ever served after the upstream confirms it with a 304,
    // which needs a validator to ask with.
    let no_cache = has("no-cache");
    if no_cache
        && !(headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED))
    {
        return None;
    }
    // A response to a request with credentials is stored only when it says it may be
    // (RFC 9111 §3.5).
    if request_has_authorization && !(has("public") || has("s-maxage") || has("must-revalidate")) {
        return None;
    }
    let lifetime = if let Some(s) = seconds("s-maxage").or_else(|| seconds("max-age")) {
        Duration::from_secs(s)
    } else if let Some(expires) = header_date(headers, &header::EXPIRES) {
        let date = header_date(headers, &header::DATE).unwrap_or_else(SystemTime::now);
        expires.duration_since(date).unwrap_or(Duration::ZERO)
    } else if headers.contains_key(header::EXPIRES) {
        // An Expires that does not parse means "already expired" (RFC 9111 §5.3).
        Duration::ZERO
    } else {
        policy.default_ttl
    };
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let window = |name: &str| seconds(name).map_or(policy.grace, Duration::from_secs);
    if no_cache {
        return Some(Freshness {
            fresh_for: Duration::ZERO,
            initial_age: age,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            always_revalidate: true,
        });
    }
    let fresh_for = lifetime.checked_sub(age)?;
    (!fresh_for.is_zero()).then_some(Freshness {
        fresh_for,
        initial_age: age,
        stale_while_revalidate: window("stale-while-revalidate"),
        stale_if_error: window("stale-if-error"),
        always_revalidate: false,
    })
}

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

fn header_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

/// One route's cache.
pub struct ResponseCache {
    entries: moka::sync::Cache<Key, Arc<StoredResponse>>,
    /// Keys whose last stored response had `Vary`, with the header names it varied on.
    varies: moka::sync::Cache<Key, Arc<Vec<HeaderName>>>,
    /// Keys being refreshed in the background now: at most one refresh per key.
    refreshing: std::sync::Mutex<std::collections::HashSet<Key>>,
    hits: Counter,
    misses: Counter,
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
            entries,
            varies: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .support_invalidation_closures()
                .build(),
            refreshing: Default::default(),
            hits: metrics.cache_hits.clone(),
            misses: metrics.cache_misses.clone(),
        }
    }

    /// The stored response for a request with `key` (built as for a GET) and `headers`.
    pub fn lookup(&self, key: &Key, headers: &HeaderMap) -> Option<Found> {
        let entry = match self.varies.get(key) {
            Some(vary) => self.entries.get(&key.variant(&vary, headers)),
            None => self.entries.get(key),
        };
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

    /// Claims the one background refresh of `key`; false if one is running.
    pub fn begin_refresh(&self, key: &Key) -> bool {
        self.refreshing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone())
    }

    pub fn end_refresh(&self, key: &Key) {
        self.refreshing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// Stores a complete response fetched for a request with `key` and `request_headers`.
    pub fn store(
        &self,
        key: Key,
        request_headers: &HeaderMap,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        freshness: Freshness,
    ) {
        let vary: Vec<HeaderName> = sharing::tokens(&headers, &header::VARY)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        let entry = Arc::new(StoredResponse {
            status,
            headers,
            body,
            stored_at: Instant::now(),
            initial_age: freshness.initial_age,
            fresh_for: freshness.fresh_for,
            stale_while_revalidate: freshness.stale_while_revalidate,
            stale_if_error: freshness.stale_if_error,
            always_revalidate: freshness.always_revalidate,
        });
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

    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CachePolicy {
        CachePolicy {
            max_size: 1 << 20,
            default_ttl: Duration::ZERO,
            grace: Duration::ZERO,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn fresh(pairs: &[(&str, &str)]) -> Option<u64> {
        freshness(&policy(), StatusCode::OK, &headers(pairs), false).map(|f| f.fresh_for.as_secs())
    }

    fn stored(pairs: &[(&str, &str)], fresh_for: u64, initial_age: u64) -> StoredResponse {
        StoredResponse {
            status: StatusCode::OK,
            headers: headers(pairs),
            body: Bytes::from_static(b"stored body"),
            stored_at: Instant::now(),
            initial_age: Duration::from_secs(initial_age),
            fresh_for: Duration::from_secs(fresh_for),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            always_revalidate: false,
        }
    }

    #[test]
    fn a_304_replaces_stored_fields_but_never_the_framing() {
        // RFC 9111 §4.3.4: the 304's fields replace the stored ones, except those that
        // describe the stored body's framing.
        let entry = stored(
            &[
                ("content-length", "11"),
                ("etag", "\"v1\""),
                ("x-kept", "yes"),
                ("cache-control", "max-age=1"),
            ],
            1,
            0,
        );
        let not_modified = headers(&[
            ("content-length", "0"),
            ("transfer-encoding", "chunked"),
            ("etag", "\"v2\""),
            ("cache-control", "max-age=30"),
        ]);
        let (renewed, fresh) = entry
            .renewed_by(&not_modified, &policy(), false)
            .expect("still storable");
        assert_eq!(renewed["content-length"], "11");
        assert!(!renewed.contains_key("transfer-encoding"));
        assert_eq!(renewed["etag"], "\"v2\"");
        assert_eq!(renewed["x-kept"], "yes");
        assert_eq!(renewed.get_all("cache-control").iter().count(), 1);
        assert_eq!(fresh.fresh_for, Duration::from_secs(30));
        // A 304 that makes it unstorable ends it.
        let private = headers(&[("cache-control", "private")]);
        assert!(entry.renewed_by(&private, &policy(), false).is_none());
    }

    #[test]
    fn age_is_the_age_on_arrival_plus_the_time_held() {
        let entry = stored(&[], 60, 7);
        let now = entry.stored_at;
        assert_eq!(entry.age(now), Duration::from_secs(7));
        assert_eq!(
            entry.age(now + Duration::from_secs(3)),
            Duration::from_secs(10)
        );
        assert_eq!(entry.age_header(now + Duration::from_millis(2500)), "9");
        assert!(entry.is_fresh(now + Duration::from_secs(59)));
        assert!(!entry.is_fresh(now + Duration::from_secs(60)));
    }

    #[test]
    fn freshness_comes_from_each_header_in_order() {
        assert_eq!(fresh(&[("cache-control", "max-age=60")]), Some(60));
        assert_eq!(
            fresh(&[("cache-control", "max-age=60, s-maxage=5")]),
            Some(5)
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=60"), ("age", "50")]),
            Some(10)
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=60"), ("age", "70")]),
            None
        );
        assert_eq!(
            fresh(&[
                ("date", "Thu, 26 Nov 2026 10:00:00 GMT"),
                ("expires", "Thu, 26 Nov 2026 10:00:30 GMT")
            ]),
            Some(30)
        );
        assert_eq!(fresh(&[("expires", "0")]), None);
        assert_eq!(
            fresh(&[]),
            None,
            "default_ttl 0: nothing stored without freshness"
        );
        for never in ["no-store", "private", "no-cache", "max-age=60, private"] {
            // (no-cache without a validator: nothing to revalidate with)
            assert_eq!(fresh(&[("cache-control", never)]), None, "{never}");
        }
        let mut with_default = policy();
        with_default.default_ttl = Duration::from_secs(7);
        let found = freshness(&with_default, StatusCode::OK, &HeaderMap::new(), false);
        assert_eq!(found.map(|f| f.fresh_for.as_secs()), Some(7));
        assert!(freshness(
            &policy(),
            StatusCode::PARTIAL_CONTENT,
            &headers(&[("cache-control", "max-age=9")]),
            false
        )
        .is_none());
        assert!(freshness(
            &policy(),
            StatusCode::OK,
            &headers(&[("cache-control", "max-age=9")]),
            true
        )
        .is_none());
        assert!(freshness(
            &policy(),
            StatusCode::OK,
            &headers(&[("cache-control", "public, max-age=9")]),
            true
        )
        .is_some());
    }
}
