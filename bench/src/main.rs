//! pr-bench: parse the command line and run the chosen tool.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pr_bench::cli::{Cli, Command};
use pr_bench::device::Device;
use pr_bench::load::{LoadConfig, Stop};
use pr_bench::{compare, emulate, idle, load, procinfo, report};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pr-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print<T: serde::Serialize>(json: bool, value: &T, text: String) -> Result<(), String> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).map_err(|e| e.to_string())?
        );
    } else {
        print!("{text}");
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Run(a) => {
            let kind = a.device.fd_kind()?;
            let device = Device::open(&kind, &a.device.scratch_dir)
                .map_err(|e| format!("cannot open the {kind} device: {e}"))?;
            procinfo::raise_nofile(u64::from(a.clients) + 1024);
            let server_pid = a
                .server_pid
                .or_else(|| procinfo::pid_listening_on(&a.socket).ok());
            let stop = match (a.duration, a.count) {
                (Some(d), _) => Stop::Duration(d),
                (None, Some(k)) => Stop::Count(k),
                (None, None) => Stop::Duration(Duration::from_secs(5)),
            };
            let cfg = LoadConfig {
                socket: a.socket,
                clients: a.clients,
                stop,
                max_duration: a.max_duration,
                mix: a.mix,
                io_timeout: a.io_timeout,
                server_pid,
                generator: a.generator.generator(),
            };
            let r = load::run(&cfg, &device.file, &device.description);
            print(a.json, &r, r.to_text())?;
            if r.requests == 0 {
                return Err("no request was answered".into());
            }
            Ok(())
        }
        Command::Idle(a) => {
            let kind = a.device.fd_kind()?;
            let device = Device::open(&kind, &a.device.scratch_dir)
                .map_err(|e| format!("cannot open the {kind} device: {e}"))?;
            procinfo::raise_nofile(u64::from(a.connections) + 1024);
            let server_pid = a
                .server_pid
                .or_else(|| procinfo::pid_listening_on(&a.socket).ok());
            let cfg = idle::IdleConfig {
                socket: a.socket,
                connections: a.connections,
                io_timeout: a.io_timeout,
                max_duration: Duration::from_secs(300),
                server_pid,
            };
            let r = idle::run(&cfg, &device.file);
            print(a.json, &r, r.to_text())?;
            if !r.all_held() {
                return Err("not every connection was held and answered".into());
            }
            Ok(())
        }
        Command::Compare(a) => {
            let command_line = std::iter::once("target/release/pr-bench".to_string())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" ");
            let r = compare::run(&a, command_line)?;
            print!("{}", r.to_text());
            println!("results in {}", a.results.display());
            if let Some(doc) = &a.write_doc {
                report::write(&[r], doc)?;
                println!("wrote {}", doc.display());
            }
            Ok(())
        }
        Command::Emulate(a) => {
            let command_line = std::iter::once("target/release/pr-bench".to_string())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" ");
            let r = emulate::run(&a, command_line)?;
            print!("{}", r.to_markdown());
            println!("results in {}", a.results.display());
            Ok(())
        }
        Command::Report(a) => {
            let sets = a
                .results
                .iter()
                .map(|d| compare::load_results(d))
                .collect::<Result<Vec<_>, _>>()?;
            report::write(&sets, &a.doc)?;
            println!("wrote {}", a.doc.display());
            Ok(())
        }
    }
}
