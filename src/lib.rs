//! coalesce-proxy: a reverse proxy that turns a thundering herd into one upstream request.
//!
//! Identical GET and HEAD requests that arrive while a fetch for them is in flight share that
//! fetch; the response head and every body byte are streamed to all of them as they arrive.
//! Everything else passes through.
//!
//! # Layout
//!
//! A request goes through the phases [`proxy`] composes (route, look up, coalesce, admit,
//! upstream request, response, log), each the business of one layer. The layers, from the top;
//! each imports only those below it (`.ci/check-layers.py` fails CI on a cycle):
//!
//! - [`cli`]: the command line, logging set-up, signals, and the `healthcheck` subcommand.
//! - [`server`]: listeners, HTTP/1.1 and h2c connections (or TLS, [`server::tls`]), limits,
//!   graceful shutdown, reload, the admin listener and its status page ([`server::status`]).
//! - [`proxy`]: the request pipeline: a [`proxy::RequestContext`] through the named phases;
//!   it composes the layers below and decides nothing they decide.
//! - [`route`]: the route table (host, then longest prefix); a route bundles one of each
//!   layer below for its requests, and a reload keeps what it did not change.
//! - [`coalesce`]: the per-key coordinator (flights, background refreshes, keys remembered
//!   as not shareable; one status per request) and the flights' fan-out bodies.
//! - [`cache`]: the opt-in response cache: RFC 9111 decisions as pure functions, storage,
//!   invalidation.
//! - [`sharing`]: what may be shared and under which key: one key policy for flights and the
//!   cache, the sharing rules, `Vary`.
//! - [`upstream`]: the pooled client: admission ([`upstream::admission`]), address choice and
//!   passive health ([`upstream::balance`]), addresses that follow DNS ([`upstream::dns`]),
//!   TLS ([`upstream::tls`]), timeouts, errors.
//! - [`runtime`]: the worker threads, one single-threaded runtime each.
//! - [`observe`]: stats, metrics, the access record, the status page's history, and the
//!   rate-limited failure warnings.
//! - [`config`]: the TOML file, raw and validated ([`config::Config`]).
//!
//! Beside the proxy, not in it: `tools` (the `tools` feature, on by default; the image builds
//! without it): the demo (`coalesce-demo`), the scriptable origin, the herd client and the
//! fuzz entry points.
// One `unsafe` block in the crate, allowed where it stands: the `malloc_trim` call in
// `server::memory` (glibc has no safe binding for it).
#![deny(unsafe_code)]

pub mod cache;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod fleet;
pub mod observe;
pub mod proxy;
pub mod route;
pub mod runtime;
pub mod server;
pub mod sharing;
#[cfg(feature = "tools")]
pub mod tools;
pub mod upstream;
