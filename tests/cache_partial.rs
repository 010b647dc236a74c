//! Partial responses in the cache (RFC 9111 §3.3, §3.4, §4.3.4): a 206 stored as the part of
//! the representation it is, ranges it covers served from it, a later 206 for the same
//! representation combined with it, and a 304 renewing it. The origin's `partial=N` answers a
//! GET without `Range` with a 206 of its first N bytes, as an origin that sends large files
//! in parts does.

use coalesce_proxy::tools::origin;
use http::StatusCode;

use crate::cache::{harness, FRESH};
use crate::util::*;

fn cache_status(reply: &Reply) -> &str {
    reply.header("cache-status").unwrap_or_default()
}

/// cache-tests' `partial-use-stored-headers` (and `partial-use-headers`, whose checks are all
/// of this sequence): a complete response with a field of its own, then a range of it, which
/// the cache answers with a 206 that keeps the stored fields (RFC 9111 §3.4, RFC 9110 §14).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_3_4_a_range_served_from_a_stored_response_keeps_its_fields() {
    let h = harness().await;
    let path = "/c/whole?size=11&header=cache-control:max-age=3600&header=a:1";
    assert_eq!(get(h.addr, path).await.status, StatusCode::OK);
    let part = get_with(h.addr, path, &[("range", "bytes=0-1")]).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.outcome(), "hit");
    assert_eq!(part.body(), &origin::body(11).slice(0..2));
    assert_eq!(part.header("content-range"), Some("bytes 0-1/11"));
    assert_eq!(part.header("a"), Some("1"));
    assert_eq!(h.origin.hits(), 1);
}

/// RFC 9111 §3.3 and §3.4: a 206 is stored as its part; a range inside the part is served
/// from it; a range past it asks upstream for that range only, with `If-Range` (RFC 9110
/// §13.1.5), and the answer is combined with the stored part, the new fields winning; the
/// two parts together are the whole representation, served to a plain GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_3_4_a_stored_part_serves_ranges_and_combines_with_the_next_part() {
    let h = harness().await;
    let path = format!("/c/parts?size=10&partial=5&{FRESH}");
    let whole = origin::body(10);

    let first = get(h.addr, &path).await;
    assert_eq!(first.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(first.header("content-range"), Some("bytes 0-4/10"));
    assert_eq!(first.body(), &whole.slice(0..5));

    let inside = get_with(h.addr, &path, &[("range", "bytes=1-3")]).await;
    assert_eq!(inside.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(inside.outcome(), "hit");
    assert_eq!(inside.header("content-range"), Some("bytes 1-3/10"));
    assert_eq!(inside.header("content-length"), Some("3"));
    assert_eq!(inside.body(), &whole.slice(1..4));
    assert_eq!(h.origin.hits(), 1);

    let rest = get_with(h.addr, &path, &[("range", "bytes=5-")]).await;
    assert_eq!(rest.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(rest.header("content-range"), Some("bytes 5-9/10"));
    assert_eq!(rest.body(), &whole.slice(5..10));
    assert!(
        cache_status(&rest).contains("fwd=partial"),
        "{}",
        cache_status(&rest)
    );
    let asked = h
        .origin
        .requests()
        .pop()
        .expect("the second part's request");
    assert_eq!(
        asked.header("range"),
        Some("bytes=5-"),
        "only what was missing"
    );
    assert_eq!(asked.header("if-range"), Some("\"v1\""));

    let combined = get(h.addr, &path).await;
    assert_eq!(combined.status, StatusCode::OK);
    assert_eq!(combined.outcome(), "hit");
    assert_eq!(combined.body(), &whole);
    assert_eq!(combined.header("content-length"), Some("10"));
    assert_eq!(combined.header("content-range"), None);
    assert_eq!(
        combined.header("x-origin-hit"),
        Some("2"),
        "the newer response's fields win (§3.4)"
    );
    let tail = get_with(h.addr, &path, &[("range", "bytes=8-")]).await;
    assert_eq!(tail.outcome(), "hit");
    assert_eq!(tail.body(), &whole.slice(8..10));
    assert_eq!(h.origin.hits(), 2);
}

/// RFC 9111 §4.3.4: a stored part that must be revalidated (`no-cache`) is asked for with
/// its validators and the range as it is; a 304 renews the part's fields, and the range is
/// served from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_3_4_a_304_renews_a_stored_part() {
    let h = harness().await;
    let path = "/c/revalidated-part?size=10&partial=5&header=cache-control:no-cache";
    let first = get(h.addr, path).await;
    assert_eq!(first.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(first.header("x-origin-hit"), Some("1"));

    let again = get_with(h.addr, path, &[("range", "bytes=0-2")]).await;
    assert_eq!(again.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(again.header("content-range"), Some("bytes 0-2/10"));
    assert_eq!(again.body(), &origin::body(10).slice(0..3));
    assert_eq!(
        again.header("x-origin-hit"),
        Some("2"),
        "the 304's fields renewed the part"
    );
    let revalidation = h.origin.requests().pop().expect("the revalidation");
    assert_eq!(revalidation.header("if-none-match"), Some("\"v1\""));
    assert_eq!(revalidation.header("range"), Some("bytes=0-2"));
    assert_eq!(h.origin.hits(), 2);
}

/// RFC 9111 §3.3: a part is never served as the whole. A GET without `Range` goes upstream
/// (and its complete answer replaces the part); a range request with conditions of its own
/// goes upstream as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_3_3_a_stored_part_never_answers_for_the_whole() {
    let h = harness().await;
    let partial = format!("/c/only-part?size=10&partial=5&{FRESH}");
    get(h.addr, &partial).await;
    let again = get(h.addr, &partial).await;
    assert_ne!(again.outcome(), "hit");
    assert!(
        cache_status(&again).contains("fwd=partial"),
        "{}",
        cache_status(&again)
    );
    let conditional = get_with(
        h.addr,
        &partial,
        &[("range", "bytes=0-1"), ("if-none-match", "\"other\"")],
    )
    .await;
    assert_ne!(conditional.outcome(), "hit");
    assert_eq!(h.origin.hits(), 3);
}
