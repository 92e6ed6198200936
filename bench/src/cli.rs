//! Command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::device::FdKind;
use crate::mix::Mix;

/// Load generator and benchmark runner for persistent-reservation helpers (ours and QEMU's).
#[derive(Debug, Parser)]
#[command(name = "pr-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drive one helper socket with N concurrent clients and report throughput and latency.
    Run(RunArgs),
    /// Open and hold N idle connections; report the server's memory per connection.
    Idle(IdleArgs),
    /// Start QEMU's C helper and ours, run the same sweep against both, print the ratios.
    Compare(CompareArgs),
    /// The emulate backend (SQLite store; --store sqlite,etcd adds the etcd store) on a loop
    /// device against the passthrough path: PR IN and durable PR OUT requests/s, and group
    /// commit against one fsync per command.
    Emulate(crate::emulate::EmulateArgs),
    /// Regenerate docs/performance.md (and its plot) from a results directory.
    Report(ReportArgs),
}

/// The descriptor sent with every request.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Kind of descriptor: a scratch regular file, a loop device over a scratch image, or the
    /// path given with --device.
    #[arg(long = "fd-kind", value_enum, default_value_t = KindArg::File)]
    pub kind: KindArg,
    /// A device to send (an LIO disk, an sg node...); implies --fd-kind path.
    #[arg(long, value_name = "PATH")]
    pub device: Option<PathBuf>,
    /// Where scratch files go.
    #[arg(long, value_name = "DIR", default_value = "/tmp")]
    pub scratch_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    File,
    Loop,
    Path,
}

impl DeviceArgs {
    pub fn fd_kind(&self) -> Result<FdKind, String> {
        match (&self.device, self.kind) {
            (Some(p), KindArg::Path | KindArg::File) => Ok(FdKind::Path(p.clone())),
            (Some(_), KindArg::Loop) => Err("--device and --fd-kind loop conflict".into()),
            (None, KindArg::Path) => Err("--fd-kind path needs --device PATH".into()),
            (None, KindArg::File) => Ok(FdKind::File),
            (None, KindArg::Loop) => Ok(FdKind::Loop),
        }
    }
}

/// How the load generator drives the clients.
#[derive(Debug, Clone, Args)]
pub struct GeneratorArgs {
    /// `events`: a few threads drive all connections through epoll, one sendmsg per request
    /// (cheap: the helper gets the CPU). `threads`: one blocking thread per client, writing as
    /// QEMU does (costs a thread wake-up per reply, which on a small machine loads the
    /// generator more than the helper). Both keep one request in flight per client.
    #[arg(long = "generator", value_enum, default_value_t = GeneratorKind::Events)]
    pub generator_kind: GeneratorKind,
    /// Threads of the event-driven generator.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub generator_threads: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GeneratorKind {
    Events,
    Threads,
}

