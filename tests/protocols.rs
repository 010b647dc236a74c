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
        assert_eq!(reply.body(), &coalesce_proxy::origin::body(3000));
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
