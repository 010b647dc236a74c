//! Resolving `[coalesce]` and `[[routes]]`: each route's upstream, prefix and host, and its
//! coalescing and cache policies (the route's overrides on top of the defaults).

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;

use super::raw;
use super::resolve::Resolver;
use super::*;

/// Request headers that, by their presence, make a request pass through by default: each can
/// change what an origin (or a framework in front of it) answers, and none is in the key.
/// Credentials-like (`X-Api-Key`), path overrides that IIS, Symfony and Laravel honour
/// (`X-Original-URL`, `X-Rewrite-URL`), method overrides (`X-HTTP-Method-Override` and its
/// spellings), and host overrides a client may send (`Forwarded`, `X-Forwarded-Server`,
/// `X-Host`, `X-HTTP-Host-Override`, `X-Original-Host`). `X-Forwarded-Host` and
/// `X-Forwarded-Proto` are not here: the proxy replaces them, so a client's never arrives.
const DEFAULT_PASS_IF_PRESENT: [&str; 11] = [
    "x-api-key",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "forwarded",
    "x-forwarded-server",
    "x-host",
    "x-http-host-override",
    "x-original-host",
];

impl Resolver<'_> {
    pub(super) fn coalesce_defaults(
        &self,
        raw: raw::Coalesce,
    ) -> Result<CoalescePolicy, ConfigError> {
        let builtin = CoalescePolicy {
            enabled: true,
            methods: vec![Method::GET, Method::HEAD],
            key_headers: vec![http::header::ACCEPT_ENCODING],
            pass_if_present: DEFAULT_PASS_IF_PRESENT
                .iter()
                .map(|name| HeaderName::from_static(name))
                .collect(),
            share_across_hosts: false,
            outcome_header: Some(HeaderName::from_static("x-coalesce")),
            credentials: Credentials::Key,
            not_shareable: default_rules(),
            pass_ttl: Duration::from_secs(30),
            max_wait: None,
            max_followers: 10_000,
            max_replay_body: 8 << 20,
            max_flight_buffer: 32 << 20,
            client_stall_timeout: Duration::from_secs(30),
            share_errors: true,
            body_max: None,
        };
        self.coalesce_overrides(&builtin, raw)
    }

    pub(super) fn coalesce_overrides(
        &self,
        base: &CoalescePolicy,
        raw: raw::Coalesce,
    ) -> Result<CoalescePolicy, ConfigError> {
        let mut policy = base.clone();
        if let Some(enabled) = raw.enabled {
            policy.enabled = enabled;
        }
        self.coalesce_lists(&mut policy, &raw)?;
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
        if let Some(share) = raw.share_across_hosts {
            policy.share_across_hosts = share;
        }
        if let Some(size) = &raw.body_max {
            policy.body_max = Some(self.size(size)?);
        }
        self.check_buffers(&policy, &raw)?;
        Ok(policy)
    }

    /// The list-valued and named settings of a `coalesce` table: methods, key headers, the
    /// outcome header, credentials and `not_shareable` rules.
    fn coalesce_lists(
        &self,
        policy: &mut CoalescePolicy,
        raw: &raw::Coalesce,
    ) -> Result<(), ConfigError> {
        if let Some(methods) = &raw.methods {
            policy.methods = methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()).map_err(|_| {
                        self.error_at(m.span(), format!("invalid method {:?}", m.get_ref()))
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(headers) = &raw.key_headers {
            policy.key_headers = headers
                .iter()
                .map(|h| self.header_name(h))
                .collect::<Result<_, _>>()?;
        }
        if let Some(headers) = &raw.pass_if_present {
            policy.pass_if_present = headers
                .iter()
                .map(|h| self.header_name(h))
                .collect::<Result<_, _>>()?;
        }
        // A keyed header is safe to share on: only equal values share.
        let keyed = &policy.key_headers;
        policy.pass_if_present.retain(|name| !keyed.contains(name));
        if let Some(header) = &raw.header {
            policy.outcome_header = if header.get_ref().is_empty() {
                None
            } else {
                Some(self.header_name(header)?)
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
        Ok(())
    }

    /// A flight holds its whole replayable prefix, so its buffer must be at least that.
    fn check_buffers(
        &self,
        policy: &CoalescePolicy,
        raw: &raw::Coalesce,
    ) -> Result<(), ConfigError> {
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
        Ok(())
    }

    pub(super) fn route(
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
            Some(cache) if cache.enabled.unwrap_or(false) => Some(self.cache_policy(cache)?),
            _ => None,
        };
        let fleet = match raw.fleet {
            Some(fleet) => Some(self.fleet(fleet, &name)?),
            None => None,
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
                fleet,
            },
            name_span,
        ))
    }

    fn cache_policy(&self, cache: raw::Cache) -> Result<CachePolicy, ConfigError> {
        let heuristic_fraction = match &cache.heuristic_fraction {
            None => 0.1,
            Some(f) if (0.0..=1.0).contains(f.get_ref()) => *f.get_ref(),
            Some(f) => {
                return Err(self.error_at(
                    f.span(),
                    "heuristic_fraction must be between 0 and 1 (0 turns heuristics off)",
                ))
            }
        };
        let targeted_field = match &cache.targeted_field {
            None => http::header::HeaderName::from_static("coalesce-proxy-cache-control"),
            Some(name) => {
                http::header::HeaderName::from_bytes(name.get_ref().as_bytes()).map_err(|_| {
                    self.error_at(
                        name.span(),
                        format!("{:?} is not a header name", name.get_ref()),
                    )
                })?
            }
        };
        let status_name = match &cache.status_name {
            None => "coalesce-proxy".to_owned(),
            Some(name) if is_token(name.get_ref()) => name.get_ref().clone(),
            Some(name) => {
                return Err(self.error_at(
                    name.span(),
                    format!(
                        "status_name {:?} must be a token (letters, digits, - . _)",
                        name.get_ref()
                    ),
                ))
            }
        };
        Ok(CachePolicy {
            max_size: cache
                .max_size
                .as_ref()
                .map_or(Ok(256 << 20), |s| self.size(s))?,
            default_ttl: self.duration_or(&cache.default_ttl, Duration::ZERO)?,
            grace: self.duration_or(&cache.grace, Duration::ZERO)?,
            stale_if_unreachable: self.duration_or(
                &cache.stale_if_unreachable,
                Duration::from_secs(24 * 60 * 60),
            )?,
            heuristic_fraction,
            targeted_fields: vec![
                targeted_field,
                http::header::HeaderName::from_static("cdn-cache-control"),
            ],
            status_name,
        })
    }
}

