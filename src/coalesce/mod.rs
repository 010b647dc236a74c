//! The singleflight table and everything a flight owns.
//!
//! A *flight* is one upstream fetch that any number of identical requests share. The
//! [`Group`] maps each [`Key`] to its live flight (Go's `singleflight.Group`); a
//! [`Flight`] holds the response as it arrives: the head once, then an append-only log of body
//! chunks, then the end. Each client reads the log through its own [`FanoutBody`] at its own
//! cursor, so a client that joins mid-body still gets every byte from the first, and a slow
//! reader costs nobody else anything. [`PassMemory`] remembers keys whose responses turned
//! out not to be shareable, so later requests for them do not queue at all.
//!
//! This module decides nothing about *whether* a request may share (that is `proxy`) and
//! rewrites no headers (that is `hygiene`).

mod fanout;
mod flight;
mod group;
mod join;
mod key;
mod pass_memory;
pub mod sharing;

pub use fanout::FanoutBody;
pub use flight::{Flight, SharedHead};
pub use group::{Fetched, Group, Role, Subscription};
pub use join::{follower_verdict, join_and_wait, Verdict, Waited};
pub use key::Key;
pub use pass_memory::PassMemory;
