//! Who shares a flight, and that every client gets every byte.

use std::time::Duration;

use bytes::Bytes;
use coalesce_proxy::tools::origin::{self, OriginSettings};
use http::{Method, StatusCode};
use http_body_util::BodyExt;

use crate::util::*;

fn slow(delay_ms: u64, body_size: usize) -> OriginSettings {
    OriginSettings {
        delay: Duration::from_millis(delay_ms),
        body_size,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herd_of_1000_makes_one_upstream_request() {
    let h = Harness::start_with(slow(0, 16 * 1024), "", "").await;
    let replies = h
        .gated_herd(1000, Method::GET, "/hot?hold_head=g", &[], "g")
        .await;

    let expected = origin::body(16 * 1024);
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body(), &expected);
        assert_eq!(reply.headers["x-origin-hit"], "1");
        assert_eq!(reply.headers["content-length"], "16384");
    }
    assert_eq!(outcomes(&replies), (1, 999, 0));
    assert_eq!(h.origin.hits(), 1);
    h.assert_table_empties().await;

    // Forget on completion: the next request starts a new flight.
    let after = get(h.addr, "/hot?hold_head=g").await;
    assert_eq!(after.outcome(), "leader");
    assert_eq!(after.headers["x-origin-hit"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_joining_mid_body_gets_the_whole_chunked_body() {
    let h = Harness::start().await;
    let path = "/late?chunked=1&chunks=2&hold=late&size=100000";
    let mut leader = connect(h.addr).await;
    let response = send_head(&mut leader, request(Method::GET, path, &[], Bytes::new())).await;
    assert_eq!(response.headers()["x-coalesce"], "leader");
    let mut leader_body = response.into_body();
    // The leader has received the first half of the body before the follower arrives.
    let first = leader_body.frame().await.expect("a frame").expect("data");
    let mut received = first.into_data().expect("data frame").to_vec();
    assert!(h.origin.wait_until(PATIENCE, |o| o.reached("late")).await);

    let follower = tokio::spawn({
        let addr = h.addr;
        async move { get(addr, path).await }
    });
    assert!(eventually(|| h.proxy.stats().snapshot().joined == 1).await);
    h.origin.open_gate("late");

    let rest = leader_body
        .collect()
        .await
        .expect("rest of body")
        .to_bytes();
    received.extend_from_slice(&rest);
    let follower = follower.await.expect("follower");
    let expected = origin::body(100_000);
    assert_eq!(received, expected);
    assert_eq!(follower.outcome(), "follower");
    assert_eq!(follower.body(), &expected);
    assert_eq!(h.origin.hits(), 1);
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_keys_make_one_upstream_request_each() {
    let h = Harness::start_with(slow(0, 1000), "", "").await;
    let mut waves = Vec::new();
    for key in 0..5 {
        let addr = h.addr;
        waves.push(tokio::spawn(async move {
            herd(
                addr,
                40,
                Method::GET,
                &format!("/key/{key}?hold_head=g"),
                &[],
            )
            .await
        }));
    }
    h.open_when_followers(5 * 39, "g").await;
    for wave in waves {
        let replies = wave.await.expect("wave");
        assert!(replies.iter().all(|r| r.body() == &origin::body(1000)));
        assert_eq!(outcomes(&replies), (1, 39, 0));
    }
    assert_eq!(h.origin.hits(), 5);
    for key in 0..5 {
        assert_eq!(h.origin.hits_for(&format!("/key/{key}?")), 1);
    }
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_key_headers_and_credentials_make_separate_flights() {
    let h = Harness::start_with(slow(0, 100), "", "").await;
    let variants: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("accept-encoding", "gzip")],
        vec![("accept-encoding", "br")],
        vec![("authorization", "Bearer alice")],
        vec![("authorization", "Bearer bob")],
        vec![("cookie", "session=alice")],
    ];
    let mut waves = Vec::new();
    for headers in variants.clone() {
        let addr = h.addr;
        waves.push(tokio::spawn(async move {
            herd(addr, 10, Method::GET, "/same?hold_head=g", &headers).await
        }));
    }
    h.open_when_followers(variants.len() as u64 * 9, "g").await;
    for wave in waves {
        let replies = wave.await.expect("wave");
        assert_eq!(outcomes(&replies), (1, 9, 0));
    }
    assert_eq!(h.origin.hits(), variants.len() as u64);
    // Each upstream request carried its own credentials.
    let authorizations: Vec<String> = h
        .origin
        .requests()
        .iter()
        .filter_map(|r| r.header("authorization").map(str::to_owned))
        .collect();
    assert_eq!(authorizations.len(), 2);
    assert!(authorizations.contains(&"Bearer alice".to_owned()));
    assert!(authorizations.contains(&"Bearer bob".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_requests_coalesce_separately_from_get() {
    let h = Harness::start_with(slow(0, 5000), "", "").await;
    let (heads, gets, ()) = tokio::join!(
        herd(h.addr, 20, Method::HEAD, "/doc?hold_head=g", &[]),
        herd(h.addr, 20, Method::GET, "/doc?hold_head=g", &[]),
        h.open_when_followers(38, "g")
    );
    for reply in &heads {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers["content-length"], "5000");
        assert!(reply.body().is_empty());
    }
    assert!(gets.iter().all(|r| r.body() == &origin::body(5000)));
    assert_eq!(outcomes(&heads), (1, 19, 0));
    assert_eq!(outcomes(&gets), (1, 19, 0));
    let methods: Vec<String> = h
        .origin
        .requests()
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(methods.len(), 2);
    assert!(methods.contains(&"HEAD".to_owned()) && methods.contains(&"GET".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_disconnect_does_not_fail_followers() {
    let h = Harness::start_with(slow(0, 50_000), "", "").await;
    let path = "/leader-leaves?hold=leave&chunked=1";
    // The leader is a raw socket, so that closing it is certainly a disconnect.
    let mut leader = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: proxy.test\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut leader, request.as_bytes())
        .await
        .expect("send");
    assert!(h.origin.wait_until(PATIENCE, |o| o.reached("leave")).await);
    // It has received the head and the first half of the body.
    let mut first = [0u8; 64];
    let got = tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read(&mut leader, &mut first),
    )
    .await
    .expect("bytes in time")
    .expect("read");
    assert!(first[..got].starts_with(b"HTTP/1.1 200"));
    let followers: Vec<_> = (0..10)
        .map(|_| {
            let addr = h.addr;
            tokio::spawn(async move { get(addr, path).await })
        })
        .collect();
    assert!(eventually(|| h.proxy.stats().snapshot().joined == 10).await);
    // The leader's client goes away mid-body; the gate opens once the proxy has noticed (its
    // record of the leader's aborted response), so the rest of the body flows without it.
    drop(leader);
    h.wait_responses_done(&["leader"], 1).await;
    h.origin.open_gate("leave");

    for follower in followers {
        let reply = follower.await.expect("follower");
        assert_eq!(reply.outcome(), "follower");
        assert_eq!(reply.body(), &origin::body(50_000));
    }
    assert_eq!(h.origin.hits(), 1);
    assert_eq!(h.origin.cancelled(), 0);
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_fetch_is_cancelled_when_every_client_leaves() {
    let h = Harness::start().await;
    let path = "/abandoned?delay=60000";
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let addr = h.addr;
            tokio::spawn(async move { get(addr, path).await })
        })
        .collect();
    assert!(h.origin.wait_until(PATIENCE, |o| o.hits() == 1).await);
    assert!(eventually(|| h.proxy.stats().snapshot().joined == 2).await);
    for client in clients {
        client.abort();
    }
    assert!(
        h.origin.wait_until(PATIENCE, |o| o.cancelled() == 1).await,
        "the origin never saw the proxy hang up"
    );
    h.assert_table_empties().await;
    assert_eq!(h.proxy.stats().snapshot().flights_cancelled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_statuses_reach_every_waiter_as_they_are() {
    let h = Harness::start().await;
    let replies = h
        .gated_herd(
            20,
            Method::GET,
            "/broken?status=503&size=7&hold_head=g",
            &[],
            "g",
        )
        .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.body(), &origin::body(7));
    }
    assert_eq!(outcomes(&replies), (1, 19, 0));
    assert_eq!(h.origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_gets_every_byte_while_the_leader_reads_nothing_after_its_head() {
    const SIZE: usize = 24 << 20;
    // A lone leader runs its flight's fetch itself, as its client reads. Here it reads the
    // head and then nothing: the fetch must move to a task of its own when the follower
    // joins, or the follower would wait on the leader's client. The body is larger than what
    // loopback socket buffers absorb, so the leader's client really holds the fetch back.
    let h = Harness::start_with(
        OriginSettings::default(),
        "",
        "[coalesce]\nmax_replay_body = \"64MiB\"\nmax_flight_buffer = \"64MiB\"\n",
    )
    .await;
    let path = format!("/held-back?size={SIZE}&chunked=1&chunks=384");
    let mut leader = connect(h.addr).await;
    let head = send_head(&mut leader, request(Method::GET, &path, &[], Bytes::new())).await;
    assert_eq!(head.headers()["x-coalesce"], "leader");
    let follower = tokio::time::timeout(PATIENCE, get(h.addr, &path))
        .await
        .expect("the follower is served while the leader reads nothing");
    assert_eq!(follower.outcome(), "follower");
    assert_eq!(follower.body(), &origin::body(SIZE));
    let leader = read_reply(head).await;
    assert_eq!(leader.body(), &origin::body(SIZE));
    assert_eq!(h.origin.hits(), 1);
}
