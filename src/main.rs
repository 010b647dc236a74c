//! The `coalesce-proxy` binary: everything is in the library (`cli::main`).

use std::process::ExitCode;

fn main() -> ExitCode {
    coalesce_proxy::cli::main()
}
