//! The command line: qemu-pr-helper's options, spelled the same, plus a few of our own.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

use crate::devices::{DeviceConfig, DeviceConfigError};

/// Default socket path, as qemu-pr-helper's.
pub const DEFAULT_SOCKET: &str = "/var/run/qemu-pr-helper.sock";
/// Default pidfile path, as qemu-pr-helper's.
pub const DEFAULT_PIDFILE: &str = "/var/run/qemu-pr-helper.pid";

const AFTER_HELP: &str = "\
QEMU connects with:  -object pr-manager-helper,id=pr0,path=SOCKET
and a device with:   -blockdev ...,file.pr-manager=pr0 -device scsi-block,...
libvirt (managed mode) runs `pr-helper -k <per-VM socket>`; set pr_helper in qemu.conf.

Started as root, pr-helper listens, then keeps only CAP_SYS_RAWIO (and CAP_SYS_ADMIN when the
block-layer or multipath backend needs it), switches to --user/--group,
drops supplementary groups, clears the capability bounding set and installs a seccomp filter.
Under systemd it accepts one socket-activated listener (LISTEN_FDS=1) and reports READY=1.

Examples:
  pr-helper -k /run/pr-helper.sock -u nobody -g nogroup -v
  pr-helper -d -f /run/pr-helper.pid -k /run/pr-helper.sock
  pr-helper -k /run/pr-helper.sock -u nobody -g nogroup --config /etc/pr-helper.toml

with /etc/pr-helper.toml emulating a disk on an etcd cluster shared by hosts
(docs/backends.md, docs/multi-host.md):
  [[device]]
  path = \"/dev/disk/by-id/wwn-0x6001405a1b2c3d4e5f60718293a4b5c6\"
  backend = \"emulate\"
  [emulate]
  initiator = \"iqn.2026-01.com.example:hv1-vm1\"
  [emulate.store]
  kind = \"etcd\"
  endpoints = [\"10.0.0.1:2379\", \"10.0.0.2:2379\", \"10.0.0.3:2379\"]
  host_id = \"hv1\"
  command_timeout_ms = 5000";

/// Persistent Reservation helper program for QEMU.
///
/// Executes SCSI PERSISTENT RESERVE IN/OUT commands on behalf of unprivileged QEMU processes,
/// which send the command together with an open descriptor of the device over a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "pr-helper", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// Run in the background (after creating the socket).
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,

    /// PID file, written when running as a daemon or when given. Locked while pr-helper runs.
    #[arg(short = 'f', long = "pidfile", value_name = "PATH")]
    pub pidfile: Option<PathBuf>,

    /// Path of the Unix socket to listen on (absolute). Not allowed with socket activation.
    #[arg(short = 'k', long = "socket", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// QEMU tracing options: [[enable=]<pattern>][,events=<file>][,file=<file>]. pr-helper maps
    /// them onto its log: a pattern turns on debug logging, file= sends the log to that file.
    #[arg(short = 'T', long = "trace", value_name = "OPTIONS")]
    pub trace: Option<String>,

    /// User to drop privileges to (name or number).
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,

    /// Group to drop privileges to (name or number).
    #[arg(short = 'g', long = "group", value_name = "GROUP")]
    pub group: Option<String>,

    /// More log output (repeatable: -v info per command, -vv debug per request, -vvv trace).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,

    /// Only log errors.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,

    /// Seccomp mode: kill (default) ends the process on a syscall outside the allow-list,
    /// log lets it through and logs it (for finding a missing syscall), none disables the filter.
    #[arg(long = "seccomp", value_enum, default_value_t = SeccompMode::Kill, value_name = "MODE")]
    pub seccomp: SeccompMode,

    /// SG_IO timeout per command, in seconds (the C helper's 1 ms is a bug).
    #[arg(long = "sgio-timeout", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub sgio_timeout: u32,

    /// Longest wait, in seconds, for a client that has started the handshake or a request to
    /// send the rest of it, or to take a reply. Idle connections between requests are never
    /// timed out: QEMU keeps its connection open for the life of the VM.
    #[arg(long = "io-timeout", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub io_timeout: u32,

    /// Device configuration (TOML): the backend per device (SG_IO passthrough, the block-layer
    /// PR ioctls, or reservations emulated in software on a store: a SQLite file of this host,
    /// or an etcd cluster shared by hosts), for devices it does not name, and whether
    /// dm-multipath maps go through libmpathpersist. Without it: SG_IO, the block-layer ioctls
    /// for NVMe namespaces, and libmpathpersist for multipath maps when device-mapper and
    /// multipath-tools are present. Format in docs/backends.md; an example below.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Most client connections served at once; further clients wait in the listen backlog.
    #[arg(long = "max-connections", value_name = "N", default_value_t = 16384,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Most busy connections served each by a thread of its own. Such a
    /// thread reads, runs and answers its connection's requests with blocking calls, so the
    /// kernel wakes exactly it (no hand-off per request); it ends after 200 ms without a
    /// request. The first busy connections, one per CPU (at most 4), always get one. Beyond
    /// those the daemon measures, while they are busy, whether a thread each or the poller
    /// threads (one per CPU, which go from one ready connection to the next without
    /// sleeping) serve them faster, and uses the faster: clients that block until each reply
    /// (as QEMU's) are served faster by threads, a client that drives many connections from
    /// one event loop by the pollers (docs/performance.md). 0: pollers only.
    #[arg(long = "connection-threads", value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub connection_threads: u32,
}

