//! The response cache, opt-in per route: the layer between routing and coalescing.
//!
//! A request that may share looks here first ([`look_up`]): a fresh entry is served from
//! memory (outcome `hit`) with an `Age` header; a stale one within its
//! `stale-while-revalidate` window is served at once (outcome `stale`) while one background
//! [`Refresh`] renews it; anything else goes on to a flight, carrying what the cache still
//! offers it ([`Miss`]: a stale response that may stand in for an upstream error, or a
//! `no-cache` response the flight revalidates). The flight stores its response when it
//! completes, as its [`StorePlan`] decided when the head arrived.
//!
//! Files: `freshness` holds the RFC 9111 decisions as pure functions; `stored` a stored
//! response and what its age allows; `store` the per-route store (moka, bounded by size,
//! `Vary` variants under their own keys, purge); `lookup`, `put` and `refresh` the layer's
//! three moments in a request's life. The cache never sends anything upstream itself: the
//! proxy sends what a [`Refresh`] asks for, and a flight fetches what a miss needs.

pub mod conditional;
mod directives;
mod freshness;
mod invalidate;
mod lookup;
mod put;
mod range;
mod refresh;
pub mod status;
mod store;
mod stored;
#[cfg(test)]
mod tests;

pub use freshness::{as_targeted, freshness, freshness_at, Freshness};
pub use invalidate::after_unsafe_request;
pub use lookup::{cacheable_request, look_up, response, Lookup, Miss};
pub use put::{Store, StorePlan};
pub use range::{byte_range, RangeAnswer};
pub use refresh::Refresh;
pub use store::{Found, ResponseCache};
pub use stored::StoredResponse;
