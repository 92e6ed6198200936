//! pr-ctl: persistent reservations from the command line, through any helper that speaks
//! QEMU's pr-manager-helper protocol. The binary is a thin shell over [`run`].
#![forbid(unsafe_code)]

pub mod cli;
pub mod render;
pub mod request;
pub mod store;
pub mod values;

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use clap::CommandFactory;
use pr_client::{Client, Reply};
use pr_scsi::Status;
use serde_json::json;

use cli::{Cli, Command, KeyType, PreemptArgs, ReadArgs, Shell};
use render::{exit, exit_code, failure_json, failure_words, render_read};
use request::{Read, Write};
use values::{hex, parse_hex};

/// A failure before the device answered, with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

fn open_device(device: &Path, write: bool) -> Result<File, Failure> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(device)
        .map_err(|e| {
            let mode = if write { "read-write" } else { "read-only" };
            Failure::new(
                exit::FAILURE,
                format!("cannot open {} {mode}: {e}", device.display()),
            )
        })
}

fn execute(
    cli: &Cli,
    device: &Path,
    write: bool,
    cdb: &[u8; 16],
    params: &[u8],
) -> Result<Reply, Failure> {
    let dev = open_device(device, write)?;
    let mut client =
        Client::connect_with_timeout(&cli.socket, Some(Duration::from_secs(cli.timeout)))
            .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    client
        .execute(dev.as_fd(), cdb, params)
        .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))
}

/// What a command printed and how it ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

fn scsi_failure(cli: &Cli, device: &Path, what: &str, reply: &Reply) -> Outcome {
    Outcome {
        stdout: if cli.json {
            format!("{}\n", failure_json(reply))
        } else {
            String::new()
        },
        stderr: format!(
            "pr-ctl: {}: {what} failed: {}\n",
            device.display(),
            failure_words(reply)
        ),
        code: exit_code(reply.status),
    }
}

fn read(cli: &Cli, read: Read, device: &Path, maxlen: u16) -> Result<Outcome, Failure> {
    let reply = execute(cli, device, false, &read.cdb(maxlen), &[])?;
    let what = read.service_action().name();
    if reply.status != Status::GOOD {
        return Ok(scsi_failure(cli, device, what, &reply));
    }
    let r = render_read(read, &reply.data)
        .map_err(|e| Failure::new(exit::FAILURE, format!("{}: {e}", device.display())))?;
    Ok(Outcome {
        stdout: if cli.json {
            format!("{}\n", r.json)
        } else {
            r.human
        },
        ..Outcome::default()
    })
}

fn write(cli: &Cli, device: &Path, op: Write) -> Result<Outcome, Failure> {
    let (cdb, params) = op.request();
    let reply = execute(cli, device, true, &cdb, &params)?;
    let what = op.service_action().name();
    if reply.status != Status::GOOD {
        return Ok(scsi_failure(cli, device, what, &reply));
    }
    Ok(Outcome {
        stdout: if cli.json {
            format!(
                "{}\n",
                json!({"device": device.display().to_string(), "operation": what, "status": "GOOD"})
            )
        } else {
            format!("{}: {what}: done\n", device.display())
        },
        ..Outcome::default()
    })
}

fn raw(cli: &Cli, device: &Path, cdb: &[u8; 16], data: &[u8]) -> Result<Outcome, Failure> {
    let write = cdb[0] == pr_scsi::PERSISTENT_RESERVE_OUT;
    let reply = execute(cli, device, write, cdb, data)?;
    let out = json!({
        "status": reply.status.0,
        "sense": hex(&reply.sense),
        "data": hex(&reply.data),
    });
    Ok(Outcome {
        stdout: format!("{out}\n"),
        ..Outcome::default()
    })
}

/// What a device command sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Read { read: Read, maxlen: u16 },
    Write(Write),
    Raw { cdb: [u8; 16], data: Vec<u8> },
}

impl Operation {
    /// The CDB and parameter list on the wire.
    pub fn request(&self) -> ([u8; 16], Vec<u8>) {
        match self {
            Operation::Read { read, maxlen } => (read.cdb(*maxlen), Vec::new()),
            Operation::Write(w) => w.request(),
            Operation::Raw { cdb, data } => (*cdb, data.clone()),
        }
    }

    /// Whether the device must be opened read-write (PR OUT).
    pub fn writes(&self) -> bool {
        self.request().0[0] == pr_scsi::PERSISTENT_RESERVE_OUT
    }
}

fn raw_operation(cdb_hex: &str, data_hex: &str) -> Result<Operation, Failure> {
    let usage = |m: String| Failure::new(exit::USAGE, m);
    let bytes = parse_hex("--cdb", cdb_hex).map_err(usage)?;
    if bytes.is_empty() || bytes.len() > 16 {
        return Err(usage(format!(
            "--cdb must be 1 to 16 bytes, got {}",
            bytes.len()
        )));
    }
    let mut cdb = [0u8; 16];
    cdb[..bytes.len()].copy_from_slice(&bytes);
    let data = parse_hex("--data", data_hex).map_err(usage)?;
    Ok(Operation::Raw { cdb, data })
}

