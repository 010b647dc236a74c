//! What ships beside the proxy, not in it: the demo (the `coalesce-demo` binary), the
//! scriptable origin the demo, the tests and the benchmarks use, the herd client, and the fuzz
//! targets' entry points. Behind the default `tools` feature; the image builds without it.
//!
//! [`demo`] runs the product in one command; [`origin`] can misbehave on purpose; [`herd`]
//! sends a barrier-released herd; [`fuzzing`] is what the fuzzers and their regression tests
//! call.

pub mod demo;
pub mod fuzzing;
pub mod herd;
pub mod origin;
