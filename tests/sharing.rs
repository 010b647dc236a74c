//! Nothing is shared that must not be: credentials, Set-Cookie and private, Vary, Range and
//! conditionals, and the waiting bounds that keep followers from queueing.

use std::collections::HashSet;

use bytes::Bytes;
use coalesce_proxy::tools::origin::{self, OriginSettings};
use http::{Method, StatusCode};

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_set_cookie_responses_reach_only_their_own_client() {
    let h = Harness::start().await;
    // Every request holds at gate g until the herd is in; every request but the leader's then
    // holds at gate r, so the test can see all 199 released followers at the origin at once.
    let path = "/private?cookie=1&size=500&hold_head=g&hold_rest=r";
    let herd = tokio::spawn({
        let addr = h.addr;
        async move { herd(addr, 200, Method::GET, path, &[]).await }
    });
    h.open_when_followers(199, "g").await;
    assert!(
        h.origin.wait_until(PATIENCE, |o| o.hits() == 200).await,
        "the followers were not all released at once: {} requests reached the origin",
        h.origin.hits()
    );
    h.origin.open_gate("r");
    let replies = herd.await.expect("herd");

    let mut cookies = HashSet::new();
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body(), &origin::body(500));
        let cookie = reply.headers["set-cookie"].to_str().unwrap().to_owned();
        assert!(
            cookies.insert(cookie),
            "a Set-Cookie value reached two clients"
        );
    }
    assert_eq!(outcomes(&replies), (1, 0, 199));
    assert_eq!(h.origin.hits(), 200);
    assert_eq!(h.proxy.coordinator().remembered_passes(), 1);
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_found_not_shareable_goes_straight_upstream_until_shareable_again() {
    let h = Harness::start().await;
    let path = "/account?cookie=1";
    assert_eq!(get(h.addr, path).await.outcome(), "leader");
    let joined = h.proxy.stats().snapshot().joined;

    // The second wave does not wait on any flight: every request passes, in parallel.
    let wave = herd(h.addr, 50, Method::GET, path, &[]).await;
    assert_eq!(outcomes(&wave), (0, 0, 50));
    assert_eq!(h.proxy.stats().snapshot().joined, joined);
    assert_eq!(h.origin.hits(), 51);

    // A shareable answer ends the memory; the next request coalesces again.
    h.origin.set_cookies(false);
    assert_eq!(get(h.addr, path).await.outcome(), "pass");
    assert!(h.proxy.coordinator().remembered_passes() == 0);
    assert_eq!(get(h.addr, path).await.outcome(), "leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_no_store_responses_are_not_shared_but_public_ones_are() {
    let h = Harness::start().await;
    for (header, shared) in [
        ("cache-control:private,%20max-age=60", false),
        ("cache-control:no-store", false),
        ("vary:*", false),
        ("cache-control:public,%20max-age=60", true),
    ] {
        let key = format!("/cc/{header}?");
        let path = format!("{key}header={header}&hold_head={header}");
        let replies = h.gated_herd(10, Method::GET, &path, &[], header).await;
        let hits: HashSet<&str> = replies
            .iter()
            .map(|r| r.headers["x-origin-hit"].to_str().unwrap())
            .collect();
        if shared {
            assert_eq!(outcomes(&replies), (1, 9, 0), "{header}");
            assert_eq!(h.origin.hits_for(&key), 1, "{header}");
            assert_eq!(hits.len(), 1, "{header}: everyone got the one response");
        } else {
            // Every client got a response of its own: the leader's never reached a follower.
            assert_eq!(outcomes(&replies), (1, 0, 9), "{header}");
            assert_eq!(h.origin.hits_for(&key), 10, "{header}");
            assert_eq!(hits.len(), 10, "{header}: a response reached two clients");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_gives_each_client_the_body_for_its_own_language() {
    let h = Harness::start().await;
    let path =
        "/greeting?header=vary:accept-language&echo_header=accept-language&hold_head=g&hold_rest=r";
    let languages = ["en", "fr", "de"];
    let mut herds = Vec::new();
    for language in languages {
        let addr = h.addr;
        herds.push(tokio::spawn(async move {
            herd(
                addr,
                20,
                Method::GET,
                path,
                &[("accept-language", language)],
            )
            .await
        }));
    }
    // All 60 join one flight; once its head says Vary, the 40 whose language differs from
    // the leader's re-join two variant flights (38 of them as followers).
    h.open_when_followers(59, "g").await;
    assert!(eventually(|| h.proxy.stats().snapshot().joined == 59 + 38).await);
    h.origin.open_gate("r");
    for (language, herd) in languages.iter().zip(herds) {
        for reply in herd.await.expect("herd") {
            assert_eq!(
                reply.body(),
                &Bytes::from(format!("accept-language={language}"))
            );
        }
    }
    assert_eq!(h.origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_and_conditional_requests_get_only_what_they_asked_for() {
    let h = Harness::start().await;
    let path = "/file?size=1000&hold_head=g";
    let (plain, first, rest, revalidate, ()) = tokio::join!(
        herd(h.addr, 15, Method::GET, path, &[]),
        herd(h.addr, 15, Method::GET, path, &[("range", "bytes=0-99")]),
        herd(h.addr, 15, Method::GET, path, &[("range", "bytes=100-")]),
        herd(
            h.addr,
            15,
            Method::GET,
            path,
            &[("if-none-match", "\"v1\"")]
        ),
        h.open_when_followers(56, "g")
    );
    let body = origin::body(1000);
    for reply in &plain {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body(), &body);
    }
    for reply in &first {
        assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(reply.headers["content-range"], "bytes 0-99/1000");
        assert_eq!(reply.body(), &body.slice(0..100));
    }
    for reply in &rest {
        assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(reply.body(), &body.slice(100..));
    }
    for reply in &revalidate {
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
        assert!(reply.body().is_empty());
    }
    assert_eq!(h.origin.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_pass_never_coalesces_requests_with_credentials() {
    let h = Harness::start_with(
        OriginSettings::default(),
        "",
        r#"
[[routes]]
path_prefix = "/me/"
upstream = "origin"
coalesce = { credentials = "pass" }
"#,
    )
    .await;
    let with = herd(
        h.addr,
        10,
        Method::GET,
        "/me/profile",
        &[("authorization", "Bearer a")],
    )
    .await;
    assert_eq!(outcomes(&with), (0, 0, 10));
    let with_cookie = herd(h.addr, 10, Method::GET, "/me/profile", &[("cookie", "s=1")]).await;
    assert_eq!(outcomes(&with_cookie), (0, 0, 10));
    assert_eq!(h.origin.hits(), 20);
    // Without credentials the route still coalesces.
    let without = h
        .gated_herd(10, Method::GET, "/me/public?hold_head=g", &[], "g")
        .await;
    assert_eq!(outcomes(&without), (1, 9, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_past_max_wait_go_upstream_on_their_own() {
    let h = Harness::start_with(
        OriginSettings::default(),
        "",
        r#"
[[routes]]
path_prefix = "/slow/"
upstream = "origin"
coalesce = { max_wait = "100ms" }
"#,
    )
    .await;
    let herd = tokio::spawn({
        let addr = h.addr;
        async move { herd(addr, 10, Method::GET, "/slow/x?hold_head=g", &[]).await }
    });
    // While the leader's request is still held, each follower gives up waiting and sends its
    // own: all ten requests reach the origin without the gate ever opening.
    assert!(h.origin.wait_until(PATIENCE, |o| o.hits() == 10).await);
    h.origin.open_gate("g");
    let replies = herd.await.expect("herd");
    assert_eq!(outcomes(&replies), (1, 0, 9));
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_followers_starts_a_new_flight_when_one_is_full() {
    let h = Harness::start_with(
        OriginSettings::default(),
        "",
        "[coalesce]\nmax_followers = 4\n",
    )
    .await;
    // 15 clients: three flights of a leader and four followers each.
    let (replies, ()) = tokio::join!(
        herd(h.addr, 15, Method::GET, "/full?hold_head=g", &[]),
        h.open_when_followers(12, "g")
    );
    assert_eq!(outcomes(&replies), (3, 12, 0));
    assert_eq!(h.origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_errors_false_re_elects_one_leader_for_the_herd_after_a_5xx() {
    let h = Harness::start_with(
        OriginSettings::default(),
        "",
        "[coalesce]\nshare_errors = false\n",
    )
    .await;
    // The origin answers 503 after 300 ms: the first flight's followers are not given its
    // 503, and re-elect one leader among them (its flight takes 300 ms too, so they all find
    // it), whose 503 they then share rather than each asking the failing origin again.
    let replies = h
        .gated_herd(
            10,
            Method::GET,
            "/flaky?status=503&delay=300&hold_head=g",
            &[],
            "g",
        )
        .await;
    assert!(replies
        .iter()
        .all(|r| r.status == StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(outcomes(&replies), (2, 8, 0));
    assert_eq!(
        h.origin.hits(),
        2,
        "one request per election, not one per client"
    );
    // A 5xx is not remembered as "not shareable": the next request coalesces again.
    assert!(h.proxy.coordinator().remembered_passes() == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_errors_false_re_elects_once_after_a_fetch_that_fails_before_its_head() {
    let h = Harness::start_with(
        OriginSettings::default(),
        "response_timeout = \"500ms\"",
        "[coalesce]\nshare_errors = false\n",
    )
    .await;
    // Both elections time out at the origin (the gate never opens): two upstream requests,
    // and every client gets the honest 504.
    let replies = herd(h.addr, 10, Method::GET, "/stuck?hold_head=never", &[]).await;
    assert!(replies
        .iter()
        .all(|r| r.status == StatusCode::GATEWAY_TIMEOUT));
    assert_eq!(h.origin.hits(), 2);
    assert_eq!(outcomes(&replies).0, 2, "two leaders, one per election");
    h.assert_table_empties().await;
}
