//! RFC 9111 §4.3: validation. Stale responses are revalidated with their validators and
//! renewed by a 304; conditional requests from clients are answered from the cache.

use coalesce_proxy::tools::origin;
use http::StatusCode;

use crate::cache::{harness, FRESH};
use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_3_1_a_stale_response_is_revalidated_and_a_304_updates_its_fields() {
    let h = harness().await;
    // Stored (it has a validator) but never fresh: every use revalidates.
    let path = "/c/revalidated?size=100&header=cache-control:max-age=0";
    let first = get(h.addr, path).await;
    assert_eq!(first.outcome(), "leader");
    assert_eq!(first.header("x-origin-hit"), Some("1"));
    for hit in 2..=3 {
        let reply = get(h.addr, path).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "a client that did not ask gets no 304"
        );
        assert_eq!(reply.body(), &origin::body(100));
        // §4.3.4: the 304's fields replace the stored ones, and this response shows them.
        assert_eq!(reply.header("x-origin-hit"), Some(hit.to_string().as_str()));
        let request = h.origin.requests().pop().expect("a revalidation");
        assert_eq!(request.header("if-none-match"), Some("\"v1\""));
    }
    assert_eq!(h.origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_3_2_conditional_requests_are_answered_from_a_fresh_stored_response() {
    let h = harness().await;
    let path = format!("/c/conditional?size=100&{FRESH}");
    assert_eq!(get(h.addr, &path).await.outcome(), "leader");
    let ask = |headers| get_with(h.addr, &path, headers);
    // A matching validator: 304 from the cache, with the stored fields and no body.
    let matched = ask(&[("if-none-match", "\"v1\"")]).await;
    assert_eq!(matched.status, StatusCode::NOT_MODIFIED);
    assert_eq!(matched.outcome(), "hit");
    assert_eq!(matched.header("etag"), Some("\"v1\""));
    assert_eq!(matched.header("cache-control"), Some("max-age=60"));
    assert!(matched.body().is_empty());
    // Another validator: the stored 200.
    let other = ask(&[("if-none-match", "\"v0\", \"v2\"")]).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.outcome(), "hit");
    assert_eq!(other.body(), &origin::body(100));
    assert_eq!(h.origin.hits(), 1, "neither went upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_1_vary_values_are_normalised_and_vary_star_never_matches() {
    let h = harness().await;
    let path = format!("/c/encoded?size=10&{FRESH}&header=vary:accept-encoding");
    let path = &path;
    let ask = |value: &'static str| async move {
        let reply = get_with(h.addr, path, &[("accept-encoding", value)]).await;
        reply.outcome().to_owned()
    };
    assert_eq!(ask("gzip, br").await, "leader");
    assert_eq!(
        ask("GZIP,br").await,
        "hit",
        "case and spacing do not make a variant"
    );
    assert_eq!(ask("br, gzip").await, "leader", "order does");
    let star = format!("/c/star?size=10&{FRESH}&header=vary:*");
    assert_eq!(get(h.addr, &star).await.outcome(), "leader");
    assert_ne!(get(h.addr, &star).await.outcome(), "hit");
}
