//! The command line, defined once: parsing, `--help`, the man page and shell completions all
//! come from these types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pr_scsi::transport_id::TransportId;
use pr_scsi::{RelativeTargetPort, ReservationKey, ReservationType};
use pr_store::LuId;

use crate::values::{parse_key, parse_lu, parse_relative_port, parse_transport_id, parse_type};

/// Default helper socket: the one qemu-pr-helper and libvirt use.
pub const DEFAULT_SOCKET: &str = "/var/run/qemu-pr-helper.sock";

/// Default store database: where pr-helper keeps the state of its emulated logical units.
pub const DEFAULT_STORE: &str = "/var/lib/pr-helper/reservations.db";

const AFTER_HELP: &str = "\
Every command opens DEVICE itself (read-write for changes, read-only for reads) and passes the
open descriptor to the helper, which runs the command on it: the helper serves only devices the
caller can open.

Keys: 0x1a2b or 1a2bh (hex), 6699 (decimal). Types: we, ea, we-ro, ea-ro, we-ar, ea-ar, their
long names (write-exclusive-registrants-only…), or codes 1, 3, 5, 6, 7, 8.

Exit status: 0 success; 1 helper, socket, device or store error; 2 usage error; 3 RESERVATION
CONFLICT; 4 CHECK CONDITION (the sense is printed in words); 5 another SCSI status (BUSY…).

Examples:
  pr-ctl keys /dev/sdb
  pr-ctl register /dev/sdb --new-key 0x1111
  pr-ctl reserve /dev/sdb --key 0x1111 --type we-ro
  pr-ctl --json reservation /dev/sdb
  pr-ctl preempt-abort /dev/sdb --key 0x2222 --victim-key 0x1111 --type we-ro
  pr-ctl store show naa.6001405a1b2c3d4e";

const STORE_AFTER_HELP: &str = "\
These commands open the store database itself (several processes may share it), so they need no
daemon and work while one runs: list, show and export read-only (a file you may only read will
do), power-cycle, clear and import read-write. Only import creates a missing database; the
other commands say it is missing. With --config FILE they work on the store that pr-helper's
or pr-target's configuration file selects, an etcd cluster shared by hosts included.

