//! The response cache in front of the singleflight table.

use coalesce_proxy::tools::origin::{self, OriginSettings};
use http::{Method, StatusCode};

use crate::util::*;

pub const CACHED_ROUTE: &str = r#"
[admin]
listen = "127.0.0.1:0"

[[routes]]
name = "cached"
path_prefix = "/c/"
upstream = "origin"
cache = { enabled = true, max_size = "64KiB" }

[[routes]]
name = "defaulted"
path_prefix = "/d/"
upstream = "origin"
cache = { enabled = true, default_ttl = "60s" }
"#;

pub async fn harness() -> Harness {
    Harness::start_with(OriginSettings::default(), "", CACHED_ROUTE).await
}

pub const FRESH: &str = "header=cache-control:max-age=60";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_responses_are_served_from_memory_with_an_age() {
    let h = harness().await;
    let path = format!("/c/doc?size=300&{FRESH}");
    let first = get(h.addr, &path).await;
    assert_eq!(first.outcome(), "leader");
    let second = get(h.addr, &path).await;
    assert_eq!(second.outcome(), "hit");
    assert_eq!(second.body(), &origin::body(300));
    assert_eq!(second.headers["age"], "0");
    assert_eq!(second.headers["x-origin-hit"], "1");
    let head = fetch(h.addr, Method::HEAD, &path, &[], Default::default()).await;
    assert_eq!(head.outcome(), "hit");
    assert_eq!(head.headers["content-length"], "300");
    assert!(head.body().is_empty());
    assert_eq!(h.origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_comes_from_expires_age_and_default_ttl() {
    let h = harness().await;
    let far = "Thu, 01 Jan 2099 00:00:00 GMT";
    let expires = format!("/c/expires?header=expires:{}", far.replace(' ', "%20"));
    get(h.addr, &expires).await;
    assert_eq!(get(h.addr, &expires).await.outcome(), "hit");

    // Older than its max-age when it arrives: not stored.
    let stale = format!("/c/stale?{FRESH}&header=age:90");
    get(h.addr, &stale).await;
    assert_eq!(get(h.addr, &stale).await.outcome(), "leader");

    // No freshness at all: stored only on a route with a default_ttl.
    get(h.addr, "/c/plain").await;
    assert_eq!(get(h.addr, "/c/plain").await.outcome(), "leader");
    get(h.addr, "/d/plain").await;
    assert_eq!(get(h.addr, "/d/plain").await.outcome(), "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_and_private_responses_are_never_stored() {
    let h = harness().await;
    for header in [
        "cache-control:no-store",
        "cache-control:private,%20max-age=60",
        "set-cookie:a=1",
    ] {
        let path = format!("/c/never?header={header}&header=cache-control:max-age=60");
        get(h.addr, &path).await;
        let again = get(h.addr, &path).await;
        assert_ne!(again.outcome(), "hit", "{header}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_variants_are_stored_and_served_separately() {
    let h = harness().await;
    let path = format!("/c/hello?header=vary:accept-language&echo_header=accept-language&{FRESH}");
    for language in ["en", "fr"] {
        let miss = fetch(
            h.addr,
            Method::GET,
            &path,
            &[("accept-language", language)],
            Default::default(),
        )
        .await;
        assert_eq!(miss.outcome(), "leader");
    }
    for language in ["fr", "en"] {
        let hit = fetch(
            h.addr,
            Method::GET,
            &path,
            &[("accept-language", language)],
            Default::default(),
        )
        .await;
        assert_eq!(hit.outcome(), "hit");
        assert_eq!(hit.body(), format!("accept-language={language}").as_bytes());
    }
    assert_eq!(h.origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_herd_costs_one_flight_and_fills_the_cache() {
    let h = harness().await;
    let path = format!("/c/herd?size=2000&hold_head=g&{FRESH}");
    let replies = h.gated_herd(50, Method::GET, &path, &[], "g").await;
    assert_eq!(outcomes(&replies), (1, 49, 0));
    assert!(replies.iter().all(|r| r.body() == &origin::body(2000)));
    assert_eq!(get(h.addr, &path).await.outcome(), "hit");
    assert_eq!(h.origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_entries_by_prefix_or_exact_path() {
    let h = harness().await;
    for path in ["/c/p/a", "/c/p/b", "/c/q"] {
        get(h.addr, &format!("{path}?{FRESH}")).await;
    }
    let admin = h.admin.expect("admin");
    let purged = fetch(
        admin,
        Method::POST,
        "/purge?prefix=/c/p/",
        &[],
        Default::default(),
    )
    .await;
    assert_eq!(purged.status, StatusCode::OK);
    assert_eq!(purged.body(), "purged 2\n".as_bytes());
    assert_eq!(
        get(h.addr, &format!("/c/p/a?{FRESH}")).await.outcome(),
        "leader"
    );
    assert_eq!(get(h.addr, &format!("/c/q?{FRESH}")).await.outcome(), "hit");
    let exact = fetch(
        admin,
        Method::POST,
        "/purge?key=/c/q",
        &[],
        Default::default(),
    )
    .await;
    assert_eq!(exact.body(), "purged 1\n".as_bytes());
    assert_eq!(
        get(h.addr, &format!("/c/q?{FRESH}")).await.outcome(),
        "leader"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_cache_under_max_size() {
    let h = harness().await;
    for i in 0..30 {
        get(h.addr, &format!("/c/big/{i}?size=10000&{FRESH}")).await;
    }
    let metrics = h.proxy.render_metrics();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert!(
        value("coalesce_proxy_cache_bytes ") <= 64 * 1024,
        "{metrics}"
    );
    assert!(
        value("coalesce_proxy_cache_evictions_total ") > 0,
        "{metrics}"
    );
}

/// Freshness is wall-clock time: the only way to get a stale entry is to let it age.
/// Waits until the cache holds one entry: a flight stores its response as its last byte goes
/// by, just after its clients have theirs.
async fn one_entry_stored(h: &Harness) -> bool {
    eventually(|| {
        h.proxy
            .render_metrics()
            .contains("coalesce_proxy_cache_entries 1")
    })
    .await
}

async fn let_it_go_stale() {
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_exactly_once() {
    let h = harness().await;
    // The first request passes; every later one (the refresh) holds at gate r.
    let path =
        "/c/swr?size=100&hold_rest=r&header=cache-control:max-age=1,%20stale-while-revalidate=30";
    assert_eq!(get(h.addr, path).await.outcome(), "leader");
    let_it_go_stale().await;
    // While the one refresh is held upstream, all 20 are served the stale entry at once.
    let replies = herd(h.addr, 20, Method::GET, path, &[]).await;
    for reply in &replies {
        assert_eq!(reply.outcome(), "stale");
        assert_eq!(reply.body(), &origin::body(100));
        assert_eq!(reply.headers["x-origin-hit"], "1");
    }
    assert!(h.origin.wait_until(PATIENCE, |o| o.reached("r")).await);
    assert_eq!(h.origin.hits(), 2, "exactly one refresh in the air");
    let metrics = h.proxy.render_metrics();
    assert_eq!(
        metric(&metrics, "coalesce_proxy_cache_revalidations_total"),
        1.0
    );
    assert_eq!(
        metric(&metrics, "coalesce_proxy_cache_stale_served_total"),
        20.0
    );
    // The refresh is conditional, and the origin's 304 renews the stored response.
    let refresh = h.origin.requests().pop().expect("refresh");
    assert_eq!(refresh.header("if-none-match"), Some("\"v1\""));
    h.origin.open_gate("r");
    assert!(
        eventually_async(|| async { get(h.addr, path).await.outcome() == "hit" }).await,
        "the refresh never renewed the entry"
    );
    // The stored body, with the 304's header fields replacing the stored ones.
    let renewed = get(h.addr, path).await;
    assert_eq!(renewed.outcome(), "hit");
    assert_eq!(renewed.body(), &origin::body(100));
    assert_eq!(renewed.headers["x-origin-hit"], "2");
    assert_eq!(h.origin.hits(), 2, "exactly one refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_and_a_miss_for_the_same_resource_make_one_fetch() {
    let h = harness().await;
    // Stale for a 1 s window after its 1 s of freshness; every request after the first holds
    // at gate r.
    let path =
        "/c/one?size=100&hold_rest=r&header=cache-control:max-age=1,%20stale-while-revalidate=1";
    assert_eq!(get(h.addr, path).await.outcome(), "leader");
    let_it_go_stale().await;
    assert_eq!(get(h.addr, path).await.outcome(), "stale");
    assert!(h.origin.wait_until(PATIENCE, |o| o.reached("r")).await);
    // Past the window, while the refresh is still held: the entry is now a miss, and the
    // request revalidates it with the refresh's very request: it joins the refresh.
    let_it_go_stale().await;
    let miss = tokio::spawn({
        let addr = h.addr;
        async move { get(addr, path).await }
    });
    assert!(eventually(|| h.proxy.stats().snapshot().joined == 1).await);
    h.origin.open_gate("r");
    let miss = miss.await.expect("the miss");
    assert_eq!(miss.outcome(), "follower");
    assert_eq!(miss.body(), &origin::body(100));
    assert_eq!(
        miss.header("cache-status"),
        Some("coalesce-proxy; fwd=stale; fwd-status=304; stored; collapsed")
    );
    assert_eq!(h.origin.hits(), 2, "the refresh was the only fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_is_in_the_cache_key() {
    let h = harness().await;
    let path = format!("/c/by-host?echo_header=x-forwarded-host&{FRESH}");
    let ask = |host: &'static str| {
        let path = path.clone();
        async move { get_with(h.addr, &path, &[("host", host)]).await }
    };
    assert_eq!(ask("good.example").await.outcome(), "leader");
    assert_eq!(ask("Good.Example").await.outcome(), "hit");
    let other = ask("evil.example").await;
    assert_eq!(
        other.outcome(),
        "leader",
        "never another host's stored response"
    );
    assert_eq!(other.body(), "x-forwarded-host=evil.example");
    assert_eq!(
        ask("good.example").await.body(),
        "x-forwarded-host=good.example"
    );
    assert_eq!(h.origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_the_stale_response_when_the_upstream_fails() {
    let h = harness().await;
    let path = "/c/sie?size=100&fail_after=1&header=cache-control:max-age=1,%20stale-while-revalidate=0,%20stale-if-error=60";
    assert_eq!(get(h.addr, path).await.status, StatusCode::OK);
    let_it_go_stale().await;
    let reply = get(h.addr, path).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.outcome(), "stale");
    assert_eq!(reply.body(), &origin::body(100));
    assert_eq!(h.origin.hits(), 2, "the upstream was asked, and failed");
    // Without stale-if-error the failure reaches the client.
    let plain = "/c/plain-sie?fail_after=3&header=cache-control:max-age=1,%20stale-while-revalidate=0,%20stale-if-error=0";
    assert_eq!(get(h.addr, plain).await.status, StatusCode::OK);
    let_it_go_stale().await;
    assert_eq!(
        get(h.addr, plain).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_responses_are_stored_but_served_only_after_a_304() {
    let h = harness().await;
    // The first request passes; later ones hold at gate r until the herd has joined.
    let path = "/c/nocache?size=50&header=cache-control:no-cache&hold_rest=r";
    let first = get(h.addr, path).await;
    assert_eq!(first.outcome(), "leader");
    assert_eq!(first.body(), &origin::body(50));
    // Every later request is revalidated upstream; a herd shares one revalidation.
    let replies = h.gated_herd(10, Method::GET, path, &[], "r").await;
    for reply in &replies {
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "a 304 never reaches a client that did not ask"
        );
        assert_eq!(reply.body(), &origin::body(50));
    }
    assert_eq!(outcomes(&replies), (1, 9, 0));
    assert_eq!(h.origin.hits(), 2);
    let revalidation = h.origin.requests().pop().expect("revalidation");
    assert_eq!(revalidation.header("if-none-match"), Some("\"v1\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_14_range_requests_are_answered_from_a_stored_response() {
    let h = harness().await;
    let path = format!("/c/ranged?size=1000&{FRESH}");
    // A miss for a range fetches the whole resource (RFC 9111 §3.4 lets a cache store only
    // complete responses), stores it, and gives the client its range.
    let path = &path;
    let range =
        |spec: &'static str| async move { get_with(h.addr, path, &[("range", spec)]).await };
    let missed = range("bytes=10-19").await;
    assert_eq!(missed.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(missed.outcome(), "leader");
    assert_eq!(missed.header("content-range"), Some("bytes 10-19/1000"));
    assert_eq!(missed.body(), &origin::body(1000).slice(10..20));
    let fetched = h.origin.requests().pop().expect("the fetch");
    assert_eq!(
        fetched.header("range"),
        None,
        "the whole resource was asked for"
    );
    assert!(
        one_entry_stored(&h).await,
        "stored once the whole body is in"
    );
    assert_eq!(get(h.addr, path).await.outcome(), "hit");
    // Stored whole: ranges are sliced from it.
    let part = range("bytes=990-").await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.outcome(), "hit");
    assert_eq!(part.header("content-range"), Some("bytes 990-999/1000"));
    assert_eq!(part.header("content-length"), Some("10"));
    assert_eq!(part.body(), &origin::body(1000).slice(990..1000));
    let past_the_end = range("bytes=1000-").await;
    assert_eq!(past_the_end.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past_the_end.header("content-range"), Some("bytes */1000"));
    let several = range("bytes=0-1,5-6").await;
    assert_eq!(
        several.status,
        StatusCode::OK,
        "several ranges: the whole, as §14.2 allows"
    );
    assert_eq!(several.body(), &origin::body(1000));
    assert_eq!(h.origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_age_a_response_arrived_with_counts_in_its_age_header() {
    let h = harness().await;
    let path = format!("/c/aged?{FRESH}&header=age:7");
    get(h.addr, &path).await;
    let hit = get(h.addr, &path).await;
    assert_eq!(hit.outcome(), "hit");
    // 7 s old on arrival, and (within this test) less than a second in the cache.
    assert_eq!(hit.headers["age"], "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_larger_than_max_replay_body_streams_to_everyone_but_is_not_stored() {
    let h = Harness::start_with(
        OriginSettings::default(),
        "",
        "[[routes]]\npath_prefix = \"/c/\"\nupstream = \"origin\"\ncache = { enabled = true }\ncoalesce = { max_replay_body = \"10KiB\" }\n",
    )
    .await;
    let small = format!("/c/small?size=10240&{FRESH}");
    let large = format!("/c/large?size=10241&{FRESH}");
    for (path, gate) in [(&small, "s"), (&large, "l")] {
        let path = format!("{path}&hold_head={gate}");
        let replies = h.gated_herd(5, Method::GET, &path, &[], gate).await;
        assert_eq!(outcomes(&replies), (1, 4, 0));
    }
    let small_again = get(h.addr, &format!("{small}&hold_head=s")).await;
    assert_eq!(
        small_again.outcome(),
        "hit",
        "exactly max_replay_body is stored"
    );
    let large_again = get(h.addr, &format!("{large}&hold_head=l")).await;
    assert_eq!(large_again.outcome(), "leader");
    assert_eq!(large_again.body(), &origin::body(10241));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_grace_serves_stale_when_the_response_names_no_window() {
    let h = Harness::start_with(
        OriginSettings::default(),
        "",
        "[[routes]]\npath_prefix = \"/g/\"\nupstream = \"origin\"\ncache = { enabled = true, grace = \"30s\" }\n",
    )
    .await;
    let path = "/g/doc?size=10&hold_rest=r&header=cache-control:max-age=1";
    assert_eq!(get(h.addr, path).await.outcome(), "leader");
    let_it_go_stale().await;
    let stale = get(h.addr, path).await;
    assert_eq!(stale.outcome(), "stale");
    assert_eq!(stale.body(), &origin::body(10));
    // One refresh went upstream (held at the gate); nobody waited for it.
    assert!(h.origin.wait_until(PATIENCE, |o| o.reached("r")).await);
    assert_eq!(h.origin.hits(), 2);
    h.origin.open_gate("r");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_an_unchanged_routes_cache_and_empties_a_changed_ones() {
    let h = harness().await;
    let (kept, changed) = (format!("/c/kept?{FRESH}"), format!("/d/changed?{FRESH}"));
    for path in [&kept, &changed] {
        get(h.addr, path).await;
        assert_eq!(get(h.addr, path).await.outcome(), "hit");
    }
    // The same file again (what SIGHUP after an unrelated edit does): nothing is lost.
    let same = config_text(&h.origin.url(), "", CACHED_ROUTE);
    let load = |text: &str| coalesce_proxy::config::Config::from_toml(text).expect("valid");
    h.handle.reload(load(&same));
    assert_eq!(get(h.addr, &kept).await.outcome(), "hit");
    assert_eq!(get(h.addr, &changed).await.outcome(), "hit");
    // The /d/ route's cache policy changes: its stored responses were made under the old one.
    h.handle.reload(load(
        &same.replace("default_ttl = \"60s\"", "default_ttl = \"30s\""),
    ));
    assert_eq!(get(h.addr, &kept).await.outcome(), "hit");
    assert_eq!(get(h.addr, &changed).await.outcome(), "leader");
    assert_eq!(h.origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_to_requests_with_authorization_are_stored_only_when_they_say_so() {
    let h = harness().await;
    // RFC 9111 §3.5: public or s-maxage lets a shared cache store them.
    for (directives, stored) in [
        ("max-age=60", false),
        ("public,%20max-age=60", true),
        ("s-maxage=60", true),
    ] {
        let path = format!("/c/auth/{directives}?header=cache-control:{directives}");
        let auth = [("authorization", "Bearer a")];
        fetch(h.addr, Method::GET, &path, &auth, Default::default()).await;
        let again = fetch(h.addr, Method::GET, &path, &auth, Default::default()).await;
        let expected = if stored { "hit" } else { "leader" };
        assert_eq!(again.outcome(), expected, "{directives}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_counts_its_entries_bytes_hits_and_misses() {
    let h = harness().await;
    let path = format!("/c/w?size=10000&{FRESH}");
    assert_eq!(get(h.addr, &path).await.outcome(), "leader");
    let hit = get(h.addr, &path).await;
    assert_eq!(hit.outcome(), "hit");
    let metrics = h.proxy.render_metrics();
    assert_eq!(metric(&metrics, "coalesce_proxy_cache_misses_total"), 1.0);
    assert_eq!(metric(&metrics, "coalesce_proxy_cache_hits_total"), 1.0);
    assert_eq!(metric(&metrics, "coalesce_proxy_cache_entries"), 1.0);
    // An entry weighs its body, each stored header (name, value and 32 bytes of
    // bookkeeping), its path and 256 bytes: what max_size bounds.
    let stored_headers: usize = hit
        .headers
        .iter()
        // What the proxy adds on the way out: Age, the outcome, Cache-Status, hyper's Date.
        .filter(|(name, _)| !["age", "x-coalesce", "cache-status", "date"].contains(&name.as_str()))
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    let weight = 10_000 + stored_headers + "/c/w".len() + 256;
    assert_eq!(
        metric(&metrics, "coalesce_proxy_cache_bytes"),
        weight as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_entry_that_goes_stale_again_is_refreshed_again() {
    let h = harness().await;
    let path = "/c/again?size=10&header=cache-control:max-age=1,%20stale-while-revalidate=30";
    assert_eq!(get(h.addr, path).await.outcome(), "leader");
    for refreshes in 1..=2 {
        let_it_go_stale().await;
        assert_eq!(get(h.addr, path).await.outcome(), "stale");
        // The refresh ends (and with it its claim on the key) once the origin has answered.
        assert!(
            h.origin
                .wait_until(PATIENCE, |o| o.hits() == 1 + refreshes)
                .await
        );
        assert!(
            eventually_async(|| async { get(h.addr, path).await.outcome() == "hit" }).await,
            "refresh {refreshes} never renewed the entry"
        );
    }
    assert_eq!(h.origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_is_stored_whole_once_it_ends() {
    let h = harness().await;
    // No Content-Length: the flight knows the body is whole only at its end.
    let path = format!("/c/chunked?chunked=1&chunks=3&size=3000&{FRESH}");
    assert_eq!(get(h.addr, &path).await.outcome(), "leader");
    let hit = get(h.addr, &path).await;
    assert_eq!(hit.outcome(), "hit");
    assert_eq!(hit.body(), &origin::body(3000));
    assert_eq!(h.origin.hits(), 1);
}

/// RFC 9111 §4.2.4: a cache that is disconnected from the origin may serve stale. When the
/// upstream closes the connection before a head, a stored response is served stale (within
/// `stale_if_unreachable`, a day by default) to every client of the flight: the down origin
/// costs one attempt for the herd. http-tests/cache-tests' `stale-close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_2_4_a_stale_response_is_served_when_the_upstream_cannot_be_reached() {
    let h = harness().await;
    let path = "/c/down?size=100&close_after=1&hold_rest=g&header=cache-control:max-age=1";
    assert_eq!(get(h.addr, path).await.outcome(), "leader");
    let_it_go_stale().await;
    let replies = h.gated_herd(5, Method::GET, path, &[], "g").await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.outcome(), "stale");
        assert_eq!(reply.body(), &origin::body(100));
        let status = reply.header("cache-status").expect("Cache-Status");
        assert!(status.contains("fwd=stale"), "{status}");
    }
    assert_eq!(h.origin.hits(), 2, "one attempt for the herd");
    assert_eq!(h.proxy.stats().snapshot().stale_on_error, 5);
}

/// RFC 9111 §5.2.2.2, §5.2.2.8, §5.2.2.4 and §5.2.2.10: `must-revalidate`,
/// `proxy-revalidate`, `no-cache` and `s-maxage` forbid serving the response stale, even when
/// the origin cannot be reached: the client gets the failure (502). cache-tests'
/// `stale-close-must-revalidate`, `-proxy-revalidate`, `-no-cache`, `-s-maxage=2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_5_2_2_revalidation_directives_forbid_stale_when_the_upstream_is_down() {
    let h = harness().await;
    let directives = [
        "max-age=1,%20must-revalidate",
        "max-age=1,%20proxy-revalidate",
        "no-cache",
        "s-maxage=1",
    ];
    for (i, directive) in directives.iter().enumerate() {
        let path = format!(
            "/c/strict-{i}?close_after={}&header=cache-control:{directive}",
            i + 1
        );
        assert_eq!(
            get(h.addr, &path).await.status,
            StatusCode::OK,
            "{directive}"
        );
    }
    let_it_go_stale().await;
    for (i, directive) in directives.iter().enumerate() {
        let path = format!(
            "/c/strict-{i}?close_after={}&header=cache-control:{directive}",
            i + 1
        );
        let reply = get(h.addr, &path).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{directive}");
    }
    assert_eq!(h.proxy.stats().snapshot().stale_on_error, 0);
}

/// RFC 9111 §5.1: an `Age` that is not one non-negative integer says nothing about how old
/// the response is; it is taken as very old, so the response is never served fresh from the
/// cache. cache-tests' `age-parse-suffix` (`Age: old, 0` with `max-age=3600`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_5_1_a_response_with_an_unreadable_age_is_not_served_fresh() {
    let h = harness().await;
    let path = "/c/age?size=10&header=cache-control:max-age=3600&header=age:old,%200";
    assert_eq!(get(h.addr, path).await.status, StatusCode::OK);
    let again = get(h.addr, path).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_ne!(again.outcome(), "hit");
    assert_eq!(h.origin.hits(), 2);
    // The same with a readable Age is a hit.
    let plain = "/c/age-ok?size=10&header=cache-control:max-age=3600&header=age:5";
    get(h.addr, plain).await;
    assert_eq!(get(h.addr, plain).await.outcome(), "hit");
    assert_eq!(h.origin.hits(), 3);
}

/// RFC 9111 §3.4 as this cache does it: a range that misses fetches the whole resource. When
/// the body arrives in several pieces and the client's range ends in the first, the rest is
/// still read (hyper stops polling a response at its Content-Length), so the flight completes
/// and the resource is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_ending_before_the_rest_of_the_body_arrives_still_stores_the_whole() {
    let h = harness().await;
    let path = format!("/c/pieces?size=4000&chunks=4&gap=20&{FRESH}");
    let part = get_with(h.addr, &path, &[("range", "bytes=10-19")]).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.body(), &origin::body(4000).slice(10..20));
    assert!(
        one_entry_stored(&h).await,
        "the whole body was read and stored"
    );
    assert_eq!(get(h.addr, &path).await.outcome(), "hit");
    assert_eq!(h.origin.hits(), 1);
}
