//! Several addresses per upstream: round robin, passive health, hashing.

use std::time::Duration;

use bytes::Bytes;
use coalesce_proxy::tools::origin::{Origin, OriginSettings};
use http::{Method, StatusCode};

use crate::util::*;

/// A proxy in front of `origins`, with `upstream_extra` in its upstream table.
async fn proxy_for(origins: &[&Origin], upstream_extra: &str) -> Harness {
    let urls: Vec<String> = origins.iter().map(|o| format!("\"{}\"", o.url())).collect();
    let urls = urls.join(", ");
    Harness::start_text(OriginSettings::default(), move |unused| {
        config_text(unused, upstream_extra, "")
            .replace(&format!("url = \"{unused}\""), &format!("urls = [{urls}]"))
    })
    .await
}

async fn post(h: &Harness, path: &str) -> Reply {
    fetch(h.addr, Method::POST, path, &[], Bytes::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_over_every_address() {
    let origins = [
        Origin::start(OriginSettings::default()).await.unwrap(),
        Origin::start(OriginSettings::default()).await.unwrap(),
        Origin::start(OriginSettings::default()).await.unwrap(),
    ];
    let h = proxy_for(&origins.iter().collect::<Vec<_>>(), "").await;
    for i in 0..9 {
        assert_eq!(post(&h, &format!("/rr/{i}")).await.status, StatusCode::OK);
    }
    for origin in &origins {
        assert_eq!(origin.hits(), 3);
    }
}

/// A proxy over a live origin and an address nothing listens on, with `extra` in the upstream.
async fn proxy_with_a_dead_address(live: &Origin, extra: &str) -> (Harness, std::net::SocketAddr) {
    let dead_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead = format!("http://{dead_addr}");
    let h = Harness::start_text(OriginSettings::default(), |unused| {
        config_text(unused, extra, "").replace(
            &format!("url = \"{unused}\""),
            &format!("urls = [\"{}\", \"{dead}\"]", live.url()),
        )
    })
    .await;
    (h, dead_addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_address_is_taken_out_after_max_fails() {
    let live = Origin::start(OriginSettings::default()).await.unwrap();
    // fail_timeout is far longer than the test: the address stays out throughout.
    let (h, _) = proxy_with_a_dead_address(&live, "max_fails = 1\nfail_timeout = \"1h\"").await;
    let mut failures = 0;
    for i in 0..10 {
        if post(&h, &format!("/e/{i}")).await.status == StatusCode::BAD_GATEWAY {
            failures += 1;
        }
    }
    assert_eq!(failures, 1, "one failure takes the address out");
    assert_eq!(live.hits(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_taken_out_is_tried_again_after_fail_timeout() {
    let live = Origin::start(OriginSettings::default()).await.unwrap();
    let (h, dead_addr) =
        proxy_with_a_dead_address(&live, "max_fails = 1\nfail_timeout = \"300ms\"").await;
    // Round robin reaches the dead address within two requests; that failure takes it out.
    // It is out from some moment between `started` and `failed_by` for fail_timeout.
    let started = std::time::Instant::now();
    let first = post(&h, "/e/0").await.status;
    let second = post(&h, "/e/1").await.status;
    let failed_by = std::time::Instant::now();
    let mut statuses = [first, second];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_GATEWAY]);
    let revived = Origin::start_on(dead_addr, OriginSettings::default())
        .await
        .unwrap();
    // Requests sent well within fail_timeout of `started` all go to the live address.
    for i in 0..4 {
        if started.elapsed() >= Duration::from_millis(200) {
            break;
        }
        assert_eq!(post(&h, &format!("/out/{i}")).await.status, StatusCode::OK);
    }
    assert_eq!(
        revived.hits(),
        0,
        "an address out was used before fail_timeout"
    );
    // Past fail_timeout (time only grows, so this is no race) it is in the rotation again.
    tokio::time::sleep_until((failed_by + Duration::from_millis(300)).into()).await;
    let before = live.hits();
    for i in 0..4 {
        assert_eq!(post(&h, &format!("/back/{i}")).await.status, StatusCode::OK);
    }
    assert_eq!(revived.hits(), 2);
    assert_eq!(live.hits() - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_keeps_keys_on_their_address_and_moves_only_a_failed_ones() {
    let mut origins = Vec::new();
    for _ in 0..5 {
        origins.push(Some(
            Origin::start(OriginSettings::default()).await.unwrap(),
        ));
    }
    let refs: Vec<&Origin> = origins.iter().flatten().collect();
    // No pooled connections: a gone address must refuse at once.
    let h = proxy_for(
        &refs,
        "balance = \"hash\"\nmax_fails = 1\npool_max_idle = 0",
    )
    .await;
    // The trailing slash keeps `hits_for` prefixes from matching each other.
    let paths: Vec<String> = (0..60).map(|i| format!("/h/{i}/")).collect();
    let owner = |origins: &[Option<Origin>], path: &str| {
        origins
            .iter()
            .position(|o| o.as_ref().is_some_and(|o| o.hits_for(path) > 0))
    };
    for path in &paths {
        post(&h, path).await;
        post(&h, path).await;
    }
    let before: Vec<usize> = paths
        .iter()
        .map(|p| owner(&origins, p).expect("served"))
        .collect();
    for (path, &i) in paths.iter().zip(&before) {
        assert_eq!(
            origins[i].as_ref().unwrap().hits_for(path),
            2,
            "{path} stuck to one address"
        );
    }
    // Rendezvous hashing over 5 addresses puts some of 60 keys on each (all but certainly:
    // one address getting none has a probability of 5 × 0.8⁶⁰ ≈ 7 × 10⁻⁶).
    let used: std::collections::HashSet<_> = before.iter().collect();
    assert_eq!(used.len(), 5, "keys spread over every address");

    // Address 2 goes away. The first request to it fails and takes it out (max_fails = 1);
    // from then on its keys, and only its keys, are served elsewhere, each by one address.
    let gone = 2;
    origins[gone] = None;
    let counts = |origins: &[Option<Origin>], path: &str| -> Vec<usize> {
        origins
            .iter()
            .map(|o| o.as_ref().map_or(0, |o| o.hits_for(path)))
            .collect()
    };
    let mut failures = 0;
    let mut new_owner = std::collections::HashMap::new();
    for round in 0..2 {
        for (path, &was) in paths.iter().zip(&before) {
            let earlier = counts(&origins, path);
            let status = post(&h, path).await.status;
            if status == StatusCode::BAD_GATEWAY {
                assert_eq!(was, gone, "{path}: only the gone address fails");
                failures += 1;
                continue;
            }
            assert_eq!(status, StatusCode::OK);
            let later = counts(&origins, path);
            let now = (0..origins.len())
                .find(|&i| later[i] > earlier[i])
                .expect("served by someone");
            if was == gone {
                assert_ne!(now, gone);
                // A moved key stays on its new address too.
                let owner = *new_owner.entry(path.clone()).or_insert(now);
                assert_eq!(now, owner, "{path} moved again in round {round}");
            } else {
                assert_eq!(now, was, "{path} moved although its address is healthy");
            }
        }
    }
    assert_eq!(failures, 1, "max_fails = 1: exactly one request fails");
    let owned_by_gone = before.iter().filter(|&&i| i == gone).count();
    assert_eq!(
        new_owner.len(),
        owned_by_gone,
        "every key of the gone address moved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_of_sidecars_and_hashed_shields_makes_one_origin_request_per_key() {
    // Two shields in front of the origin, each on its own loopback address.
    let origin = Origin::start(OriginSettings::default()).await.unwrap();
    let mut shields = Vec::new();
    for host in ["127.0.0.2", "127.0.0.3"] {
        let url = origin.url();
        shields.push(
            Harness::start_text(OriginSettings::default(), |_| {
                config_text(&url, "", "").replace("127.0.0.1:0", &format!("{host}:0"))
            })
            .await,
        );
    }
    // Four sidecars, each hashing keys over both shields.
    let shield_urls = shields
        .iter()
        .map(|s| format!("\"http://{}\"", s.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sidecars = Vec::new();
    for host in ["127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"] {
        let urls = shield_urls.clone();
        sidecars.push(
            Harness::start_text(OriginSettings::default(), |unused| {
                config_text(unused, "balance = \"hash\"", "")
                    .replace(&format!("url = \"{unused}\""), &format!("urls = [{urls}]"))
                    .replace("127.0.0.1:0", &format!("{host}:0"))
            })
            .await,
        );
    }
    for (round, (key, gate)) in [("/tier/a", "ga"), ("/tier/b", "gb")]
        .into_iter()
        .enumerate()
    {
        let rounds = round as u64 + 1;
        let path = format!("{key}?size=4000&hold_head={gate}");
        let herds: Vec<_> = sidecars
            .iter()
            .map(|sidecar| {
                let (addr, path) = (sidecar.addr, path.clone());
                tokio::spawn(async move { herd(addr, 25, Method::GET, &path, &[]).await })
            })
            .collect();
        // Every sidecar's herd shares one flight, and the four sidecar flights share one
        // flight at the shield their hash picks.
        assert!(
            eventually(|| {
                let joined = |proxies: &[Harness]| -> u64 {
                    proxies
                        .iter()
                        .map(|p| p.proxy.stats().snapshot().joined)
                        .sum()
                };
                // 24 followers at each of 4 sidecars; 3 sidecar flights follow the 4th at
                // the shield.
                origin.hits_for(key) == 1
                    && joined(&sidecars) == 96 * rounds
                    && joined(&shields) == 3 * rounds
            })
            .await,
            "{key}: the herd never fully joined"
        );
        origin.open_gate(gate);
        for herd in herds {
            for reply in herd.await.expect("herd") {
                assert_eq!(reply.body(), &coalesce_proxy::tools::origin::body(4000));
            }
        }
        assert_eq!(
            origin.hits_for(key),
            1,
            "{key}: one origin request for 100 clients"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_avoids_the_address_with_a_request_awaiting_its_head() {
    let origins = [
        Origin::start(OriginSettings::default()).await.unwrap(),
        Origin::start(OriginSettings::default()).await.unwrap(),
    ];
    let h = proxy_for(
        &origins.iter().collect::<Vec<_>>(),
        "balance = \"least_requests\"",
    )
    .await;
    let held = tokio::spawn({
        let addr = h.addr;
        async move {
            fetch(
                addr,
                Method::POST,
                "/lr/held?hold_head=g",
                &[],
                Bytes::new(),
            )
            .await
        }
    });
    assert!(eventually(|| origins[0].hits() + origins[1].hits() == 1).await);
    let busy = usize::from(origins[1].hits() == 1);
    // Round robin would send half of these to the busy address; least_requests sends none.
    for i in 0..4 {
        assert_eq!(post(&h, &format!("/lr/{i}")).await.status, StatusCode::OK);
    }
    assert_eq!(origins[busy].hits(), 1);
    assert_eq!(origins[1 - busy].hits(), 4);
    origins[busy].open_gate("g");
    assert_eq!(held.await.expect("held").status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_address_is_never_taken_out() {
    let h = Harness::start_with(
        OriginSettings::default(),
        "max_fails = 1\nfail_timeout = \"1h\"",
        "",
    )
    .await;
    for i in 0..3 {
        let failed = post(&h, &format!("/lone/{i}?fail=reset_before_head")).await;
        assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
        // Were it taken out, this would be a 502 without reaching the origin.
        assert_eq!(
            post(&h, &format!("/lone/ok/{i}")).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(h.origin.hits(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_address_out_requests_get_502_at_once() {
    let dead: Vec<String> = (0..2)
        .map(|_| {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            format!("\"http://{addr}\"")
        })
        .collect();
    let h = Harness::start_text(OriginSettings::default(), |unused| {
        config_text(unused, "max_fails = 1\nfail_timeout = \"1h\"", "").replace(
            &format!("url = \"{unused}\""),
            &format!("urls = [{}]", dead.join(", ")),
        )
    })
    .await;
    for i in 0..4 {
        let reply = post(&h, &format!("/out/{i}")).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    }
    // Two refusals took both addresses out; the next two were answered without an attempt.
    let metrics = h.proxy.render_metrics();
    let errors = |kind: &str| {
        metric(
            &metrics,
            &format!("coalesce_proxy_upstream_errors_total{{route=\"all\",kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(errors("connect"), 2.0, "{metrics}");
    assert_eq!(errors("no_healthy_address"), 2.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_completes_the_connect_gets_502_after_connect_timeout() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so a connect
    // neither succeeds nor is refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..2 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let h = Harness::start_text(OriginSettings::default(), |unused| {
        config_text(unused, "connect_timeout = \"200ms\"", "").replace(
            &format!("url = \"{unused}\""),
            &format!("url = \"http://{addr}\""),
        )
    })
    .await;
    let reply = post(&h, "/unreachable").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.body(), "upstream request failed\n".as_bytes());
    let metrics = h.proxy.render_metrics();
    assert_eq!(
        metric(
            &metrics,
            "coalesce_proxy_upstream_errors_total{route=\"all\",kind=\"connect\"}"
        ),
        1.0,
        "{metrics}"
    );
    drop(listener);
}