Export format: {\"format\": \"pr-helper-store-export\", \"version\": 1, \"logical_units\":
{\"<LU>\": <state>}}; import accepts exactly that, checks every state first and writes every
logical unit in one transaction: all of them, or none when one is wrong or the write fails.

Examples:
  pr-ctl store list
  pr-ctl store show naa.6001405a1b2c3d4e
  pr-ctl store export --output backup.json
  pr-ctl store clear naa.6001405a1b2c3d4e
  pr-ctl store import backup.json --dry-run
  pr-ctl store --config /etc/pr-target.toml list      # the store pr-target uses (etcd too)";

#[derive(Debug, Parser)]
#[command(
    name = "pr-ctl",
    version,
    about = "Inspect and change SCSI persistent reservations through a PR helper",
    long_about = "Inspect and change SCSI-3 persistent reservations through a persistent-reservation \
                  helper that speaks QEMU's pr-manager-helper protocol (pr-helper, or QEMU's \
                  qemu-pr-helper), without CAP_SYS_RAWIO.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Helper socket to talk to.
    #[arg(short = 's', long, global = true, env = "PR_HELPER_SOCKET",
          default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// Print reads (and results) as JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on the helper after this many seconds without an answer.
    #[arg(long, global = true, default_value_t = 120, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every read takes.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Device to read (a SCSI disk or sg node, e.g. /dev/sdb or /dev/sg1).
    #[arg(value_name = "DEVICE")]
    pub device: PathBuf,
    /// Allocation length: the most bytes the device may return (1-8192).
    #[arg(long, default_value_t = 8192, value_name = "BYTES",
          value_parser = clap::value_parser!(u16).range(1..=8192))]
    pub maxlen: u16,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the registered reservation keys (READ KEYS).
    Keys(ReadArgs),
    /// Show the reservation, if any (READ RESERVATION).
    Reservation(ReadArgs),
    /// Show what the device supports (REPORT CAPABILITIES).
    Capabilities(ReadArgs),
    /// Show every registration with its initiator and the holder (READ FULL STATUS).
    Status(ReadArgs),
    /// Register a key, change it, or unregister (--new-key 0) (REGISTER).
    Register {
        #[arg(value_name = "DEVICE")]
        device: PathBuf,
        /// The key this initiator holds now (0 or omitted when it is not registered).
        #[arg(short = 'k', long, value_parser = parse_key, default_value = "0")]
        key: ReservationKey,
        /// The key to register; 0 removes the registration.
        #[arg(short = 'n', long, value_parser = parse_key)]
        new_key: ReservationKey,
        /// Replace whatever key is registered (REGISTER AND IGNORE EXISTING KEY).
        #[arg(long)]
        ignore_existing: bool,
        /// Keep registrations and the reservation across power loss (APTPL).
        #[arg(long)]
        aptpl: bool,
        /// Register on every target port of the device (ALL_TG_PT).
        #[arg(long)]
        all_target_ports: bool,
    },
    /// Take a reservation (RESERVE).
    Reserve(KeyType),
    /// Give up the reservation (RELEASE).
    Release(KeyType),
    /// Remove every registration and the reservation (CLEAR).
    Clear {
        #[arg(value_name = "DEVICE")]
        device: PathBuf,
        /// This initiator's registered key.
        #[arg(short = 'k', long, value_parser = parse_key)]
        key: ReservationKey,
    },
    /// Remove another initiator's registration and take over its reservation (PREEMPT).
    Preempt(PreemptArgs),
    /// PREEMPT, also aborting the victim's outstanding commands (PREEMPT AND ABORT) — what
    /// Pacemaker's fence_scsi does to fence a node.
    PreemptAbort(PreemptArgs),
    /// Register another initiator and move the reservation to it (REGISTER AND MOVE).
    RegisterMove {
        #[arg(value_name = "DEVICE")]
        device: PathBuf,
        /// This initiator's key (it must hold the reservation).
        #[arg(short = 'k', long, value_parser = parse_key)]
        key: ReservationKey,
        /// The key to register for the destination initiator.
        #[arg(short = 'n', long, value_parser = parse_key)]
        new_key: ReservationKey,
        /// Reservation type, which must match the current reservation.
        #[arg(short = 't', long = "type", value_parser = parse_type, value_name = "TYPE")]
        rtype: ReservationType,
        /// The destination initiator: naa.<16 hex> or sas:0x<16 hex> (SAS), fc:0x<16 hex>, or an
        /// iSCSI name (iqn.…[,i,0x<ISID>]).
        #[arg(long, value_parser = parse_transport_id, value_name = "ID")]
        transport_id: TransportId,
        /// Relative target port through which the destination reaches the device.
        #[arg(long, value_parser = parse_relative_port, value_name = "PORT")]
        relative_target_port: RelativeTargetPort,
        /// Unregister this initiator after the move.
        #[arg(long)]
        unregister: bool,
        /// Keep the result across power loss (APTPL).
        #[arg(long)]
        aptpl: bool,
    },
    /// Send a raw CDB and print the reply as one line of JSON
    /// ({"status":N,"sense":"hex","data":"hex"}); for tests and debugging.
    Raw {
        /// Device to open and pass to the helper (read-write for PR OUT).
        #[arg(short = 'd', long, value_name = "DEVICE")]
        device: PathBuf,
        /// CDB in hex (1 to 16 bytes, padded with zeros to 16).
        #[arg(long, value_name = "HEX")]
        cdb: String,
        /// PR OUT parameter data in hex.
        #[arg(long, value_name = "HEX", default_value = "")]
        data: String,
    },
    /// Administer the store of emulated logical units directly (no daemon needed): list,
    /// show, power-cycle, clear, export and import their persistent-reservation state.
    Store(StoreArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff) to standard output: pr-ctl man > pr-ctl.1
    Man,
}

