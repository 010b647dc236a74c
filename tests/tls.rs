//! `https://` upstreams: a test CA made at test time (rcgen), the in-tree origin speaking TLS,
//! and every `tls` setting: `ca_file`, `server_name`, `sni`, `verify`, and HTTP/2 by ALPN.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use coalesce_proxy::config::Config;
use coalesce_proxy::tools::origin::{self, Origin, OriginSettings};
use coalesce_proxy::upstream::{FetchError, Upstream};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::util::*;

/// A certificate authority made for one test, and its certificate as a PEM file.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem_file: TempFile,
}

impl TestCa {
    pub(crate) fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own, so another test CA's certificate is an unknown issuer rather than
        // a bad signature from a same-named one.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "coalesce-proxy test CA {}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let pem_file = TempFile::new("pem", issuer.pem().as_bytes());
        TestCa { issuer, pem_file }
    }

    pub(crate) fn pem_path(&self) -> String {
        self.pem_file.0.display().to_string()
    }

    /// The CA's certificate, for a client's root store.
    pub(crate) fn certificate(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A certificate for `names` signed by this CA and its key, as PEM files (`cert`, `key`);
    /// one that expired in 2020 when `expired`.
    pub(crate) fn server_pem_files(&self, names: &[&str], expired: bool) -> (TempFile, TempFile) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(names).expect("server params");
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        (
            TempFile::new("pem", certificate.pem().as_bytes()),
            TempFile::new("pem", key.serialize_pem().as_bytes()),
        )
    }

    /// A server identity for `names` (DNS names or IP addresses) signed by this CA.
    fn server_identity(&self, names: &[&str]) -> Arc<CertifiedKey> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().expect("server key");
        let certificate = CertificateParams::new(names)
            .expect("server params")
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Arc::new(
            CertifiedKey::from_der(
                vec![certificate.der().clone()],
                key,
                &rustls::crypto::ring::default_provider(),
            )
            .expect("key matches certificate"),
        )
    }

    /// A TLS server configuration presenting a certificate for `names`, offering `alpn`, and
    /// recording the SNI name of every handshake.
    fn server_config(&self, names: &[&str], alpn: &[&[u8]]) -> (Arc<ServerConfig>, SniLog) {
        let log = SniLog::default();
        let resolver = RecordingResolver {
            identity: self.server_identity(names),
            log: log.clone(),
        };
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        (Arc::new(config), log)
    }
}

/// The SNI name of each handshake a test server saw (`None`: the client sent none).
#[derive(Debug, Clone, Default)]
struct SniLog(Arc<Mutex<Vec<Option<String>>>>);

impl SniLog {
    fn names(&self) -> Vec<Option<String>> {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Debug)]
struct RecordingResolver {
    identity: Arc<CertifiedKey>,
    log: SniLog,
}

impl ResolvesServerCert for RecordingResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_owned);
        self.log.0.lock().unwrap().push(name);
        Some(self.identity.clone())
    }
}

/// A TLS origin whose certificate names `names`, signed by `ca`.
async fn tls_origin(ca: &TestCa, names: &[&str]) -> (Origin, SniLog) {
    let (config, sni) = ca.server_config(names, &[]);
    let origin = Origin::start_tls(OriginSettings::default(), config)
        .await
        .expect("TLS origin starts");
    (origin, sni)
}

/// A proxy whose upstream is `origin`, with `tls` as its `tls` table (`""` for none).
async fn proxy_for(origin: Origin, tls: &str) -> Harness {
    let extra = if tls.is_empty() {
        String::new()
    } else {
        format!("tls = {{ {tls} }}")
    };
    Harness::start_in_front_of(origin, |url| config_text(url, &extra, "")).await
}

