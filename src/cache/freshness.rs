//! RFC 9111 decisions as pure functions: whether a response may be stored, and for how long
//! it is fresh and may be served stale.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;

use crate::config::CachePolicy;

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

fn header_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}
