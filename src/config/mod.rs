//! Configuration: the TOML file as written, and the validated [`Config`] the proxy runs on.
//!
//! Loading happens in two stages, as in ripgrep's `lowargs`/`hiargs`. The `raw` structs mirror
//! the file exactly (`deny_unknown_fields`, so a typo is an error) and keep the span of every
//! value that is checked later. [`Config::from_toml`] then resolves them into typed values
//! (`SocketAddr`, `Duration`, `Uri`, `HeaderName`, `Method`) and checks the cross-references
//! (a route naming a missing upstream, a listen address given twice). Every error carries the
//! line and column of the value that caused it. Nothing outside this module sees raw TOML.
//!
//! Files: the validated types and loading are here; `raw` holds the serde structs, `resolve`
//! the checks for the file as a whole (server, admin, log, units), `resolve_upstream` and
//! `resolve_route` those for upstreams and for routes with their policies, and
//! `response_rule` the `not_shareable` rule syntax.
//!
//! This module does not build anything that runs: the route table lives in `route` and the
//! upstream clients in `upstream`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::{Method, Uri};
use rustls::pki_types::{CertificateDer, ServerName};

mod listener_tls;
mod raw;
mod resolve;
mod resolve_route;
mod resolve_upstream;
mod response_rule;

pub use response_rule::{default_rules, ResponseRule};

/// A configuration that could not be loaded, with where in the file the problem is.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file, when the configuration came from one.
    pub path: Option<PathBuf>,
    /// 1-based line and column of the offending value, when known.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "config {}", path.display())?,
            None => write!(f, "config")?,
        }
        if let Some((line, column)) = self.position {
            write!(f, ": line {line}, column {column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The whole validated configuration. Everything the proxy does is driven by this value.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); none without `[admin]`.
    pub admin: Option<SocketAddr>,
    pub log: LogConfig,
    /// Upstreams by name, in name order.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// The `[coalesce]` table: defaults for every route, and the outcome header for answers
    /// given without a route.
    pub coalesce: CoalescePolicy,
    /// Routes in file order; `routes::RouteTable` decides which one a request takes.
    pub routes: Vec<RouteConfig>,
    /// `[tracing]`: spans exported over OTLP/HTTP; none without it. A restart applies a change.
    pub tracing: Option<TracingConfig>,
}

/// What `[tracing]` configures.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans go to
    /// `{otlp}/v1/traces`.
    pub otlp: http::Uri,
    /// The share of new traces recorded (a client's `traceparent` decides for its own).
    pub sample: f64,
    pub service_name: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub shutdown_grace: Duration,
    /// A client connection whose pending write makes no progress for this long is closed
    /// (nginx's `send_timeout`), so a client that stops reading cannot hold a connection and
    /// its response's memory forever.
    pub send_timeout: Duration,
    /// A client that has not sent a whole request head this long after connecting (or after
    /// its previous response) is disconnected: slowloris protection.
    pub header_read_timeout: Duration,
    /// Open client connections at most; past it, new connections get a 503 and are closed.
    pub max_connections: usize,
    /// Worker threads serving client connections (`server::workers`): one per core unless
    /// set, as nginx's `worker_processes auto`.
    pub workers: usize,
    /// TLS on every listener (`server::tls`); `None` serves plain HTTP.
    pub tls: Option<ListenerTls>,
    /// After SIGTERM, how long to keep accepting while `/readyz` says 503, before draining.
    pub drain_delay: Duration,
    /// The listen sockets' accept queue (`listen(2)`'s backlog; the kernel caps it at
    /// `net.core.somaxconn`).
    pub backlog: u32,
    /// Response body bytes all flights together may hold for clients that have not read them
    /// yet (`coalesce::budget`): the sum of every flight's buffer, which `max_flight_buffer`
    /// bounds only one at a time.
    pub max_buffered_bytes: u64,
    /// The most a request's head may hold (target and header fields, as
    /// `proxy::routing` counts them); a larger one is answered 431 on either protocol.
    pub max_header_bytes: usize,
}

