//! RFC 9111 decisions as pure functions: whether a response may be stored, and for how long
//! it is fresh and may be served stale. Section numbers are RFC 9111's unless named.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;

use super::directives::{delta_seconds, CacheControl};
use crate::config::CachePolicy;

/// How long a stored response may be served, fresh and stale.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// Zero for a `no-cache` response, which is stored only to be revalidated.
    pub fresh_for: Duration,
    pub initial_age: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// How long stale it may stand in when the upstream cannot be reached (the route's
    /// `stale_if_unreachable`, or `stale_if_error` if longer); zero when its directives forbid
    /// serving it stale.
    pub stale_if_unreachable: Duration,
    pub always_revalidate: bool,
}

/// Statuses a cache may give heuristic freshness (RFC 9110 §15.1): any other needs explicit
/// freshness to be stored.
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The longest heuristic freshness given, whatever `Last-Modified` says: a day, past which
/// RFC 7234 had caches warn (`113 Heuristic Expiration`).
const MAX_HEURISTIC: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a response may be served from the cache, or `None` if it must not be stored.
/// The policy's targeted fields (RFC 9213), the first one present and valid, replace
/// `Cache-Control` and `Expires`.
pub fn freshness(
    policy: &CachePolicy,
    status: StatusCode,
    headers: &HeaderMap,
    request_has_authorization: bool,
) -> Option<Freshness> {
    freshness_at(
        policy,
        status,
        headers,
        request_has_authorization,
        SystemTime::now(),
    )
}

/// [`freshness`] with the time the response arrived given, for tests.
pub fn freshness_at(
    policy: &CachePolicy,
    status: StatusCode,
    headers: &HeaderMap,
    request_has_authorization: bool,
    now: SystemTime,
) -> Option<Freshness> {
    // §3: a final status; 304 renews a stored response and is never stored itself. A 206
    // is stored only as the part its `Content-Range` names (§3.3, `partial`).
    if status.is_informational() || status == StatusCode::NOT_MODIFIED {
        return None;
    }
    let targeted = targeted_directives(&policy.targeted_fields, headers);
    let directives = targeted
        .clone()
        .unwrap_or_else(|| CacheControl::parse(headers.get_all(header::CACHE_CONTROL)));
    if directives.has("no-store") || directives.has("private") {
        return None;
    }
    // no-cache: stored, but only ever served after the upstream confirms it with a 304,
    // which needs a validator to ask with.
    let no_cache = directives.has("no-cache");
    let has_validator =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    if no_cache && !has_validator {
        return None;
    }
    // §3.5: a response to a request with credentials is stored only when it says it may be.
    if request_has_authorization
        && !(directives.has("public")
            || directives.has("s-maxage")
            || directives.has("must-revalidate"))
    {
        return None;
    }
    let date = header_date(headers, &header::DATE);
    // A targeted field replaces Expires too (RFC 9213 §2.2).
    let expires = match targeted {
        Some(_) => None,
        None => expires(headers, date.unwrap_or(now)),
    };
    // §4.2.1: s-maxage for a shared cache, then max-age, then Expires; else heuristics.
    let explicit = directives
        .seconds("s-maxage")
        .or_else(|| directives.seconds("max-age"))
        .map(Duration::from_secs)
        .or(expires);
    let lifetime = match explicit {
        Some(lifetime) => lifetime,
        // Revalidated before every use: its lifetime does not matter.
        None if no_cache => Duration::ZERO,
        // Without explicit freshness, a response is stored only for as long as heuristics
        // give it; none means not at all.
        None if directives.has("public") || heuristically_cacheable(status) => {
            Some(heuristic(policy, headers, date.unwrap_or(now))).filter(|h| !h.is_zero())?
        }
        None => return None,
    };
    let initial_age = initial_age(headers, date, now);
    let stored = Stored {
        no_cache,
        has_validator,
    };
    stored.freshness(policy, &directives, lifetime, initial_age)
}

/// What the storage checks found, for the last step.
struct Stored {
    /// `no-cache`: stored only to be revalidated before every use.
    no_cache: bool,
    /// An `ETag` or `Last-Modified` to revalidate with.
    has_validator: bool,
}

impl Stored {
    /// The freshness of a response with `lifetime` that was `initial_age` old on arrival, and
    /// the stale windows its directives (or the route's `grace`) allow; `None` when it would
    /// never be fresh nor servable stale nor revalidated, so is not worth storing.
    fn freshness(
        &self,
        policy: &CachePolicy,
        directives: &CacheControl,
        lifetime: Duration,
        initial_age: Duration,
    ) -> Option<Freshness> {
        // §5.2.2.2 and §5.2.2.8: once stale, must-revalidate and proxy-revalidate responses are
        // never served without a successful revalidation, whatever else would allow it; and
        // §5.2.2.10: s-maxage carries proxy-revalidate's meaning for a shared cache.
        let revalidate_when_stale = directives.has("must-revalidate")
            || directives.has("proxy-revalidate")
            || directives.has("s-maxage");
        let window = |name: &str| match directives.seconds(name) {
            _ if revalidate_when_stale => Duration::ZERO,
            Some(seconds) => Duration::from_secs(seconds),
            None => policy.grace,
        };
        if self.no_cache {
            return Some(Freshness {
                fresh_for: Duration::ZERO,
                initial_age,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                stale_if_unreachable: Duration::ZERO,
                always_revalidate: true,
            });
        }
        let fresh_for = lifetime.saturating_sub(initial_age);
        let stale_while_revalidate = window("stale-while-revalidate");
        let stale_if_error = window("stale-if-error");
        // A response that is never fresh is worth storing only to revalidate (it has a
        // validator) or to serve stale as it allows.
        let worth_storing = !fresh_for.is_zero()
            || self.has_validator
            || !stale_while_revalidate.is_zero()
            || !stale_if_error.is_zero();
        let stale_if_unreachable = match revalidate_when_stale {
            true => Duration::ZERO,
            false => policy.stale_if_unreachable.max(stale_if_error),
        };
        worth_storing.then_some(Freshness {
            fresh_for,
            initial_age,
            stale_while_revalidate,
            stale_if_error,
            stale_if_unreachable,
            always_revalidate: false,
        })
    }
}

