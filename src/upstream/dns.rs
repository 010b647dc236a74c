//! Upstreams that follow DNS: a URL whose host is a name is resolved again every
//! `resolve_interval` (default 5 s, as Envoy's `dns_refresh_rate`), and each A and AAAA record
//! becomes an address of its own in the upstream's [`Balancer`], for `balance` and passive
//! health. This is what a headless Kubernetes Service needs: one name, a record per pod.
//!
//! An address that leaves DNS leaves the set; requests under way hold it and finish. One that
//! stays keeps its health. A failed or empty answer keeps the last good set (logged once per
//! outage): a DNS hiccup must not take a working upstream away. hickory-resolver does the DNS,
//! with its own cache off, since the interval is the refresh. Until the first answer, the name
//! itself is the address (connections resolve it through the system, as before), and requests
//! wait up to `connect_timeout` for that answer so the first ones already spread.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Resolver, TokioResolver};
use http::uri::Authority;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use super::balance::{Balancer, Endpoint};
use crate::config::UpstreamConfig;

/// One configured URL, as the follower sees it.
#[derive(Debug)]
enum Origin {
    /// An IP address or `localhost`: never resolved here.
    Fixed,
    /// A name, resolved every interval; requests name it in `Host`.
    Named {
        name: String,
        port: u16,
        configured: Authority,
    },
}

/// Starts following the upstream's names, if it has any and `resolve_interval` is not zero.
/// Returns what tells when the first resolution has been tried.
pub fn follow(
    balancer: &Arc<Balancer>,
    config: &UpstreamConfig,
    addresses: Gauge,
) -> Option<watch::Receiver<bool>> {
    addresses.set(balancer.endpoints().len() as i64);
    let origins = origins(config);
    let named = origins.iter().any(|o| matches!(o, Origin::Named { .. }));
    if !named || config.resolve_interval.is_zero() {
        return None;
    }
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let resolver = match resolver(&config.nameservers, config.resolve_interval) {
        Ok(resolver) => resolver,
        Err(err) => {
            tracing::warn!(upstream = %config.name, error = %err, "cannot set up DNS resolution; names are resolved at connect instead");
            return None;
        }
    };
    let (resolved, first) = watch::channel(false);
    let follower = Follower {
        upstream: config.name.clone(),
        balancer: Arc::downgrade(balancer),
        last: balancer
            .endpoints()
            .iter()
            .map(|e| vec![e.clone()])
            .collect(),
        origins,
        resolver,
        addresses,
        failing: false,
    };
    runtime.spawn(follower.run(config.resolve_interval, resolved));
    Some(first)
}

fn origins(config: &UpstreamConfig) -> Vec<Origin> {
    config
        .origins
        .iter()
        .filter_map(|uri| uri.authority().cloned())
        .map(|authority| {
            let host = authority.host();
            if !follows(host) {
                return Origin::Fixed;
            }
            let default_port = if config.tls.is_some() { 443 } else { 80 };
            Origin::Named {
                name: host.to_owned(),
                port: authority.port_u16().unwrap_or(default_port),
                configured: authority,
            }
        })
        .collect()
}

/// Whether a URL's host is followed in DNS: a name, but not an IP address, nor `localhost`,
/// which never moves and whose connect through the system tries each of its addresses (::1,
/// then 127.0.0.1), where one address per record would send some requests to the family the
/// backend does not listen on.
pub fn follows(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_err() && !bare.eq_ignore_ascii_case("localhost")
}

fn resolver(nameservers: &[SocketAddr], interval: Duration) -> Result<TokioResolver, String> {
    let mut builder = if nameservers.is_empty() {
        Resolver::builder_tokio()
            .map_err(|err| format!("reading the system's resolver configuration: {err}"))?
    } else {
        let mut config = ResolverConfig::new();
        for server in nameservers {
            config.add_name_server(NameServerConfig::new(*server, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(*server, Protocol::Tcp));
        }
        Resolver::builder_with_config(config, TokioConnectionProvider::default())
    };
    let options = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // The interval is the refresh: a cached answer would hide a change for its TTL.
    options.cache_size = 0;
    options.timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
    options.attempts = 2;
    Ok(builder.build())
}

struct Follower {
    upstream: String,
    balancer: Weak<Balancer>,
    origins: Vec<Origin>,
    /// The last good addresses of each origin, in `origins` order.
    last: Vec<Vec<Arc<Endpoint>>>,
    resolver: TokioResolver,
    addresses: Gauge,
    /// Whether the last round failed, so an outage is logged once.
    failing: bool,
}

impl Follower {
    /// Resolves every interval until the upstream is gone (a reload replaced it).
    async fn run(mut self, interval: Duration, resolved: watch::Sender<bool>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(balancer) = self.balancer.upgrade() else {
                return;
            };
            self.round(&balancer).await;
            resolved.send_replace(true);
        }
    }

    async fn round(&mut self, balancer: &Balancer) {
        let mut failures = Vec::new();
        for index in 0..self.origins.len() {
            let Origin::Named {
                name,
                port,
                configured,
            } = &self.origins[index]
            else {
                continue;
            };
            let ips = match self.resolver.lookup_ip(name.as_str()).await {
                Ok(lookup) => lookup.iter().collect::<BTreeSet<IpAddr>>(),
                Err(err) => {
                    failures.push(format!("{name}: {err}"));
                    continue;
                }
            };
            if ips.is_empty() {
                failures.push(format!("{name}: no A or AAAA records"));
                continue;
            }
            let previous = &self.last[index];
            self.last[index] = ips
                .into_iter()
                .map(|ip| {
                    let authority = Authority::try_from(SocketAddr::new(ip, *port).to_string())
                        .expect("an IP address and port is an authority");
                    previous
                        .iter()
                        .find(|e| *e.authority() == authority)
                        .cloned()
                        .unwrap_or_else(|| {
                            Arc::new(Endpoint::new(authority, configured, balancer.primary()))
                        })
                })
                .collect();
        }
        self.report(&failures);
        let next: Vec<Arc<Endpoint>> = self.last.iter().flatten().cloned().collect();
        let now = balancer.endpoints();
        let unchanged =
            now.len() == next.len() && now.iter().zip(&next).all(|(a, b)| Arc::ptr_eq(a, b));
        if !unchanged {
            let list = |set: &[Arc<Endpoint>]| {
                set.iter()
                    .map(|e| e.authority().as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            tracing::info!(
                upstream = %self.upstream,
                addresses = %list(&next),
                previous = %list(&now),
                "upstream addresses changed (DNS)"
            );
            self.addresses.set(next.len() as i64);
            balancer.replace(next);
        }
    }

    /// Logs an outage when it starts and when it ends, not every round.
    fn report(&mut self, failures: &[String]) {
        match (failures.is_empty(), self.failing) {
            (false, false) => tracing::warn!(
                upstream = %self.upstream,
                error = %failures.join("; "),
                "resolving the upstream failed; keeping its last good addresses"
            ),
            (true, true) => {
                tracing::info!(upstream = %self.upstream, "resolving the upstream works again")
            }
            _ => {}
        }
        self.failing = !failures.is_empty();
    }
}