/// How the seccomp filter treats a syscall outside the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompMode {
    Kill,
    Log,
    None,
}

/// Where the listening socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSource {
    Path(PathBuf),
    /// systemd socket activation: fd 3.
    Activated,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub daemonize: bool,
    pub pidfile: Option<PathBuf>,
    pub socket: SocketSource,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub log_level: tracing::Level,
    pub trace_pattern: Option<String>,
    pub log_file: Option<PathBuf>,
    pub seccomp: SeccompMode,
    pub sgio_timeout: Duration,
    pub io_timeout: Duration,
    pub max_connections: usize,
    pub connection_threads: usize,
    pub devices: DeviceConfig,
}

/// A command line that cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("socket path must be absolute, got '{0}'")]
    RelativeSocket(String),
    #[error("invalid user '{0}': no such user name and not a number")]
    User(String),
    #[error("invalid group '{0}': no such group name and not a number")]
    Group(String),
    #[error("Unix socket can't be set when using socket activation")]
    SocketWithActivation,
    #[error("pr-helper does not support socket activation with LISTEN_FDS > 1 (got {0})")]
    TooManyActivatedSockets(u32),
    #[error("LISTEN_FDS='{0}' is not a number")]
    BadListenFds(String),
    #[error("--config: {0}")]
    Devices(#[from] DeviceConfigError),
    #[error(
        "invalid --trace option '{0}': expected [[enable=]<pattern>][,events=<file>][,file=<file>]"
    )]
    Trace(String),
}

fn resolve_user(s: &str) -> Result<u32, ConfigError> {
    match nix::unistd::User::from_name(s) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => s
            .parse::<u32>()
            .map_err(|_| ConfigError::User(s.to_string())),
    }
}

fn resolve_group(s: &str) -> Result<u32, ConfigError> {
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => s
            .parse::<u32>()
            .map_err(|_| ConfigError::Group(s.to_string())),
    }
}

/// Number of sockets systemd passed us, per sd_listen_fds(3): LISTEN_PID must be our pid.
fn activated_sockets() -> Result<u32, ConfigError> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !pid_ok {
        return Ok(0);
    }
    match std::env::var("LISTEN_FDS") {
        Ok(v) => v.parse::<u32>().map_err(|_| ConfigError::BadListenFds(v)),
        Err(_) => Ok(0),
    }
}

