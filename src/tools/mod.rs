//! The tools that ship in the binary and the test harness, outside the request path.
//!
//! [`demo`] runs the product in one command; [`origin`] is the scriptable origin the demo,
//! the tests and the benchmarks use; [`herd`] sends a barrier-released herd; [`healthcheck`]
//! is the `healthcheck` subcommand for images without curl; [`fuzzing`] holds the fuzz
//! targets' entry points.

pub mod demo;
pub mod fuzzing;
pub mod healthcheck;
pub mod herd;
pub mod origin;
