//! Several addresses per upstream: round robin, passive health, hashing.

use std::time::Duration;

use bytes::Bytes;
use coalesce_proxy::origin::{Origin, OriginSettings};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_address_is_taken_out_and_tried_again_after_fail_timeout() {
    let live = Origin::start(OriginSettings::default()).await.unwrap();
    let dead_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead = format!("http://{dead_addr}");
    let h = Harness::start_text(OriginSettings::default(), |unused| {
        config_text(unused, "max_fails = 1\nfail_timeout = \"400ms\"", "").replace(
            &format!("url = \"{unused}\""),
            &format!("urls = [\"{}\", \"{dead}\"]", live.url()),
        )
    })
    .await;
    let mut failures = 0;
    for i in 0..10 {
        if post(&h, &format!("/e/{i}")).await.status == StatusCode::BAD_GATEWAY {
            failures += 1;
        }
    }
    assert_eq!(failures, 1, "one failure takes the address out");
    assert_eq!(live.hits(), 9);
    // The address comes back; after fail_timeout it is tried again and used.
    let revived = Origin::start_on(dead_addr, OriginSettings::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    for i in 0..4 {
        assert_eq!(post(&h, &format!("/back/{i}")).await.status, StatusCode::OK);
    }
    assert!(revived.hits() >= 1);
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
    let used: std::collections::HashSet<_> = before.iter().collect();
    assert!(used.len() >= 4, "keys spread over the addresses");

    // Address 2 goes away: only its keys move (the first request to it fails and takes it
    // out; the retry lands elsewhere).
    let gone = 2;
    origins[gone] = None;
    let mut moved = 0;
    for (path, &was) in paths.iter().zip(&before) {
        let counts = |origins: &[Option<Origin>]| -> Vec<usize> {
            origins
                .iter()
                .map(|o| o.as_ref().map_or(0, |o| o.hits_for(path)))
                .collect()
        };
        let earlier = counts(&origins);
        if post(&h, path).await.status == StatusCode::BAD_GATEWAY {
            assert_eq!(was, gone, "{path}: only the gone address fails");
            assert_eq!(post(&h, path).await.status, StatusCode::OK);
        }
        let later = counts(&origins);
        let now = (0..origins.len())
            .find(|&i| later[i] > earlier[i])
            .expect("served by someone");
        if was == gone {
            moved += 1;
        } else {
            assert_eq!(now, was, "{path} moved although its address is healthy");
        }
    }
    assert!(moved > 0, "address {gone} owned some keys");
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
                assert_eq!(reply.body(), &coalesce_proxy::origin::body(4000));
            }
        }
        assert_eq!(
            origin.hits_for(key),
            1,
            "{key}: one origin request for 100 clients"
        );
    }
}
