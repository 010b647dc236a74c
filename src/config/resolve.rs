//! Resolving the file as a whole: the top-level tables, the server, admin and log settings,
//! and the units every table uses (durations, sizes, header names), each error with the line
//! and column of the value that caused it.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::header::HeaderName;

use super::raw;
use super::*;

/// Turns raw values into typed ones, remembering the text so errors can give positions.
pub(super) struct Resolver<'a> {
    pub(super) text: &'a str,
    /// Where relative file names point; `None` for the working directory.
    pub(super) base_dir: Option<&'a Path>,
}

impl Resolver<'_> {
    pub(super) fn error_at(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            path: None,
            position: Some(line_column(self.text, span.start)),
            message: message.into(),
        }
    }

    pub(super) fn duration(
        &self,
        value: &raw::Spanned<raw::DurationText>,
    ) -> Result<Duration, ConfigError> {
        let text: &str = value.get_ref();
        humantime::parse_duration(text).map_err(|err| {
            // humantime's own message may already give an example ("time unit needed, for
            // example 10sec or 10ms"): then one is enough.
            let err = err.to_string();
            let hint = match err.contains("for example") {
                true => "",
                false => " (write e.g. \"250ms\" or \"10s\")",
            };
            self.error_at(
                value.span(),
                format!("invalid duration {text:?}: {err}{hint}"),
            )
        })
    }

    pub(super) fn duration_or(
        &self,
        value: &Option<raw::Spanned<raw::DurationText>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        value.as_ref().map_or(Ok(default), |v| self.duration(v))
    }

    /// A timeout for which zero would close every connection at once.
    pub(super) fn positive_duration_or(
        &self,
        value: &Option<raw::Spanned<raw::DurationText>>,
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

    pub(super) fn resolve(&self, raw: raw::File) -> Result<Config, ConfigError> {
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

        let nameservers = self.nameservers(raw.resolver)?;
        let mut upstreams = BTreeMap::new();
        for (name, upstream) in raw.upstreams {
            let span = upstream.span();
            let mut resolved = self.upstream(&name, span, upstream.into_inner())?;
            resolved.nameservers = nameservers.clone();
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
        let tracing = raw.tracing.map(|t| self.tracing(t)).transpose()?;
        Ok(Config {
            server,
            admin,
            log,
            upstreams,
            coalesce: defaults,
            routes,
            tracing,
        })
    }

    /// `[tracing]`: an `http://` collector URL and a sampling ratio between 0 and 1.
    fn tracing(&self, raw: raw::Tracing) -> Result<super::TracingConfig, ConfigError> {
        let otlp = raw.otlp.get_ref();
        let uri: http::Uri = otlp
            .parse()
            .ok()
            .filter(|u: &http::Uri| u.scheme_str() == Some("http") && u.host().is_some())
            .ok_or_else(|| {
                self.error_at(
                    raw.otlp.span(),
                    format!("invalid [tracing] otlp {otlp:?}: write the collector's OTLP/HTTP address, e.g. \"http://127.0.0.1:4318\""),
                )
            })?;
        let sample = match &raw.sample {
            None => 1.0,
            Some(sample) if (0.0..=1.0).contains(sample.get_ref()) => *sample.get_ref(),
            Some(sample) => {
                return Err(self.error_at(sample.span(), "[tracing] sample must be between 0 and 1"))
            }
        };
        Ok(super::TracingConfig {
            otlp: uri,
            sample,
            service_name: raw
                .service_name
                .unwrap_or_else(|| "coalesce-proxy".to_owned()),
        })
    }

    /// `[resolver] nameservers`: `"IP:port"` or `"IP"` (port 53).
    fn nameservers(&self, raw: Option<raw::DnsResolver>) -> Result<Vec<SocketAddr>, ConfigError> {
        let Some(listed) = raw.and_then(|r| r.nameservers) else {
            return Ok(Vec::new());
        };
        let span = listed.span();
        listed
            .into_inner()
            .iter()
            .map(|server| {
                server
                    .parse::<SocketAddr>()
                    .or_else(|_| server.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        self.error_at(
                            span.clone(),
                            format!("invalid [resolver] nameserver {server:?}: write an IP address, with a port if not 53, e.g. \"10.96.0.10\" or \"127.0.0.1:5353\""),
                        )
                    })
            })
            .collect()
    }

    pub(super) fn server(&self, raw: raw::Server) -> Result<ServerConfig, ConfigError> {
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
            workers: match &raw.workers {
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
                Some(workers) if *workers.get_ref() == 0 => {
                    return Err(self.error_at(
                        workers.span(),
                        "workers must be at least 1 (leave it out for one per core)",
                    ))
                }
                Some(workers) => *workers.get_ref(),
            },
            drain_delay: self.duration_or(&raw.drain_delay, Duration::ZERO)?,
            max_header_bytes: match &raw.max_header_bytes {
                None => 32 << 10,
                Some(size) => usize::try_from(self.size(size)?)
                    .unwrap_or(usize::MAX)
                    .max(1),
            },
            max_buffered_bytes: match &raw.max_buffered_bytes {
                None => 256 << 20,
                Some(size) => self.size(size)?,
            },
            backlog: match &raw.backlog {
                None => 4096,
                Some(backlog) if *backlog.get_ref() == 0 => {
                    return Err(self.error_at(
                        backlog.span(),
                        "backlog must be at least 1 (the default is 4096)",
                    ))
                }
                Some(backlog) => *backlog.get_ref(),
            },
            tls: match raw.tls {
                None => None,
                Some(tls) => Some(self.listener_tls(tls)?),
            },
        })
    }

    pub(super) fn log(&self, raw: raw::Log) -> Result<LogConfig, ConfigError> {
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
                let invalid = |why: String| {
                    self.error_at(
                        level.span(),
                        format!("invalid log level {:?}: {why}", level.get_ref()),
                    )
                };
                check_log_directives(level.get_ref()).map_err(invalid)?;
                tracing_subscriber::EnvFilter::try_new(level.get_ref())
                    .map_err(|err| invalid(err.to_string()))?;
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

    pub(super) fn size(&self, value: &raw::Spanned<String>) -> Result<u64, ConfigError> {
        value
            .get_ref()
            .parse::<bytesize::ByteSize>()
            .map(|size| size.as_u64())
            .map_err(|_| {
                // bytesize's own message names float parsing ("cannot parse float from empty
                // string"), which says nothing to whoever wrote the file.
                self.error_at(
                    value.span(),
                    format!(
                        "invalid size {:?}: a number and a unit (write e.g. \"8MiB\" or \"64KiB\")",
                        value.get_ref()
                    ),
                )
            })
    }

    pub(super) fn header_name(
        &self,
        raw: &raw::Spanned<String>,
    ) -> Result<HeaderName, ConfigError> {
        HeaderName::from_bytes(raw.get_ref().as_bytes()).map_err(|_| {
            self.error_at(
                raw.span(),
                format!("invalid header name {:?}", raw.get_ref()),
            )
        })
    }
}

/// The levels a log directive may name.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks what `EnvFilter` would accept but mean something else by: a bare word that is not a
/// level (`"warning"`, `"verbose"`) is taken as a *target* to log at every level, which
/// silences everything else; an empty string filters everything out.
fn check_log_directives(level: &str) -> Result<(), String> {
    let hint = "use one of trace, debug, info, warn, error, off, or target=level directives such as \"info,coalesce_proxy=debug\"";
    if level.trim().is_empty() {
        return Err(format!("it is empty: {hint}"));
    }
    for directive in level.split(',').map(str::trim) {
        // Span and field filters (`target[span{field=x}]=level`) are left to EnvFilter.
        if directive.contains('[') {
            continue;
        }
        let named = match directive.rsplit_once('=') {
            Some((_, level)) => level,
            None => directive,
        };
        if !LOG_LEVELS.contains(&named.to_ascii_lowercase().as_str()) {
            return Err(format!("{named:?} is not a level: {hint}"));
        }
    }
    Ok(())
}
