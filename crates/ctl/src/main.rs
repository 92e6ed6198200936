//! pr-ctl: drive a persistent-reservation helper from the command line.
#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pr_client::Client;

/// Default helper socket (qemu-pr-helper's default).
const DEFAULT_SOCKET: &str = "/var/run/qemu-pr-helper.sock";

/// Exit codes: 0 success, 1 usage or connection error.
#[derive(Debug, Parser)]
#[command(
    name = "pr-ctl",
    version,
    about = "Inspect and change SCSI persistent reservations through a PR helper"
)]
struct Cli {
    /// Helper socket to talk to.
    #[arg(short = 's', long, global = true, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send a raw CDB with parameter data and print the reply as one line of JSON
    /// ({"status":N,"sense":"hex","data":"hex"}).
    Raw {
        /// Device to open and pass to the helper (read-write for PR OUT, read-only for PR IN).
        #[arg(short = 'd', long, value_name = "DEVICE")]
        device: PathBuf,
        /// CDB in hex (10 or 16 bytes; padded with zeros to 16).
        #[arg(long, value_name = "HEX")]
        cdb: String,
        /// PR OUT parameter data in hex.
        #[arg(long, value_name = "HEX", default_value = "")]
        data: String,
    },
}

fn parse_hex(what: &str, s: &str) -> Result<Vec<u8>, String> {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if !clean.len().is_multiple_of(2) {
        return Err(format!("{what} '{s}' has an odd number of hex digits"));
    }
    (0..clean.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&clean[i..i + 2], 16).map_err(|_| format!("{what} '{s}' is not hex"))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn raw(socket: &PathBuf, device: &PathBuf, cdb_hex: &str, data_hex: &str) -> Result<(), String> {
    let cdb_bytes = parse_hex("--cdb", cdb_hex)?;
    if cdb_bytes.is_empty() || cdb_bytes.len() > 16 {
        return Err(format!(
            "--cdb must be 1 to 16 bytes, got {}",
            cdb_bytes.len()
        ));
    }
    let mut cdb = [0u8; 16];
    cdb[..cdb_bytes.len()].copy_from_slice(&cdb_bytes);
    let data = parse_hex("--data", data_hex)?;
    let write = cdb[0] == pr_scsi::PERSISTENT_RESERVE_OUT;
    let dev = OpenOptions::new()
        .read(true)
        .write(write)
        .open(device)
        .map_err(|e| format!("cannot open {}: {e}", device.display()))?;
    let mut client = Client::connect(socket).map_err(|e| e.to_string())?;
    let reply = client
        .execute(dev.as_fd(), &cdb, &data)
        .map_err(|e| e.to_string())?;
    let out = serde_json::json!({
        "status": reply.status.0,
        "sense": hex(&reply.sense),
        "data": hex(&reply.data),
    });
    println!("{out}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Raw { device, cdb, data } => raw(&cli.socket, device, cdb, data),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pr-ctl: {e}");
            ExitCode::from(1)
        }
    }
}
