//! Admission control (issue 16): an upstream's `concurrency` limit, its bounded queue, the
//! 503 for a request that cannot wait, and leaders admitted before pass-through requests.

use bytes::Bytes;
use coalesce_proxy::tools::origin::OriginSettings;
use http::{Method, StatusCode};

use crate::util::*;

async fn limited(queue: usize) -> Harness {
    let upstream = format!("concurrency = {{ max = 1, queue = {queue}, queue_timeout = \"20s\" }}");
    Harness::start_with(OriginSettings::default(), &upstream, "").await
}

/// Waits until the upstream's queue holds `n` requests.
async fn queued(h: &Harness, n: u64) {
    let series = "coalesce_proxy_upstream_queued{upstream=\"origin\"}";
    assert!(
        eventually(|| metric(&h.proxy.render_metrics(), series) == n as f64).await,
        "never {n} queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_limit_requests_queue_and_past_the_queue_they_get_503() {
    let h = limited(1).await;
    let held = tokio::spawn(get_owned(h.addr, "/a?hold_head=g"));
    assert!(h.origin.wait_until(PATIENCE, |o| o.reached("g")).await);
    let waiting = tokio::spawn(get_owned(h.addr, "/b"));
    queued(&h, 1).await;
    let refused = get(h.addr, "/c").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.header("retry-after"), Some("1"));
    h.origin.open_gate("g");
    assert_eq!(held.await.expect("a").status, StatusCode::OK);
    assert_eq!(waiting.await.expect("b").status, StatusCode::OK);
    assert_eq!(
        h.origin.hits(),
        2,
        "the refused request never went upstream"
    );
    let metrics = h.proxy.render_metrics();
    assert_eq!(
        metric(
            &metrics,
            "coalesce_proxy_upstream_rejected_total{upstream=\"origin\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "coalesce_proxy_upstream_admitted_total{upstream=\"origin\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "coalesce_proxy_upstream_concurrency_limit{upstream=\"origin\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_slot_goes_to_a_herds_leader_before_an_earlier_pass_request() {
    let h = limited(10).await;
    let post = |path: &'static str| {
        let addr = h.addr;
        tokio::spawn(
            async move { fetch(addr, Method::POST, path, &[], Bytes::from_static(b"x")).await },
        )
    };
    let holding = post("/hold?hold_head=g");
    assert!(h.origin.wait_until(PATIENCE, |o| o.reached("g")).await);
    let pass = post("/pass");
    queued(&h, 1).await;
    let joined = h.proxy.stats().snapshot().joined;
    let herd = tokio::spawn(herd_owned(h.addr, 5, "/herd"));
    queued(&h, 2).await;
    assert!(eventually(|| h.proxy.stats().snapshot().joined == joined + 4).await);
    h.origin.open_gate("g");
    for reply in herd.await.expect("herd") {
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(pass.await.expect("pass").status, StatusCode::OK);
    assert_eq!(holding.await.expect("hold").status, StatusCode::OK);
    let order: Vec<String> = h.origin.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(order, ["/hold?hold_head=g", "/herd", "/pass"]);
}

async fn get_owned(addr: std::net::SocketAddr, path: &'static str) -> Reply {
    get(addr, path).await
}

async fn herd_owned(addr: std::net::SocketAddr, n: usize, path: &'static str) -> Vec<Reply> {
    herd(addr, n, Method::GET, path, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_leaves_the_upstream_unchanged_keeps_it_with_its_taken_slots() {
    let upstream = "concurrency = { max = 1, queue = 10, queue_timeout = \"20s\" }";
    let h = Harness::start_with(OriginSettings::default(), upstream, "").await;
    let config = config_text(&h.origin.url(), upstream, "");
    let reload = || {
        let config = coalesce_proxy::config::Config::from_toml(&config).expect("valid");
        h.handle.reload(config);
    };
    // The upstream is the same one, pools and health and all; the route too (its cache).
    let upstream = |h: &Harness| h.proxy.routes()[0].upstream.clone();
    let (before, route_before) = (upstream(&h), h.proxy.routes()[0].clone());
    reload();
    assert!(std::sync::Arc::ptr_eq(&before, &upstream(&h)));
    assert!(std::sync::Arc::ptr_eq(&route_before, &h.proxy.routes()[0]));
    // The slot a held request took is still taken after a reload: the next request queues
    // instead of reaching the origin beside it (a fresh limit would let two through).
    let held = tokio::spawn(get_owned(h.addr, "/held?hold_head=g"));
    assert!(h.origin.wait_until(PATIENCE, |o| o.reached("g")).await);
    reload();
    let waiting = tokio::spawn(get_owned(h.addr, "/after-reload"));
    queued(&h, 1).await;
    h.origin.open_gate("g");
    assert_eq!(held.await.expect("held").status, StatusCode::OK);
    assert_eq!(waiting.await.expect("waiting").status, StatusCode::OK);
    assert_eq!(h.origin.peak_concurrency(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_upstream_builds_it_anew() {
    let h = limited(1).await;
    let before = h.proxy.routes()[0].upstream.clone();
    let changed = config_text(&h.origin.url(), "response_timeout = \"9s\"", "");
    h.handle
        .reload(coalesce_proxy::config::Config::from_toml(&changed).expect("valid"));
    let after = h.proxy.routes()[0].upstream.clone();
    assert!(!std::sync::Arc::ptr_eq(&before, &after));
    assert_eq!(
        after.config.response_timeout,
        std::time::Duration::from_secs(9)
    );
    assert!(after.config.concurrency.is_none());
    assert_eq!(get(h.addr, "/after").await.status, StatusCode::OK);
}
