//! The route table: which route, and so which upstream and policies, a request belongs to.
//!
//! Matching takes the host first and the path second. Routes whose `host` equals the request's
//! host (the authority it was routed by, compared without the port and case) are tried first;
//! when none of their prefixes matches, routes without a host are tried. Within a group the
//! longest `path_prefix` wins, and for equal prefixes the route written first.
//!
//! A [`Route`] bundles one of each lower layer for its requests: its upstream, its cache, its
//! key policy and the scope its flights run under. `build` makes the table from a config, and
//! on reload keeps every upstream and route whose configuration did not change (with their
//! pools, health, admission state and cached responses). This layer only chooses and bundles;
//! it does not build upstream requests (`proxy::hygiene`) or decide about sharing.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cache::ResponseCache;
use crate::coalesce::Scope;
use crate::config::{CoalescePolicy, RouteConfig};
use crate::fleet::Fleet;
use crate::observe::metrics::RouteMetrics;
use crate::sharing::KeyPolicy;
use crate::upstream::Upstream;

mod build;

/// A route, ready to serve: its validated settings and what its requests use.
#[derive(Debug)]
pub struct Route {
    /// Unique in the process, never reused: part of every key, so two routes never share a
    /// flight or a stored response, and a request routed by a new table never joins a flight
    /// an old one started (it may go elsewhere).
    pub id: u64,
    pub name: Arc<str>,
    pub host: Option<String>,
    pub path_prefix: String,
    pub strip_prefix: bool,
    pub coalesce: Arc<CoalescePolicy>,
    /// What its requests' keys are made of.
    pub keys: KeyPolicy,
    /// What its flights run under (its name and `coalesce`, shared).
    pub scope: Scope,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<RouteMetrics>,
    /// The route's response cache, when it has one. Kept by a reload that leaves the route
    /// unchanged.
    pub cache: Option<Arc<ResponseCache>>,
    /// The route's fleet layer (a lease and shared results in Redis), when it has one.
    pub fleet: Option<Arc<Fleet>>,
    /// As configured: what a reload compares.
    config: RouteConfig,
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

    /// The cache's policy, when the route has a cache.
    pub fn cache_policy(&self) -> Option<&crate::config::CachePolicy> {
        self.cache.as_ref().map(|cache| cache.policy())
    }
}

/// All routes, sorted so that the first match is the right one, and the upstreams they use.
#[derive(Debug)]
pub struct RouteTable {
    /// Routes with a host, longest prefix first (ties keep file order).
    with_host: Vec<Arc<Route>>,
    /// Routes without a host, longest prefix first.
    any_host: Vec<Arc<Route>>,
    /// Every configured upstream by name, used by a route or not (a reload may bring one
    /// back into use).
    upstreams: BTreeMap<String, Arc<Upstream>>,
}

impl RouteTable {
    /// Every route, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.with_host.iter().chain(self.any_host.iter())
    }

    /// Every upstream, by name.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams.values()
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
        let config = crate::config::Config::from_toml(
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
        RouteTable::new(&config, &crate::observe::metrics::Metrics::new(), None)
    }

    fn name(table: &RouteTable, host: Option<&str>, path: &str) -> Option<String> {
        table.find(host, path).map(|r| r.name.to_string())
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
