//! The singleflight table and everything a flight owns.
//!
//! A *flight* is one upstream fetch that any number of identical requests share. The
//! [`Group`] maps each [`Key`] to its live flight (Go's `singleflight.Group`); a
//! [`Flight`] holds the response as it arrives: the head once, then an append-only log of body
//! chunks, then the end. Each client reads the log through its own [`FanoutBody`] at its own
//! cursor, so a client that joins mid-body still gets every byte from the first, and a slow
//! reader costs nobody else anything.
//!
//! This module decides nothing about *whether* a request may share (that is `proxy`) and
//! rewrites no headers (that is `hygiene`).

mod fanout;
mod flight;
mod group;
mod key;

pub use fanout::FanoutBody;
pub use flight::{Flight, SharedHead};
pub use group::{Group, Role, Subscription};
pub use key::Key;
