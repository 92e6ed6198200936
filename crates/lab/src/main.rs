//! pr-lab: runs lab scenario files (lab/scenarios/*.scn) inside the lab guest, where LIO
//! provides real persistent-reservation devices, and prints one PASS/FAIL line per scenario.
//! `pr-lab check` only parses the files (the host's tests run it).
#![forbid(unsafe_code)]

mod emulate;
mod helpers;

/// A command that is killed if it runs longer than a minute: a device that hangs fails its
/// step instead of stalling the whole lab until the outer timeout.
pub(crate) fn bounded(program: &str) -> std::process::Command {
    let mut c = std::process::Command::new("timeout");
    c.args(["--kill-after=5", "60", program]);
    c
}
mod lio;
mod random;
mod run;
mod scenario;
mod sgp;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pr-lab",
    about = "Run the VM lab's scenario files (inside the lab guest)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Parse scenario files and report errors, without running anything.
    Check {
        #[arg(required = true, value_name = "SCENARIO")]
        files: Vec<PathBuf>,
    },
    /// Run scenario files against LIO (needs root, configfs, target_core_file and tcm_loop).
    Run {
        /// Directory holding pr-helper and pr-ctl.
        #[arg(long, value_name = "DIR")]
        bin_dir: PathBuf,
        /// QEMU's C helper, for differential scenarios.
        #[arg(long, default_value = "/usr/bin/qemu-pr-helper", value_name = "PATH")]
        c_helper: PathBuf,
        /// Print every step's result, not only those of failing scenarios.
        #[arg(short, long)]
        verbose: bool,
        /// `lio`: as the scenario says, our helper on LIO. `emulate`: every initiator through an
        /// emulate daemon of its own (its LIO TransportID and relative target port, one shared
        /// store), compared byte for byte with LIO's own answers on another LU; only the SPC-4
        /// departures listed in docs/emulation.md may differ. `target`: every initiator on the
        /// pr-target disk (vhost-user-scsi) whose socket is the nexus LIO names for it, the LU
        /// with serial `lab-NAME`, against LIO's answers on an LU of its own (lab/target-lio.sh).
        #[arg(long, value_enum, default_value = "lio", value_name = "WHAT")]
        against: AgainstArg,
        #[arg(required = true, value_name = "SCENARIO")]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AgainstArg {
    Lio,
    Emulate,
    Target,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Check { files } => {
            let mut bad = 0;
            for f in &files {
                match scenario::load(f) {
                    Ok(sc) => println!("ok {} ({} steps)", sc.name, sc.steps.len()),
                    Err(e) => {
                        bad += 1;
                        eprintln!("{e}");
                    }
                }
            }
            if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Run {
            bin_dir,
            c_helper,
            verbose,
            against,
            files,
        } => {
            let (against, suffix) = match against {
                AgainstArg::Lio => (emulate::Against::Lio, ""),
                AgainstArg::Emulate => (emulate::Against::Emulate, " against emulate"),
                AgainstArg::Target => (emulate::Against::Target, " against pr-target"),
            };
            // pr-target's sockets, named once for every scenario.
            let targets = match against {
                emulate::Against::Target => match target::Targets::discover() {
                    Ok(t) => {
                        println!("pr-target sockets: {}", t.describe());
                        Some(t)
                    }
                    Err(e) => {
                        println!("FAIL pr-target: {e}");
                        println!("LAB-SCENARIOS 0 1");
                        return ExitCode::FAILURE;
                    }
                },
                _ => None,
            };
            let bins = helpers::Binaries {
                ours: bin_dir.join("pr-helper"),
                pr_ctl: bin_dir.join("pr-ctl"),
                c_helper,
            };
            let (mut pass, mut fail) = (0, 0);
            for (index, f) in files.iter().enumerate() {
                let t0 = Instant::now();
                let sc = match scenario::load(f) {
                    Ok(sc) => sc,
                    Err(e) => {
                        fail += 1;
                        println!("FAIL {}: {e}", f.display());
                        continue;
                    }
                };
                match run::run(&sc, index + 1, &bins, against, targets.as_ref()) {
                    Ok(log) => {
                        pass += 1;
                        println!(
                            "PASS {}{suffix} ({} steps, {:.1} s)",
                            sc.name,
                            sc.steps.len(),
                            t0.elapsed().as_secs_f64()
                        );
                        if verbose {
                            log.iter().for_each(|l| println!("  | {l}"));
                        }
                    }
                    Err((log, e)) => {
                        fail += 1;
                        // One FAIL line; the detail follows as continuation lines, which
                        // lab/run also shows.
                        let mut lines = e.lines();
                        println!("FAIL {}{suffix}: {}", sc.name, lines.next().unwrap_or(""));
                        lines.for_each(|l| println!("  | {l}"));
                        log.iter().for_each(|l| println!("  | {l}"));
                    }
                }
            }
            println!("LAB-SCENARIOS {pass} {fail}");
            if fail == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
