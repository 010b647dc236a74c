//! What makes two requests the same, per route: `methods`, `key_headers`, the Range and
//! conditional headers, custom `not_shareable` rules, and how long `pass_ttl` remembers.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use coalesce_proxy::tools::origin;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

use crate::util::*;

/// A harness whose route `/r/` has `coalesce = { OVERRIDE }`, beside the default `/` route.
async fn route_with(coalesce: &str) -> Harness {
    Harness::start_with(
        Default::default(),
        "",
        &format!(
            "[[routes]]\nname = \"r\"\npath_prefix = \"/r/\"\nupstream = \"origin\"\ncoalesce = {{ {coalesce} }}\n"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_coalesces_exactly_the_methods_it_lists() {
    let h = route_with(r#"methods = ["GET", "OPTIONS"]"#).await;
    // OPTIONS is listed: a herd shares one request.
    let options = h
        .gated_herd(5, Method::OPTIONS, "/r/opt?hold_head=o", &[], "o")
        .await;
    assert_eq!(outcomes(&options), (1, 4, 0));
    assert_eq!(h.origin.hits_for("/r/opt?"), 1);
    // HEAD is not (the override replaces the default list): every request passes.
    let heads = herd(h.addr, 5, Method::HEAD, "/r/head", &[]).await;
    assert_eq!(outcomes(&heads), (0, 0, 5));
    assert_eq!(h.origin.hits_for("/r/head"), 5);
    // Elsewhere the default list still holds.
    let default = h
        .gated_herd(5, Method::HEAD, "/elsewhere?hold_head=d", &[], "d")
        .await;
    assert_eq!(outcomes(&default), (1, 4, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_headers_override_decides_which_headers_split_flights() {
    let h = route_with(r#"key_headers = ["accept-language"]"#).await;
    let path = "/r/doc?hold_head=g";
    // accept-encoding is no longer in this route's key; accept-language is.
    let (en_gzip, fr_gzip, en_br, ()) = tokio::join!(
        herd(
            h.addr,
            5,
            Method::GET,
            path,
            &[("accept-language", "en"), ("accept-encoding", "gzip")]
        ),
        herd(
            h.addr,
            5,
            Method::GET,
            path,
            &[("accept-language", "fr"), ("accept-encoding", "gzip")]
        ),
        herd(
            h.addr,
            5,
            Method::GET,
            path,
            &[("accept-language", "en"), ("accept-encoding", "br")]
        ),
        h.open_when_followers(13, "g")
    );
    let (l1, f1, _) = outcomes(&en_gzip);
    let (l3, f3, _) = outcomes(&en_br);
    assert_eq!((l1 + l3, f1 + f3), (1, 9), "en shares one flight");
    assert_eq!(outcomes(&fr_gzip), (1, 4, 0));
    assert_eq!(h.origin.hits(), 2);
    let languages: HashSet<String> = h
        .origin
        .requests()
        .iter()
        .filter_map(|r| r.header("accept-language").map(str::to_owned))
        .collect();
    assert_eq!(languages, HashSet::from(["en".into(), "fr".into()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_range_and_conditional_header_is_part_of_the_key() {
    let h = Harness::start().await;
    let path = "/cond?hold_head=g";
    let conditionals = [
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
    ];
    let mut herds = vec![tokio::spawn({
        let addr = h.addr;
        async move { herd(addr, 4, Method::GET, path, &[]).await }
    })];
    for name in conditionals {
        for value in ["\"a\"", "\"b\""] {
            let addr = h.addr;
            herds.push(tokio::spawn(async move {
                herd(addr, 4, Method::GET, path, &[(name, value)]).await
            }));
        }
    }
    // 13 distinct keys, 4 clients each.
    h.open_when_followers(13 * 3, "g").await;
    for herd in herds {
        assert_eq!(outcomes(&herd.await.expect("herd")), (1, 3, 0));
    }
    assert_eq!(h.origin.hits(), 13);
    // Each upstream request carried its own value.
    for name in conditionals {
        let mut values: Vec<String> = h
            .origin
            .requests()
            .iter()
            .filter_map(|r| r.header(name).map(str::to_owned))
            .collect();
        values.sort();
        assert_eq!(values, ["\"a\"", "\"b\""], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_not_shareable_list_replaces_the_default_rules() {
    let h = route_with(r#"not_shareable = ["x-per-user", "cache-control: no-transform"]"#).await;
    for (script, shared) in [
        ("header=x-per-user:1", false),
        ("header=cache-control:public,%20no-transform", false),
        // Not in this route's list any more: an operator who says so shares Set-Cookie.
        ("cookie=1", true),
    ] {
        let key = format!("/r/{script}?");
        let path = format!("{key}{script}&hold_head={script}");
        let replies = h.gated_herd(8, Method::GET, &path, &[], script).await;
        let expected = if shared { (1, 7, 0) } else { (1, 0, 7) };
        assert_eq!(outcomes(&replies), expected, "{script}");
        let hits = if shared { 1 } else { 8 };
        assert_eq!(h.origin.hits_for(&key), hits, "{script}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_ttl_runs_out_and_zero_never_remembers() {
    let h = Harness::start_with(
        Default::default(),
        "",
        "[[routes]]\npath_prefix = \"/short/\"\nupstream = \"origin\"\ncoalesce = { pass_ttl = \"300ms\" }\n\
         [[routes]]\npath_prefix = \"/never/\"\nupstream = \"origin\"\ncoalesce = { pass_ttl = \"0s\" }\n",
    )
    .await;
    let path = "/short/me?cookie=1";
    let remembered_at = std::time::Instant::now();
    assert_eq!(get(h.addr, path).await.outcome(), "leader");
    assert_eq!(h.proxy.coordinator().remembered_passes(), 1);
    if remembered_at.elapsed() < Duration::from_millis(250) {
        assert_eq!(get(h.addr, path).await.outcome(), "pass");
    }
    // Past pass_ttl (time only grows: no race) the key may lead a flight again.
    tokio::time::sleep_until((std::time::Instant::now() + Duration::from_millis(300)).into()).await;
    assert_eq!(get(h.addr, path).await.outcome(), "leader");

    // pass_ttl = "0s": nothing is remembered, every request tries to share.
    let never = "/never/me?cookie=1";
    assert_eq!(get(h.addr, never).await.outcome(), "leader");
    assert_eq!(get(h.addr, never).await.outcome(), "leader");
    assert_eq!(
        h.proxy.coordinator().remembered_passes(),
        1,
        "only /short/ is remembered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_past_max_replay_body_starts_a_new_flight() {
    let h = route_with(r#"max_replay_body = "64KiB""#).await;
    // The origin sends the first 100,000 bytes, then holds the rest at gate h.
    let path = "/r/big?size=200000&hold=h";
    let mut leader = connect(h.addr).await;
    let response = send_head(&mut leader, request(Method::GET, path, &[], Bytes::new())).await;
    assert_eq!(response.headers()["x-coalesce"], "leader");
    let mut body = response.into_body();
    // Once the leader has more than 64 KiB, so has the flight: it is closed to joiners.
    let mut received = Vec::new();
    while received.len() < 100_000 {
        let frame = body.frame().await.expect("a frame").expect("data");
        received.extend_from_slice(&frame.into_data().expect("data"));
    }
    // The closed flight has left the table: nothing can join it any more.
    assert_eq!(h.flights(), 0);
    let late = tokio::spawn({
        let addr = h.addr;
        async move { get(addr, path).await }
    });
    assert!(h.origin.wait_until(PATIENCE, |o| o.hits() == 2).await);
    h.origin.open_gate("h");
    let rest = body.collect().await.expect("rest").to_bytes();
    received.extend_from_slice(&rest);
    assert_eq!(received, origin::body(200_000));
    let late = late.await.expect("late");
    assert_eq!(late.outcome(), "leader");
    assert_eq!(late.body(), &origin::body(200_000));
    assert_eq!(h.proxy.stats().snapshot().joined, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_outcome_header_sends_none_and_still_coalesces() {
    let h = route_with(r#"header = """#).await;
    let replies = h
        .gated_herd(5, Method::GET, "/r/quiet?hold_head=q", &[], "q")
        .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.headers.get("x-coalesce").is_none());
    }
    assert_eq!(h.origin.hits(), 1);
    assert_eq!(h.proxy.stats().snapshot().joined, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_and_query_exactly_as_received_are_the_key() {
    let h = Harness::start().await;
    // Four keys, though two of them carry the same parameters in another order.
    let paths = ["/q?a=1", "/q?a=2", "/q?a=1&b=2", "/q?b=2&a=1"];
    let herds: Vec<_> = paths
        .iter()
        .map(|path| {
            let (addr, path) = (h.addr, format!("{path}&hold_head=g"));
            tokio::spawn(async move { herd(addr, 4, Method::GET, &path, &[]).await })
        })
        .collect();
    h.open_when_followers(4 * 3, "g").await;
    for herd in herds {
        assert_eq!(outcomes(&herd.await.expect("herd")), (1, 3, 0));
    }
    let mut targets: Vec<String> = h.origin.requests().into_iter().map(|r| r.target).collect();
    targets.sort();
    let mut expected: Vec<String> = paths.iter().map(|p| format!("{p}&hold_head=g")).collect();
    expected.sort();
    assert_eq!(targets, expected, "forwarded exactly as received");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_is_admitted_while_the_body_so_far_fits_max_replay_body_exactly() {
    let h = route_with(r#"max_replay_body = "64KiB""#).await;
    // The first piece is exactly 64 KiB; the rest is held at gate h.
    let path = "/r/edge?size=131072&hold=h";
    let mut leader = connect(h.addr).await;
    let response = send_head(&mut leader, request(Method::GET, path, &[], Bytes::new())).await;
    let mut body = response.into_body();
    let mut received = Vec::new();
    while received.len() < 65_536 {
        let frame = body.frame().await.expect("a frame").expect("data");
        received.extend_from_slice(&frame.into_data().expect("data"));
    }
    // The body so far fits (it equals the limit): the flight is still open to joiners.
    assert_eq!(h.flights(), 1);
    let late = tokio::spawn({
        let addr = h.addr;
        async move { get(addr, path).await }
    });
    assert!(eventually(|| h.proxy.stats().snapshot().joined == 1).await);
    h.origin.open_gate("h");
    received.extend_from_slice(&body.collect().await.expect("rest").to_bytes());
    assert_eq!(received, origin::body(131_072));
    let late = late.await.expect("late");
    assert_eq!(late.outcome(), "follower");
    assert_eq!(late.body(), &origin::body(131_072));
    assert_eq!(h.origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_is_in_the_key_on_a_route_without_a_host_match() {
    let h = Harness::start().await;
    // Two herds for one path under two hosts, at once: an origin may build each answer from
    // the host it is told (X-Forwarded-Host), so neither herd may be given the other's.
    let path = "/hosted?echo_header=x-forwarded-host&hold_head=g";
    let good = [("host", "good.example")];
    let evil = [("host", "EVIL.example:80")];
    let (good, evil, ()) = tokio::join!(
        herd(h.addr, 5, Method::GET, path, &good),
        herd(h.addr, 5, Method::GET, path, &evil),
        h.open_when_followers(8, "g")
    );
    assert_eq!(h.origin.hits(), 2, "one flight per host");
    assert_eq!(outcomes(&good), (1, 4, 0));
    assert_eq!(outcomes(&evil), (1, 4, 0));
    let body = |reply: &Reply| reply.body().clone();
    assert!(good
        .iter()
        .all(|r| body(r) == "x-forwarded-host=good.example"));
    assert!(evil
        .iter()
        .all(|r| body(r) == "x-forwarded-host=EVIL.example:80"));
}
