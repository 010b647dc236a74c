//! Requests that do not share, and the headers every forwarded message gets.

use std::time::Duration;

use bytes::Bytes;
use coalesce_proxy::tools::origin::{self, OriginSettings};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_bodies_pass_through_with_bodies_intact() {
    let h = Harness::start_with(
        OriginSettings {
            delay: Duration::from_millis(100),
            body_size: 10,
        },
        "",
        "",
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let addr = h.addr;
        tasks.push(tokio::spawn(async move {
            let body = Bytes::from(format!("payload {i} ").repeat(5000));
            let method = if i % 2 == 0 {
                Method::POST
            } else {
                Method::PUT
            };
            let reply = fetch(addr, method, "/submit", &[], body.clone()).await;
            (reply, body)
        }));
    }
    // A GET that carries a body must not share either.
    let addr = h.addr;
    tasks.push(tokio::spawn(async move {
        let body = Bytes::from_static(b"a GET with a body");
        (
            fetch(addr, Method::GET, "/submit", &[], body.clone()).await,
            body,
        )
    }));
    for task in tasks {
        let (reply, sent) = task.await.expect("client");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.outcome(), "pass");
        assert_eq!(reply.body(), &sent);
    }
    assert_eq!(h.origin.hits(), 9);
    let mut received: Vec<Vec<u8>> = h.origin.requests().into_iter().map(|r| r.body).collect();
    received.sort();
    assert!(received.iter().all(|b| !b.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_off_for_a_route_passes_everything() {
    let h = Harness::start_with(
        OriginSettings {
            delay: Duration::from_millis(200),
            body_size: 100,
        },
        "",
        r#"
[[routes]]
name = "live"
path_prefix = "/live/"
upstream = "origin"
coalesce = { enabled = false, header = "x-outcome" }
"#,
    )
    .await;
    let replies = herd(h.addr, 10, Method::GET, "/live/feed", &[]).await;
    for reply in &replies {
        assert_eq!(reply.headers["x-outcome"], "pass");
        assert!(reply.headers.get("x-coalesce").is_none());
        assert_eq!(reply.body(), &origin::body(100));
    }
    assert_eq!(h.origin.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_requests_get_404_from_the_proxy() {
    // Only /api/ has a route here.
    let h = Harness::start_text(OriginSettings::default(), |origin| {
        format!(
            "[upstreams.o]\nurl = \"{origin}\"\n[server]\nlisten = \"127.0.0.1:0\"\n[log]\nstats_interval = \"0s\"\n[[routes]]\npath_prefix = \"/api/\"\nupstream = \"o\"\n"
        )
    })
    .await;
    let (addr, origin) = (h.addr, &h.origin);
    let reply = get(addr, "/elsewhere").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.outcome(), "pass");
    assert_eq!(reply.body(), "no route for this request\n".as_bytes());
    assert_eq!(origin.hits(), 0);
    let reply = get(addr, "/api/x").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_added() {
    let h = Harness::start().await;
    let path = "/hygiene?header=keep-alive:timeout=5&header=x-private-hop:1&header=connection:x-private-hop&header=x-end-to-end:yes&header=via:1.1%20origin-box";
    for method in [Method::GET, Method::POST] {
        let reply = fetch(
            h.addr,
            method.clone(),
            path,
            &[
                ("connection", "x-client-hop"),
                ("x-client-hop", "secret"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("upgrade", "websocket"),
                ("x-forwarded-for", "10.1.2.3"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "spoofed.example"),
                ("via", "1.0 edge-cache"),
                ("x-end-to-end", "kept"),
            ],
            if method == Method::POST {
                Bytes::from_static(b"x")
            } else {
                Bytes::new()
            },
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.headers.get("keep-alive").is_none());
        assert!(reply.headers.get("x-private-hop").is_none());
        assert_eq!(reply.headers["x-end-to-end"], "yes");
        // Via is appended to, in both directions.
        assert_eq!(reply.headers["via"], "1.1 origin-box, 1.1 coalesce-proxy");

        let seen = h.origin.requests().pop().expect("a request");
        assert_eq!(seen.method, method.as_str());
        for hop in [
            "x-client-hop",
            "keep-alive",
            "proxy-authorization",
            "proxy-connection",
            "upgrade",
        ] {
            assert!(seen.header(hop).is_none(), "{hop} was forwarded");
        }
        // `TE: trailers` is the client's to send on (gRPC needs it); over HTTP/1.1 it is
        // hop-by-hop, so the proxy names it in its own `Connection` (RFC 9110 §10.1.4).
        assert_eq!(seen.header_values("te"), ["trailers"]);
        assert_eq!(seen.header_values("connection"), ["te"]);
        assert_eq!(seen.header("x-end-to-end"), Some("kept"));
        assert_eq!(seen.header("x-forwarded-for"), Some("10.1.2.3, 127.0.0.1"));
        // The proxy's own view overwrites what the client claimed.
        assert_eq!(seen.header_values("x-forwarded-proto"), ["http"]);
        assert_eq!(seen.header_values("x-forwarded-host"), ["proxy.test"]);
        assert_eq!(
            seen.header("via"),
            Some("1.0 edge-cache, 1.1 coalesce-proxy")
        );
        assert_eq!(
            seen.header("host"),
            Some(h.origin.addr().to_string().as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_served_and_coalesced() {
    let h = Harness::start_with(
        OriginSettings {
            delay: Duration::ZERO,
            body_size: 70_000,
        },
        "",
        "",
    )
    .await;
    let sender = connect_h2(h.addr).await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut sender = sender.clone();
        streams.push(tokio::spawn(async move {
            let request = Request::get("http://proxy.test/h2?hold_head=g")
                .body(Full::new(Bytes::new()))
                .expect("request");
            let response = sender.send_request(request).await.expect("response");
            let outcome = response.headers()["x-coalesce"]
                .to_str()
                .unwrap()
                .to_owned();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (outcome, body)
        }));
    }
    h.open_when_followers(49, "g").await;
    let mut leaders = 0;
    for stream in streams {
        let (outcome, body) = stream.await.expect("stream");
        assert_eq!(body, origin::body(70_000));
        leaders += usize::from(outcome == "leader");
    }
    assert_eq!(leaders, 1);
    assert_eq!(h.origin.hits(), 1);
    assert_eq!(
        h.origin.requests()[0].header("x-forwarded-host"),
        Some("proxy.test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_pool_keeps_what_the_load_needs_and_opens_no_more() {
    let h = Harness::start().await;
    // Three waves of 100 requests in flight at once (each held at the origin until all are
    // there): the first opens about 100 connections, the next two reuse them. A pool capped
    // below the load (the old default, 64 shared by two workers) closes what comes back
    // beyond its cap and opens it again for the next wave.
    for wave in 1..=3u64 {
        let gate = format!("wave{wave}");
        let path = format!("/churn/{wave}?hold_head={gate}");
        let (replies, ()) = tokio::join!(try_herd(h.addr, 100, Method::POST, &path, &[]), async {
            assert!(
                h.origin
                    .wait_until(PATIENCE, |o| o.hits() == wave * 100)
                    .await
            );
            h.origin.open_gate(&gate);
        });
        assert!(replies
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.status == StatusCode::OK)));
    }
    let opened = h.origin.connections();
    assert!(
        (100..=120).contains(&opened),
        "{opened} upstream connections for 300 requests"
    );
    let metrics = h.proxy.render_metrics();
    let series = "coalesce_proxy_upstream_connections_opened_total{upstream=\"origin\"}";
    assert_eq!(metric(&metrics, series), opened as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_reused_unless_pool_max_idle_is_0() {
    // Each `fetch` is a new client connection, handed to the two workers in turn; each
    // worker keeps its own pool, so five requests need two upstream connections.
    for (pool, connections) in [("", 2), ("pool_max_idle = 0", 5)] {
        let h = Harness::start_with(OriginSettings::default(), pool, "").await;
        for i in 0..5 {
            let reply = fetch(h.addr, Method::POST, &format!("/pool/{i}"), &[], "x".into()).await;
            assert_eq!(reply.status, StatusCode::OK);
        }
        assert_eq!(h.origin.connections(), connections, "{pool:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listen_address_serves() {
    let h = Harness::start_text(OriginSettings::default(), |origin| {
        config_text(origin, "", "").replace(
            "listen = \"127.0.0.1:0\"",
            "listen = [\"127.0.0.1:0\", \"127.0.0.2:0\"]",
        )
    })
    .await;
    let addrs = h.addrs.clone();
    assert_eq!(addrs.len(), 2);
    for addr in addrs {
        assert_eq!(get(addr, "/both?size=3").await.body(), &origin::body(3));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_content_length_0_shares_but_a_get_with_a_streamed_body_passes_with_it() {
    let h = Harness::start().await;
    // Content-Length: 0 declares no body: the request may share.
    let replies = h
        .gated_herd(
            5,
            Method::GET,
            "/zero?hold_head=z",
            &[("content-length", "0")],
            "z",
        )
        .await;
    assert_eq!(outcomes(&replies), (1, 4, 0));
    // Over HTTP/2 a body needs no Content-Length: DATA frames alone make it one. A stream
    // body has no known size, so the client sends none.
    let stream = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let frames = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
        hyper::body::Frame::data(Bytes::from_static(b"a body on a GET")),
    )]);
    let request = Request::get("http://proxy.test/h2body")
        .body(http_body_util::StreamBody::new(frames))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.headers()["x-coalesce"], "pass");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, "a body on a GET");
    let seen = h.origin.requests().pop().expect("request");
    assert_eq!(
        seen.header("content-length"),
        None,
        "the test sent no length"
    );
    // The same over HTTP/1.1: a chunked GET keeps its body.
    let answer = raw_exchange(&h, b"GET /chunked-get HTTP/1.1\r\nhost: proxy.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await;
    assert!(answer.contains("x-coalesce: pass"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_request_is_forwarded_with_a_1_0_via_entry() {
    let h = Harness::start().await;
    let answer = raw_exchange(&h, b"GET /old?size=4 HTTP/1.0\r\nhost: proxy.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n0123"), "{answer}");
    let seen = h.origin.requests().pop().expect("request");
    assert_eq!(seen.header("via"), Some("1.0 coalesce-proxy"));
}
