//! RFC 9111 §4.4: an unsafe request that succeeds invalidates the stored responses for its
//! target URI and for the same-host URIs in its `Location` and `Content-Location`.

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::cache::{harness, FRESH};
use crate::util::*;

async fn post(h: &Harness, path: &str) -> Reply {
    fetch(
        h.addr,
        Method::POST,
        path,
        &[("host", "shop.test")],
        Bytes::from_static(b"changed"),
    )
    .await
}

/// GETs `path` from `shop.test` and returns its outcome.
async fn outcome_of_get(h: &Harness, path: &str) -> String {
    let reply = fetch(
        h.addr,
        Method::GET,
        path,
        &[("host", "shop.test")],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.outcome().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_4_a_successful_unsafe_request_invalidates_its_target() {
    let h = harness().await;
    let path = format!("/c/item?{FRESH}");
    assert_eq!(outcome_of_get(&h, &path).await, "leader");
    assert_eq!(outcome_of_get(&h, &path).await, "hit");
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let reply = fetch(
            h.addr,
            method.clone(),
            &path,
            &[("host", "shop.test")],
            Bytes::new(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{method}");
        assert_eq!(outcome_of_get(&h, &path).await, "leader", "after {method}");
        assert_eq!(
            outcome_of_get(&h, &path).await,
            "hit",
            "stored again after {method}"
        );
    }
    // Another query is another URI: untouched.
    let other = format!("/c/item?{FRESH}&x=1");
    assert_eq!(outcome_of_get(&h, &other).await, "leader");
    post(&h, &path).await;
    assert_eq!(outcome_of_get(&h, &other).await, "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_4_location_and_content_location_on_the_same_host_are_invalidated() {
    let h = harness().await;
    // The /d/ route stores for its default_ttl, so these paths need no query to be stored.
    for path in ["/d/named", "/d/located", "/d/elsewhere", "/d/kept"] {
        assert_eq!(outcome_of_get(&h, path).await, "leader");
    }
    post(&h, "/d/w1?header=content-location:/d/named").await;
    post(&h, "/d/w2?header=location:http://shop.test/d/located").await;
    // Not the same host, and not a success: neither invalidates.
    post(&h, "/d/w3?header=location:http://evil.test/d/elsewhere").await;
    let failed = post(&h, "/d/w4?status=500&header=content-location:/d/kept").await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(outcome_of_get(&h, "/d/named").await, "leader");
    assert_eq!(outcome_of_get(&h, "/d/located").await, "leader");
    assert_eq!(outcome_of_get(&h, "/d/elsewhere").await, "hit");
    assert_eq!(outcome_of_get(&h, "/d/kept").await, "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_racing_a_flight_keeps_the_older_response_out_of_the_cache() {
    let h = harness().await;
    let path = format!("/c/race?size=1000&chunked=1&chunks=2&hold=g&{FRESH}");
    // The GET's head and first piece are out; the rest waits at gate g.
    let reading = tokio::spawn({
        let addr = h.addr;
        let path = path.clone();
        async move {
            fetch(
                addr,
                Method::GET,
                &path,
                &[("host", "shop.test")],
                Bytes::new(),
            )
            .await
        }
    });
    assert!(h.origin.wait_until(PATIENCE, |o| o.reached("g")).await);
    // A PUT to the same URI: its head (200) invalidates as soon as the proxy has it, while
    // its body waits at the same gate.
    let mut sender = connect(h.addr).await;
    let put = request(
        Method::PUT,
        &path,
        &[("host", "shop.test")],
        Bytes::from_static(b"new"),
    );
    let written = send_head(&mut sender, put).await;
    assert_eq!(written.status(), StatusCode::OK);
    h.origin.open_gate("g");
    assert_eq!(read_reply(written).await.status, StatusCode::OK);
    let read = reading.await.expect("GET");
    assert_eq!(read.outcome(), "leader");
    assert_eq!(read.body().len(), 1000);
    // The GET was sent before the PUT changed the resource: what it read is not stored.
    // (Gate g stays open, so this one is not held.)
    assert_eq!(outcome_of_get(&h, &path).await, "leader");
    assert_eq!(outcome_of_get(&h, &path).await, "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_surrogate_key_removes_every_response_tagged_with_it() {
    let h = harness().await;
    let tagged = [
        format!("/c/s/a?{FRESH}&header=surrogate-key:product-1%20list"),
        format!("/c/s/b?{FRESH}&header=surrogate-key:product-2%20list"),
        format!("/c/s/c?{FRESH}&header=surrogate-key:product-10"),
    ];
    for path in &tagged {
        assert_eq!(get(h.addr, path).await.outcome(), "leader");
    }
    let admin = h.admin.expect("admin");
    let purge = |query: &'static str| async move {
        fetch(admin, Method::POST, query, &[], Bytes::new()).await
    };
    // Whole keys only: product-1 is not product-10.
    assert_eq!(
        purge("/purge?tag=product-1").await.body(),
        "purged 1\n".as_bytes()
    );
    assert_eq!(get(h.addr, &tagged[0]).await.outcome(), "leader");
    assert_eq!(get(h.addr, &tagged[2]).await.outcome(), "hit");
    assert_eq!(
        purge("/purge?tag=list").await.body(),
        "purged 2\n".as_bytes()
    );
    assert_eq!(get(h.addr, &tagged[1]).await.outcome(), "leader");
    assert_eq!(purge("/purge?tag=").await.status, StatusCode::BAD_REQUEST);
}
