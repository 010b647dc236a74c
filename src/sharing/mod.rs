//! What may be shared, and under which key: the one home of the sharing rules, used by the
//! flight table, the cache and the proxy alike.
//!
//! [`KeyPolicy`] derives every key (a flight's and a stored response's) from one request, so
//! that whatever of a request reaches the upstream and can change its answer (the host, the
//! credentials, the listed headers, Range and conditions) either is in the key or keeps the
//! request from sharing ([`request_may_share`]). [`judge_response`] decides who may be given a
//! response, and [`vary_matches`] whether a follower's `Vary` values match its leader's.
//!
//! This layer only judges and derives; it holds no state and acts on nothing.

mod key;
mod rules;
mod vary;

pub use key::{accepts_trailers, Key, KeyHash, KeyParts, KeyPolicy};
pub use rules::{
    grpc_error, grpc_trailers_only, is_grpc, judge_response, request_may_share,
    shareable_body_length, tokens, Sharing, RANGE_AND_CONDITIONAL,
};
pub use vary::{vary_matches, vary_value};
