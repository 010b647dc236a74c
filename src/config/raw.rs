//! The file exactly as written: serde structs with `deny_unknown_fields`, keeping the span of
//! every value checked later. Only the resolver looks at these.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
pub use toml::Spanned;

/// A duration as written (`"30s"`), checked later. Its own type so that a bare number
/// (`shutdown_grace = 30`) is refused as "expected a duration such as \"30s\"", not
/// "expected a string".
pub struct DurationText(pub String);

impl std::ops::Deref for DurationText {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<DurationText, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = DurationText;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"30s\" or \"250ms\" (a string with a unit)")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<DurationText, E> {
                Ok(DurationText(text.to_owned()))
            }
        }
        deserializer.deserialize_any(Text)
    }
}

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
    pub resolver: Option<DnsResolver>,
    pub tracing: Option<Tracing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    pub otlp: Spanned<String>,
    pub sample: Option<Spanned<f64>>,
    pub service_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsResolver {
    pub nameservers: Option<Spanned<Vec<String>>>,
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
    pub shutdown_grace: Option<Spanned<DurationText>>,
    pub send_timeout: Option<Spanned<DurationText>>,
    pub header_read_timeout: Option<Spanned<DurationText>>,
    pub max_connections: Option<usize>,
    pub workers: Option<Spanned<usize>>,
    pub tls: Option<Spanned<ListenerTls>>,
    pub drain_delay: Option<Spanned<DurationText>>,
    pub backlog: Option<Spanned<u32>>,
    pub max_buffered_bytes: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
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
    pub stats_interval: Option<Spanned<DurationText>>,
    pub access: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub url: Option<Spanned<String>>,
    pub urls: Option<Vec<Spanned<String>>>,
    pub balance: Option<Spanned<String>>,
    pub max_fails: Option<usize>,
    pub fail_window: Option<Spanned<DurationText>>,
    pub fail_timeout: Option<Spanned<DurationText>>,
    pub connect_timeout: Option<Spanned<DurationText>>,
    pub response_timeout: Option<Spanned<DurationText>>,
    pub idle_timeout: Option<Spanned<DurationText>>,
    pub pool_max_idle: Option<usize>,
    pub pool_idle_timeout: Option<Spanned<DurationText>>,
    pub http2: Option<bool>,
    pub tls: Option<Spanned<Tls>>,
    pub concurrency: Option<Concurrency>,
    pub resolve_interval: Option<Spanned<DurationText>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    pub max: Spanned<usize>,
    pub queue: Option<usize>,
    pub queue_timeout: Option<Spanned<DurationText>>,
    pub adaptive: Option<Spanned<bool>>,
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
    pub pass_if_present: Option<Vec<Spanned<String>>>,
    pub share_across_hosts: Option<bool>,
    pub header: Option<Spanned<String>>,
    pub credentials: Option<Spanned<String>>,
    pub not_shareable: Option<Vec<Spanned<String>>>,
    pub pass_ttl: Option<Spanned<DurationText>>,
    pub max_wait: Option<Spanned<DurationText>>,
    pub max_followers: Option<Spanned<usize>>,
    pub max_replay_body: Option<Spanned<String>>,
    pub max_flight_buffer: Option<Spanned<String>>,
    pub client_stall_timeout: Option<Spanned<DurationText>>,
    pub share_errors: Option<bool>,
    pub body_max: Option<Spanned<String>>,
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
    pub fleet: Option<Fleet>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub redis: Spanned<String>,
    pub lease: Option<Spanned<DurationText>>,
    pub body_max: Option<Spanned<String>>,
    pub timeout: Option<Spanned<DurationText>>,
    pub retry: Option<Spanned<DurationText>>,
    pub namespace: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    pub enabled: Option<bool>,
    pub max_size: Option<Spanned<String>>,
    pub default_ttl: Option<Spanned<DurationText>>,
    pub grace: Option<Spanned<DurationText>>,
    pub stale_if_unreachable: Option<Spanned<DurationText>>,
    pub heuristic_fraction: Option<Spanned<f64>>,
    pub targeted_field: Option<Spanned<String>>,
    pub status_name: Option<Spanned<String>>,
}
