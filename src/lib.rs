//! coalesce-proxy: a reverse proxy that turns a thundering herd into one upstream request.
//!
//! Identical GET and HEAD requests that arrive while a fetch for them is in flight share that
//! fetch; the response head and every body byte are streamed to all of them as they arrive.
//! Everything else passes through.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, raw and validated ([`config::Config`]).
//! - [`routes`]: host and longest-prefix matching to a [`routes::Route`].
//! - [`cache`]: the opt-in response cache in front of the singleflight table.
//! - [`coalesce`]: the singleflight table ([`coalesce::Group`]), the in-flight fetch
//!   ([`coalesce::Flight`]) and each client's streaming view of it ([`coalesce::FanoutBody`]).
//! - [`upstream`]: the pooled upstream client and its timeouts; [`balance`] picks an address;
//!   [`tls`] speaks TLS to `https://` upstreams.
//! - [`hygiene`]: hop-by-hop removal and forwarding headers.
//! - [`sharing`]: which requests may share, and which responses may be shared.
//! - [`proxy`]: one request's path: route, classify, share or pass.
//! - [`access`]: the per-request record: access log line and request metrics.
//! - [`stats`]: outcome counters and the periodic stats line.
//! - [`metrics`]: the Prometheus metric families and their exposition.
//! - [`admin`]: the admin listener: `/metrics`, `/healthz`, `/readyz`.
//! - [`server`]: listeners, HTTP/1.1 + h2c connections, graceful shutdown.
//! - [`cli`]: the command line, logging set-up, SIGHUP reload, and the `demo` ([`demo`]) and
//!   `healthcheck` ([`health`]) subcommands.
//! - [`herd`]: a barrier-released herd client, for the demo and the benchmarks.
//! - [`fuzzing`]: the fuzz targets' entry points, shared with their regression tests.
//! - [`origin`]: a small scriptable HTTP/1.1 origin used by the demo, the tests and benchmarks.
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod balance;
pub mod cache;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod demo;
pub mod fuzzing;
pub mod health;
pub mod herd;
pub mod hygiene;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod sharing;
pub mod stats;
pub mod tls;
pub mod upstream;
