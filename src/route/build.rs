//! Building the route table from a config, and keeping across a reload what it did not change.
//!
//! An upstream whose `[upstreams.NAME]` table is unchanged keeps its connection pools, its
//! addresses' passive health, its DNS task and its admission state (a fresh limit beside
//! permits still held would let up to twice `max` reach the origin). A route whose settings
//! are unchanged, and whose upstream was kept, is kept whole: its id (so its keys and flights
//! stay valid), its metrics and its cache.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Route, RouteTable};
use crate::cache::ResponseCache;
use crate::coalesce::Scope;
use crate::config::{Config, RouteConfig};
use crate::fleet::Fleet;
use crate::observe::metrics::Metrics;
use crate::sharing::KeyPolicy;
use crate::upstream::Upstream;

/// Route ids are never reused, even across reloads (see [`Route::id`]).
static NEXT_ROUTE_ID: AtomicU64 = AtomicU64::new(1);

impl RouteTable {
    /// Builds the table from a validated config. With `previous` (a reload), upstreams and
    /// routes whose configuration is unchanged are taken over from it rather than rebuilt.
    pub fn new(config: &Config, metrics: &Metrics, previous: Option<&RouteTable>) -> RouteTable {
        let upstreams: BTreeMap<String, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, wanted)| {
                let kept = previous
                    .and_then(|table| table.upstreams.get(name))
                    .filter(|upstream| upstream.config == *wanted);
                let upstream = kept.cloned().unwrap_or_else(|| {
                    let workers = config.server.workers;
                    Arc::new(Upstream::with_workers(
                        wanted.clone(),
                        workers,
                        Some(metrics),
                    ))
                });
                (name.clone(), upstream)
            })
            .collect();
        let mut with_host = Vec::new();
        let mut any_host = Vec::new();
        let mut taken = std::collections::HashSet::new();
        for wanted in &config.routes {
            let upstream = &upstreams[&wanted.upstream];
            let kept = previous.and_then(|table| {
                table.iter().find(|r| {
                    r.config == *wanted
                        && Arc::ptr_eq(&r.upstream, upstream)
                        && !taken.contains(&r.id)
                })
            });
            let route = match kept {
                Some(route) => {
                    taken.insert(route.id);
                    route.clone()
                }
                None => Arc::new(Route::new(wanted, upstream.clone(), metrics)),
            };
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
            upstreams,
        }
    }
}

impl Route {
    fn new(config: &RouteConfig, upstream: Arc<Upstream>, metrics: &Metrics) -> Route {
        let id = NEXT_ROUTE_ID.fetch_add(1, Ordering::Relaxed);
        let name: Arc<str> = config.name.as_str().into();
        let coalesce = Arc::new(config.coalesce.clone());
        Route {
            id,
            keys: KeyPolicy {
                route: id,
                headers: coalesce.key_headers.clone(),
                host: !coalesce.share_across_hosts,
            },
            scope: Scope {
                route: name.clone(),
                policy: coalesce.clone(),
            },
            metrics: Arc::new(metrics.for_route(&config.name)),
            cache: config
                .cache
                .as_ref()
                .map(|policy| Arc::new(ResponseCache::new(policy, metrics))),
            fleet: config.fleet.as_ref().and_then(|fleet| match Fleet::new(fleet, metrics.fleet_redis_down.clone()) {
                Ok(fleet) => Some(Arc::new(fleet)),
                // The URL was checked with the config: this is not expected.
                Err(err) => {
                    tracing::error!(route = %config.name, error = %err, "fleet: cannot use Redis; the route coalesces locally");
                    None
                }
            }),
            name,
            host: config.host.clone(),
            path_prefix: config.path_prefix.clone(),
            strip_prefix: config.strip_prefix,
            coalesce,
            upstream,
            config: config.clone(),
        }
    }
}
