//! Entry points for the fuzzers (`fuzz/`) and for the regression tests that replay what they
//! found (`tests/fuzz_regressions.rs`), so both exercise exactly the same code.
//!
//! Each takes arbitrary bytes and must never panic: config parsing, key building with header
//! hygiene, and the `Vary` / `Cache-Control` / `not_shareable` parsing.

use std::sync::{Arc, OnceLock};

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, StatusCode};

use crate::config::Config;
use crate::config::ResponseRule;
use crate::observe::metrics::Metrics;
use crate::proxy::{Connection, RequestContext};
use crate::route::{Route, RouteTable};
use crate::sharing;

/// Any text as a configuration file: an error is fine, a panic is not.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml(text).map_err(|err| err.to_string());
    }
}

/// Splits input into a request line's target and header lines: `target\nname: value\n...`.
fn request_parts(data: &[u8]) -> (String, HeaderMap) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or("/").to_owned();
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_bytes(value.trim().as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    (target, headers)
}

fn route() -> &'static Arc<Route> {
    static ROUTE: OnceLock<Arc<Route>> = OnceLock::new();
    ROUTE.get_or_init(|| {
        let config = Config::from_toml(
            "[upstreams.a]\nurl = \"http://127.0.0.1:1/base\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\nstrip_prefix = true\ncoalesce = { key_headers = [\"accept-encoding\", \"accept-language\"] }\n",
        )
        .expect("fixed config");
        let table = RouteTable::new(&config, &Metrics::new(), None);
        table.find(None, "/").expect("route").clone()
    })
}

/// A request built from arbitrary bytes: its key, its variant, and its upstream request.
pub fn key(data: &[u8]) {
    let (target, headers) = request_parts(data);
    let Ok(request) = Request::get(target.as_str()).body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    parts.headers = headers;
    let route = route();
    let connection = Connection {
        peer: "127.0.0.1:9".parse().expect("literal"),
        tls: false,
    };
    let Ok(authority) = crate::proxy::authority::requested_authority(&parts) else {
        return;
    };
    let request = RequestContext::new(connection, route.clone(), parts, authority);
    let key = request.flight_key(None);
    let _ = (
        key.path(),
        key.digest(),
        format!("{key:?}"),
        request.cache_key(),
    );
    let headers = &request.parts.headers;
    let variant = key.variant(&[http::header::ACCEPT_LANGUAGE], headers);
    assert!(
        variant.is_variant(),
        "a variant key always records its varying headers"
    );
    let _ = crate::proxy::hygiene::upstream_request(&request);
    let _ = sharing::request_may_share(&route.coalesce, &request.parts, true);
}

/// Response headers from arbitrary bytes, judged under the default policy; `Vary` compared
/// against request headers from the same bytes; every line also tried as a rule.
pub fn sharing(data: &[u8]) {
    let (first, headers) = request_parts(data);
    let policy = &route().coalesce;
    let status = StatusCode::from_u16(200 + (data.len() % 400) as u16).unwrap_or(StatusCode::OK);
    let verdict = sharing::judge_response(policy, status, &headers);
    let _ = verdict.shareable();
    let _ = sharing::vary_matches(&verdict.vary, &headers, &HeaderMap::new());
    let _ = sharing::tokens(&headers, &http::header::CACHE_CONTROL).count();
    if let Ok(rule) = first.parse::<ResponseRule>() {
        let _ = (rule.matches(&headers), rule.to_string());
    }
}
