//! Configuration: the TOML file as written, and the validated [`Config`] the proxy runs on.
//!
//! Loading happens in two stages, as in ripgrep's `lowargs`/`hiargs`. The `raw` structs mirror
//! the file exactly (`deny_unknown_fields`, so a typo is an error) and keep the span of every
//! value that is checked later. [`Config::from_toml`] then resolves them into typed values
//! (`SocketAddr`, `Duration`, `Uri`, `HeaderName`, `Method`) and checks the cross-references
//! (a route naming a missing upstream, a listen address given twice). Every error carries the
//! line and column of the value that caused it. Nothing outside this module sees raw TOML.
//!
//! This module does not build anything that runs: the route table lives in `routes` and the
//! upstream clients in `upstream`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::{Method, Uri};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::sharing::{self, ResponseRule};

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

#[derive(Debug, Clone)]
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
    pub pool_max_idle: usize,
    /// Speak HTTP/2 to this upstream, one multiplexed connection instead of a pool of
    /// HTTP/1.1 ones: with prior knowledge (h2c) over plain TCP, by ALPN over TLS.
    pub http2: bool,
    /// `Some` exactly when the addresses are `https://`.
    pub tls: Option<UpstreamTls>,
}

/// How the proxy speaks TLS to an `https://` upstream.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub struct CoalescePolicy {
    pub enabled: bool,
    pub methods: Vec<Method>,
    /// Request headers whose values become part of the key (lower-case names).
    pub key_headers: Vec<HeaderName>,
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
}

/// A route's response cache (`cache = { enabled = true, ... }`).
#[derive(Debug, Clone)]
pub struct CachePolicy {
    /// Bytes of responses (bodies, headers and bookkeeping) the route's cache may hold.
    pub max_size: u64,
    /// Freshness for responses that state none.
    pub default_ttl: Duration,
    /// How long past freshness a stale response may still be served (not used yet).
    pub grace: Duration,
}

#[derive(Debug, Clone)]
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
        Resolver { text, base_dir }.resolve(raw)
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Turns raw values into typed ones, remembering the text so errors can give positions.
struct Resolver<'a> {
    text: &'a str,
    /// Where relative file names point; `None` for the working directory.
    base_dir: Option<&'a Path>,
}

