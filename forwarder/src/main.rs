use std::process::ExitCode;

fn main() -> ExitCode {
    forwarder::cli::Cli::parse_or_exit().execute()
}
