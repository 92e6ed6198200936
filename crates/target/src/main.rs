//! pr-target: parse the command line, load the configuration, open the logical units and
//! sockets, install the seccomp allow-list, serve, and on SIGTERM or SIGINT drain, flush and
//! exit 0.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pr_target::config::Config;
use pr_target::seccomp::{self, SeccompMode};
use pr_target::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

/// A vhost-user-scsi target whose every command obeys SCSI persistent reservations.
///
/// Each configured socket is one VM (one initiator, one I_T nexus); logical units are files
/// or block devices, and their reservations live in a store (a SQLite file, or an etcd
/// cluster shared by hosts: store = { kind = "etcd", endpoints = [...] }), so a VM that another
/// preempts can no longer write. Start QEMU with shared guest memory and, per socket:
///
///   -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
///   -chardev socket,id=c0,path=SOCKET -device vhost-user-scsi-pci,chardev=c0,num_queues=N
///
/// with N at most the socket's request_queues. See docs/target.md.
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// The configuration file (TOML: [[lu]] and [[socket]] tables; docs/target.md).
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// What the seccomp allow-list does with other system calls: kill (the default), log
    /// (allow and let the kernel log them, for debugging) or none (no filter).
    #[arg(long, value_enum, default_value = "kill")]
    seccomp: SeccompMode,
    /// Log filter (tracing-subscriber syntax), e.g. "info" or "pr_target=debug".
    #[arg(long, default_value = "info", env = "PR_TARGET_LOG")]
    log: String,
}

fn report(e: &dyn std::error::Error) {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    error!("{msg}");
    eprintln!("pr-target: {msg}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!(
            "{}: {} logical units, {} sockets",
            cli.config.display(),
            config.lus.len(),
            config.sockets.len()
        );
        return ExitCode::SUCCESS;
    }
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            report(&e);
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::start(&config) {
        Ok(s) => s,
        Err(e) => {
            report(&e);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = seccomp::install(cli.seccomp, config.uses_network_store()) {
        report(&e);
        return ExitCode::FAILURE;
    }
    if cfg!(feature = "bench-no-check") {
        warn!(
            "built with the bench-no-check feature: I/O is NOT checked against reservations \
             (a benchmark build; never serve VMs with it)"
        );
    }
    info!("ready: {} sockets", server.threads());
    let signal = signals.forever().next();
    info!("signal {signal:?}: draining");
    if server.shutdown() {
        info!("clean shutdown");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
