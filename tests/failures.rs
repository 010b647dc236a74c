//! Upstream failures reach the leader and every follower alike.

use std::time::Duration;

use coalesce_proxy::tools::origin::{self, OriginSettings};
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
        assert_eq!(reply.body(), "upstream request failed\n".as_bytes());
    }
    // A refusal is quick, so a client that arrives after it starts a flight of its own; each
    // flight makes exactly one attempt, and its failure is counted once.
    let (leaders, followers, passed) = outcomes(&replies);
    assert_eq!((leaders + followers, passed), (20, 0));
    assert_eq!(h.proxy.stats().snapshot().upstream_errors, leaders as u64);
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_head_within_response_timeout_gives_everyone_504() {
    // The timeout runs from the leader's request. The herd joins it within milliseconds of
    // the leader's arrival; 3 s leaves a loaded machine room for that.
    let h = Harness::start_with(settings(0), "response_timeout = \"3s\"", "").await;
    let path = "/stall?fail=stall_before_head";
    let leader = tokio::spawn({
        let addr = h.addr;
        async move { get(addr, path).await }
    });
    assert!(h.origin.wait_until(PATIENCE, |o| o.hits() == 1).await);
    let (followers, ()) = tokio::join!(herd(h.addr, 19, Method::GET, path, &[]), async {
        assert!(eventually(|| h.proxy.stats().snapshot().joined == 19).await);
    });
    let leader = leader.await.expect("leader");
    assert_eq!(leader.outcome(), "leader");
    for reply in followers.iter().chain([&leader]) {
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(reply.body(), "upstream timed out\n".as_bytes());
    }
    assert_eq!(outcomes(&followers), (0, 19, 0));
    assert_eq!(h.origin.hits(), 1);
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

/// What a client of a response cut mid-body must see: the head, then an exact, non-empty
/// prefix of the origin's body, then an error; never a clean-looking short response.
fn assert_cut_short(reply: &Reply, size: usize) {
    assert_eq!(reply.status, StatusCode::OK);
    let whole = origin::body(size);
    assert!(
        reply.body.is_err(),
        "a truncated body looked complete: {} bytes",
        reply.received.len()
    );
    assert!(!reply.received.is_empty(), "no bytes before the abort");
    assert!(reply.received.len() < size, "the whole body arrived");
    assert_eq!(reply.received, whole.slice(..reply.received.len()));
}

/// Every client of a flight whose upstream dies mid-body sees the head, the bytes so far, and
/// an aborted response.
async fn mid_body_failure_aborts_every_client(path: &str, upstream_extra: &str, kind: &str) {
    let h = Harness::start_with(settings(0), upstream_extra, "").await;
    let before = h.proxy.stats().snapshot();
    let path = format!("{path}&hold_head=g");
    let replies = h.gated_herd(20, Method::GET, &path, &[], "g").await;
    for reply in &replies {
        assert_cut_short(reply, 20_000);
    }
    assert_eq!(outcomes(&replies), (1, 19, 0));
    let after = h.proxy.stats().snapshot();
    assert_eq!(after.leaders - before.leaders, 1);
    assert_eq!(after.joined - before.joined, 19);
    assert_eq!(h.origin.hits(), 1);
    h.assert_table_empties().await;
    // The flight's failure is counted once, by its kind, when its summary is recorded.
    assert!(eventually(|| h.proxy.stats().snapshot().flights_done == 1).await);
    assert_eq!(h.proxy.stats().snapshot().upstream_errors, 1);
    let series = format!("coalesce_proxy_upstream_errors_total{{route=\"all\",kind=\"{kind}\"}}");
    assert_eq!(metric(&h.proxy.render_metrics(), &series), 1.0, "{kind}");
    // Other keys are untouched.
    let other = get(h.addr, "/healthy").await;
    assert_eq!(other.body(), &origin::body(20_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_mid_chunked_body_aborts_every_client() {
    mid_body_failure_aborts_every_client("/cut?fail=close_mid_body&chunked=1", "", "body").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_content_length_body_aborts_every_client() {
    mid_body_failure_aborts_every_client("/cut?fail=reset_mid_body", "", "body").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_idle_past_idle_timeout_aborts_every_client() {
    mid_body_failure_aborts_every_client(
        "/cut?fail=stall_mid_body",
        "idle_timeout = \"300ms\"",
        "idle_timeout",
    )
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
    assert_eq!(reply.body(), "upstream request failed\n".as_bytes());
    let reply = fetch(
        h.addr,
        Method::POST,
        "/p?fail=close_mid_body&size=5000",
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(reply.outcome(), "pass");
    assert_cut_short(&reply, 5000);
}
