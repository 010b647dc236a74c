//! Unit tests of the freshness rules and the stored response's arithmetic.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::*;
use crate::config::CachePolicy;

fn policy() -> CachePolicy {
    CachePolicy {
        max_size: 1 << 20,
        default_ttl: Duration::ZERO,
        grace: Duration::ZERO,
        stale_if_unreachable: Duration::from_secs(24 * 60 * 60),
        heuristic_fraction: 0.1,
        targeted_fields: vec![
            HeaderName::from_static("coalesce-proxy-cache-control"),
            HeaderName::from_static("cdn-cache-control"),
        ],
        status_name: "coalesce-proxy".into(),
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
    fresh_with(StatusCode::OK, pairs)
}

/// Freshness in seconds for a response with `status` and `pairs`, arriving at `NOW`.
fn fresh_with(status: StatusCode, pairs: &[(&str, &str)]) -> Option<u64> {
    freshness_at(&policy(), status, &headers(pairs), false, now()).map(|f| f.fresh_for.as_secs())
}

/// The moment responses in these tests arrive: 10:00:00 on 26 November 2026.
fn now() -> std::time::SystemTime {
    httpdate::parse_http_date("Thu, 26 Nov 2026 10:00:00 GMT").unwrap()
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
        stale_if_unreachable: Duration::ZERO,
        always_revalidate: false,
        part: None,
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
        "no explicit freshness and no Last-Modified: nothing to go on"
    );
    for never in ["no-store", "private", "no-cache", "max-age=60, private"] {
        // (no-cache without a validator: nothing to revalidate with)
        assert_eq!(fresh(&[("cache-control", never)]), None, "{never}");
    }
    let mut with_default = policy();
    with_default.default_ttl = Duration::from_secs(7);
    let found = freshness_at(
        &with_default,
        StatusCode::OK,
        &HeaderMap::new(),
        false,
        now(),
    );
    assert_eq!(found.map(|f| f.fresh_for.as_secs()), Some(7));
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

#[test]
fn rfc9111_5_2_2_10_s_maxage_overrides_max_age_and_expires_even_when_longer() {
    assert_eq!(
        fresh(&[("cache-control", "max-age=5, s-maxage=60")]),
        Some(60)
    );
    assert_eq!(
        fresh(&[
            ("cache-control", "s-maxage=60"),
            ("date", "Thu, 26 Nov 2026 10:00:00 GMT"),
            ("expires", "Thu, 26 Nov 2026 10:00:05 GMT"),
        ]),
        Some(60)
    );
}

#[test]
fn rfc9111_5_2_quoted_or_malformed_delta_seconds_are_ignored() {
    assert_eq!(fresh(&[("cache-control", "max-age=\"3600\"")]), None);
    assert_eq!(fresh(&[("cache-control", "max-age=60s")]), None);
    assert_eq!(
        fresh(&[("cache-control", "max-age=\"3600\", s-maxage=10")]),
        Some(10)
    );
}

#[test]
fn rfc9111_5_1_an_age_that_is_not_one_number_makes_it_stale_and_a_late_date_adds_age() {
    // cache-tests' `age-parse-suffix` and its neighbours: a list, a suffix, a sign, a
    // fraction. Stale at once, so (with no validator) not worth storing.
    for age in ["old, 0", "50x", "-5", "+5", "1.5", "0, 0"] {
        let response = [("cache-control", "max-age=60"), ("age", age)];
        assert_eq!(fresh(&response), None, "Age: {age}");
    }
    let two_lines = [("cache-control", "max-age=60"), ("age", "0"), ("age", "0")];
    assert_eq!(fresh(&two_lines), None);
    assert_eq!(
        fresh(&[("cache-control", "max-age=60"), ("age", "5")]),
        Some(55)
    );
    // §4.2.3: the apparent age (arrival minus Date) counts when it is larger than Age.
    assert_eq!(
        fresh(&[
            ("cache-control", "max-age=60"),
            ("date", "Thu, 26 Nov 2026 09:59:20 GMT"),
            ("age", "10"),
        ]),
        Some(20)
    );
}

#[test]
fn rfc9111_3_any_status_with_explicit_freshness_is_stored_others_only_heuristically() {
    for status in [302, 307, 400, 403, 500, 503] {
        let status = StatusCode::from_u16(status).unwrap();
        assert_eq!(
            fresh_with(status, &[("cache-control", "max-age=9")]),
            Some(9),
            "{status}"
        );
        assert_eq!(
            fresh_with(
                status,
                &[("last-modified", "Wed, 25 Nov 2026 10:00:00 GMT")]
            ),
            None,
            "{status} is not heuristically cacheable"
        );
    }
    // RFC 9110 §15.3.7: a 206 is heuristically cacheable; whether its part can be stored is
    // the `Content-Range`'s to say (`partial`).
    assert_eq!(
        fresh_with(
            StatusCode::PARTIAL_CONTENT,
            &[("cache-control", "max-age=9")]
        ),
        Some(9)
    );
    for never in [304, 103] {
        let status = StatusCode::from_u16(never).unwrap();
        assert_eq!(
            fresh_with(status, &[("cache-control", "max-age=9")]),
            None,
            "{status}"
        );
    }
}

#[test]
fn rfc9111_4_2_2_heuristic_freshness_is_a_tenth_of_the_time_since_last_modified() {
    let modified_a_day_ago = [
        ("date", "Thu, 26 Nov 2026 10:00:00 GMT"),
        ("last-modified", "Wed, 25 Nov 2026 10:00:00 GMT"),
    ];
    for status in [200, 301, 404, 410, 501] {
        let status = StatusCode::from_u16(status).unwrap();
        assert_eq!(
            fresh_with(status, &modified_a_day_ago),
            Some(8640),
            "{status}"
        );
    }
    // At most a day, however old the resource.
    assert_eq!(
        fresh(&[("last-modified", "Thu, 01 Jan 2015 00:00:00 GMT")]),
        Some(86400)
    );
    let mut off = policy();
    off.heuristic_fraction = 0.0;
    assert!(freshness_at(
        &off,
        StatusCode::OK,
        &headers(&modified_a_day_ago),
        false,
        now()
    )
    .is_none());
}

#[test]
fn rfc9111_5_2_2_2_must_revalidate_and_proxy_revalidate_allow_no_stale_serving() {
    let mut generous = policy();
    generous.grace = Duration::from_secs(30);
    for directive in ["must-revalidate", "proxy-revalidate"] {
        let h = headers(&[(
            "cache-control",
            &format!("max-age=10, stale-while-revalidate=60, stale-if-error=60, {directive}"),
        )]);
        let f = freshness_at(&generous, StatusCode::OK, &h, false, now()).expect("stored");
        assert_eq!(f.stale_while_revalidate, Duration::ZERO, "{directive}");
        assert_eq!(f.stale_if_error, Duration::ZERO, "{directive}");
    }
}

#[test]
fn rfc9111_4_2_4_stale_only_when_the_response_or_the_operator_allows_it() {
    let h = headers(&[("cache-control", "max-age=10")]);
    let f = freshness_at(&policy(), StatusCode::OK, &h, false, now()).expect("stored");
    assert_eq!(
        (f.stale_while_revalidate, f.stale_if_error),
        (Duration::ZERO, Duration::ZERO)
    );
    let h = headers(&[(
        "cache-control",
        "max-age=10, stale-while-revalidate=7, stale-if-error=9",
    )]);
    let f = freshness_at(&policy(), StatusCode::OK, &h, false, now()).expect("stored");
    assert_eq!(f.stale_while_revalidate, Duration::from_secs(7));
    assert_eq!(f.stale_if_error, Duration::from_secs(9));
}

/// §4.2.4: a disconnected cache may serve stale, for the route's `stale_if_unreachable` (or
/// the response's own longer `stale-if-error`); §5.2.2.2, §5.2.2.4, §5.2.2.8 and §5.2.2.10:
/// never a response that must be revalidated once stale.
#[test]
fn rfc9111_4_2_4_an_unreachable_upstream_allows_stale_unless_a_directive_forbids_it() {
    let day = Duration::from_secs(24 * 60 * 60);
    let window = |cache_control: &str| {
        let h = headers(&[("cache-control", cache_control), ("etag", "\"v1\"")]);
        let f = freshness_at(&policy(), StatusCode::OK, &h, false, now()).expect("stored");
        f.stale_if_unreachable
    };
    assert_eq!(window("max-age=10"), day);
    assert_eq!(window("max-age=10, stale-if-error=172800"), 2 * day);
    for forbidding in [
        "max-age=10, must-revalidate",
        "max-age=10, proxy-revalidate",
        "s-maxage=10",
        "no-cache",
    ] {
        assert_eq!(window(forbidding), Duration::ZERO, "{forbidding}");
    }
}

#[test]
fn rfc9213_2_2_a_targeted_field_replaces_cache_control_and_expires() {
    assert_eq!(
        fresh(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=600")
        ]),
        Some(600)
    );
    assert_eq!(
        fresh(&[
            ("cache-control", "max-age=600"),
            ("expires", "Thu, 26 Nov 2026 11:00:00 GMT"),
            ("cdn-cache-control", "no-store"),
        ]),
        None
    );
    // Our own field comes first in the target list.
    assert_eq!(
        fresh(&[
            ("cdn-cache-control", "max-age=600"),
            ("coalesce-proxy-cache-control", "max-age=30"),
        ]),
        Some(30)
    );
    // An invalid targeted field is ignored: Cache-Control applies.
    assert_eq!(
        fresh(&[
            ("cache-control", "max-age=5"),
            ("cdn-cache-control", "Max-Age=600")
        ]),
        Some(5)
    );
}