impl Resolver<'_> {
    fn error_at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: None,
            position: Some(line_column(self.text, span.start)),
            message: message.into(),
        }
    }

    fn duration(&self, value: &raw::Spanned<String>) -> Result<Duration, ConfigError> {
        humantime::parse_duration(value.get_ref()).map_err(|err| {
            self.error_at(
                value.span(),
                format!(
                    "invalid duration {:?}: {err} (write e.g. \"250ms\" or \"10s\")",
                    value.get_ref()
                ),
            )
        })
    }

    fn duration_or(
        &self,
        value: &Option<raw::Spanned<String>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        value.as_ref().map_or(Ok(default), |v| self.duration(v))
    }

    /// A timeout for which zero would close every connection at once.
    fn positive_duration_or(
        &self,
        value: &Option<raw::Spanned<String>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let duration = self.duration_or(value, default)?;
        match value {
            Some(value) if duration.is_zero() => Err(self.error_at(
                value.span(),
                "this timeout must be more than \"0s\": zero would close every connection at once",
            )),
            _ => Ok(duration),
        }
    }

    fn resolve(&self, raw: raw::File) -> Result<Config, ConfigError> {
        let server = self.server(raw.server.unwrap_or_default())?;
        let admin = match &raw.admin {
            None => None,
            Some(admin) => {
                let listen = &admin.listen;
                let address: SocketAddr = listen.get_ref().parse().map_err(|_| {
                    self.error_at(
                        listen.span(),
                        format!("invalid admin listen address {:?}: write an IP address and port, e.g. \"127.0.0.1:9901\"", listen.get_ref()),
                    )
                })?;
                if address.port() != 0 && server.listen.contains(&address) {
                    return Err(self.error_at(
                        listen.span(),
                        format!("admin listen address {address} is also a [server] listen address"),
                    ));
                }
                Some(address)
            }
        };
        let log = self.log(raw.log.unwrap_or_default())?;

        let mut upstreams = BTreeMap::new();
        for (name, upstream) in raw.upstreams {
            let span = upstream.span();
            let resolved = self.upstream(&name, span, upstream.into_inner())?;
            upstreams.insert(name, resolved);
        }

        let defaults = self.coalesce_defaults(raw.coalesce.unwrap_or_default())?;
        let mut routes = Vec::with_capacity(raw.routes.len());
        let mut names = HashSet::new();
        for (index, route) in raw.routes.into_iter().enumerate() {
            let route = self.route(index, route, &upstreams, &defaults)?;
            if !names.insert(route.0.name.clone()) {
                return Err(
                    self.error_at(route.1, format!("duplicate route name {:?}", route.0.name))
                );
            }
            routes.push(route.0);
        }
        if routes.is_empty() {
            // Points at the end of the file, where a [[routes]] table would go.
            return Err(self.error_at(
                self.text.len()..self.text.len(),
                "no [[routes]]: the proxy would answer every request with 404",
            ));
        }
        Ok(Config {
            server,
            admin,
            log,
            upstreams,
            coalesce: defaults,
            routes,
        })
    }

    fn server(&self, raw: raw::Server) -> Result<ServerConfig, ConfigError> {
        let (addresses, span) = match raw.listen {
            None => (vec!["127.0.0.1:8080".to_owned()], 0..0),
            Some(listen) => {
                let span = listen.span();
                match listen.into_inner() {
                    raw::OneOrMany::One(one) => (vec![one], span),
                    raw::OneOrMany::Many(many) => (many, span),
                }
            }
        };
        let mut listen = Vec::with_capacity(addresses.len());
        for address in &addresses {
            let parsed: SocketAddr = address.parse().map_err(|_| {
                self.error_at(
                    span.clone(),
                    format!(
                        "invalid listen address {address:?}: write an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\""
                    ),
                )
            })?;
            // Port 0 may repeat: each one binds its own ephemeral port.
            if parsed.port() != 0 && listen.contains(&parsed) {
                return Err(
                    self.error_at(span.clone(), format!("duplicate listen address {parsed}"))
                );
            }
            listen.push(parsed);
        }
        if listen.is_empty() {
            return Err(ConfigError {
                path: None,
                position: None,
                message: "[server] listen is an empty list".into(),
            });
        }
        Ok(ServerConfig {
            listen,
            shutdown_grace: self.duration_or(&raw.shutdown_grace, Duration::from_secs(30))?,
            send_timeout: self.positive_duration_or(&raw.send_timeout, Duration::from_secs(60))?,
            header_read_timeout: self
                .positive_duration_or(&raw.header_read_timeout, Duration::from_secs(30))?,
            max_connections: raw.max_connections.unwrap_or(10_000).max(1),
        })
    }

    fn log(&self, raw: raw::Log) -> Result<LogConfig, ConfigError> {
        let format = match raw.format.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(self.error_at(
                    raw.format.as_ref().map_or(0..0, |f| f.span()),
                    format!("unknown log format {other:?}: use \"text\" or \"json\""),
                ))
            }
        };
        let level = match &raw.level {
            None => "info".to_owned(),
            Some(level) => {
                tracing_subscriber::EnvFilter::try_new(level.get_ref()).map_err(|err| {
                    self.error_at(
                        level.span(),
                        format!("invalid log level {:?}: {err}", level.get_ref()),
                    )
                })?;
                level.get_ref().clone()
            }
        };
        Ok(LogConfig {
            format,
            level,
            stats_interval: self.duration_or(&raw.stats_interval, Duration::from_secs(10))?,
            access: raw.access.unwrap_or(false),
        })
    }

    fn upstream(
        &self,
        name: &str,
        table: std::ops::Range<usize>,
        raw: raw::Upstream,
    ) -> Result<UpstreamConfig, ConfigError> {
        let urls: Vec<&raw::Spanned<String>> = match (&raw.url, &raw.urls) {
            (Some(url), None) => vec![url],
            (None, Some(urls)) if !urls.is_empty() => urls.iter().collect(),
            (Some(url), Some(_)) => {
                return Err(self.error_at(
                    url.span(),
                    format!("upstream {name:?}: give `url` or `urls`, not both"),
                ))
            }
            _ => {
                return Err(self.error_at(
                    table,
                    format!("upstream {name:?} needs `url` or a non-empty `urls`"),
                ))
            }
        };
        let mut origins: Vec<Uri> = Vec::with_capacity(urls.len());
        let mut base_path = None;
        for url in urls {
            let (origin, path) = self.upstream_url(name, url)?;
            if base_path.as_ref().is_some_and(|p| *p != path) {
                return Err(self.error_at(
                    url.span(),
                    format!("upstream {name:?}: every address must have the same path"),
                ));
            }
            // One connector per upstream speaks one scheme; mixing would also make the
            // balancer's choice decide whether a request is encrypted.
            if origins
                .first()
                .is_some_and(|first| first.scheme() != origin.scheme())
            {
                return Err(self.error_at(
                    url.span(),
                    format!("upstream {name:?}: every address must use the same scheme"),
                ));
            }
            base_path = Some(path);
            origins.push(origin);
        }
        let https = origins
            .first()
            .is_some_and(|o| o.scheme_str() == Some("https"));
        let tls = match (https, raw.tls) {
            (true, tls) => Some(
                self.upstream_tls(name, tls.map(raw::Spanned::into_inner).unwrap_or_default())?,
            ),
            (false, None) => None,
            (false, Some(tls)) => {
                return Err(self.error_at(
                    tls.span(),
                    format!("upstream {name:?}: `tls` settings need https:// addresses"),
                ))
            }
        };
        let balance = match raw.balance.as_ref().map(|b| b.get_ref().as_str()) {
            None | Some("round_robin") => Balance::RoundRobin,
            Some("least_requests") => Balance::LeastRequests,
            Some("hash") => Balance::Hash,
            Some(other) => {
                return Err(self.error_at(
                    raw.balance.as_ref().map_or(0..0, |b| b.span()),
                    format!("unknown balance {other:?}: use \"round_robin\", \"least_requests\" or \"hash\""),
                ))
            }
        };
        Ok(UpstreamConfig {
            name: name.to_owned(),
            origins,
            balance,
            max_fails: raw.max_fails.unwrap_or(1),
            fail_window: self.duration_or(&raw.fail_window, Duration::from_secs(10))?,
            fail_timeout: self.duration_or(&raw.fail_timeout, Duration::from_secs(10))?,
            base_path: base_path.unwrap_or_default(),
            connect_timeout: self.duration_or(&raw.connect_timeout, Duration::from_secs(2))?,
            response_timeout: self.duration_or(&raw.response_timeout, Duration::from_secs(30))?,
            idle_timeout: self.duration_or(&raw.idle_timeout, Duration::from_secs(30))?,
            pool_max_idle: raw.pool_max_idle.unwrap_or(64),
            http2: raw.http2.unwrap_or(false),
            tls,
        })
    }

    fn upstream_tls(&self, name: &str, raw: raw::Tls) -> Result<UpstreamTls, ConfigError> {
        let ca_certificates = match &raw.ca_file {
            None => None,
            Some(file) => Some(self.ca_certificates(name, file)?),
        };
        let server_name = match &raw.server_name {
            None => None,
            Some(value) => Some(
                ServerName::try_from(value.get_ref().clone()).map_err(|err| {
                    self.error_at(
                        value.span(),
                        format!(
                            "upstream {name:?}: invalid tls server_name {:?}: {err}",
                            value.get_ref()
                        ),
                    )
                })?,
            ),
        };
        Ok(UpstreamTls {
            ca_certificates,
            server_name,
            sni: raw.sni.unwrap_or(true),
            verify: raw.verify.unwrap_or(true),
        })
    }

    /// Reads a PEM bundle now, so that `--check` and a reload catch a missing or empty file
    /// rather than the first request.
    fn ca_certificates(
        &self,
        name: &str,
        file: &raw::Spanned<String>,
    ) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let path = match self.base_dir {
            Some(dir) => dir.join(file.get_ref()),
            None => PathBuf::from(file.get_ref()),
        };
        let bad = |why: String| {
            self.error_at(
                file.span(),
                format!("upstream {name:?}: tls ca_file {}: {why}", path.display()),
            )
        };
        let pem = std::fs::read(&path).map_err(|err| bad(err.to_string()))?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| bad(format!("not a PEM certificate bundle: {err}")))?;
        if certificates.is_empty() {
            return Err(bad("no certificates in it".to_owned()));
        }
        Ok(certificates)
    }

    /// One upstream address: its scheme and authority, and its path.
    fn upstream_url(
        &self,
        name: &str,
        url: &raw::Spanned<String>,
    ) -> Result<(Uri, String), ConfigError> {
        let bad = |why: &str| {
            self.error_at(
                url.span(),
                format!("upstream {name:?}: invalid url {:?}: {why}", url.get_ref()),
            )
        };
        let uri: Uri = url
            .get_ref()
            .parse()
            .map_err(|err| bad(&format!("{err}")))?;
        let scheme = match uri.scheme_str() {
            Some(scheme @ ("http" | "https")) => scheme.to_owned(),
            Some(other) => {
                return Err(bad(&format!(
                    "scheme {other:?} is not supported; use http:// or https://"
                )))
            }
            None => {
                return Err(bad(
                    "it needs a scheme and a host, e.g. \"http://127.0.0.1:3000\"",
                ))
            }
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| bad("it has no host"))?
            .clone();
        if uri.query().is_some() {
            return Err(bad("a query string is not allowed here"));
        }
        let origin = Uri::builder()
            .scheme(scheme.as_str())
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|err| bad(&format!("{err}")))?;
        Ok((origin, uri.path().trim_end_matches('/').to_owned()))
    }

    fn coalesce_defaults(&self, raw: raw::Coalesce) -> Result<CoalescePolicy, ConfigError> {
        let builtin = CoalescePolicy {
            enabled: true,
            methods: vec![Method::GET, Method::HEAD],
            key_headers: vec![http::header::ACCEPT_ENCODING],
            outcome_header: Some(HeaderName::from_static("x-coalesce")),
            credentials: Credentials::Key,
            not_shareable: sharing::default_rules(),
            pass_ttl: Duration::from_secs(30),
            max_wait: None,
            max_followers: 10_000,
            max_replay_body: 8 << 20,
            max_flight_buffer: 32 << 20,
            client_stall_timeout: Duration::from_secs(30),
            share_errors: true,
        };
        self.coalesce_overrides(&builtin, raw)
    }

    fn coalesce_overrides(
        &self,
        base: &CoalescePolicy,
        raw: raw::Coalesce,
    ) -> Result<CoalescePolicy, ConfigError> {
        let mut policy = base.clone();
        if let Some(enabled) = raw.enabled {
            policy.enabled = enabled;
        }
        if let Some(methods) = raw.methods {
            policy.methods = methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()).map_err(|_| {
                        self.error_at(m.span(), format!("invalid method {:?}", m.get_ref()))
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(headers) = raw.key_headers {
            policy.key_headers = headers
                .iter()
                .map(|h| self.header_name(h))
                .collect::<Result<_, _>>()?;
        }
        if let Some(header) = raw.header {
            policy.outcome_header = if header.get_ref().is_empty() {
                None
            } else {
                Some(self.header_name(&header)?)
            };
        }
        if let Some(credentials) = &raw.credentials {
            policy.credentials = match credentials.get_ref().as_str() {
                "key" => Credentials::Key,
                "pass" => Credentials::Pass,
                other => {
                    return Err(self.error_at(
                        credentials.span(),
                        format!("unknown credentials policy {other:?}: use \"key\" or \"pass\""),
                    ))
                }
            };
        }
        if let Some(rules) = &raw.not_shareable {
            policy.not_shareable = rules
                .iter()
                .map(|rule| {
                    rule.get_ref()
                        .parse()
                        .map_err(|why: String| self.error_at(rule.span(), why))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(ttl) = &raw.pass_ttl {
            policy.pass_ttl = self.duration(ttl)?;
        }
        if let Some(wait) = &raw.max_wait {
            policy.max_wait = Some(self.duration(wait)?);
        }
        if let Some(max) = &raw.max_followers {
            policy.max_followers = *max.get_ref();
        }
        if let Some(size) = &raw.max_replay_body {
            policy.max_replay_body = self.size(size)?;
        }
        if let Some(size) = &raw.max_flight_buffer {
            policy.max_flight_buffer = self.size(size)?;
        }
        if let Some(stall) = &raw.client_stall_timeout {
            policy.client_stall_timeout = self.duration(stall)?;
        }
        if let Some(share) = raw.share_errors {
            policy.share_errors = share;
        }
        if policy.max_flight_buffer < policy.max_replay_body {
            let span = raw
                .max_flight_buffer
                .as_ref()
                .or(raw.max_replay_body.as_ref())
                .map_or(0..0, |s| s.span());
            return Err(self.error_at(
                span,
                format!(
                    "max_flight_buffer ({}) must be at least max_replay_body ({}): a flight holds the whole replayable prefix",
                    bytesize::ByteSize(policy.max_flight_buffer).display().iec(),
                    bytesize::ByteSize(policy.max_replay_body).display().iec()
                ),
            ));
        }
        Ok(policy)
    }

    fn size(&self, value: &raw::Spanned<String>) -> Result<u64, ConfigError> {
        value
            .get_ref()
            .parse::<bytesize::ByteSize>()
            .map(|size| size.as_u64())
            .map_err(|err| {
                self.error_at(
                    value.span(),
                    format!(
                        "invalid size {:?}: {err} (write e.g. \"8MiB\" or \"64KiB\")",
                        value.get_ref()
                    ),
                )
            })
    }

    fn header_name(&self, raw: &raw::Spanned<String>) -> Result<HeaderName, ConfigError> {
        HeaderName::from_bytes(raw.get_ref().as_bytes()).map_err(|_| {
            self.error_at(
                raw.span(),
                format!("invalid header name {:?}", raw.get_ref()),
            )
        })
    }

    fn route(
        &self,
        index: usize,
        raw: raw::Route,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        defaults: &CoalescePolicy,
    ) -> Result<(RouteConfig, std::ops::Range<usize>), ConfigError> {
        let prefix = raw.path_prefix.get_ref();
        if !prefix.starts_with('/') {
            return Err(self.error_at(
                raw.path_prefix.span(),
                format!("path_prefix {prefix:?} must start with \"/\""),
            ));
        }
        if !upstreams.contains_key(raw.upstream.get_ref()) {
            let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            return Err(self.error_at(
                raw.upstream.span(),
                format!(
                    "unknown upstream {:?} (defined: {})",
                    raw.upstream.get_ref(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        let host = match &raw.host {
            None => None,
            Some(host) => {
                let value = host.get_ref();
                if value.is_empty() || value.contains(['/', ' ']) {
                    return Err(self.error_at(host.span(), format!("invalid host {value:?}")));
                }
                Some(value.to_ascii_lowercase())
            }
        };
        let (name, name_span) = match raw.name {
            Some(name) => (name.get_ref().clone(), name.span()),
            None => (index.to_string(), raw.path_prefix.span()),
        };
        let coalesce = match raw.coalesce {
            Some(overrides) => self.coalesce_overrides(defaults, overrides)?,
            None => defaults.clone(),
        };
        let cache = match raw.cache {
            Some(cache) if cache.enabled.unwrap_or(false) => Some(CachePolicy {
                max_size: cache
                    .max_size
                    .as_ref()
                    .map_or(Ok(256 << 20), |s| self.size(s))?,
                default_ttl: self.duration_or(&cache.default_ttl, Duration::ZERO)?,
                grace: self.duration_or(&cache.grace, Duration::from_secs(10))?,
            }),
            _ => None,
        };
        Ok((
            RouteConfig {
                name,
                host,
                path_prefix: prefix.clone(),
                upstream: raw.upstream.into_inner(),
                strip_prefix: raw.strip_prefix.unwrap_or(false),
                coalesce,
                cache,
            },
            name_span,
        ))
    }
}

/// The file exactly as written. Only `Config::from_toml` looks at these.
mod raw {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    pub use toml::Spanned;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        pub server: Option<Server>,
        pub admin: Option<Admin>,
        pub log: Option<Log>,
        #[serde(default)]
        pub upstreams: BTreeMap<String, Spanned<Upstream>>,
        pub coalesce: Option<Coalesce>,
        #[serde(default)]
        pub routes: Vec<Route>,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Server {
        // Spans cannot reach inside an untagged enum, so errors point at the whole value.
        pub listen: Option<Spanned<OneOrMany>>,
        pub shutdown_grace: Option<Spanned<String>>,
        pub send_timeout: Option<Spanned<String>>,
        pub header_read_timeout: Option<Spanned<String>>,
        pub max_connections: Option<usize>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Admin {
        pub listen: Spanned<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Log {
        pub format: Option<Spanned<String>>,
        pub level: Option<Spanned<String>>,
        pub stats_interval: Option<Spanned<String>>,
        pub access: Option<bool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Upstream {
        pub url: Option<Spanned<String>>,
        pub urls: Option<Vec<Spanned<String>>>,
        pub balance: Option<Spanned<String>>,
        pub max_fails: Option<usize>,
        pub fail_window: Option<Spanned<String>>,
        pub fail_timeout: Option<Spanned<String>>,
        pub connect_timeout: Option<Spanned<String>>,
        pub response_timeout: Option<Spanned<String>>,
        pub idle_timeout: Option<Spanned<String>>,
        pub pool_max_idle: Option<usize>,
        pub http2: Option<bool>,
        pub tls: Option<Spanned<Tls>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Tls {
        pub ca_file: Option<Spanned<String>>,
        pub server_name: Option<Spanned<String>>,
        pub sni: Option<bool>,
        pub verify: Option<bool>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Coalesce {
        pub enabled: Option<bool>,
        pub methods: Option<Vec<Spanned<String>>>,
        pub key_headers: Option<Vec<Spanned<String>>>,
        pub header: Option<Spanned<String>>,
        pub credentials: Option<Spanned<String>>,
        pub not_shareable: Option<Vec<Spanned<String>>>,
        pub pass_ttl: Option<Spanned<String>>,
        pub max_wait: Option<Spanned<String>>,
        pub max_followers: Option<Spanned<usize>>,
        pub max_replay_body: Option<Spanned<String>>,
        pub max_flight_buffer: Option<Spanned<String>>,
        pub client_stall_timeout: Option<Spanned<String>>,
        pub share_errors: Option<bool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Route {
        pub name: Option<Spanned<String>>,
        pub host: Option<Spanned<String>>,
        pub path_prefix: Spanned<String>,
        pub upstream: Spanned<String>,
        pub strip_prefix: Option<bool>,
        pub coalesce: Option<Coalesce>,
        pub cache: Option<Cache>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Cache {
        pub enabled: Option<bool>,
        pub max_size: Option<Spanned<String>>,
        pub default_ttl: Option<Spanned<String>>,
        pub grace: Option<Spanned<String>>,
    }
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
