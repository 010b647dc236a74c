//! Which route a request takes (host first, then the longest prefix, the first of equals), and
//! the path it is forwarded with (`strip_prefix`, the upstream's base path).

use coalesce_proxy::tools::origin::{Origin, OriginSettings};
use http::{Method, StatusCode};

use crate::util::*;

/// Three origins a, b and c, and a proxy whose routes `routes` name upstreams a, b and c
/// (c's URL has the base path `/base`).
async fn three_upstreams(routes: &str) -> (Harness, [Origin; 3]) {
    let origins = [
        Origin::start(OriginSettings::default()).await.unwrap(),
        Origin::start(OriginSettings::default()).await.unwrap(),
        Origin::start(OriginSettings::default()).await.unwrap(),
    ];
    let upstreams = format!(
        "[upstreams.a]\nurl = \"{}\"\n[upstreams.b]\nurl = \"{}\"\n[upstreams.c]\nurl = \"{}/base\"\n",
        origins[0].url(),
        origins[1].url(),
        origins[2].url()
    );
    let h = Harness::start_text(OriginSettings::default(), |_| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nstats_interval = \"0s\"\n{upstreams}{routes}"
        )
    })
    .await;
    (h, origins)
}

/// Which of the three origins served `path` with `host`, after one request.
async fn served_by(h: &Harness, origins: &[Origin; 3], host: &str, path: &str) -> Option<usize> {
    let before: Vec<u64> = origins.iter().map(Origin::hits).collect();
    let reply = fetch(
        h.addr,
        Method::GET,
        path,
        &[("host", host)],
        Default::default(),
    )
    .await;
    if reply.status == StatusCode::NOT_FOUND {
        return None;
    }
    assert_eq!(reply.status, StatusCode::OK, "{host}{path}");
    let served: Vec<usize> = (0..3).filter(|&i| origins[i].hits() > before[i]).collect();
    assert_eq!(served.len(), 1, "{host}{path}: one origin served it");
    Some(served[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_routes_come_first_then_the_longest_prefix_then_the_first_of_equals() {
    let (h, origins) = three_upstreams(
        r#"
[[routes]]
name = "first-of-equals"
path_prefix = "/same/"
upstream = "a"
[[routes]]
name = "second-of-equals"
path_prefix = "/same/"
upstream = "b"
[[routes]]
path_prefix = "/"
upstream = "a"
[[routes]]
path_prefix = "/deep/er/"
upstream = "b"
[[routes]]
path_prefix = "/deep/"
upstream = "a"
[[routes]]
host = "API.example.com"
path_prefix = "/v1/"
upstream = "c"
"#,
    )
    .await;
    assert_eq!(served_by(&h, &origins, "x.test", "/same/1").await, Some(0));
    assert_eq!(
        served_by(&h, &origins, "x.test", "/deep/er/1").await,
        Some(1)
    );
    assert_eq!(served_by(&h, &origins, "x.test", "/deep/1").await, Some(0));
    // The host route matches without the port and ignoring case.
    assert_eq!(
        served_by(&h, &origins, "api.EXAMPLE.com:8443", "/v1/x").await,
        Some(2)
    );
    // On that host, a path its routes do not cover falls back to the routes without a host.
    assert_eq!(
        served_by(&h, &origins, "api.example.com", "/same/2").await,
        Some(0)
    );
    // Another host never takes the host route.
    assert_eq!(
        served_by(&h, &origins, "other.test", "/v1/x").await,
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_the_upstream_base_path_shape_the_forwarded_path() {
    let (h, origins) = three_upstreams(
        r#"
[[routes]]
path_prefix = "/api/"
upstream = "c"
strip_prefix = true
[[routes]]
path_prefix = "/keep/"
upstream = "c"
"#,
    )
    .await;
    assert_eq!(
        served_by(&h, &origins, "x.test", "/api/users?id=7").await,
        Some(2)
    );
    assert_eq!(
        served_by(&h, &origins, "x.test", "/keep/users").await,
        Some(2)
    );
    assert_eq!(served_by(&h, &origins, "x.test", "/nowhere").await, None);
    let targets: Vec<String> = origins[2]
        .requests()
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert_eq!(targets, ["/base/users?id=7", "/base/keep/users"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routes_never_share_a_flight() {
    let (h, origins) = three_upstreams(
        r#"
[[routes]]
host = "one.test"
path_prefix = "/"
upstream = "a"
[[routes]]
host = "two.test"
path_prefix = "/"
upstream = "a"
"#,
    )
    .await;
    let path = "/same?hold_head=g";
    let (one, two, ()) = tokio::join!(
        herd(h.addr, 5, Method::GET, path, &[("host", "one.test")]),
        herd(h.addr, 5, Method::GET, path, &[("host", "two.test")]),
        async {
            assert!(eventually(|| h.proxy.stats().snapshot().joined == 8).await);
            origins[0].open_gate("g");
        }
    );
    assert_eq!(outcomes(&one), (1, 4, 0));
    assert_eq!(outcomes(&two), (1, 4, 0));
    assert_eq!(origins[0].hits(), 2);
}
