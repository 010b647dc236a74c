//! Opt-in coalescing of read-only POSTs (issue 16): on a route whose `coalesce` lists POST and
//! sets `body_max`, a body that fits is read whole and becomes part of the key.

use bytes::Bytes;
use coalesce_proxy::tools::origin::OriginSettings;
use http::{Method, StatusCode};

use crate::util::*;

const ROUTES: &str = r#"
[[routes]]
name = "graphql"
path_prefix = "/graphql"
upstream = "origin"
coalesce = { methods = ["GET", "HEAD", "POST"], body_max = "1KiB" }
"#;

async fn harness() -> Harness {
    Harness::start_with(OriginSettings::default(), "", ROUTES).await
}

/// POSTs each of `bodies` to `path` (which holds at `gate`) at once, each on its own
/// connection, and opens the gate once `followers` have joined a flight.
async fn post_herd(
    h: &Harness,
    path: &str,
    bodies: Vec<Bytes>,
    followers: u64,
    gate: &str,
) -> Vec<(Bytes, Reply)> {
    let before = h.proxy.stats().snapshot().joined;
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (addr, path) = (h.addr, path.to_owned());
            tokio::spawn(async move {
                let reply = fetch(
                    addr,
                    Method::POST,
                    &path,
                    &[("content-type", "application/json")],
                    body.clone(),
                )
                .await;
                (body, reply)
            })
        })
        .collect();
    h.open_when_followers(before + followers, gate).await;
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("client"));
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_identical_posts_cost_one_upstream_request() {
    let h = harness().await;
    let query = Bytes::from_static(br#"{"query":"{ product(id: 1) { name } }"}"#);
    let replies = post_herd(
        &h,
        "/graphql?hold_head=g",
        vec![query.clone(); 1000],
        999,
        "g",
    )
    .await;
    for (sent, reply) in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body(), sent, "the origin echoes the body it got");
    }
    assert_eq!(h.origin.hits(), 1);
    assert_eq!(
        h.origin.requests()[0].body,
        query,
        "the upstream request carried the body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_over_ten_bodies_cost_ten_and_nobody_gets_anothers_answer() {
    let h = harness().await;
    // Ten bodies that differ in their last byte only.
    let bodies: Vec<Bytes> = (0..1000)
        .map(|i| Bytes::from(format!(r#"{{"query":"q","n":{}}}"#, i % 10)))
        .collect();
    let replies = post_herd(&h, "/graphql?hold_head=t", bodies, 990, "t").await;
    for (sent, reply) in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body(), sent);
    }
    assert_eq!(h.origin.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_body_max_and_a_route_without_it_pass_through_intact() {
    let h = harness().await;
    let large = Bytes::from(vec![b'x'; 2000]);
    for path in ["/graphql", "/other"] {
        let body = if path == "/graphql" {
            large.clone()
        } else {
            Bytes::from_static(b"{}")
        };
        for _ in 0..2 {
            let reply = fetch(h.addr, Method::POST, path, &[], body.clone()).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.outcome(), "pass", "{path}");
            assert_eq!(reply.body(), &body, "{path}");
        }
    }
    assert_eq!(h.origin.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_post_is_never_answered_from_a_stored_get() {
    let h = Harness::start_with(
        OriginSettings::default(),
        "",
        r#"
[[routes]]
path_prefix = "/q"
upstream = "origin"
coalesce = { methods = ["GET", "POST"], body_max = "1KiB" }
cache = { enabled = true }
"#,
    )
    .await;
    let path = "/q?header=cache-control:max-age=60";
    assert_eq!(get(h.addr, path).await.outcome(), "leader");
    assert_eq!(get(h.addr, path).await.outcome(), "hit");
    let post = fetch(h.addr, Method::POST, path, &[], Bytes::from_static(b"{}")).await;
    assert_eq!(post.outcome(), "leader");
    assert_eq!(post.body(), "{}".as_bytes());
    assert_eq!(h.origin.hits(), 2);
}
