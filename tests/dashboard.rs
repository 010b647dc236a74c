//! `docs/grafana-dashboard.json` queries only metrics the proxy exports, by their names in
//! `/metrics` (a renamed metric would leave a panel silently empty).

use std::collections::BTreeSet;

use crate::util::*;

/// The metric names in a PromQL expression: `coalesce_proxy_…` identifiers.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("coalesce_proxy_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

/// The family a series name belongs to: counters are exposed as `NAME_total`, histograms as
/// `NAME_bucket`, `NAME_sum` and `NAME_count`; `# TYPE` names the family.
fn family(series: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .unwrap_or(series)
}

#[tokio::test]
async fn every_metric_the_grafana_dashboard_queries_exists_in_metrics() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana-dashboard.json"
    ))
    .expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queried = BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            queried.extend(metric_names(expr));
        }
    }
    // What the issue asked the dashboard to show.
    for wanted in [
        "coalesce_proxy_requests_total",
        "coalesce_proxy_flights_in_flight",
        "coalesce_proxy_flight_followers_bucket",
        "coalesce_proxy_cache_hits_total",
        "coalesce_proxy_upstream_errors_total",
        "coalesce_proxy_upstream_queued",
    ] {
        assert!(queried.contains(wanted), "no panel queries {wanted}");
    }
    // Families show in /metrics once they have a series: an upstream with a concurrency
    // limit, a served request and a failed one give every family the dashboard reads.
    let h = Harness::start_with(
        coalesce_proxy::tools::origin::OriginSettings::default(),
        "concurrency = { max = 4 }",
        "",
    )
    .await;
    assert_eq!(get(h.addr, "/dashboard").await.status, http::StatusCode::OK);
    let failed = get(h.addr, "/broken?fail=reset_before_head").await;
    assert_eq!(failed.status, http::StatusCode::BAD_GATEWAY);
    let exposition = h.proxy.render_metrics();
    let families: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for series in &queried {
        assert!(
            families.contains(family(series)),
            "the dashboard queries {series}, which /metrics does not export; it has {families:?}"
        );
    }
}
