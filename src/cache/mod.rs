//! The response cache, opt-in per route: the layer between routing and coalescing.
//!
//! A request that may share looks here first ([`look_up`]): a fresh entry is served from
//! memory (outcome `hit`) with an `Age` header; a stale one within its
//! `stale-while-revalidate` window is served at once (outcome `stale`) and refreshed by the
//! flight a miss would make ([`Miss::refreshing`]); anything else goes on to a flight,
//! carrying what the cache still offers it ([`Miss`]: a stale response that may stand in for
//! an upstream failure, or a response the flight revalidates), and [`Miss::settle`] says
//! what the flight's head means for it. The response body stores itself as its last byte goes
//! by ([`StoringBody`]), as the [`StorePlan`] decided when the head arrived.
//!
//! Files: `freshness` and `directives` hold the RFC 9111 decisions as pure functions;
//! `stored` a stored response and what its age allows; `store` the per-route store (moka,
//! bounded by size, `Vary` variants under their own keys, purge); `lookup` and `storing` the
//! layer's two moments in a request's life; `invalidate` RFC 9111 §4.4. The cache never sends
//! anything upstream itself, and knows nothing of routes: the proxy hands it the cache and
//! the key (`sharing::KeyPolicy`).

pub mod conditional;
mod directives;
mod freshness;
mod invalidate;
mod lookup;
mod partial;
mod range;
pub mod status;
mod store;
mod stored;
mod storing;
#[cfg(test)]
mod tests;

pub use freshness::{as_targeted, current_age, freshness, freshness_at, Freshness};
pub use invalidate::after_unsafe_request;
pub use lookup::{cacheable_request, look_up, response, Lookup, Miss, Settled};
pub use range::{byte_range, RangeAnswer};
pub use store::{Found, ResponseCache};
pub use stored::StoredResponse;
pub use storing::{PendingStore, StorePlan, StoringBody};
