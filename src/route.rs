//! The route table: which route, and so which upstream and policy, a request belongs to.
//!
//! Matching takes the host first and the path second. Routes whose `host` equals the request's
//! host (from `Host`, or `:authority` over HTTP/2, compared without the port and case) are tried
//! first; when none of their prefixes matches, routes without a host are tried. Within a group
//! the longest `path_prefix` wins, and for equal prefixes the route written first. This module
//! only chooses; it does not build upstream requests (`hygiene`) or decide about coalescing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::cache::ResponseCache;
use crate::config::{CachePolicy, CoalescePolicy, Config, RouteConfig};
use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::upstream::Upstream;

/// Route ids are never reused, even across reloads, so that a flight started under an old
/// route table is never joined by a request routed by a new one (which may send it elsewhere).
static NEXT_ROUTE_ID: AtomicU64 = AtomicU64::new(1);

/// A route, ready to serve: its validated settings and the upstream it forwards to.
#[derive(Debug)]
pub struct Route {
    /// Unique in the process; part of the coalescing key so two routes never share a flight.
    pub id: u64,
    pub name: String,
    pub host: Option<String>,
    pub path_prefix: String,
    pub strip_prefix: bool,
    pub coalesce: CoalescePolicy,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<RouteMetrics>,
    /// The route's response cache, when it has one. A reload starts it empty.
    pub cache: Option<Arc<ResponseCache>>,
    pub cache_policy: Option<CachePolicy>,
}

impl Route {
    /// The path to send upstream: the route's prefix stripped if asked, then the upstream's
    /// base path put in front.
    pub fn upstream_path(&self, path: &str) -> String {
        let rest = if self.strip_prefix {
            let stripped = path.strip_prefix(self.path_prefix.as_str()).unwrap_or(path);
            if stripped.starts_with('/') {
                stripped.to_owned()
            } else {
                format!("/{stripped}")
            }
        } else {
            path.to_owned()
        };
        format!("{}{}", self.upstream.config.base_path, rest)
    }
}

/// All routes, sorted so that the first match is the right one.
#[derive(Debug)]
pub struct RouteTable {
    /// Routes with a host, longest prefix first (ties keep file order).
    with_host: Vec<Arc<Route>>,
    /// Routes without a host, longest prefix first.
    any_host: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Builds the table from a validated config. `upstream_for` yields the shared client for
    /// an upstream name, which the config guarantees exists.
    pub fn new(
        config: &Config,
        upstream_for: impl Fn(&str) -> Arc<Upstream>,
        metrics: &Metrics,
    ) -> RouteTable {
        let mut with_host = Vec::new();
        let mut any_host = Vec::new();
        for route in &config.routes {
            let RouteConfig {
                name,
                host,
                path_prefix,
                upstream,
                strip_prefix,
                coalesce,
                cache,
            } = route.clone();
            let route = Arc::new(Route {
                id: NEXT_ROUTE_ID.fetch_add(1, Ordering::Relaxed),
                metrics: Arc::new(metrics.for_route(&name)),
                name,
                host,
                path_prefix,
                strip_prefix,
                coalesce,
                cache: cache
                    .as_ref()
                    .map(|policy| Arc::new(ResponseCache::new(policy, metrics))),
                cache_policy: cache,
                upstream: upstream_for(&upstream),
            });
            if route.host.is_some() {
                with_host.push(route);
            } else {
                any_host.push(route);
            }
        }
        // A stable sort keeps file order among equal prefixes.
        with_host.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        any_host.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        RouteTable {
            with_host,
            any_host,
        }
    }

    /// Every route, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.with_host.iter().chain(self.any_host.iter())
    }

    /// The route for a request, or `None` (the proxy answers 404).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        let host = host.map(strip_port);
        if let Some(host) = host {
            let hit = self.with_host.iter().find(|r| {
                r.host
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(host))
                    && path.starts_with(r.path_prefix.as_str())
            });
            if hit.is_some() {
                return hit;
            }
        }
        self.any_host
            .iter()
            .find(|r| path.starts_with(r.path_prefix.as_str()))
    }
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let config = Config::from_toml(
            r#"
[upstreams.a]
url = "http://127.0.0.1:1/base"
[[routes]]
name = "root"
path_prefix = "/"
upstream = "a"
[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "a"
strip_prefix = true
[[routes]]
name = "host-api"
host = "API.example.com"
path_prefix = "/api/v2/"
upstream = "a"
"#,
        )
        .expect("valid");
        let upstream = Arc::new(Upstream::new(config.upstreams["a"].clone()));
        RouteTable::new(&config, |_| upstream.clone(), &Metrics::new())
    }

    fn name(table: &RouteTable, host: Option<&str>, path: &str) -> Option<String> {
        table.find(host, path).map(|r| r.name.clone())
    }

    #[test]
    fn longest_prefix_and_host_first() {
        let t = table();
        assert_eq!(name(&t, None, "/api/x").as_deref(), Some("api"));
        assert_eq!(name(&t, None, "/other").as_deref(), Some("root"));
        assert_eq!(
            name(&t, Some("api.example.com:8080"), "/api/v2/x").as_deref(),
            Some("host-api")
        );
        // The host's routes do not match this path, so host-less routes are tried.
        assert_eq!(
            name(&t, Some("api.example.com"), "/api/v1").as_deref(),
            Some("api")
        );
        assert_eq!(
            name(&t, Some("other.com"), "/api/v2/x").as_deref(),
            Some("api")
        );
    }

    #[test]
    fn upstream_path_strips_and_prefixes() {
        let t = table();
        let api = t.find(None, "/api/users").expect("route");
        assert_eq!(api.upstream_path("/api/users"), "/base/users");
        let root = t.find(None, "/x").expect("route");
        assert_eq!(root.upstream_path("/x"), "/base/x");
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