/// `[server] tls`: the certificate chain and key every listener presents, read and checked
/// when the config is loaded, so `--check` and a reload reject a bad pair.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub certified: std::sync::Arc<rustls::sign::CertifiedKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `coalesce_proxy=debug`.
    pub level: String,
    /// Zero turns the periodic stats line off.
    pub stats_interval: Duration,
    /// One line per request (target `coalesce_proxy::access`).
    pub access: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    /// Scheme and authority of each address, e.g. `http://127.0.0.1:3000`; at least one.
    pub origins: Vec<Uri>,
    pub balance: Balance,
    /// Failures within `fail_window` that take an address out for `fail_timeout`.
    pub max_fails: usize,
    pub fail_window: Duration,
    pub fail_timeout: Duration,
    /// Path prefixed to every forwarded path, without a trailing slash ("" for none).
    pub base_path: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    /// Idle connections kept per upstream (shared out over the workers); unlimited unless
    /// set: what the load needed stays open until idle for `pool_idle_timeout`.
    pub pool_max_idle: usize,
    /// How long an idle upstream connection is kept.
    pub pool_idle_timeout: Duration,
    /// Speak HTTP/2 to this upstream, one multiplexed connection instead of a pool of
    /// HTTP/1.1 ones: with prior knowledge (h2c) over plain TCP, by ALPN over TLS.
    pub http2: bool,
    /// `Some` exactly when the addresses are `https://`.
    pub tls: Option<UpstreamTls>,
    /// At most this many requests outstanding, the rest queued (`upstream::admission`);
    /// `None`: no limit.
    pub concurrency: Option<ConcurrencyLimit>,
    /// How often a URL whose host is a name is resolved again (`upstream::dns`), each A and
    /// AAAA record becoming an address; zero leaves names to the system resolver at connect.
    pub resolve_interval: Duration,
    /// `[resolver] nameservers`, for `resolve_interval`; empty: the system's
    /// (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
}

/// `concurrency = { max, queue, queue_timeout }` on an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyLimit {
    pub max: usize,
    /// Requests that may wait for a slot; past it, a request is refused at once.
    pub queue: usize,
    pub queue_timeout: Duration,
    /// The limit moves with measured latency, up to `max` (`upstream::admission`).
    pub adaptive: bool,
}

/// How the proxy speaks TLS to an `https://` upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// The certificates of `ca_file`, trusted instead of the built-in webpki (Mozilla) roots;
    /// `None` trusts the built-in roots.
    pub ca_certificates: Option<Vec<CertificateDer<'static>>>,
    /// The name sent in SNI and checked against the upstream's certificate, when it is not
    /// the URL's host (nginx's `proxy_ssl_name`).
    pub server_name: Option<ServerName<'static>>,
    /// Send SNI (rustls never sends it for an IP address).
    pub sni: bool,
    /// Check the certificate chain and name. Off only for tests and trusted networks.
    pub verify: bool,
}

/// How an upstream with several addresses spreads requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequests,
    /// Rendezvous hashing on the request's path and query.
    Hash,
}

/// What a request carrying Authorization or Cookie does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// Share only with requests carrying identical values (they are part of the key).
    Key,
    /// Never share: go upstream on its own.
    Pass,
}