impl GeneratorArgs {
    pub fn generator(&self) -> crate::load::Generator {
        match self.generator_kind {
            GeneratorKind::Events => crate::load::Generator::Events {
                threads: self.generator_threads,
            },
            GeneratorKind::Threads => crate::load::Generator::Threads,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The helper's socket.
    #[arg(long, short = 'k', value_name = "PATH")]
    pub socket: PathBuf,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub clients: u32,
    /// Run for this many seconds.
    #[arg(long, value_name = "SECONDS", conflicts_with = "count", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Send this many requests in total.
    #[arg(long, value_name = "K")]
    pub count: Option<u64>,
    /// Hard limit on the run's length in seconds, whatever --count says.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub max_duration: Duration,
    /// Request mix: service actions with weights (read-keys, read-reservation,
    /// report-capabilities, read-full-status; register, reserve, release, clear, preempt,
    /// preempt-abort, register-ignore, register-move, replace-lost).
    #[arg(long, default_value = "read-keys:3,read-reservation:1,register:1")]
    pub mix: Mix,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub generator: GeneratorArgs,
    /// The server's pid (for RSS and fd counts); found from the socket when not given.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Longest wait for one reply, in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub io_timeout: Duration,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[arg(long, short = 'k', value_name = "PATH")]
    pub socket: PathBuf,
    /// Idle connections to open and hold.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub io_timeout: Duration,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Our daemon (default: pr-helper next to this executable).
    #[arg(long, value_name = "PATH")]
    pub ours: Option<PathBuf>,
    /// QEMU's C helper.
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/qemu-pr-helper")]
    pub theirs: PathBuf,
    /// Client counts to sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256,1000")]
    pub clients: Vec<u32>,
    /// Seconds per measurement.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_seconds)]
    pub duration: Duration,
    /// Repetitions of the sweep; helpers alternate within each and the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    #[arg(long, default_value = "read-keys:3,read-reservation:1,register:1")]
    pub mix: Mix,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub generator: GeneratorArgs,
    /// Idle connections to hold against each helper (0 to skip).
    #[arg(long, default_value_t = 10_000)]
    pub idle_connections: u32,
    /// Extra arguments for our daemon (e.g. "--seccomp=none"), space-separated.
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub ours_args: String,
    /// Environment for our daemon, KEY=VALUE, repeatable (e.g. MALLOC_ARENA_MAX=16, see
    /// docs/performance.md).
    #[arg(long, value_name = "KEY=VALUE")]
    pub ours_env: Vec<String>,
    /// Directory for results.json, the plot and the helpers' logs.
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    pub results: PathBuf,
    /// Also regenerate this report from the results.
    #[arg(long, value_name = "PATH")]
    pub write_doc: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Results directories (each with results.json), e.g. one per fd kind.
    #[arg(long, value_name = "DIR", required = true, num_args = 1..)]
    pub results: Vec<PathBuf>,
    /// The report to (re)write; text between the hand-written markers is kept.
    #[arg(long, value_name = "PATH", default_value = "docs/performance.md")]
    pub doc: PathBuf,
}

/// Seconds, fractional allowed ("2", "0.5").
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v > 0.0 && v <= 3600.0) {
        return Err(format!("{s} is outside 0 < seconds ≤ 3600"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pr-bench").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_arguments() {
        let c = parse(&[
            "run",
            "--socket",
            "/s",
            "--clients",
            "16",
            "--duration",
            "2.5",
            "--mix",
            "read-keys:3,register:1",
            "--fd-kind",
            "loop",
            "--json",
        ])
        .unwrap();
        let Command::Run(r) = c.command else {
            panic!("not run")
        };
        assert_eq!(r.clients, 16);
        assert_eq!(r.duration, Some(Duration::from_millis(2500)));
        assert_eq!(r.count, None);
        assert_eq!(r.mix.entries.len(), 2);
        assert_eq!(r.device.fd_kind(), Ok(FdKind::Loop));
        assert!(r.json);
    }

    #[test]
    fn run_rejects_bad_input() {
        assert!(parse(&["run", "--socket", "/s", "--duration", "1", "--count", "5"]).is_err());
        assert!(parse(&["run", "--socket", "/s", "--clients", "0"]).is_err());
        assert!(parse(&["run", "--socket", "/s", "--mix", "nonsense"]).is_err());
        assert!(parse(&["run", "--socket", "/s", "--duration", "-1"]).is_err());
        assert!(parse(&["run", "--clients", "1"]).is_err());
    }

    #[test]
    fn device_selection() {
        let c = parse(&["idle", "-k", "/s", "--device", "/dev/sdb"]).unwrap();
        let Command::Idle(i) = c.command else {
            panic!("not idle")
        };
        assert_eq!(i.connections, 10_000);
        assert_eq!(i.device.fd_kind(), Ok(FdKind::Path("/dev/sdb".into())));
        let c = parse(&["idle", "-k", "/s", "--fd-kind", "path"]).unwrap();
        let Command::Idle(i) = c.command else {
            panic!("not idle")
        };
        assert!(i.device.fd_kind().is_err());
    }

    #[test]
    fn compare_defaults_and_lists() {
        let c = parse(&["compare"]).unwrap();
        let Command::Compare(a) = c.command else {
            panic!("not compare")
        };
        assert_eq!(a.clients, vec![1, 16, 64, 256, 1000]);
        assert_eq!(a.rounds, 3);
        assert_eq!(a.idle_connections, 10_000);
        let c = parse(&[
            "compare",
            "--clients",
            "1,8",
            "--ours-args",
            "--seccomp=none",
        ])
        .unwrap();
        let Command::Compare(a) = c.command else {
            panic!("not compare")
        };
        assert_eq!(a.clients, vec![1, 8]);
        assert_eq!(a.ours_args, "--seccomp=none");
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_seconds("0.25s"), Ok(Duration::from_millis(250)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("abc").is_err());
    }
}