/// The response's fields as this cache reads them: when a targeted field applies (RFC 9213
/// §2.2), its value stands in for `Cache-Control`, so that rules about `Cache-Control` (the
/// coalescing layer's `not_shareable`, above all) see what this cache was told. Borrowed
/// unchanged otherwise.
pub fn as_targeted<'a>(
    policy: Option<&CachePolicy>,
    headers: &'a HeaderMap,
) -> std::borrow::Cow<'a, HeaderMap> {
    let Some(name) = policy.and_then(|policy| {
        policy.targeted_fields.iter().find(|name| {
            let values = headers.get_all(*name);
            values.iter().next().is_some() && CacheControl::parse_targeted(values).is_some()
        })
    }) else {
        return std::borrow::Cow::Borrowed(headers);
    };
    let mut targeted = headers.clone();
    targeted.remove(header::CACHE_CONTROL);
    targeted.remove(header::EXPIRES);
    for value in headers.get_all(name) {
        targeted.append(header::CACHE_CONTROL, value.clone());
    }
    std::borrow::Cow::Owned(targeted)
}

/// The directives of the first of `fields` present with a valid, non-empty value (RFC 9213
/// §2.2), or `None` when `Cache-Control` applies.
fn targeted_directives(fields: &[HeaderName], headers: &HeaderMap) -> Option<CacheControl> {
    fields.iter().find_map(|name| {
        let values = headers.get_all(name);
        values.iter().next()?;
        CacheControl::parse_targeted(values)
    })
}

/// The lifetime `Expires` gives, measured from `date` (§5.3); an `Expires` that does not
/// parse means "already expired".
fn expires(headers: &HeaderMap, date: SystemTime) -> Option<Duration> {
    let value = headers.get(header::EXPIRES)?;
    let Some(expires) = value
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return Some(Duration::ZERO);
    };
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// Heuristic freshness (§4.2.2): the route's `default_ttl` when it sets one, else
/// `heuristic_fraction` of the time since `Last-Modified`, at most a day.
fn heuristic(policy: &CachePolicy, headers: &HeaderMap, date: SystemTime) -> Duration {
    if !policy.default_ttl.is_zero() {
        return policy.default_ttl;
    }
    let Some(modified) = header_date(headers, &header::LAST_MODIFIED) else {
        return Duration::ZERO;
    };
    let since = date.duration_since(modified).unwrap_or(Duration::ZERO);
    since.mul_f64(policy.heuristic_fraction).min(MAX_HEURISTIC)
}

/// The age a response is given when its `Age` is not one non-negative integer: older than
/// anything, so it is stale at once. §1.2.2's ceiling for a value too large to represent.
const UNREADABLE_AGE: Duration = Duration::from_secs(2_147_483_648);

/// The response's age when it arrived (§4.2.3): the larger of its `Age` and the time since
/// its `Date`. An `Age` field that is not a single `delta-seconds` (§5.1: a list, a suffix, a
/// sign, a fraction) says nothing trustworthy about how old the response is, so it is taken
/// as very old rather than as new: the response is stale, never fresh on a guess.
/// A response's age at `now` when it was received at `received` (RFC 9111 §4.2.3): its
/// corrected initial age then, plus the time it has been resident since. What a response
/// handed on by another cache (the fleet layer's Redis) says in `Age`.
pub fn current_age(headers: &HeaderMap, received: SystemTime, now: SystemTime) -> Duration {
    let date = header_date(headers, &header::DATE);
    let resident = now.duration_since(received).unwrap_or_default();
    initial_age(headers, date, received) + resident
}

fn initial_age(headers: &HeaderMap, date: Option<SystemTime>, now: SystemTime) -> Duration {
    let mut values = headers.get_all(header::AGE).iter();
    let age_value = match (values.next(), values.next()) {
        (None, _) => Duration::ZERO,
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|text| delta_seconds(text.trim()))
            .map_or(UNREADABLE_AGE, Duration::from_secs),
        (Some(_), Some(_)) => UNREADABLE_AGE,
    };
    // Whole seconds, as `Date` has: a response dated this second is not a second old.
    let apparent = date
        .and_then(|date| now.duration_since(date).ok())
        .map_or(Duration::ZERO, |d| Duration::from_secs(d.as_secs()));
    age_value.max(apparent)
}

fn header_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}