/// The store commands and the database they work on.
#[derive(Debug, Args)]
#[command(after_help = STORE_AFTER_HELP)]
pub struct StoreArgs {
    /// The store database (SQLite file) of the emulated logical units [default:
    /// $PR_HELPER_STORE, else /var/lib/pr-helper/reservations.db].
    #[arg(long = "store", global = true, value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// The store a configuration file selects instead: pr-helper's --config file (its
    /// [emulate] store) or pr-target's (its store), a SQLite file or an etcd cluster.
    #[arg(long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Shadows the global --socket, which means nothing here (the store commands open the
    /// database, not a helper): hidden from the store commands' help, refused when given.
    #[arg(short = 's', long = "socket", hide = true, value_name = "PATH",
          value_parser = not_for_the_store::<PathBuf>)]
    pub socket: Option<PathBuf>,
    /// Shadows the global --timeout, likewise.
    #[arg(long = "timeout", hide = true, value_name = "SECONDS",
          value_parser = not_for_the_store::<u64>)]
    pub timeout: Option<u64>,
    #[command(subcommand)]
    pub command: StoreCommand,
}

/// The value parser of the helper options shadowed in `pr-ctl store`: always refuses. (Their
/// fields hold the global options' values, which clap copies down; nothing reads them.)
fn not_for_the_store<T>(_: &str) -> Result<T, String> {
    Err(
        "the store commands open the store database (--store PATH) and talk to no helper; \
         --socket and --timeout are for the commands that do"
            .into(),
    )
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// List the logical units with a stored state, one line each.
    List,
    /// Show a logical unit's whole state: registrations with their I_T nexuses, the
    /// reservation, the PR generation, APTPL and the pending unit attentions.
    Show {
        /// The logical unit (its identifier in the store, e.g. naa.6001405…).
        #[arg(value_name = "LU", value_parser = parse_lu)]
        lu: LuId,
    },
    /// Act as if the logical unit lost power and came back: without APTPL (PTPL_A=0) every
    /// registration and the reservation are dropped; either way pending unit attentions are
    /// dropped and the PR generation restarts at 0.
    PowerCycle {
        /// The logical unit.
        #[arg(value_name = "LU", value_parser = parse_lu)]
        lu: LuId,
    },
    /// Remove the logical unit's stored state: registrations, reservation, unit attentions.
    Clear {
        /// The logical unit.
        #[arg(value_name = "LU", value_parser = parse_lu)]
        lu: LuId,
    },
    /// Write the state of logical units as JSON (every one when no LU is given).
    Export {
        /// The logical units to export.
        #[arg(value_name = "LU", value_parser = parse_lu)]
        lus: Vec<LuId>,
        /// Write to FILE instead of standard output.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Replace the state of every logical unit in an export file (- for standard input):
    /// all are checked before any is written.
    Import {
        /// The export file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Check the file and say what would change, without writing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

#[derive(Debug, Args)]
pub struct KeyType {
    #[arg(value_name = "DEVICE")]
    pub device: PathBuf,
    /// This initiator's registered key.
    #[arg(short = 'k', long, value_parser = parse_key)]
    pub key: ReservationKey,
    /// Reservation type (we, ea, we-ro, ea-ro, we-ar, ea-ar, a long name, or a code).
    #[arg(short = 't', long = "type", value_parser = parse_type, value_name = "TYPE")]
    pub rtype: ReservationType,
}

#[derive(Debug, Args)]
pub struct PreemptArgs {
    #[arg(value_name = "DEVICE")]
    pub device: PathBuf,
    /// This initiator's registered key.
    #[arg(short = 'k', long, value_parser = parse_key)]
    pub key: ReservationKey,
    /// The key to remove (the victim's).
    #[arg(short = 'v', long, value_parser = parse_key)]
    pub victim_key: ReservationKey,
    /// Reservation type to hold afterwards.
    #[arg(short = 't', long = "type", value_parser = parse_type, value_name = "TYPE")]
    pub rtype: ReservationType,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