impl Resolver<'_> {
    fn fleet(&self, raw: raw::Fleet, route: &str) -> Result<FleetConfig, ConfigError> {
        let url = raw.redis.get_ref();
        if !url.starts_with("redis://") {
            return Err(self.error_at(
                raw.redis.span(),
                format!("fleet.redis {url:?} must be a redis:// URL (redis://host:6379)"),
            ));
        }
        if let Err(err) = redis::Client::open(url.as_str()) {
            return Err(self.error_at(
                raw.redis.span(),
                format!("fleet.redis {url:?} is not a Redis URL: {err}"),
            ));
        }
        let lease = self.duration_or(&raw.lease, Duration::from_secs(5))?;
        let timeout = self.duration_or(&raw.timeout, Duration::from_millis(50))?;
        let retry = self.duration_or(&raw.retry, Duration::from_secs(5))?;
        for (value, name, what) in [
            (lease, "lease", &raw.lease),
            (timeout, "timeout", &raw.timeout),
        ] {
            if value.is_zero() {
                let span = what.as_ref().map(|w| w.span()).unwrap_or(raw.redis.span());
                return Err(self.error_at(span, format!("fleet.{name} must be more than 0")));
            }
        }
        let namespace = match &raw.namespace {
            None => route.to_owned(),
            Some(name) if !name.get_ref().is_empty() => name.get_ref().clone(),
            Some(name) => {
                return Err(self.error_at(name.span(), "fleet.namespace must not be empty"))
            }
        };
        Ok(FleetConfig {
            redis: url.clone(),
            lease,
            body_max: raw
                .body_max
                .as_ref()
                .map_or(Ok(1 << 20), |s| self.size(s))?,
            timeout,
            retry,
            namespace,
        })
    }
}

/// An sf-token's start and a conservative set after it, for `Cache-Status` names.
fn is_token(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}