/// How requests on a route are coalesced, after per-route overrides are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct CoalescePolicy {
    pub enabled: bool,
    pub methods: Vec<Method>,
    /// Request headers whose values become part of the key (lower-case names).
    pub key_headers: Vec<HeaderName>,
    /// Request headers that change what an origin answers without being in the key: a
    /// request carrying any of them goes upstream on its own (never leads, never joins).
    /// None of `key_headers` is among them.
    pub pass_if_present: Vec<HeaderName>,
    /// True: the authority is left out of the keys (and `X-Forwarded-Host` is not sent), so
    /// requests for one path under different hosts share one answer.
    pub share_across_hosts: bool,
    /// Response header naming the outcome; `None` turns it off.
    pub outcome_header: Option<HeaderName>,
    pub credentials: Credentials,
    /// A response matching any of these goes to the leader only.
    pub not_shareable: Vec<ResponseRule>,
    /// How long a key whose response was not shareable goes straight upstream. Zero: never.
    pub pass_ttl: Duration,
    /// Longest a follower waits for the head before going upstream on its own; `None` means
    /// as long as the flight may take (the upstream's `response_timeout`).
    pub max_wait: Option<Duration>,
    /// Followers per flight; the next request starts a new flight.
    pub max_followers: usize,
    /// Late joiners are admitted while the body received so far is within this.
    pub max_replay_body: u64,
    /// Most body bytes one flight holds in memory at once.
    pub max_flight_buffer: u64,
    /// A reader that frees nothing for this long while its flight's buffer is full (and so
    /// every other reader waits) is cut off.
    pub client_stall_timeout: Duration,
    /// True: an upstream error or 5xx is the answer for every client of the flight.
    /// False: followers try upstream on their own.
    pub share_errors: bool,
    /// Requests with a body (a read-only POST, when `methods` lists POST) share when the body
    /// has a `Content-Length` of at most this; it is read whole and becomes part of the key.
    /// `None`: requests with a body never share.
    pub body_max: Option<u64>,
}

/// A route's response cache (`cache = { enabled = true, ... }`).
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    /// Bytes of responses (bodies, headers and bookkeeping) the route's cache may hold.
    pub max_size: u64,
    /// Freshness for responses that state none; zero leaves it to `heuristic_fraction`.
    pub default_ttl: Duration,
    /// How long past freshness a stale response may be served (while one refresh runs, or
    /// when the upstream fails) when the response itself does not say
    /// (`stale-while-revalidate`, `stale-if-error`). Zero by default: RFC 9111 §4.2.4 lets a
    /// shared cache serve stale only when allowed.
    pub grace: Duration,
    /// How long past freshness a stored response may be served when the upstream cannot be
    /// reached at all (connection refused or reset, closed or timed out before a head): RFC
    /// 9111 §4.2.4 lets a disconnected cache serve stale. Never for a response whose
    /// `must-revalidate`, `proxy-revalidate`, `s-maxage` or `no-cache` forbids it.
    pub stale_if_unreachable: Duration,
    /// Heuristic freshness (RFC 9111 §4.2.2) for a response without explicit freshness: this
    /// fraction of the time since its `Last-Modified`, at most a day.
    pub heuristic_fraction: f64,
    /// Targeted cache-control fields, in order (RFC 9213): this cache's own, then
    /// `CDN-Cache-Control`.
    pub targeted_fields: Vec<http::header::HeaderName>,
    /// The cache's name in `Cache-Status` (RFC 9211).
    pub status_name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// From the file, or the route's index when the file gives none.
    pub name: String,
    /// Lower-case host without a port; `None` matches any host.
    pub host: Option<String>,
    pub path_prefix: String,
    pub upstream: String,
    pub strip_prefix: bool,
    pub coalesce: CoalescePolicy,
    /// `None` unless the route turns its cache on.
    pub cache: Option<CachePolicy>,
    /// `None` unless the route shares its flights with other proxies through Redis.
    pub fleet: Option<FleetConfig>,
}

