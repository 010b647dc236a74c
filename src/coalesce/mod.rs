//! The flight table and everything a flight owns.
//!
//! A *flight* is one upstream fetch that any number of identical requests share. The
//! [`Coordinator`] holds, for each [`Key`](crate::sharing::Key), its live flight or a note that
//! the key's answers are not shareable, and tells each request what to do ([`Status`]): lead,
//! follow, take the head, re-elect a leader, re-key by `Vary`, or go upstream alone. A
//! [`Flight`] holds the response as it arrives: the head once, then an append-only log of body
//! chunks, then the end. Each client reads the log through its own [`FanoutBody`] at its own
//! cursor, so a client that joins mid-body still gets every byte from the first, and a slow
//! reader costs nobody else anything.
//!
//! This layer decides nothing about *whether* a request may share (that is `sharing`), builds
//! no upstream request and rewrites no headers (that is `proxy`), and knows no routes: a flight
//! runs under a [`Scope`] (the route's name and coalescing policy).

mod budget;
mod coordinator;
mod fanout;
mod fetch;
mod flight;
mod status;
mod subscription;

pub use budget::BufferBudget;
pub use coordinator::Coordinator;
pub use fanout::FanoutBody;
pub use fetch::Fetched;
pub use flight::{FetchTrace, Flight, FlightError, Scope, SharedHead};
pub use status::{Follower, Lead, Status};
pub use subscription::Subscription;