/// Parses QEMU's -T syntax into (pattern, file).
fn parse_trace(s: &str) -> Result<(Option<String>, Option<PathBuf>), ConfigError> {
    let mut pattern = None;
    let mut file = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("enable", p)) if !p.is_empty() => pattern = Some(p.to_string()),
            Some(("file", f)) if !f.is_empty() => file = Some(PathBuf::from(f)),
            Some(("events", f)) if !f.is_empty() => {}
            None if !part.is_empty() => pattern = Some(part.to_string()),
            _ => return Err(ConfigError::Trace(s.to_string())),
        }
    }
    Ok((pattern, file))
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Config, ConfigError> {
        if let Some(p) = &cli.socket {
            if !p.is_absolute() {
                return Err(ConfigError::RelativeSocket(p.display().to_string()));
            }
        }
        let socket = match (activated_sockets()?, cli.socket) {
            (0, path) => SocketSource::Path(path.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))),
            (1, None) => SocketSource::Activated,
            (1, Some(_)) => return Err(ConfigError::SocketWithActivation),
            (n, _) => return Err(ConfigError::TooManyActivatedSockets(n)),
        };
        let uid = cli.user.as_deref().map(resolve_user).transpose()?;
        let gid = cli.group.as_deref().map(resolve_group).transpose()?;
        let (trace_pattern, log_file) = match cli.trace.as_deref() {
            Some(t) => parse_trace(t)?,
            None => (None, None),
        };
        // qemu-pr-helper: loglevel starts at 1, each -v adds one; -q silences.
        let log_level = if cli.quiet {
            tracing::Level::ERROR
        } else if trace_pattern.is_some() {
            tracing::Level::DEBUG
        } else {
            match cli.verbose {
                0 => tracing::Level::WARN,
                1 => tracing::Level::INFO,
                2 => tracing::Level::DEBUG,
                _ => tracing::Level::TRACE,
            }
        };
        let pidfile = match (cli.pidfile, cli.daemon) {
            (Some(p), _) => Some(p),
            (None, true) => Some(PathBuf::from(DEFAULT_PIDFILE)),
            (None, false) => None,
        };
        let devices = match &cli.config {
            Some(path) => DeviceConfig::load(path)?,
            None => DeviceConfig::default(),
        };
        Ok(Config {
            daemonize: cli.daemon,
            pidfile,
            socket,
            uid,
            gid,
            log_level,
            trace_pattern,
            log_file,
            seccomp: cli.seccomp,
            sgio_timeout: Duration::from_secs(cli.sgio_timeout.into()),
            io_timeout: Duration::from_secs(cli.io_timeout.into()),
            max_connections: cli.max_connections as usize,
            connection_threads: cli.connection_threads as usize,
            devices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration shown in --help is accepted (its device path, which exists on no test
    /// machine, replaced by a device number and a name).
    #[test]
    fn the_example_configuration_in_help_is_valid() {
        let (_, example) = AFTER_HELP
            .split_once("(docs/backends.md, docs/multi-host.md):\n")
            .unwrap();
        let text: String = example
            .lines()
            .map(|l| match l.trim() {
                l if l.starts_with("path = ") => "dev = \"7:0\"\nlu = \"disk0\"\n".to_string(),
                l => format!("{l}\n"),
            })
            .collect();
        let c = crate::devices::DeviceConfig::parse(&text, std::path::Path::new("/etc/x.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(c.emulate.store.is_networked());
        assert!(c.configures_emulate());
    }

    /// The man page is generated from this definition; the committed copy must match.
    /// `PR_UPDATE_MAN=1 cargo test -p pr-helper man_page` rewrites it.
    #[test]
    fn man_page_is_current() {
        use clap::CommandFactory;
        let mut out = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .section("8")
            .render(&mut out)
            .unwrap();
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/man/pr-helper.8");
        if std::env::var_os("PR_UPDATE_MAN").is_some() {
            std::fs::write(&path, &out).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == out,
            "docs/man/pr-helper.8 is stale: PR_UPDATE_MAN=1 cargo test -p pr-helper man_page"
        );
    }

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["pr-helper"];
        v.extend_from_slice(args);
        Config::try_from(Cli::try_parse_from(v).expect("clap accepts"))
    }

    #[test]
    fn defaults_are_qemu_pr_helpers() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            c.socket,
            SocketSource::Path(PathBuf::from("/var/run/qemu-pr-helper.sock"))
        );
        assert_eq!(c.pidfile, None);
        let c = parse(&["-d"]).unwrap();
        assert_eq!(
            c.pidfile,
            Some(PathBuf::from("/var/run/qemu-pr-helper.pid"))
        );
    }

    #[test]
    fn socket_must_be_absolute() {
        let e = parse(&["-k", "rel.sock"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "socket path must be absolute, got 'rel.sock'"
        );
        assert!(parse(&["--socket=/tmp/x.sock"]).is_ok());
    }

    #[test]
    fn users_and_groups_by_name_or_number() {
        let c = parse(&["-u", "root", "-g", "0"]).unwrap();
        assert_eq!((c.uid, c.gid), (Some(0), Some(0)));
        let c = parse(&["-u", "4242"]).unwrap();
        assert_eq!(c.uid, Some(4242));
        assert!(matches!(
            parse(&["-u", "no-such-user-xyz"]),
            Err(ConfigError::User(_))
        ));
        assert!(matches!(
            parse(&["-g", "no-such-group-xyz"]),
            Err(ConfigError::Group(_))
        ));
    }

    #[test]
    fn verbosity() {
        assert_eq!(parse(&["-vv"]).unwrap().log_level, tracing::Level::DEBUG);
        assert_eq!(
            parse(&["-v", "-q"]).unwrap().log_level,
            tracing::Level::ERROR
        );
    }

    #[test]
    fn trace_option() {
        let c = parse(&["-T", "enable=pr_*,file=/tmp/log"]).unwrap();
        assert_eq!(c.trace_pattern.as_deref(), Some("pr_*"));
        assert_eq!(c.log_file, Some(PathBuf::from("/tmp/log")));
        assert!(parse(&["-T", "bogus=1"]).is_err());
    }
}
