//! Operating the proxy: metrics and health endpoints, reload, JSON logs, the healthcheck.

use std::net::SocketAddr;
use std::process::Command;

use coalesce_proxy::tools::origin::{self, Origin, OriginSettings};
use http::{Method, StatusCode};

use crate::command_line::{write_config, BINARY};
use crate::running::*;
use crate::util::*;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_herd_show_one_leader_and_999_followers() {
    let h = Harness::start_with(OriginSettings::default(), "", ADMIN).await;
    let replies = h
        .gated_herd(1000, Method::GET, "/hot?size=1000&hold_head=g", &[], "g")
        .await;
    assert_eq!(outcomes(&replies), (1, 999, 0));
    let admin = h.admin.expect("admin listener");
    let metrics = get(admin, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8(metrics.body().to_vec()).expect("utf-8");
    for line in [
        r#"coalesce_proxy_requests_total{route="all",outcome="leader"} 1"#,
        r#"coalesce_proxy_requests_total{route="all",outcome="follower"} 999"#,
        r#"coalesce_proxy_requests_total{route="all",outcome="pass"} 0"#,
        r#"coalesce_proxy_upstream_requests_total{route="all",status_class="2xx"} 1"#,
        "coalesce_proxy_flight_followers_count 1",
        "coalesce_proxy_flight_followers_sum 999.0",
        "coalesce_proxy_flights_in_flight 0",
        "coalesce_proxy_followers_waiting 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // Bytes are counted as each body ends, just after the client has it.
    assert!(
        eventually(|| {
            let bytes = h.proxy.render_metrics();
            bytes.contains(
                r#"coalesce_proxy_response_bytes_total{route="all",outcome="follower"} 999000"#,
            )
        })
        .await,
        "{}",
        h.proxy.render_metrics()
    );
}

/// Scrapes `/metrics` until it has the line `want`, bounded by [`PATIENCE`].
pub(crate) async fn metric_reaches(admin: SocketAddr, want: &str) -> bool {
    eventually_async(|| async {
        let text = get(admin, "/metrics").await;
        String::from_utf8_lossy(text.body())
            .lines()
            .any(|l| l == want)
    })
    .await
}

/// GETs `/readyz` until it answers `want`, bounded by [`PATIENCE`].
pub(crate) async fn readyz_becomes(admin: SocketAddr, want: StatusCode) -> bool {
    eventually_async(|| async { get(admin, "/readyz").await.status == want }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_while_draining_and_the_drain_finishes_the_flight() {
    let mut h = Harness::start_with(OriginSettings::default(), "", ADMIN).await;
    let admin = h.admin.expect("admin listener");
    // Ready once the server runs (the harness returns as it starts: a first probe may still
    // see 503, which is the promise for a proxy not yet serving).
    assert!(readyz_becomes(admin, StatusCode::OK).await);
    assert_eq!(get(admin, "/healthz").await.status, StatusCode::OK);

    let in_flight = tokio::spawn({
        let addr = h.addr;
        async move { get(addr, "/draining?size=5000&hold_head=g").await }
    });
    assert!(h.origin.wait_until(PATIENCE, |o| o.hits() == 1).await);
    h.shut_down();
    assert!(readyz_becomes(admin, StatusCode::SERVICE_UNAVAILABLE).await);
    assert_eq!(get(admin, "/healthz").await.status, StatusCode::OK);
    h.origin.open_gate("g");
    let reply = in_flight.await.expect("client");
    assert_eq!(reply.body(), &origin::body(5000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_connections_that_have_not_sent_a_request() {
    // header_read_timeout (30 s by default) is longer than PATIENCE: only the drain can close
    // this connection in time.
    let mut h = Harness::start().await;
    let mut silent = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    let mut idle = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    // One keep-alive connection that has been served once, and one that never said anything.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        idle.write_all(b"GET /once?size=3 HTTP/1.1\r\nhost: proxy.test\r\n\r\n")
            .await
            .expect("send");
        let mut answer = Vec::new();
        while !String::from_utf8_lossy(&answer).ends_with("\r\n\r\n012") {
            let mut byte = [0u8; 1];
            assert_eq!(idle.read(&mut byte).await.expect("read"), 1);
            answer.push(byte[0]);
            assert!(answer.len() < 4096);
        }
    }
    h.shut_down();
    for stream in [&mut silent, &mut idle] {
        use tokio::io::AsyncReadExt;
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a connection outlived the drain");
        assert!(rest.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes_keeps_flights_and_rejects_bad_configs() {
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let route_a = "[[routes]]\nname = \"a\"\npath_prefix = \"/a/\"\nupstream = \"origin\"\n";
    let route_b = "[[routes]]\nname = \"b\"\npath_prefix = \"/b/\"\nupstream = \"origin\"\n";
    let file = write_config(&reload_config(&origin, route_a));
    let mut proxy = Running::start(&file.0);
    let addr = address(&proxy.wait_for("listening on").await);
    let admin = address(&proxy.wait_for("admin listening on").await);

    // A flight in the air across both reloads.
    let in_flight = tokio::spawn(async move { get(addr, "/a/long?size=7000&hold_head=g").await });
    assert!(origin.wait_until(PATIENCE, |o| o.hits() == 1).await);
    assert_eq!(get(addr, "/b/new").await.status, StatusCode::NOT_FOUND);

    std::fs::write(
        &file.0,
        reload_config(&origin, &format!("{route_a}{route_b}")),
    )
    .expect("write");
    proxy.signal("HUP");
    proxy.wait_for("config reloaded").await;
    let reply = get(addr, "/b/new?size=10").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body(), &origin::body(10));

    std::fs::write(&file.0, "[server]\nlisten = 5\n").expect("write");
    proxy.signal("HUP");
    let rejected = proxy.wait_for("reload rejected").await;
    assert!(
        rejected["error"].as_str().unwrap().contains("line 2"),
        "{rejected}"
    );
    assert_eq!(get(addr, "/b/again?size=10").await.status, StatusCode::OK);

    origin.open_gate("g");
    let reply = in_flight.await.expect("client");
    assert_eq!(reply.body(), &origin::body(7000));
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);

    proxy.signal("TERM");
    proxy.wait_for("all connections drained").await;
    let status = tokio::task::spawn_blocking(move || proxy.child.wait())
        .await
        .unwrap()
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_are_json_and_tie_followers_to_their_leader() {
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let route = "[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"origin\"\n";
    let file = write_config(&reload_config(&origin, route));
    let mut proxy = Running::start(&file.0);
    let addr = address(&proxy.wait_for("listening on").await);
    let admin = address(&proxy.wait_for("admin listening on").await);
    let herd = tokio::spawn(async move {
        herd(
            addr,
            5,
            Method::GET,
            "/logged?size=100&hold_head=g&secret=1",
            &[],
        )
        .await
    });
    // Open the origin's gate once the four followers wait on the leader's flight.
    assert!(metric_reaches(admin, "coalesce_proxy_followers_waiting 4").await);
    origin.open_gate("g");
    assert_eq!(outcomes(&herd.await.expect("herd")), (1, 4, 0));
    let mut flights = std::collections::HashSet::new();
    let mut lines = 0;
    while lines < 5 {
        let line = proxy.wait_for("access").await;
        assert_eq!(
            line["path"], "/logged",
            "the query stays out of the log: {line}"
        );
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes"], 100);
        flights.insert(line["flight"].clone());
        lines += 1;
    }
    assert_eq!(flights.len(), 1, "every line names the same flight");
    proxy.signal("TERM");
    let _ = tokio::task::spawn_blocking(move || proxy.child.wait()).await;
}

/// Runs `coalesce-proxy healthcheck ARGS`, its stderr captured (a failing check's `error:`
/// line belongs to this test's output, not the terminal's): exit code and stderr.
fn healthcheck(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(BINARY)
        .arg("healthcheck")
        .args(args)
        .output()
        .expect("run");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_subcommand_reports_a_live_admin_listener() {
    let h = Harness::start_with(OriginSettings::default(), "", ADMIN).await;
    let admin = h.admin.expect("admin listener");
    let (code, _) = healthcheck(&["--url", &format!("http://{admin}/healthz")]);
    assert_eq!(code, Some(0));
    let (code, stderr) = healthcheck(&["--url", &format!("http://{admin}/nope")]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("answered 404"), "{stderr}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _) = healthcheck(&[
        "--url",
        &format!("http://{closed}/healthz"),
        "--timeout",
        "1s",
    ]);
    assert_eq!(code, Some(1));

    // --config: the admin listener's /healthz when the config has one, else the listen port.
    let routes = "[upstreams.o]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"o\"\n";
    let with_admin = write_config(&format!(
        "[server]\nlisten = \"127.0.0.1:1\"\n[admin]\nlisten = \"{admin}\"\n{routes}"
    ));
    let path = with_admin.0.display().to_string();
    assert_eq!(healthcheck(&["--config", &path]).0, Some(0));
    let listen_only = write_config(&format!("[server]\nlisten = \"{}\"\n{routes}", h.addr));
    let path = listen_only.0.display().to_string();
    assert_eq!(healthcheck(&["--config", &path]).0, Some(0));
    let nothing_there = write_config(&format!("[server]\nlisten = \"{closed}\"\n{routes}"));
    let path = nothing_there.0.display().to_string();
    let (code, stderr) = healthcheck(&["--config", &path, "--timeout", "1s"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("no [admin] listener configured"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_stats_line_comes_every_stats_interval_counting_that_interval() {
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let route = "[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"origin\"\n";
    let config = reload_config(&origin, route)
        .replace("stats_interval = \"0s\"", "stats_interval = \"200ms\"")
        .replace("access = true", "access = false");
    let file = write_config(&config);
    let mut proxy = Running::start(&file.0);
    let addr = address(&proxy.wait_for("listening on").await);
    let admin = address(&proxy.wait_for("admin listening on").await);
    let herd = tokio::spawn(async move {
        herd(addr, 5, Method::GET, "/stats/hot?size=10&hold_head=g", &[]).await
    });
    assert!(metric_reaches(admin, "coalesce_proxy_followers_waiting 4").await);
    origin.open_gate("g");
    assert_eq!(outcomes(&herd.await.expect("herd")), (1, 4, 0));
    // The herd's requests (counted at their heads) and its flight (counted at its end) may
    // fall on either side of an interval's edge: sum the lines until both are in. Each line
    // counts its own interval only, so the sums are exact.
    let (mut requests, mut leaders, mut followers, mut passed) = (0, 0, 0, 0);
    let mut flight_line = None;
    while requests < 5 || flight_line.is_none() {
        let line = proxy.wait_for("stats").await;
        // The time that really passed, about the configured 200 ms.
        let interval = line["interval"].as_str().expect("text");
        let interval = humantime::parse_duration(interval).expect("a duration");
        assert!(interval >= std::time::Duration::from_millis(190), "{line}");
        assert!(interval < std::time::Duration::from_secs(2), "{line}");
        requests += line["requests"].as_u64().expect("a number");
        leaders += line["leaders"].as_u64().expect("a number");
        followers += line["followers"].as_u64().expect("a number");
        passed += line["passed"].as_u64().expect("a number");
        if line["largest_fanout"] != 0 {
            flight_line = Some(line);
        }
    }
    assert_eq!((requests, leaders, followers, passed), (5, 1, 4, 0));
    let flight_line = flight_line.expect("the flight was reported");
    assert_eq!(flight_line["largest_fanout"], 4, "{flight_line}");
    assert_eq!(flight_line["top_keys"], "a:/stats/hot=4", "{flight_line}");
    let next = proxy.wait_for("stats").await;
    assert_eq!(next["requests"], 0, "{next}");
    assert_eq!(next["largest_fanout"], 0, "{next}");
    proxy.signal("TERM");
    let _ = tokio::task::spawn_blocking(move || proxy.child.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_interval_zero_turns_the_stats_line_off() {
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let route = "[[routes]]\npath_prefix = \"/\"\nupstream = \"origin\"\n";
    let file = write_config(&reload_config(&origin, route));
    let mut proxy = Running::start(&file.0);
    let addr = address(&proxy.wait_for("listening on").await);
    assert_eq!(get(addr, "/counted?size=3").await.body(), &origin::body(3));
    proxy.signal("TERM");
    let log = rest_of_log(&mut proxy).await;
    assert!(
        log.iter()
            .any(|l| l["message"] == "all connections drained"),
        "the log ran to the end: {log:?}"
    );
    assert!(!log.iter().chain(&proxy.log).any(is_stats), "{log:?}");
    let _ = tokio::task::spawn_blocking(move || proxy.child.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_queries_never_appear_in_any_log_line() {
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let route = "[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"origin\"\n";
    let file = write_config(&reload_config(&origin, route));
    // Every log line the proxy can write, down to trace.
    let (child, lines) = spawn_with_log(
        Command::new(BINARY)
            .arg("--config")
            .arg(&file.0)
            .env("RUST_LOG", "info,coalesce_proxy=trace"),
    );
    let mut proxy = Running {
        child,
        lines,
        log: Vec::new(),
    };
    let addr = address(&proxy.wait_for("listening on").await);
    let secrets = [
        ("authorization", "Bearer SECRET-AUTHORIZATION"),
        ("cookie", "sid=SECRET-COOKIE"),
    ];
    // A shared flight, a private response (released followers), an upstream failure, and a
    // pass-through, each with credentials and a secret in the query.
    let replies = herd(addr, 3, Method::GET, "/shared?token=SECRET-QUERY", &secrets).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    let private = herd(
        addr,
        3,
        Method::GET,
        "/private?cookie=1&token=SECRET-QUERY",
        &secrets,
    )
    .await;
    assert!(private.iter().all(|r| r.status == StatusCode::OK));
    let failed = fetch(
        addr,
        Method::GET,
        "/broken?fail=reset_before_head&token=SECRET-QUERY",
        &secrets,
        Default::default(),
    )
    .await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    let posted = fetch(
        addr,
        Method::POST,
        "/post?token=SECRET-QUERY",
        &secrets,
        "b".into(),
    )
    .await;
    assert_eq!(posted.status, StatusCode::OK);
    proxy.signal("TERM");
    let log = rest_of_log(&mut proxy).await;
    let all: Vec<String> = proxy
        .log
        .iter()
        .chain(&log)
        .map(|l| l.to_string())
        .collect();
    // The requests were logged (by path)...
    for path in ["/shared", "/private", "/broken", "/post"] {
        assert!(
            all.iter().any(|l| l.contains(&format!("\"{path}\""))),
            "no line names {path}"
        );
    }
    // ...and nothing secret was.
    for line in &all {
        assert!(!line.contains("SECRET"), "a secret was logged: {line}");
    }
    let _ = tokio::task::spawn_blocking(move || proxy.child.wait()).await;
}

#[test]
fn every_metric_the_deploy_docs_list_is_exposed() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deploy.md"))
        .expect("docs/deploy.md");
    let table = docs.split("## Metrics").nth(1).expect("a Metrics section");
    let names: Vec<String> = table
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| `"))
        .flat_map(|cell| cell.split('|').next())
        .flat_map(|cell| cell.split(" / "))
        .map(|name| name.trim().trim_matches('`').to_owned())
        .collect();
    assert!(names.len() >= 15, "{names:?}");
    let stats = std::sync::Arc::new(coalesce_proxy::observe::stats::Stats::default());
    // Labelled families appear once a route has its series.
    let _route = stats.metrics.for_route("all");
    stats.metrics.upstream_error("all", "connect");
    let _admission = stats.metrics.for_upstream_admission("origin");
    let _addresses = stats.metrics.for_upstream_addresses("origin");
    let _connections = stats.metrics.for_upstream_connections("origin");
    let exposition = stats.metrics.render();
    for name in names {
        let family = name.strip_suffix("_total").unwrap_or(&name);
        assert!(
            exposition.contains(&format!("# TYPE coalesce_proxy_{family} ")),
            "{name} is documented but not exposed:\n{exposition}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_listen_address_says_it_needs_a_restart() {
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let route = "[[routes]]\npath_prefix = \"/\"\nupstream = \"origin\"\n";
    let file = write_config(&reload_config(&origin, route));
    let mut proxy = Running::start(&file.0);
    let addr = address(&proxy.wait_for("listening on").await);
    std::fs::write(
        &file.0,
        reload_config(&origin, route).replacen("127.0.0.1:0", "127.0.0.1:1", 1),
    )
    .expect("write");
    proxy.signal("HUP");
    let warning = proxy
        .wait_for("listen and admin addresses only change on restart")
        .await;
    assert_eq!(warning["level"], "WARN", "{warning}");
    proxy.wait_for("config reloaded").await;
    // Still serving on the address it has.
    assert_eq!(get(addr, "/still?size=2").await.body(), &origin::body(2));
    proxy.signal("TERM");
    let _ = tokio::task::spawn_blocking(move || proxy.child.wait()).await;
}
