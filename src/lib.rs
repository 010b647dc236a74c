//! coalesce-proxy: a reverse proxy that turns a thundering herd into one upstream request.
//!
//! Identical GET and HEAD requests that arrive while a fetch for them is in flight share that
//! fetch; the response head and every body byte are streamed to all of them as they arrive.
//! Everything else passes through.
//!
//! # Layout
//!
//! A request goes down the layers of the request path; each owns one decision and hands the
//! request on, and the response comes back up the same way:
//!
//! - [`server`]: listeners, HTTP/1.1 and h2c connections (or TLS, [`server::tls`]), limits,
//!   graceful shutdown, reload, the admin listener and its status page ([`server::status`]).
//! - [`proxy`]: composes the layers below for one request, and answers for itself (404, 405,
//!   errors); [`proxy::hygiene`] rewrites the headers every forwarded message gets.
//!   1. [`route`]: which route (host, then longest prefix), and so which upstream and policy.
//!   2. [`cache`]: the opt-in response cache: hit, stale, revalidate or miss; storage.
//!   3. [`coalesce`]: the singleflight table: leader, follower or release; the key, the
//!      sharing rules ([`coalesce::sharing`]), the pass memory and the fan-out bodies.
//!   4. [`upstream`]: the pooled client: admission ([`upstream::admission`]), address choice
//!      and passive health ([`upstream::balance`]), addresses that follow DNS
//!      ([`upstream::dns`]), TLS ([`upstream::tls`]), timeouts, errors.
//!
//! Around the request path:
//!
//! - [`config`]: the TOML file, raw and validated ([`config::Config`]).
//! - [`observe`]: stats, metrics, the access record, the status page's history, and the
//!   rate-limited failure warnings.
//! - [`cli`]: the command line, logging set-up and signals.
//! - [`tools`]: what ships beside the proxy: the demo, the scriptable origin, the herd client,
//!   the healthcheck subcommand and the fuzz entry points.
#![forbid(unsafe_code)]

pub mod cache;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod observe;
pub mod proxy;
pub mod route;
pub mod runtime;
pub mod server;
pub mod sharing;
pub mod tools;
pub mod upstream;

// The paths these had before the layers had folders, which the tests, the benchmarks and the
// fuzz targets use.
pub use observe::{metrics, stats};
pub use tools::{fuzzing, herd, origin};
