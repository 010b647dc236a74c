//! The `coalesce-demo` binary: the product in one command (`tools::demo`).

use std::process::ExitCode;

fn main() -> ExitCode {
    coalesce_proxy::tools::demo::main()
}