impl Command {
    /// The device and the operation, for the commands that talk to a device (not the store
    /// commands, completions or the man page).
    pub fn operation(&self) -> Result<Option<(&Path, Operation)>, Failure> {
        let rd = |read, a: &'_ ReadArgs| Operation::Read {
            read,
            maxlen: a.maxlen,
        };
        Ok(Some(match self {
            Command::Keys(a) => (a.device.as_path(), rd(Read::Keys, a)),
            Command::Reservation(a) => (a.device.as_path(), rd(Read::Reservation, a)),
            Command::Capabilities(a) => (a.device.as_path(), rd(Read::Capabilities, a)),
            Command::Status(a) => (a.device.as_path(), rd(Read::Status, a)),
            Command::Register {
                device,
                key,
                new_key,
                ignore_existing,
                aptpl,
                all_target_ports,
            } => (
                device.as_path(),
                Operation::Write(Write::Register {
                    key: *key,
                    new_key: *new_key,
                    ignore_existing: *ignore_existing,
                    aptpl: *aptpl,
                    all_target_ports: *all_target_ports,
                }),
            ),
            Command::Reserve(KeyType { device, key, rtype }) => (
                device.as_path(),
                Operation::Write(Write::Reserve {
                    key: *key,
                    rtype: *rtype,
                }),
            ),
            Command::Release(KeyType { device, key, rtype }) => (
                device.as_path(),
                Operation::Write(Write::Release {
                    key: *key,
                    rtype: *rtype,
                }),
            ),
            Command::Clear { device, key } => (
                device.as_path(),
                Operation::Write(Write::Clear { key: *key }),
            ),
            Command::Preempt(a) => (a.device.as_path(), Operation::Write(preempt(a, false))),
            Command::PreemptAbort(a) => (a.device.as_path(), Operation::Write(preempt(a, true))),
            Command::RegisterMove {
                device,
                key,
                new_key,
                rtype,
                transport_id,
                relative_target_port,
                unregister,
                aptpl,
            } => (
                device.as_path(),
                Operation::Write(Write::RegisterAndMove {
                    key: *key,
                    new_key: *new_key,
                    rtype: *rtype,
                    unregister: *unregister,
                    aptpl: *aptpl,
                    relative_target_port: *relative_target_port,
                    transport_id: transport_id.clone(),
                }),
            ),
            Command::Raw { device, cdb, data } => (device.as_path(), raw_operation(cdb, data)?),
            Command::Store(_) | Command::Completions { .. } | Command::Man => return Ok(None),
        }))
    }
}

fn preempt(a: &PreemptArgs, abort: bool) -> Write {
    Write::Preempt {
        key: a.key,
        victim: a.victim_key,
        rtype: a.rtype,
        abort,
    }
}

/// Runs one parsed command line.
pub fn run(cli: &Cli) -> Outcome {
    let result = match cli.command.operation() {
        Err(f) => Err(f),
        Ok(Some((device, Operation::Read { read: r, maxlen }))) => read(cli, r, device, maxlen),
        Ok(Some((device, Operation::Write(w)))) => write(cli, device, w),
        Ok(Some((device, Operation::Raw { cdb, data }))) => raw(cli, device, &cdb, &data),
        Ok(None) => match &cli.command {
            Command::Store(args) => store::run(args, cli.json),
            Command::Completions { shell } => Ok(Outcome {
                stdout: completions(*shell),
                ..Outcome::default()
            }),
            _ => Ok(Outcome {
                stdout: man_page(),
                ..Outcome::default()
            }),
        },
    };
    result.unwrap_or_else(|f| Outcome {
        stderr: format!("pr-ctl: {}\n", f.message),
        code: f.code,
        ..Outcome::default()
    })
}

/// The completion script for `shell`.
pub fn completions(shell: Shell) -> String {
    use clap_complete::Shell as S;
    let s = match shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
        Shell::Elvish => S::Elvish,
        Shell::Powershell => S::PowerShell,
    };
    let mut out = Vec::new();
    clap_complete::generate(s, &mut Cli::command(), "pr-ctl", &mut out);
    String::from_utf8(out).expect("completion scripts are UTF-8")
}

/// The man page, in roff, with a page section per subcommand appended (`pr-ctl store list`
/// and the other commands of a group each get their own).
pub fn man_page() -> String {
    let cmd = Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut out)
        .expect("rendering to memory cannot fail");
    man_sections(&mut out, &cmd, "pr-ctl");
    String::from_utf8(out).expect("man pages are UTF-8")
}

fn man_sections(out: &mut Vec<u8>, cmd: &clap::Command, prefix: &str) {
    for sub in cmd.get_subcommands() {
        let name = format!("{prefix} {}", sub.get_name());
        let _ = writeln!(out, ".SH \"{}\"", name.to_uppercase());
        let page = sub.clone().bin_name(&name);
        let mut section = Vec::new();
        let man = clap_mangen::Man::new(page);
        man.render_synopsis_section(&mut section)
            .and_then(|()| man.render_options_section(&mut section))
            .expect("rendering to memory cannot fail");
        // Subsections, not new top-level sections, under this command's heading.
        let section = String::from_utf8_lossy(&section).replace(".SH ", ".SS ");
        out.extend_from_slice(section.as_bytes());
        man_sections(out, sub, &name);
    }
}
