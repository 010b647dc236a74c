//! HTTP/2 upstreams done right, and trailers end to end: nginx (the Debian package) listening
//! with `http2` as the upstream (it refuses a request with `host` beside `:authority`, RFC
//! 9113 §8.3.1), and trailers reaching every client of a flight, over HTTP/1.1 chunked
//! encoding (RFC 9112 §7.1.2) and over HTTP/2.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use coalesce_proxy::tools::origin::{self, Origin, OriginSettings};
use http::{HeaderMap, Method, StatusCode};

use crate::util::*;

/// nginx, when installed (`.ci/run` installs it; there a missing nginx fails the test).
fn nginx() -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs nginx for the HTTP/2 upstream test (see .ci/run)"
        );
        eprintln!("skipped: no nginx here (`bash .ci/run` installs it)");
    }
    found
}

/// nginx in one process (no master, so no user switch and no daemon), listening with
/// `http2` on a free port of 127.0.0.1 and proxying to `origin` over HTTP/1.1; stopped when
/// dropped.
struct Nginx {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory of its own under the temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Nginx {
    async fn start(binary: &PathBuf, origin: &Origin) -> Nginx {
        let dir = std::env::temp_dir().join(format!(
            "coalesce-proxy-nginx-{}-{}",
            std::process::id(),
            origin.addr().port()
        ));
        std::fs::create_dir_all(&dir).expect("nginx directory");
        let dir = TempDir(dir);
        // nginx cannot report a port it was given as 0: a free one, taken and let go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let d = dir.0.display();
        let config = format!(
            r#"
master_process off;
daemon off;
error_log stderr warn;
pid {d}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            proxy_pass http://{origin};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#,
            origin = origin.addr()
        );
        let config_path = dir.0.join("nginx.conf");
        std::fs::write(&config_path, config).expect("nginx.conf");
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg("stderr")
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx");
        let address = format!("127.0.0.1:{port}");
        assert!(
            eventually_async(|| async {
                tokio::net::TcpStream::connect(address.as_str())
                    .await
                    .is_ok()
            })
            .await,
            "nginx listens on {address}"
        );
        Nginx {
            child,
            port,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_listening_with_http2_serves_gets_posts_and_a_herd_through_the_proxy() {
    let Some(binary) = nginx() else { return };
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let nginx = Nginx::start(&binary, &origin).await;
    let upstream = format!("http://127.0.0.1:{}", nginx.port);
    let h =
        Harness::start_in_front_of(origin, |_| config_text(&upstream, "http2 = true", "")).await;

    // With `host` beside `:authority`, nginx answers 400 ("client sent duplicate host
    // header") to every request.
    let reply = get(h.addr, "/through-nginx?size=5000").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body(), &origin::body(5000));
    // Via names each hop's version: nginx answered the proxy over HTTP/2.
    assert_eq!(reply.header("via"), Some("2 coalesce-proxy"));

    let reply = fetch(
        h.addr,
        Method::POST,
        "/posted",
        &[("content-type", "text/plain")],
        Bytes::from_static(b"a body for the origin"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body(), &Bytes::from_static(b"a body for the origin"));

    let before = h.origin.hits();
    let replies = h
        .gated_herd(20, Method::GET, "/herd?size=20000&hold_head=g", &[], "g")
        .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body(), &origin::body(20000));
    }
    assert_eq!(outcomes(&replies), (1, 19, 0));
    assert_eq!(h.origin.hits() - before, 1);
}

/// A chunked response whose trailer section the origin declares with `Trailer`.
const TRAILING: &str =
    "/trailing?chunked=1&chunks=3&trailers=1&size=3000&header=trailer:x-checksum&hold_head=t";

fn checksum_trailer() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "42".parse().unwrap());
    trailers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_of_a_flight_gets_its_trailers_over_http1_and_http2() {
    let h = Harness::start().await;
    // HTTP/1.1 clients that send `TE: trailers`: chunked, the trailer section after the last
    // chunk (RFC 9112 §7.1.2), for the leader and each follower alike.
    let replies = h
        .gated_herd(5, Method::GET, TRAILING, &[("te", "trailers")], "t")
        .await;
    for reply in &replies {
        assert_eq!(reply.body(), &origin::body(3000));
        assert_eq!(reply.header("trailer"), Some("x-checksum"));
        assert_eq!(reply.trailers.as_ref(), Some(&checksum_trailer()));
    }
    assert_eq!(outcomes(&replies), (1, 4, 0));

    // HTTP/2 streams, which always may carry trailers.
    let path = TRAILING.replace("hold_head=t", "hold_head=t2");
    let h2 = connect_h2(h.addr).await;
    let joined = h.proxy.stats().snapshot().joined;
    let streams = (0..5).map(|_| {
        let mut sender = h2.clone();
        let request = request(Method::GET, &path, &[("te", "trailers")], Bytes::new());
        async move {
            let response = sender.send_request(request).await.expect("response head");
            read_reply(response).await
        }
    });
    let (replies, ()) = tokio::join!(
        futures_util::future::join_all(streams),
        h.open_when_followers(joined + 4, "t2")
    );
    for reply in &replies {
        assert_eq!(reply.body(), &origin::body(3000));
        assert_eq!(reply.trailers.as_ref(), Some(&checksum_trailer()));
    }
    assert_eq!(h.origin.hits(), 2);
    h.assert_table_empties().await;
}
