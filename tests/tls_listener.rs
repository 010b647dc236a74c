//! TLS towards clients (`[server] tls`): herds and HTTP/2 over HTTPS, a certificate reload
//! under load, what a client's verification says of a bad certificate, a stalled handshake,
//! and bad files as config errors. Certificates come from a CA made per test (rcgen).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use coalesce_proxy::config::Config;
use coalesce_proxy::tools::origin::{self, Origin, OriginSettings};
use http::{StatusCode, Version};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::tls::TestCa;
use crate::util::*;

/// A proxy serving TLS with a certificate for `localhost` and 127.0.0.1 from `ca`, and the
/// files it was configured with (kept alive for the test).
async fn https_proxy(ca: &TestCa, server_extra: &str) -> (Harness, (TempFile, TempFile)) {
    let files = ca.server_pem_files(&["localhost", "127.0.0.1"], false);
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let tls = tls_line(&files);
    let h = Harness::start_in_front_of(origin, |url| {
        with_server_setting(&config_text(url, "", ""), &format!("{tls}\n{server_extra}"))
    })
    .await;
    (h, files)
}

fn tls_line((cert, key): &(TempFile, TempFile)) -> String {
    format!(
        "tls = {{ cert_file = {:?}, key_file = {:?} }}",
        cert.0.display().to_string(),
        key.0.display().to_string()
    )
}

/// Opens TLS to `addr`, trusting only `root`, naming `name`, offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    root: CertificateDer<'static>,
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_connect_with(addr, root, name, alpn, rustls::DEFAULT_VERSIONS).await
}

/// [`tls_connect`], offering only `versions`.
async fn tls_connect_with(
    addr: SocketAddr,
    root: CertificateDer<'static>,
    name: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots.add(root).expect("CA certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    connector.connect(name, tcp).await
}

/// GET `path` over `stream` with HTTP/1.1 or HTTP/2 as ALPN chose.
async fn get_over(stream: TlsStream<TcpStream>, path: &str) -> Reply {
    let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let request = http::Request::get(format!("https://localhost{path}"))
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(connection);
        sender.send_request(request).await.expect("response")
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut request = request;
        *request.uri_mut() = path.parse().expect("path");
        sender.send_request(request).await.expect("response")
    };
    let version = response.version();
    let mut reply = read_reply(response).await;
    reply
        .headers
        .insert("x-test-version", format!("{version:?}").parse().unwrap());
    reply
}

