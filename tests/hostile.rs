//! Hostile clients: requests that name their host twice, not at all, or two different ways,
//! and headers that would let one client decide what strangers sharing its flight get.

use http::{Request, StatusCode};
use http_body_util::Full;

use coalesce_proxy::tools::origin::OriginSettings;

use crate::util::*;

/// RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
/// HTTP/1.1 request message that lacks a Host header field and to any request message that
/// contains more than one Host header field line or a Host header field with an invalid
/// field value." Nothing reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9112_3_2_a_missing_duplicate_or_invalid_host_is_a_400() {
    let h = Harness::start().await;
    for request in [
        "GET /x HTTP/1.1\r\nconnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nhost: t.example\r\nhost: evil.example\r\nconnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nhost: t.example\r\nhost: t.example\r\nconnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nhost: user@t.example\r\nconnection: close\r\n\r\n",
        "GET /x HTTP/1.0\r\nhost: a.example\r\nhost: b.example\r\n\r\n",
    ] {
        let answer = raw_exchange(&h, request.as_bytes()).await;
        let status = answer.split(' ').nth(1);
        assert_eq!(status, Some("400"), "{request:?} got {answer}");
    }
    assert_eq!(h.origin.hits(), 0);
    // HTTP/1.0 had no Host: a request without one is served.
    let answer = raw_exchange(&h, b"GET /old?size=5 HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
    assert_eq!(h.origin.hits(), 1);
}

/// RFC 9112 §3.2.2: a proxy that receives an absolute-form target uses its authority, not
/// Host: that is the host routed, keyed and told to the origin (`X-Forwarded-Host`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9112_3_2_2_an_absolute_form_targets_authority_wins_over_host() {
    let h = Harness::start().await;
    let answer = raw_exchange(
        &h,
        b"GET http://Secret.Local:8080/abs?echo_header=x-forwarded-host HTTP/1.1\r\n\
          host: t.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\nx-forwarded-host=Secret.Local:8080"),
        "{answer}"
    );
    // Keyed by it too: the same resource asked for under Host t.example is another key.
    let reply = get_with(
        h.addr,
        "/abs?echo_header=x-forwarded-host",
        &[("host", "t.example")],
    )
    .await;
    assert_eq!(reply.body(), "x-forwarded-host=t.example");
    assert_eq!(h.origin.hits(), 2);
}

/// RFC 9113 §8.3.1: "A server SHOULD treat a request as malformed if it contains a Host
/// header field that identifies an entity that differs from the entity in the :authority
/// pseudo-header field." A 400, as nginx and Varnish answer; the same host in both is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9113_8_3_1_an_authority_that_disagrees_with_host_is_a_400() {
    let h = Harness::start().await;
    let mut sender = connect_h2(h.addr).await;
    let send = |host: &'static str| {
        Request::get("http://t.example/h2?echo_header=x-forwarded-host")
            .header("host", host)
            .body(Full::new(bytes::Bytes::new()))
            .expect("request")
    };
    let response = sender
        .send_request(send("evil.example"))
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(h.origin.hits(), 0);

    let response = sender
        .send_request(send("T.example"))
        .await
        .expect("answer");
    let reply = read_reply(response).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body(), "x-forwarded-host=t.example");
}

/// A request carrying a header that may change the origin's answer without being in the key
/// (here `X-Original-URL`, which IIS and Symfony take as the path) goes upstream on its own:
/// had it led, the herd that joined it would have been given the answer it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_an_unkeyed_override_header_neither_leads_nor_joins() {
    let h = Harness::start().await;
    let path = "/poison?echo_header=x-original-url&hold_head=g";
    let (overriding, herd) = tokio::join!(
        get_with(h.addr, path, &[("x-original-url", "/admin")]),
        async {
            // It arrives first: without the rule it would lead the herd's flight.
            assert!(h.origin.wait_until(PATIENCE, |o| o.hits() == 1).await);
            h.gated_herd(4, http::Method::GET, path, &[], "g").await
        }
    );
    assert_eq!(overriding.outcome(), "pass");
    assert_eq!(overriding.body(), "x-original-url=/admin");
    assert_eq!(outcomes(&herd), (1, 3, 0));
    assert!(herd.iter().all(|r| r.body() == "x-original-url="));
    assert_eq!(h.origin.hits(), 2);
}

/// `pass_if_present = []` takes the rule away; `key_headers` is the other way out, sharing
/// only among equal values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_header_in_key_headers_shares_among_equal_values() {
    let h = Harness::start_with(
        OriginSettings::default(),
        "",
        "[coalesce]\nkey_headers = [\"x-api-key\"]\n",
    )
    .await;
    let path = "/keyed?echo_header=x-api-key&hold_head=g";
    let replies = h
        .gated_herd(3, http::Method::GET, path, &[("x-api-key", "k1")], "g")
        .await;
    assert_eq!(outcomes(&replies), (1, 2, 0));
    assert!(replies.iter().all(|r| r.body() == "x-api-key=k1"));
    assert_eq!(h.origin.hits(), 1);
}

/// `share_across_hosts = true` is the explicit opt-out from Host in the key: then the origin
/// is not told the host either (no `X-Forwarded-Host`), so it cannot answer each differently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_across_hosts_shares_one_answer_and_tells_the_origin_no_host() {
    let h = Harness::start_with(
        OriginSettings::default(),
        "",
        "[coalesce]\nshare_across_hosts = true\n",
    )
    .await;
    let path = "/any-host?echo_header=x-forwarded-host&hold_head=g";
    let (a, b, ()) = tokio::join!(
        herd(h.addr, 3, http::Method::GET, path, &[("host", "a.example")]),
        herd(h.addr, 3, http::Method::GET, path, &[("host", "b.example")]),
        h.open_when_followers(5, "g")
    );
    assert_eq!(h.origin.hits(), 1);
    assert!(a.iter().chain(&b).all(|r| r.body() == "x-forwarded-host="));
}

/// RFC 6585 §5: a request whose header fields are too large gets 431, over HTTP/1.1 and
/// HTTP/2 alike, at `[server] max_header_bytes` (32 KiB by default, nginx's
/// `large_client_header_buffers`); nothing reaches the origin. A head within it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_max_header_bytes_gets_431_on_both_protocols() {
    let h = Harness::start().await;
    let big = "x".repeat(200 << 10);
    let reply = get_with(h.addr, "/big-head", &[("x-big", &big)]).await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    let mut sender = connect_h2(h.addr).await;
    let request = Request::get("http://proxy.test/big-head-h2")
        .header("x-big", "y".repeat(100 << 10))
        .body(Full::new(bytes::Bytes::new()))
        .expect("request");
    let response = sender
        .send_request(request)
        .await
        .expect("a response, not a reset");
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(h.origin.hits(), 0);

    let fits = "z".repeat(20 << 10);
    let reply = get_with(h.addr, "/fits?size=3", &[("x-big", &fits)]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(h.origin.hits(), 1);
}
