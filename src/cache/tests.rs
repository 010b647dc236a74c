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