async fn https_get(h: &Harness, ca: &TestCa, path: &str, alpn: &[&[u8]]) -> Reply {
    let stream = tls_connect(h.addr, ca.certificate(), "localhost", alpn)
        .await
        .expect("TLS handshake with the proxy");
    get_over(stream, path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_tls_reach_the_upstream_with_x_forwarded_proto_https() {
    let ca = TestCa::new();
    let (h, _files) = https_proxy(&ca, "").await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let reply = https_get(&h, &ca, "/proto?size=3", &[alpn]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let requests = h.origin.requests();
    assert_eq!(requests.len(), 2);
    for seen in &requests {
        // The client's own connection was TLS; the proxy's to the origin is not.
        assert_eq!(seen.header_values("x-forwarded-proto"), ["https"]);
        assert_eq!(seen.header_values("x-forwarded-host"), ["localhost"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_over_https_costs_one_upstream_request() {
    let ca = TestCa::new();
    let (h, _files) = https_proxy(&ca, "").await;
    let path = "/tls-herd?size=70000&hold_head=g";
    let clients = (0..20).map(|_| https_get(&h, &ca, path, &[b"http/1.1"]));
    let (replies, ()) = tokio::join!(
        futures_util::future::join_all(clients),
        h.open_when_followers(19, "g")
    );
    assert_eq!(outcomes(&replies), (1, 19, 0));
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-test-version"), Some("HTTP/1.1"));
        assert_eq!(reply.body(), &origin::body(70000));
    }
    assert_eq!(h.origin.hits(), 1);
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_offering_only_tls_1_2_or_only_tls_1_3_are_both_served() {
    let ca = TestCa::new();
    let (h, _files) = https_proxy(&ca, "").await;
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let stream = tls_connect_with(h.addr, ca.certificate(), "localhost", &[], &[version])
            .await
            .expect("handshake");
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        let reply = get_over(stream, "/version?size=7").await;
        assert_eq!(reply.body(), &origin::body(7));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_serves_http2_over_tls_and_a_herd_of_streams_costs_one_request() {
    let ca = TestCa::new();
    let (h, _files) = https_proxy(&ca, "").await;
    let stream = tls_connect(h.addr, ca.certificate(), "localhost", &[b"h2", b"http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let streams = (0..10).map(|_| {
        let mut sender = sender.clone();
        async move {
            let request = http::Request::get("https://localhost/h2-herd?size=5000&hold_head=g")
                .body(Empty::<Bytes>::new())
                .expect("request");
            let response = sender.send_request(request).await.expect("response");
            assert_eq!(response.version(), Version::HTTP_2);
            read_reply(response).await
        }
    });
    let (replies, ()) = tokio::join!(
        futures_util::future::join_all(streams),
        h.open_when_followers(9, "g")
    );
    assert_eq!(outcomes(&replies), (1, 9, 0));
    for reply in &replies {
        assert_eq!(reply.body(), &origin::body(5000));
    }
    assert_eq!(h.origin.hits(), 1);
    // Without ALPN, a client gets HTTP/1.1.
    let reply = https_get(&h, &ca, "/plain?size=10", &[]).await;
    assert_eq!(reply.header("x-test-version"), Some("HTTP/1.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_certificate_without_dropping_requests_under_way() {
    let old_ca = TestCa::new();
    let (h, _old_files) = https_proxy(&old_ca, "").await;
    // Ten requests under way on their own connections, held at the origin.
    let path = "/reload?size=30000&hold_head=g";
    let under_way: Vec<_> = (0..10)
        .map(|_| {
            let (addr, root) = (h.addr, old_ca.certificate());
            tokio::spawn(async move {
                let stream = tls_connect(addr, root, "localhost", &[b"http/1.1"])
                    .await
                    .expect("handshake");
                get_over(stream, path).await
            })
        })
        .collect();
    assert!(eventually(|| h.proxy.stats().snapshot().joined >= 9).await);

    let new_ca = TestCa::new();
    let new_files = new_ca.server_pem_files(&["localhost"], false);
    let text = with_server_setting(&config_text(&h.origin.url(), "", ""), &tls_line(&new_files));
    h.handle
        .reload(Config::from_toml(&text).expect("valid config"));

    // New handshakes present the new certificate: the old CA no longer verifies it.
    let refused = tls_connect(h.addr, old_ca.certificate(), "localhost", &[]).await;
    let err = refused.expect_err("the old CA must not verify the new certificate");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let reply = https_get(&h, &new_ca, "/after?size=100", &[]).await;
    assert_eq!(reply.body(), &origin::body(100));

    // The requests under way finish on their connections, every byte.
    h.origin.open_gate("g");
    for reply in under_way {
        let reply = reply.await.expect("task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body(), &origin::body(30000));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_or_misnamed_certificate_fails_the_clients_verification() {
    let ca = TestCa::new();
    let expired = ca.server_pem_files(&["localhost"], true);
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let h = Harness::start_in_front_of(origin, |url| {
        with_server_setting(&config_text(url, "", ""), &tls_line(&expired))
    })
    .await;
    let err = tls_connect(h.addr, ca.certificate(), "localhost", &[])
        .await
        .expect_err("an expired certificate must fail verification");
    assert!(err.to_string().contains("certificate expired"), "{err}");

    let (h, _files) = https_proxy(&ca, "").await;
    let err = tls_connect(h.addr, ca.certificate(), "other.example", &[])
        .await
        .expect_err("a certificate for other names must fail verification");
    assert!(err.to_string().contains("not valid for name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_in_the_handshake_is_cut_after_header_read_timeout() {
    let ca = TestCa::new();
    let (h, _files) = https_proxy(&ca, "header_read_timeout = \"1s\"").await;
    let mut stalled = TcpStream::connect(h.addr).await.expect("connect");
    let mut buffer = [0u8; 16];
    // The proxy closes the connection; the read sees its end (bounded by PATIENCE).
    let read = tokio::time::timeout(PATIENCE, stalled.read(&mut buffer))
        .await
        .expect("the proxy cut the stalled handshake");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Plain HTTP on the TLS port is no request either: it gets a 400 that says why (nginx
    // answers its 497 page), not a TLS alert a client shows as garbage; upstream sees nothing.
    let reply = raw_exchange(&h, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(
        reply.ends_with(
            "This port speaks HTTPS: the request was sent as plain HTTP. Use https://.\n"
        ),
        "{reply}"
    );
    assert_eq!(h.origin.hits(), 0);
}

#[test]
fn a_missing_file_or_a_key_that_does_not_fit_is_a_config_error_with_its_position() {
    let ca = TestCa::new();
    let (cert, key) = ca.server_pem_files(&["localhost"], false);
    let (_, other_key) = ca.server_pem_files(&["localhost"], false);
    let config = |cert: &str, key: &str| {
        format!(
            "[server]\ntls = {{ cert_file = {cert:?}, key_file = {key:?} }}\n[upstreams.o]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"o\"\n"
        )
    };
    let path = |f: &TempFile| f.0.display().to_string();
    let err = Config::from_toml(&config("/nonexistent/cert.pem", &path(&key)))
        .expect_err("missing file")
        .to_string();
    assert!(
        err.contains("line 2, column 21") && err.contains("/nonexistent/cert.pem"),
        "{err}"
    );
    let err = Config::from_toml(&config(&path(&cert), &path(&other_key)))
        .expect_err("mismatched key")
        .to_string();
    assert!(
        err.contains("line 2") && err.contains("does not fit the certificate"),
        "{err}"
    );
    let err = Config::from_toml(&config(&path(&key), &path(&key)))
        .expect_err("a key is no certificate")
        .to_string();
    assert!(err.contains("no certificates in it"), "{err}");
    assert!(Config::from_toml(&config(&path(&cert), &path(&key))).is_ok());
}
