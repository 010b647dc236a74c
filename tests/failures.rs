//! Upstream failures reach the leader and every follower alike.

use std::time::Duration;

use coalesce_proxy::origin::{self, OriginSettings};
use http::{Method, StatusCode};

use crate::util::*;

fn settings(delay_ms: u64) -> OriginSettings {
    OriginSettings {
        delay: Duration::from_millis(delay_ms),
        body_size: 20_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_gives_everyone_502() {
    // Bind a port, then free it, so nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start_with(settings(0), "", &format!(
        "[upstreams.gone]\nurl = \"http://{closed}\"\n[[routes]]\npath_prefix = \"/gone/\"\nupstream = \"gone\"\n"
    ))
    .await;
    let replies = herd(h.addr, 20, Method::GET, "/gone/x", &[]).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert!(matches!(reply.outcome(), "leader" | "follower"));
    }
    assert!(h.proxy.stats().snapshot().upstream_errors >= 1);
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_head_within_response_timeout_gives_everyone_504() {
    let h = Harness::start_with(settings(0), "response_timeout = \"300ms\"", "").await;
    let replies = herd(
        h.addr,
        20,
        Method::GET,
        "/stall?fail=stall_before_head",
        &[],
    )
    .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    }
    // The timeout runs from the leader's request, so on a loaded machine a client that
    // arrives after it may start a second flight; each flight still makes one request.
    let (leaders, followers, passed) = outcomes(&replies);
    assert_eq!((leaders + followers, passed), (20, 0));
    assert!(followers > 0);
    assert_eq!(h.origin.hits(), leaders as u64);
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_head_gives_everyone_502() {
    let h = Harness::start_with(settings(0), "", "").await;
    let replies = h
        .gated_herd(
            20,
            Method::GET,
            "/rst?fail=reset_before_head&hold_head=g",
            &[],
            "g",
        )
        .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(outcomes(&replies), (1, 19, 0));
    assert_eq!(h.origin.hits(), 1);
}

/// Every client of a flight whose upstream dies mid-body sees an aborted response, never a
/// clean-looking short one.
async fn mid_body_failure_aborts_every_client(path: &str, upstream_extra: &str) {
    let h = Harness::start_with(settings(0), upstream_extra, "").await;
    let before = h.proxy.stats().snapshot();
    let path = format!("{path}&hold_head=g");
    let (replies, ()) = tokio::join!(
        try_herd(h.addr, 20, Method::GET, &path, &[]),
        h.open_when_followers(19, "g")
    );
    // Either the head went out and the body was cut, or the connection was aborted before
    // the head was flushed: both tell the client it lost bytes.
    for reply in replies.iter().flatten() {
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply.body.is_err(),
            "a truncated body looked complete: {:?}",
            reply.body.as_ref().map(|b| b.len())
        );
    }
    let after = h.proxy.stats().snapshot();
    assert_eq!(after.leaders - before.leaders, 1);
    assert_eq!(after.joined - before.joined, 19);
    assert_eq!(h.origin.hits(), 1);
    h.assert_table_empties().await;
    // Other keys are untouched.
    let other = get(h.addr, "/healthy").await;
    assert_eq!(other.body(), &origin::body(20_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_mid_chunked_body_aborts_every_client() {
    mid_body_failure_aborts_every_client("/cut?fail=close_mid_body&chunked=1", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_content_length_body_aborts_every_client() {
    mid_body_failure_aborts_every_client("/cut?fail=reset_mid_body", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_idle_past_idle_timeout_aborts_every_client() {
    mid_body_failure_aborts_every_client("/cut?fail=stall_mid_body", "idle_timeout = \"300ms\"")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_failures_get_502_and_aborts_too() {
    let h = Harness::start_with(settings(0), "", "").await;
    let reply = fetch(
        h.addr,
        Method::POST,
        "/p?fail=reset_before_head",
        &[],
        "x".into(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.outcome(), "pass");
    let reply = fetch(
        h.addr,
        Method::POST,
        "/p?fail=close_mid_body&size=5000",
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert!(reply.body.is_err());
}
