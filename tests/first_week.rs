//! What a new user met in the first week, each as a test that fails if it comes back: the
//! access log's `complete`, the last stats interval, numbers in JSON logs, the exit status
//! when the grace period runs out, `drain_delay`, reload warnings after a revert, the admin
//! listener's bind error, and an outage's log volume.

use std::process::Command;

use coalesce_proxy::config::Config;
use coalesce_proxy::tools::origin::{self, Origin, OriginSettings};
use http::{Method, StatusCode};

use crate::command_line::{write_config, BINARY};
use crate::operations::{metric_reaches, readyz_becomes};
use crate::running::{address, is_stats, reload_config, rest_of_log, Running};
use crate::util::*;

const ROUTE: &str = "[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"origin\"\n";

/// `config` with no access log and a stats interval (1 h) no test reaches: the only stats
/// line is the one written at shutdown.
fn stats_only_at_shutdown(config: String) -> String {
    config
        .replace("stats_interval = \"0s\"", "stats_interval = \"1h\"")
        .replace("access = true", "access = false")
}

async fn exit_status(proxy: Running) -> std::process::ExitStatus {
    let mut child = proxy.child;
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("task")
        .expect("exit status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_says_complete_for_every_client_that_got_its_whole_body() {
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let file = write_config(&reload_config(&origin, ROUTE));
    let mut proxy = Running::start(&file.0);
    let addr = address(&proxy.wait_for("listening on").await);
    let admin = address(&proxy.wait_for("admin listening on").await);
    // A leader and four followers, each answered with a Content-Length body.
    let herd = tokio::spawn(async move {
        herd(addr, 5, Method::GET, "/whole?size=1000&hold_head=g", &[]).await
    });
    assert!(metric_reaches(admin, "coalesce_proxy_followers_waiting 4").await);
    origin.open_gate("g");
    let replies = herd.await.expect("herd");
    assert_eq!(outcomes(&replies), (1, 4, 0));
    assert!(replies.iter().all(|r| r.body() == &origin::body(1000)));
    let mut access = Vec::new();
    while access.len() < 5 {
        let line = proxy.wait_for("access").await;
        access.push(line);
    }
    for line in &access {
        assert_eq!(line["complete"], true, "{line}");
        assert_eq!(line["bytes"], 1000, "{line}");
        assert!(line["duration_ms"].is_f64(), "a number: {line}");
    }
    proxy.signal("TERM");
    assert!(exit_status(proxy).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_the_last_intervals_stats_line_with_numbers_as_numbers() {
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let config = stats_only_at_shutdown(reload_config(&origin, ROUTE));
    let file = write_config(&config);
    let mut proxy = Running::start(&file.0);
    let addr = address(&proxy.wait_for("listening on").await);
    for i in 0..3 {
        assert_eq!(
            get(addr, &format!("/last-{i}")).await.status,
            StatusCode::OK
        );
    }
    proxy.signal("TERM");
    let log = rest_of_log(&mut proxy).await;
    let stats: Vec<_> = log.iter().filter(|l| is_stats(l)).collect();
    assert_eq!(stats.len(), 1, "one stats line, at shutdown: {log:?}");
    assert_eq!(stats[0]["requests"], 3, "{}", stats[0]);
    assert!(
        stats[0]["coalesce_ratio"].is_f64(),
        "a number: {}",
        stats[0]
    );
    assert!(exit_status(proxy).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_status_is_non_zero_when_shutdown_grace_cuts_connections() {
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let config =
        reload_config(&origin, ROUTE).replace("shutdown_grace = \"5s\"", "shutdown_grace = \"1s\"");
    let file = write_config(&stats_only_at_shutdown(config));
    let mut proxy = Running::start(&file.0);
    let addr = address(&proxy.wait_for("listening on").await);
    // Held at the origin for good: the drain cannot finish it.
    let held =
        tokio::spawn(
            async move { try_herd(addr, 1, Method::GET, "/never?hold_head=never", &[]).await },
        );
    assert!(origin.wait_until(PATIENCE, |o| o.hits() == 1).await);
    proxy.signal("TERM");
    proxy.wait_for("shutdown grace period ran out").await;
    // The request the grace cut is in the last stats line, as cancelled (nginx's 499).
    let log = rest_of_log(&mut proxy).await;
    let last = log
        .iter()
        .rev()
        .find(|l| is_stats(l))
        .expect("a last stats line");
    assert_eq!(last["requests"], 1, "{last}");
    assert_eq!(last["cancelled"], 1, "{last}");
    assert_eq!(exit_status(proxy).await.code(), Some(1));
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delay_keeps_accepting_while_readyz_says_503() {
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let config = with_server_setting(&reload_config(&origin, ROUTE), "drain_delay = \"30s\"");
    let file = write_config(&config);
    let mut proxy = Running::start(&file.0);
    let addr = address(&proxy.wait_for("listening on").await);
    let admin = address(&proxy.wait_for("admin listening on").await);
    proxy.signal("TERM");
    assert!(readyz_becomes(admin, StatusCode::SERVICE_UNAVAILABLE).await);
    // Not ready, yet a new client is still served during the delay.
    let reply = get(addr, "/during-delay?size=5").await;
    assert_eq!(reply.body(), &origin::body(5));
    let _ = proxy.child.kill();
    let _ = exit_status(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_warns_about_listen_only_while_it_differs_from_what_is_bound() {
    let h = Harness::start().await;
    let started = config_text(&h.origin.url(), "", "");
    let moved = started.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    let warnings = h.handle.reload(Config::from_toml(&moved).expect("valid"));
    assert_eq!(
        warnings,
        ["listen and admin addresses only change on restart; still serving the old ones"]
    );
    // Reverted: nothing differs from what is bound, so nothing to warn about.
    let warnings = h.handle.reload(Config::from_toml(&started).expect("valid"));
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn an_admin_address_in_use_is_named_as_the_admin_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    let file = write_config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:{port}\"\n[upstreams.o]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"o\"\n"
    ));
    let output = Command::new(BINARY)
        .arg("--config")
        .arg(&file.0)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("binding the admin listener 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_logs_one_warning_per_kind_and_route_not_one_per_flight() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let down = closed.local_addr().expect("address");
    drop(closed);
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let config = reload_config(&origin, ROUTE).replace(&origin.url(), &format!("http://{down}"));
    let config = stats_only_at_shutdown(config);
    let file = write_config(&config);
    let mut proxy = Running::start(&file.0);
    let addr = address(&proxy.wait_for("listening on").await);
    // 50 distinct keys: 50 flights, each failing to connect.
    for i in 0..50 {
        assert_eq!(
            get(addr, &format!("/down-{i}")).await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    proxy.signal("TERM");
    let log = rest_of_log(&mut proxy).await;
    let warnings = log
        .iter()
        .chain(&proxy.log)
        .filter(|l| l["message"] == "shared upstream fetch failed")
        .count();
    assert_eq!(warnings, 1, "{log:?}");
    // Every failure is still counted.
    let stats = log.iter().find(|l| is_stats(l)).expect("a stats line");
    assert_eq!(stats["upstream_errors"], 50, "{stats}");
    assert!(exit_status(proxy).await.success());
}

/// The failure log covers failures after the head too: an upstream that closes mid-body is
/// logged (route, kind `body`) for a flight and for a request that went upstream alone, and
/// both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_fails_mid_body_is_logged_and_counted() {
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let routes = format!(
        "{}[[routes]]\nname = \"p\"\npath_prefix = \"/pass/\"\nupstream = \"origin\"\ncoalesce = {{ enabled = false }}\n",
        ROUTE.replace("path_prefix = \"/\"", "path_prefix = \"/shared/\"")
    );
    let config = stats_only_at_shutdown(reload_config(&origin, &routes));
    let file = write_config(&config);
    let mut proxy = Running::start(&file.0);
    let addr = address(&proxy.wait_for("listening on").await);
    for path in ["/shared/cut", "/pass/cut"] {
        let reply = get(addr, &format!("{path}?size=100000&fail=close_mid_body")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.body.is_err(), "{path} was cut short");
        assert!(reply.received.len() < 100_000);
    }
    proxy.signal("TERM");
    let log = rest_of_log(&mut proxy).await;
    let mut failures: Vec<String> = log
        .iter()
        .chain(&proxy.log)
        .filter(|l| l["message"] == "upstream body failed mid-response")
        .map(|l| format!("{} {}", l["route"], l["kind"]))
        .collect();
    failures.sort();
    assert_eq!(failures, ["\"a\" \"body\"", "\"p\" \"body\""], "{log:?}");
    let stats = log.iter().find(|l| is_stats(l)).expect("a stats line");
    assert_eq!(stats["upstream_errors"], 2, "{stats}");
    assert!(exit_status(proxy).await.success());
}

/// The stats line counts a herd in the interval its requests arrived in: a line written while
/// 9 followers wait on their flight shows the fan-out and the key, and the next line, in which
/// the flight only ended, shows neither again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_is_counted_in_the_stats_interval_its_requests_arrived_in() {
    use coalesce_proxy::observe::stats_line::StatsReporter;
    let h = Harness::start().await;
    let coordinator = h.proxy.coordinator().clone();
    let mut reporter = StatsReporter::new(h.proxy.stats().clone(), move || coordinator.census());
    let herd = tokio::spawn(herd(h.addr, 10, Method::GET, "/held?hold_head=g", &[]));
    assert!(eventually(|| h.proxy.stats().snapshot().joined >= 9).await);
    let waiting = reporter.next_line().to_string();
    assert!(
        waiting.contains("flights_in_flight=1 largest_fanout=9 top_keys=all:/held=9 "),
        "{waiting}"
    );
    h.origin.open_gate("g");
    let replies = herd.await.expect("herd");
    assert_eq!(outcomes(&replies), (1, 9, 0));
    assert!(eventually(|| h.proxy.coordinator().is_empty()).await);
    let ended = reporter.next_line().to_string();
    assert!(
        ended.contains("flights_in_flight=0 largest_fanout=0 top_keys= "),
        "{ended}"
    );
}
