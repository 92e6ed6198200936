//! pr-helper: parse the command line, then hand the validated configuration to the daemon.

use std::process::ExitCode;

use clap::Parser;
use pr_helper::cli::Cli;
use pr_helper::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::try_from(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pr-helper: {e}");
            return ExitCode::FAILURE;
        }
    };
    match pr_helper::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("pr-helper: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            tracing::error!("{msg}");
            ExitCode::FAILURE
        }
    }
}
