use std::process::ExitCode;

fn main() -> ExitCode {
    coalesce_proxy::cli::main()
}
