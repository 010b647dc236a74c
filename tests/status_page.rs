//! The admin listener's status page: `/status.json` during a held herd, the page itself
//! (self-contained), and a real browser (headless Chromium driven by playwright-core) showing
//! the flight, its followers and the chart.

use std::path::PathBuf;
use std::process::Command;

use coalesce_proxy::tools::origin::OriginSettings;
use http::{Method, StatusCode};

use crate::util::*;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

async fn status(h: &Harness) -> serde_json::Value {
    let reply = get(h.admin.expect("admin listener"), "/status.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    serde_json::from_slice(reply.body()).expect("JSON")
}

/// A herd of `n` GETs of `path` (held at the origin's gate `g`), once all have joined.
async fn held_herd(h: &Harness, n: u64, path: &'static str) -> tokio::task::JoinHandle<Vec<Reply>> {
    let addr = h.addr;
    let herd = tokio::spawn(async move { herd(addr, n as usize, Method::GET, path, &[]).await });
    assert!(eventually(|| h.proxy.stats().snapshot().joined >= n - 1).await);
    herd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_shows_the_flight_in_the_air_its_followers_and_the_upstream() {
    let h = Harness::start_with(OriginSettings::default(), "", ADMIN).await;
    let herd = held_herd(&h, 20, "/status/hot?size=100&hold_head=g&secret=1").await;
    let json = status(&h).await;
    let flights = json["flights"].as_array().expect("flights");
    assert_eq!(flights.len(), 1, "{json}");
    assert_eq!(flights[0]["route"], "all");
    // The path only: the query never leaves the proxy.
    assert_eq!(flights[0]["path"], "/status/hot");
    assert_eq!(flights[0]["followers"], 19);
    assert!(!json.to_string().contains("secret"), "{json}");
    let upstream = &json["upstreams"][0];
    assert_eq!(upstream["name"], "origin");
    assert_eq!(
        upstream["addresses"][0]["address"],
        h.origin.addr().to_string()
    );
    assert_eq!(upstream["addresses"][0]["healthy"], true);
    assert_eq!(upstream["addresses"][0]["in_flight"], 1);
    h.origin.open_gate("g");
    assert_eq!(outcomes(&herd.await.expect("herd")), (1, 19, 0));
    h.assert_table_empties().await;
    let json = status(&h).await;
    assert_eq!(json["flights"].as_array().map(Vec::len), Some(0));
    assert_eq!(json["totals"]["requests"], 20);
    assert_eq!(json["totals"]["followers"], 19);
    assert_eq!(json["totals"]["coalesce_ratio"], 0.95);
    assert_eq!(json["routes"][0]["name"], "all");
    assert_eq!(json["routes"][0]["requests"], 20);
    assert_eq!(json["admission"], serde_json::json!([]));
}

#[tokio::test]
async fn the_page_is_one_self_contained_document() {
    let h = Harness::start_with(OriginSettings::default(), "", ADMIN).await;
    let page = get(h.admin.expect("admin"), "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = String::from_utf8(page.body().to_vec()).expect("utf-8");
    assert!(html.contains("status.json"), "it polls status.json");
    // Nothing loaded from elsewhere: no script or style source, no external URL, no font.
    for outside in [
        "src=",
        "href=",
        "http://",
        "https://",
        "@import",
        "url(",
        "@font-face",
    ] {
        assert!(
            !html.contains(outside),
            "the page refers outside itself: {outside}"
        );
    }
}

/// Where the browser test finds Chromium and playwright-core: `CHROMIUM` and
/// `PLAYWRIGHT_CORE`, or `chromium` on the PATH and `target/browser/node_modules/playwright-core`
/// (where `.ci/run` installs it).
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        })?;
    let playwright = std::env::var_os("PLAYWRIGHT_CORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/browser/node_modules/playwright-core")
        });
    (chromium.exists() && playwright.exists()).then_some((chromium, playwright))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_shows_the_herds_flight_its_followers_and_the_chart() {
    let Some((chromium, playwright)) = browser_tools() else {
        // CI installs both (`.ci/run`); there a missing tool is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs Chromium and playwright-core for the status page test (see .ci/run)"
        );
        eprintln!("skipped: no Chromium or playwright-core here (`bash .ci/run` installs them)");
        return;
    };
    let h = Harness::start_with(OriginSettings::default(), "", ADMIN).await;
    // A herd that is over, for the chart and the totals, then one held in the air.
    let warm = herd(h.addr, 30, Method::GET, "/browser/warm?size=100", &[]).await;
    assert_eq!(warm.len(), 30);
    let herd = held_herd(&h, 30, "/browser/hot?size=100&hold_head=g").await;
    let url = format!("http://{}/", h.admin.expect("admin"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/status_page.mjs");
    let mut command = Command::new("node");
    command
        .arg(script)
        .args([url.as_str(), "/browser/hot", "29"])
        .env("CHROMIUM", &chromium)
        .env("PLAYWRIGHT_CORE", &playwright);
    // `STATUS_SCREENSHOT=docs/status-page.png` refreshes the screenshot in docs/.
    if let Some(screenshot) = std::env::var_os("STATUS_SCREENSHOT") {
        command.arg(screenshot);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("task")
        .expect("node runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    h.origin.open_gate("g");
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("status page ok: /browser/hot with 29 followers"),
        "{said}"
    );
    assert_eq!(outcomes(&herd.await.expect("herd")), (1, 29, 0));
}

/// One moment, one count: while a herd's body still streams (held after its first piece),
/// the totals and the routes' counts in `/status.json` agree: both count a request when its
/// response head is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_and_route_counts_agree_while_bodies_stream() {
    let h = Harness::start_with(OriginSettings::default(), "", ADMIN).await;
    let herd = held_herd(&h, 10, "/status/streaming?size=100000&chunks=2&hold=g").await;
    assert!(eventually(|| h.proxy.stats().snapshot().requests >= 10).await);
    let json = status(&h).await;
    assert_eq!(json["totals"]["requests"], 10, "{json}");
    let by_route: u64 = json["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|route| route["requests"].as_u64().expect("a count"))
        .sum();
    assert_eq!(by_route, 10, "{json}");
    h.origin.open_gate("g");
    assert_eq!(outcomes(&herd.await.expect("herd")), (1, 9, 0));
}
