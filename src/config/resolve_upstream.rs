//! Resolving `[upstreams.NAME]`: addresses (one scheme, one base path), balancing, passive
//! health, timeouts, and TLS settings with their CA bundle read and checked now.

use std::time::Duration;

use http::Uri;
use rustls::pki_types::{CertificateDer, ServerName};

use super::raw;
use super::resolve::Resolver;
use super::*;

impl Resolver<'_> {
    pub(super) fn upstream(
        &self,
        name: &str,
        table: std::ops::Range<usize>,
        raw: raw::Upstream,
    ) -> Result<UpstreamConfig, ConfigError> {
        let (origins, base_path) = self.upstream_addresses(name, table, &raw)?;
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
        let balance = self.balance(raw.balance.as_ref())?;
        let concurrency = match raw.concurrency {
            None => None,
            Some(limit) => Some(self.concurrency(limit)?),
        };
        Ok(UpstreamConfig {
            concurrency,
            resolve_interval: self.duration_or(&raw.resolve_interval, Duration::from_secs(5))?,
            nameservers: Vec::new(),
            name: name.to_owned(),
            origins,
            balance,
            max_fails: raw.max_fails.unwrap_or(1),
            fail_window: self.duration_or(&raw.fail_window, Duration::from_secs(10))?,
            fail_timeout: self.duration_or(&raw.fail_timeout, Duration::from_secs(10))?,
            base_path,
            connect_timeout: self.duration_or(&raw.connect_timeout, Duration::from_secs(2))?,
            response_timeout: self.duration_or(&raw.response_timeout, Duration::from_secs(30))?,
            idle_timeout: self.duration_or(&raw.idle_timeout, Duration::from_secs(30))?,
            // No cap by default: a cap below the load's concurrency closes connections as they
            // come back and opens new ones for the next requests (churn); HAProxy and Envoy
            // keep what the load needs and close idle connections by time, as this does.
            pool_max_idle: raw.pool_max_idle.unwrap_or(usize::MAX),
            pool_idle_timeout: self.duration_or(&raw.pool_idle_timeout, Duration::from_secs(90))?,
            http2: raw.http2.unwrap_or(false),
            tls,
        })
    }

    /// An upstream's addresses (`url` or `urls`) and the one path they share.
    fn upstream_addresses(
        &self,
        name: &str,
        table: std::ops::Range<usize>,
        raw: &raw::Upstream,
    ) -> Result<(Vec<Uri>, String), ConfigError> {
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
        Ok((origins, base_path.unwrap_or_default()))
    }

    fn balance(&self, raw: Option<&raw::Spanned<String>>) -> Result<Balance, ConfigError> {
        match raw.map(|b| b.get_ref().as_str()) {
            None | Some("round_robin") => Ok(Balance::RoundRobin),
            Some("least_requests") => Ok(Balance::LeastRequests),
            Some("hash") => Ok(Balance::Hash),
            Some(other) => Err(self.error_at(
                raw.map_or(0..0, |b| b.span()),
                format!("unknown balance {other:?}: use \"round_robin\", \"least_requests\" or \"hash\""),
            )),
        }
    }

    fn concurrency(&self, raw: raw::Concurrency) -> Result<ConcurrencyLimit, ConfigError> {
        if *raw.max.get_ref() == 0 {
            return Err(self.error_at(
                raw.max.span(),
                "concurrency max must be at least 1".to_owned(),
            ));
        }
        let queue_timeout = self.duration_or(&raw.queue_timeout, Duration::from_secs(10))?;
        if queue_timeout.is_zero() {
            return Err(self.error_at(
                raw.queue_timeout.as_ref().map_or(0..0, |t| t.span()),
                "concurrency queue_timeout must be more than 0s: every queued request would be refused".to_owned(),
            ));
        }
        Ok(ConcurrencyLimit {
            max: *raw.max.get_ref(),
            queue: raw.queue.unwrap_or(10_000),
            queue_timeout,
            adaptive: raw.adaptive.is_some_and(|a| *a.get_ref()),
        })
    }

    pub(super) fn upstream_tls(
        &self,
        name: &str,
        raw: raw::Tls,
    ) -> Result<UpstreamTls, ConfigError> {
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
    pub(super) fn ca_certificates(
        &self,
        name: &str,
        file: &raw::Spanned<String>,
    ) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let path = self.config_relative(file);
        let bad = |why: String| {
            self.error_at(
                file.span(),
                format!("upstream {name:?}: tls ca_file {}: {why}", path.display()),
            )
        };
        super::listener_tls::read_certificates(&path).map_err(bad)
    }

    /// One upstream address: its scheme and authority, and its path.
    pub(super) fn upstream_url(
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
}
