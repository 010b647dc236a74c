//! Integration tests: one binary (it links once), one module per area.

mod util;

mod admission;
mod balancing;
mod bounds;
mod cache;
mod cache_invalidation;
mod cache_partial;
mod cache_status;
mod cache_validation;
mod coalescing;
mod command_line;
mod config_errors;
mod dashboard;
mod dns;
mod failures;
mod faults;
mod first_week;
mod fleet;
mod fuzz_regressions;
mod grpc;
mod hostile;
mod http2_upstream;
mod keys;
mod operations;
mod passthrough;
mod post_coalescing;
mod protocols;
mod routing;
mod running;
mod sharing;
mod status_page;
mod tls;
mod tls_listener;
mod tracing;
