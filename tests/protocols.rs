//! Protocols beyond plain HTTP/1.1 on both sides: Upgrade tunnels (WebSocket) and h2c upstreams.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_tunnelled_both_ways_and_never_coalesced() {
    let h = Harness::start().await;
    assert_websocket_tunnel(&h).await;
}

/// A WebSocket handshake through `h`, then arbitrary bytes echoed both ways by its origin; the
/// upgrade headers reach the origin and the request counts as a pass.
pub async fn assert_websocket_tunnel(h: &Harness) {
    let mut stream = TcpStream::connect(h.addr).await.expect("connect");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: proxy.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        )
        .await
        .expect("send");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .expect("head in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "closed before the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("x-coalesce: pass"), "{head}");

    // Both directions, arbitrary bytes, small and large.
    for message in [
        b"hello \x00\xff through the tunnel".to_vec(),
        vec![7u8; 200_000],
    ] {
        stream.write_all(&message).await.expect("write");
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut echoed))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(echoed, message);
    }
    let seen = h.origin.requests().pop().expect("the upgrade request");
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.header("connection"), Some("upgrade"));
    assert_eq!(
        seen.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    let stats = h.proxy.stats().snapshot();
    assert_eq!((stats.passed, stats.leaders), (1, 0));
    assert_eq!(h.origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_with_http2_true_is_spoken_to_over_h2c() {
    // The upstream is a second proxy (it serves h2c) in front of the origin.
    let inner = Harness::start().await;
    let outer = Harness::start_text(Default::default(), |_| {
        config_text(&format!("http://{}", inner.addr), "http2 = true", "")
    })
    .await;
    let (replies, ()) = tokio::join!(
        herd(
            outer.addr,
            10,
            http::Method::GET,
            "/h2up?size=3000&hold_head=g",
            &[]
        ),
        async {
            assert!(eventually(|| outer.proxy.stats().snapshot().joined == 9).await);
            inner.origin.open_gate("g");
        }
    );
    assert_eq!(outcomes(&replies), (1, 9, 0));
    for reply in &replies {
        assert_eq!(reply.body(), &coalesce_proxy::tools::origin::body(3000));
    }
    let seen = inner.origin.requests().pop().expect("request");
    // Each hop appends the protocol it received: HTTP/1.1 from the client, then HTTP/2 from
    // the outer proxy.
    assert_eq!(
        seen.header("via"),
        Some("1.1 coalesce-proxy, 2 coalesce-proxy")
    );
    assert_eq!(inner.origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_true_to_an_upstream_that_speaks_only_http1_is_a_502_never_a_fallback() {
    // The in-tree origin speaks HTTP/1.1 only; the proxy's h2c preface is garbage to it.
    let h = Harness::start_with(Default::default(), "http2 = true", "").await;
    for method in [http::Method::GET, http::Method::POST] {
        let reply = fetch(h.addr, method, "/h2only", &[], "x".into()).await;
        assert_eq!(reply.status, http::StatusCode::BAD_GATEWAY);
    }
    assert_eq!(h.origin.hits(), 0, "an HTTP/1.1 request reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_gets_a_stream_reset_when_the_upstream_dies_mid_body() {
    let h = Harness::start().await;
    let mut sender = connect_h2(h.addr).await;
    let request = http::Request::get("http://proxy.test/h2cut?fail=reset_mid_body&size=50000")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("response head");
    assert_eq!(response.status(), http::StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body()).await;
    let err = body.expect_err("the body was cut, not completed");
    let reset = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason);
    assert_eq!(reset, Some(h2::Reason::INTERNAL_ERROR), "{err:?}");
    // The connection itself lives on: only that stream was reset.
    let request = http::Request::get("http://proxy.test/after?size=10")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("response head");
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, coalesce_proxy::tools::origin::body(10));
}

/// One frame as RFC 9113 §4.1 lays it out: type, flags, stream, payload.
async fn read_frame(stream: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.expect("frame header");
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; length];
    stream
        .read_exact(&mut payload)
        .await
        .expect("frame payload");
    (head[3], head[4], id, payload)
}

/// RFC 9113 §6.1: END_STREAM may ride on the DATA frame that carries a body's last bytes. A
/// flight's response to an HTTP/2 client does so, as a pass-through's does: not an empty DATA
/// frame of its own after them, which cost the proxy a frame, a poll and a write per
/// response (2,400 instructions of a GET nobody joins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flights_response_over_http2_ends_on_the_data_frame_with_its_last_bytes() {
    let h = Harness::start().await;
    let mut stream = TcpStream::connect(h.addr).await.expect("connect");
    let path = b"/h2end?size=1000";
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, none changed
                                                             // HPACK (RFC 7541): :method GET, :scheme http (static 2, 6), :path and :authority as
                                                             // literals with indexed names (static 4, 1), not added to the table.
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x01, 10]);
    block.extend_from_slice(b"proxy.test");
    let length = (block.len() as u32).to_be_bytes();
    // HEADERS on stream 1, END_STREAM | END_HEADERS.
    request.extend_from_slice(&[length[1], length[2], length[3], 1, 0x5, 0, 0, 0, 1]);
    request.extend_from_slice(&block);
    stream.write_all(&request).await.expect("send");
    let mut data = Vec::new();
    let mut status_seen = false;
    let frames = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            let (kind, flags, id, payload) = read_frame(&mut stream).await;
            if id != 1 {
                continue;
            }
            match kind {
                1 => status_seen = true,
                0 => data.push((payload.len(), flags & 0x1 != 0)),
                other => panic!("frame of type {other} on the response's stream"),
            }
            if flags & 0x1 != 0 {
                break;
            }
        }
    });
    frames.await.expect("the response ended within 20 s");
    assert!(status_seen, "no HEADERS frame before the body");
    let total: usize = data.iter().map(|(len, _)| len).sum();
    assert_eq!(total, 1000, "body length");
    assert!(
        data.iter().all(|(len, _)| *len > 0),
        "an empty DATA frame: {data:?}"
    );
    assert_eq!(data.last().map(|(_, end)| *end), Some(true), "{data:?}");
    assert_eq!(h.origin.hits(), 1);
}
