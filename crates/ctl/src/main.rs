//! pr-ctl: drive a persistent-reservation helper from the command line.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use pr_ctl::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = pr_ctl::run(&cli);
    // A closed pipe (pr-ctl keys … | head) is not an error worth a panic.
    let _ = std::io::stdout().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
    ExitCode::from(outcome.code)
}
