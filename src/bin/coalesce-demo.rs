use std::process::ExitCode;

fn main() -> ExitCode {
    coalesce_proxy::tools::demo::main()
}
