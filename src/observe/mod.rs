//! Observation: what the proxy records about the traffic, and where an operator reads it.
//!
//! Nothing here decides anything about a request; the layers report to it. [`logging`] sets
//! up the log output. [`stats`] keeps the
//! outcome counters and writes the periodic stats line, [`metrics`] holds the Prometheus
//! families (with [`sharded`] counters and histograms, cheap enough for every request),
//! [`outcome`] names what happened to each request, [`access`] writes each
//! request's record when its response body ends, and [`failure_log`] keeps an outage's
//! upstream failures to a few log lines, [`fleet`] names what the fleet layer did. The
//! admin listener that shows them is the server's (`server::admin`).

pub mod access;
pub mod failure_log;
pub mod fleet;
pub mod history;
pub mod logging;
pub mod metrics;
pub mod outcome;
pub mod sharded;
pub mod stats;
pub mod stats_line;
pub mod trace;
