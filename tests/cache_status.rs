//! RFC 9211 `Cache-Status` on every response from a route with a cache or coalescing, and
//! RFC 9213 targeted cache control through the proxy.

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::cache::{harness, FRESH};
use crate::util::*;

fn cache_status(reply: &Reply) -> &str {
    reply.header("cache-status").unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9211_a_miss_a_hit_and_a_method_the_cache_does_not_answer() {
    let h = harness().await;
    let path = format!("/c/status?size=10&{FRESH}");
    let miss = get(h.addr, &path).await;
    assert_eq!(
        cache_status(&miss),
        "coalesce-proxy; fwd=uri-miss; fwd-status=200; stored"
    );
    let hit = get(h.addr, &path).await;
    let ttl: i64 = cache_status(&hit)
        .strip_prefix("coalesce-proxy; hit; ttl=")
        .and_then(|ttl| ttl.parse().ok())
        .expect("hit with a ttl");
    assert!((58..=60).contains(&ttl), "{ttl}");
    let post = fetch(h.addr, Method::POST, &path, &[], Bytes::from_static(b"x")).await;
    assert_eq!(
        cache_status(&post),
        "coalesce-proxy; fwd=method; fwd-status=200"
    );
    let ranged = fetch(
        h.addr,
        Method::GET,
        &path,
        // If-Range makes it a request the cache does not answer: it goes upstream as asked.
        &[("range", "bytes=0-1"), ("if-range", "\"v1\"")],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        cache_status(&ranged),
        "coalesce-proxy; fwd=request; fwd-status=206"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9211_2_5_followers_are_collapsed_and_routes_without_a_cache_bypass_it() {
    let h = harness().await;
    // The / route coalesces but has no cache.
    let replies = h
        .gated_herd(5, Method::GET, "/plain?size=10&hold_head=p", &[], "p")
        .await;
    let leader = "coalesce-proxy; fwd=bypass; fwd-status=200";
    let follower = "coalesce-proxy; fwd=bypass; fwd-status=200; collapsed";
    let mut seen = (0, 0);
    for reply in &replies {
        match reply.outcome() {
            "leader" => {
                assert_eq!(cache_status(reply), leader);
                seen.0 += 1;
            }
            _ => {
                assert_eq!(cache_status(reply), follower);
                seen.1 += 1;
            }
        }
    }
    assert_eq!(seen, (1, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9211_vary_misses_and_revalidations_say_so() {
    let h = harness().await;
    let path = format!("/c/varied?size=10&{FRESH}&header=vary:accept-language");
    let en = [("accept-language", "en")];
    let de = [("accept-language", "de")];
    let first = fetch(h.addr, Method::GET, &path, &en, Bytes::new()).await;
    assert_eq!(
        cache_status(&first),
        "coalesce-proxy; fwd=uri-miss; fwd-status=200; stored"
    );
    let other = fetch(h.addr, Method::GET, &path, &de, Bytes::new()).await;
    assert_eq!(
        cache_status(&other),
        "coalesce-proxy; fwd=vary-miss; fwd-status=200; stored"
    );
    let revalidated = "/c/status-revalidated?size=10&header=cache-control:max-age=0";
    get(h.addr, revalidated).await;
    let again = get(h.addr, revalidated).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        cache_status(&again),
        "coalesce-proxy; fwd=stale; fwd-status=304; stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9213_cdn_cache_control_and_our_own_field_override_cache_control() {
    let h = Harness::start_with(
        Default::default(),
        "",
        r#"
[[routes]]
path_prefix = "/t/"
upstream = "origin"
cache = { enabled = true, targeted_field = "edge-control", status_name = "edge" }
"#,
    )
    .await;
    // Browsers are told not to store it; this cache is told to keep it for a minute.
    let path = "/t/a?header=cache-control:no-store&header=cdn-cache-control:max-age=60";
    assert_eq!(get(h.addr, path).await.outcome(), "leader");
    let hit = get(h.addr, path).await;
    assert_eq!(hit.outcome(), "hit");
    assert!(cache_status(&hit).starts_with("edge; hit; ttl="));
    assert_eq!(hit.header("cache-control"), Some("no-store"));
    // The configured field comes before CDN-Cache-Control: not stored, and (as no-store makes
    // it for coalescing too) the key is then remembered as not shareable.
    let path = "/t/b?header=cdn-cache-control:max-age=60&header=edge-control:no-store";
    assert_eq!(get(h.addr, path).await.outcome(), "leader");
    assert_eq!(get(h.addr, path).await.outcome(), "pass");
    assert_eq!(h.origin.hits(), 3);
}