/// What the upstream client itself reports for one GET through `upstream_table`, so a test
/// can check why a handshake failed (clients only see a 502).
async fn fetch_error(url: &str, upstream_table: &str) -> FetchError {
    let config = Config::from_toml(&config_text(url, upstream_table, "")).expect("valid config");
    let upstream = Arc::new(Upstream::new(config.upstreams["origin"].clone()));
    let request = http::Request::get(format!("{url}/x"))
        .body(Empty::new().map_err(|never| match never {}).boxed())
        .expect("request");
    match upstream.send(request, None).await {
        Ok(response) => panic!("expected a failed handshake, got {}", response.status()),
        Err(err) => err,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_trusted_through_ca_file_serves_a_herd_with_one_request() {
    let ca = TestCa::new();
    let (origin, sni) = tls_origin(&ca, &["localhost", "127.0.0.1"]).await;
    let h = proxy_for(origin, &format!("ca_file = {:?}", ca.pem_path())).await;

    let replies = h
        .gated_herd(20, Method::GET, "/tls?size=70000&hold_head=g", &[], "g")
        .await;
    assert_eq!(outcomes(&replies), (1, 19, 0));
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body(), &origin::body(70000));
    }
    assert_eq!(h.origin.hits(), 1);

    // A request body goes up the TLS connection too (the origin echoes it).
    let posted = Bytes::from(vec![b'p'; 100_000]);
    let reply = fetch(h.addr, Method::POST, "/echo", &[], posted.clone()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body(), &posted);
    assert_eq!(h.origin.hits(), 2);
    // The URL's host is an IP address, for which SNI is never sent.
    assert!(sni.names().iter().all(Option::is_none), "{:?}", sni.names());
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_tunnelled_to_an_https_upstream() {
    let ca = TestCa::new();
    let (origin, _) = tls_origin(&ca, &["127.0.0.1"]).await;
    let h = proxy_for(origin, &format!("ca_file = {:?}", ca.pem_path())).await;
    crate::protocols::assert_websocket_tunnel(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_unknown_issuer_is_refused_before_any_request() {
    let ca = TestCa::new();
    let (origin, _) = tls_origin(&ca, &["127.0.0.1"]).await;
    let url = origin.url();

    // Without ca_file only the webpki roots are trusted, and the test CA is not one of them.
    let err = fetch_error(&url, "").await;
    assert!(matches!(err, FetchError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // Nor is a different CA's bundle.
    let other = TestCa::new();
    let err = fetch_error(
        &url,
        &format!("tls = {{ ca_file = {:?} }}", other.pem_path()),
    )
    .await;
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    let h = proxy_for(origin, "").await;
    let reply = get(h.addr, "/refused").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    // The handshake failed, so the origin never read a request.
    assert_eq!(h.origin.hits(), 0);
    h.assert_table_empties().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_that_speaks_plain_http_is_named_as_such() {
    // A plain HTTP server answers a TLS ClientHello as the garbage it is to it: with a 400.
    let server = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}", server.local_addr().expect("address"));
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = server.accept().await {
            let mut hello = [0u8; 512];
            let _ = stream.read(&mut hello).await;
            let _ = stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let err = fetch_error(&url, "tls = { verify = false }").await;
    assert!(matches!(err, FetchError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("did not answer with TLS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_covers_the_tls_handshake() {
    // Accepts and never answers: TCP connects at once, and the handshake never finishes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    // PATIENCE is shorter than the default response_timeout (30 s): only connect_timeout can
    // end this in time.
    let err = tokio::time::timeout(
        PATIENCE,
        fetch_error(&format!("https://{addr}"), "connect_timeout = \"200ms\""),
    )
    .await
    .expect("a connect failure long before response_timeout");
    assert!(matches!(err, FetchError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("took longer than 200ms"), "{err}");
    silent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_is_sent_in_sni_and_checked_against_the_certificate() {
    let ca = TestCa::new();
    let (origin, sni) = tls_origin(&ca, &["origin.test"]).await;
    let url = origin.url();
    let trust = format!("ca_file = {:?}", ca.pem_path());

    // The certificate does not name 127.0.0.1, the URL's host.
    let err = fetch_error(&url, &format!("tls = {{ {trust} }}")).await;
    assert!(err.to_string().contains("not valid for name"), "{err}");

    let h = proxy_for(origin, &format!("{trust}, server_name = \"origin.test\"")).await;
    let reply = get(h.addr, "/named?size=10").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body(), &origin::body(10));
    assert_eq!(sni.names().last(), Some(&Some("origin.test".to_owned())));
    // Host stays the upstream's address: server_name is about TLS only, as nginx's
    // proxy_ssl_name.
    let seen = h.origin.requests().pop().expect("a request");
    assert_eq!(
        seen.header("host"),
        Some(h.origin.addr().to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_false_sends_no_server_name_but_still_verifies_it() {
    let ca = TestCa::new();
    let (origin, sni) = tls_origin(&ca, &["origin.test"]).await;
    let trust = format!("ca_file = {:?}", ca.pem_path());
    let url = origin.url();

    let err = fetch_error(
        &url,
        &format!("tls = {{ {trust}, server_name = \"other.test\", sni = false }}"),
    )
    .await;
    assert!(err.to_string().contains("not valid for name"), "{err}");

    let h = proxy_for(
        origin,
        &format!("{trust}, server_name = \"origin.test\", sni = false"),
    )
    .await;
    assert_eq!(get(h.addr, "/quiet").await.status, StatusCode::OK);
    let names = sni.names();
    assert!(!names.is_empty());
    assert!(names.iter().all(Option::is_none), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_false_accepts_any_certificate() {
    let ca = TestCa::new();
    let (origin, _) = tls_origin(&ca, &["somewhere.else"]).await;
    let h = proxy_for(origin, "verify = false").await;
    let reply = get(h.addr, "/anyone?size=5").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body(), &origin::body(5));
    assert_eq!(h.origin.hits(), 1);
}

/// An HTTPS server that speaks only HTTP/2 (chosen by ALPN) and answers every request with
/// its protocol version and path, counting requests.
async fn h2_tls_server(config: Arc<ServerConfig>) -> (std::net::SocketAddr, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(Mutex::new(0));
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    *counter.lock().unwrap() += 1;
                    let text = format!("{:?} {}", request.version(), request.uri().path());
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(text),
                        )))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_true_over_tls_negotiates_h2_by_alpn() {
    let ca = TestCa::new();
    let (config, _) = ca.server_config(&["127.0.0.1"], &[b"h2"]);
    let (addr, hits) = h2_tls_server(config).await;
    let upstream = format!("https://{addr}");
    let tls = format!("http2 = true\ntls = {{ ca_file = {:?} }}", ca.pem_path());
    let h = Harness::start_text(OriginSettings::default(), |_| {
        config_text(&upstream, &tls, "")
    })
    .await;
    let reply = get(h.addr, "/over-h2").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body(), &Bytes::from_static(b"HTTP/2.0 /over-h2"));
    let reply = fetch(
        h.addr,
        Method::POST,
        "/passed",
        &[],
        Bytes::from_static(b"x"),
    )
    .await;
    assert_eq!(reply.body(), &Bytes::from_static(b"HTTP/2.0 /passed"));
    assert_eq!(*hits.lock().unwrap(), 2);
}

#[test]
fn a_relative_ca_file_is_found_next_to_the_config_file() {
    let ca = TestCa::new();
    let pem_name = ca
        .pem_file
        .0
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let text = format!(
        "[upstreams.app]\nurl = \"https://127.0.0.1:1\"\ntls = {{ ca_file = {pem_name:?} }}\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n"
    );
    // Both files are in the temporary directory; the binary runs from elsewhere.
    let config = crate::command_line::write_config(&text);
    let output = std::process::Command::new(crate::command_line::BINARY)
        .arg("--config")
        .arg(&config.0)
        .arg("--check")
        .current_dir("/")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");

    // From the text alone, relative names are the working directory's, which has no such file.
    let err = Config::from_toml(&text).expect_err("no such file here");
    assert!(err.to_string().contains(&pem_name), "{err}");
}