/// A route's fleet layer (`fleet = { redis = "redis://cache:6379" }`): a lease per key in
/// Redis, so that one proxy of many fetches, and the result shared through Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// `redis://[user:password@]host:port[/db]`, as redis-rs reads it.
    pub redis: String,
    /// How long a lease holds without its holder finishing: past it, a waiter takes over. At
    /// least the origin's usual response time.
    pub lease: Duration,
    /// Largest response body shared through Redis; a larger one releases the waiters to
    /// fetch for themselves.
    pub body_max: u64,
    /// Each Redis command's limit: past it the route falls back to local coalescing.
    pub timeout: Duration,
    /// How long the route stays on local coalescing after Redis failed, before trying again.
    pub retry: Duration,
    /// What the route is called in Redis: the same in every proxy of the fleet (the route's
    /// name unless set).
    pub namespace: String,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            path: Some(path.to_owned()),
            position: None,
            message: format!("cannot read the file: {err}"),
        })?;
        // Files the configuration names (a CA bundle) are found next to it, so a mounted
        // config directory works wherever the proxy is started.
        Config::parse(&text, path.parent()).map_err(|mut err| {
            err.path = Some(path.to_owned());
            err
        })
    }

    /// Validates configuration text. Errors carry a position but no path; relative file
    /// names are taken from the working directory.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, None)
    }

    fn parse(text: &str, base_dir: Option<&Path>) -> Result<Config, ConfigError> {
        let raw: raw::File = toml::from_str(text).map_err(|err| ConfigError {
            path: None,
            position: err.span().map(|span| line_column(text, span.start)),
            message: err.message().trim_end().replace('\n', "; "),
        })?;
        resolve::Resolver { text, base_dir }.resolve(raw)
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:8080", "127.0.0.1:8081"]

[upstreams.app]
url = "http://127.0.0.1:3000/base/"

[[routes]]
path_prefix = "/"
upstream = "app"
coalesce = { key_headers = [], header = "" }
"#;

    #[test]
    fn a_good_config_resolves_defaults_and_overrides() {
        let config = Config::from_toml(GOOD).expect("valid");
        assert_eq!(config.server.listen.len(), 2);
        assert_eq!(config.server.shutdown_grace, Duration::from_secs(30));
        let app = &config.upstreams["app"];
        assert_eq!(app.origins[0].to_string(), "http://127.0.0.1:3000/");
        assert_eq!(app.base_path, "/base");
        let route = &config.routes[0];
        assert_eq!(route.name, "0");
        assert!(route.coalesce.enabled);
        assert!(route.coalesce.key_headers.is_empty());
        assert!(route.coalesce.outcome_header.is_none());
        assert_eq!(route.coalesce.methods, vec![Method::GET, Method::HEAD]);
    }

    #[test]
    fn a_keyed_header_is_never_also_a_pass_header() {
        let text = GOOD.replace("key_headers = []", "key_headers = [\"X-Api-Key\"]");
        let config = Config::from_toml(&text).expect("valid");
        let coalesce = &config.routes[0].coalesce;
        let api_key = HeaderName::from_static("x-api-key");
        assert!(coalesce.key_headers.contains(&api_key));
        assert!(!coalesce.pass_if_present.contains(&api_key));
        assert!(coalesce
            .pass_if_present
            .contains(&HeaderName::from_static("x-original-url")));
        assert!(!coalesce.share_across_hosts);
    }

    fn error_of(text: &str) -> String {
        Config::from_toml(text)
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn errors_name_line_and_column() {
        let typo = GOOD.replace("upstream = \"app\"", "upsteam = \"app\"");
        let message = error_of(&typo);
        assert!(
            message.starts_with("config: line 10, column 1:"),
            "{message}"
        );
        assert!(message.contains("unknown field `upsteam`"), "{message}");

        let missing = GOOD.replace("upstream = \"app\"", "upstream = \"nope\"");
        let message = error_of(&missing);
        assert!(message.contains("line 10, column 12"), "{message}");
        assert!(message.contains("unknown upstream \"nope\""), "{message}");

        let duplicate = GOOD.replace("8081", "8080");
        let message = error_of(&duplicate);
        assert!(message.contains("line 3, column 10"), "{message}");
        assert!(message.contains("duplicate listen address"), "{message}");

        let url = GOOD.replace("http://127.0.0.1:3000/base/", "ftp://x");
        assert!(error_of(&url).contains("line 6, column 7"));

        let duration = format!("{GOOD}\n[log]\nstats_interval = \"ten\"\n");
        assert!(error_of(&duration).contains("invalid duration \"ten\""));
    }
}
