//! The `emulate` descriptor kind: a loop device served by our daemon's `emulate` backend
//! (the SPC-4 engine on the SQLite store) measured against the same loop device on the
//! passthrough path (SG_IO, which the loop driver fails with EINVAL: the cheapest a reply
//! through a device can be), and durable PR OUT group-committed against one fsync per command.
//!
//! Three daemons run side by side on one loop device: `passthrough` (no `--config`),
//! `emulate` (the device emulated, default group commit) and `emulate-fsync-each` (the same
//! with `max_batch = 1`: one transaction and one fsync per command), each emulated one on a
//! store of its own in the scratch directory. Two workloads: PR IN (READ KEYS) and durable PR
//! OUT (REGISTER AND IGNORE EXISTING KEY, which changes the state every time: the PR
//! generation grows, so every command is written and fsynced before its reply). The helpers
//! alternate within each step and the medians over rounds are reported, with the load average
//! of the machine while measuring.
//!
//! `--store sqlite,etcd` adds a fourth daemon, `emulate-etcd`: the same device emulated on an
//! etcd store (a 3-member cluster on loopback started here with pr-store-etcd's harness, or
//! `--etcd-endpoints`), so etcd and SQLite are compared in the same run.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::cli::{parse_seconds, GeneratorArgs};
use crate::compare::HelperProcess;
use crate::device::{Device, FdKind};
use crate::load::{self, LoadConfig, RunResult, Stop};
use crate::mix::Mix;
use crate::procinfo::Machine;
use crate::stats::median;

pub const PASSTHROUGH: &str = "passthrough";
pub const EMULATE: &str = "emulate";
pub const FSYNC_EACH: &str = "emulate-fsync-each";
pub const EMULATE_ETCD: &str = "emulate-etcd";

/// A store the emulated device can be measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// pr-store's SQLite file in --scratch-dir (the `emulate` and `emulate-fsync-each`
    /// daemons).
    Sqlite,
    /// An etcd cluster (the `emulate-etcd` daemon).
    Etcd,
}

/// The workloads, by name and mix.
pub const PR_IN: &str = "pr-in";
pub const PR_OUT: &str = "pr-out";

fn mix_of(workload: &str) -> Mix {
    match workload {
        PR_IN => "read-keys:1".parse().expect("a valid mix"),
        _ => "register-ignore:1".parse().expect("a valid mix"),
    }
}

#[derive(Debug, Clone, Args)]
pub struct EmulateArgs {
    /// Our daemon (default: pr-helper next to this executable).
    #[arg(long, value_name = "PATH")]
    pub ours: Option<PathBuf>,
    /// Client counts to sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<u32>,
    /// Seconds per measurement.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_seconds)]
    pub duration: Duration,
    /// Repetitions of the sweep; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// The stores to measure the emulated device on, side by side in the same run.
    #[arg(
        long = "store",
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite"
    )]
    pub stores: Vec<StoreKind>,
    /// With --store etcd: the client URLs of an existing cluster (default: a 3-member cluster
    /// on loopback, started for the run with Debian's etcd-server, data in a temporary
    /// directory).
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub etcd_endpoints: Vec<String>,
    /// Where the loop device's image and the stores go: the stores' fsync is what durable
    /// PR OUT costs, so use the file system a real store would live on (not a tmpfs).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    pub scratch_dir: PathBuf,
    #[command(flatten)]
    pub generator: GeneratorArgs,
    /// Directory for results.json, summary.txt and the daemons' logs.
    #[arg(long, value_name = "DIR", default_value = "bench/results/emulate")]
    pub results: PathBuf,
}

/// One measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmulateRun {
    pub helper: String,
    pub workload: String,
    pub round: u32,
    /// The 1-minute load average when the measurement started (/proc/loadavg).
    pub load_average: f64,
    pub result: RunResult,
}

/// Medians over the rounds for one helper, workload and client count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmulatePoint {
    pub helper: String,
    pub workload: String,
    pub clients: u32,
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Replies with status GOOD over all rounds, and all replies.
    pub good: u64,
    pub replies: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmulateResults {
    pub machine: Machine,
    pub command: String,
    pub started_unix: u64,
    pub device: String,
    pub scratch_dir: String,
    pub generator: String,
    pub duration_s: f64,
    pub rounds: u32,
    pub program: String,
    /// The stores measured, and the etcd cluster's endpoints when etcd was one.
    #[serde(default)]
    pub stores: Vec<StoreKind>,
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
    /// `uptime`'s load averages (1, 5, 15 min) before and after the sweep.
    pub load_before: String,
    pub load_after: String,
    pub runs: Vec<EmulateRun>,
    pub summary: Vec<EmulatePoint>,
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn load1() -> f64 {
    loadavg()
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

impl EmulateResults {
    fn summarise(&mut self) {
        let mut keys: Vec<(String, String, u32)> = self
            .runs
            .iter()
            .map(|r| (r.helper.clone(), r.workload.clone(), r.result.clients))
            .collect();
        keys.sort();
        keys.dedup();
        self.summary = keys
            .into_iter()
            .filter_map(|(helper, workload, clients)| {
                let rs: Vec<&RunResult> = self
                    .runs
                    .iter()
                    .filter(|r| {
                        r.helper == helper && r.workload == workload && r.result.clients == clients
                    })
                    .map(|r| &r.result)
                    .collect();
                let m = |f: &dyn Fn(&RunResult) -> f64| {
                    median(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
                };
                Some(EmulatePoint {
                    requests_per_s: m(&|r| r.requests_per_s)?,
                    p50_us: m(&|r| r.latency.p50_us)?,
                    p99_us: m(&|r| r.latency.p99_us)?,
                    good: rs
                        .iter()
                        .map(|r| r.statuses.get("GOOD").copied().unwrap_or(0))
                        .sum(),
                    replies: rs.iter().map(|r| r.statuses.values().sum::<u64>()).sum(),
                    errors: rs.iter().map(|r| r.errors).sum(),
                    helper,
                    workload,
                    clients,
                })
            })
            .collect();
    }

    pub fn point(&self, helper: &str, workload: &str, clients: u32) -> Option<&EmulatePoint> {
        self.summary
            .iter()
            .find(|p| p.helper == helper && p.workload == workload && p.clients == clients)
    }

    fn rate(&self, helper: &str, workload: &str, clients: u32) -> Option<f64> {
        Some(self.point(helper, workload, clients)?.requests_per_s)
    }

    /// Group-committed ÷ one fsync per command, durable PR OUT/s at `clients`.
    pub fn group_commit_gain(&self, clients: u32) -> Option<f64> {
        let g = self.rate(EMULATE, PR_OUT, clients)?;
        let s = self.rate(FSYNC_EACH, PR_OUT, clients)?;
        (s > 0.0).then(|| g / s)
    }

    /// etcd ÷ SQLite (group-committed) requests/s for `workload` at `clients`, same run.
    pub fn etcd_ratio(&self, workload: &str, clients: u32) -> Option<f64> {
        let e = self.rate(EMULATE_ETCD, workload, clients)?;
        let s = self.rate(EMULATE, workload, clients)?;
        (s > 0.0).then(|| e / s)
    }

    /// Markdown tables and the verdicts.
    pub fn to_markdown(&self) -> String {
        let mut clients: Vec<u32> = self.summary.iter().map(|p| p.clients).collect();
        clients.sort_unstable();
        clients.dedup();
        let f = |x: Option<f64>| x.map_or("–".into(), |v| format!("{v:.0}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "–".into(),
        };
        let mut t = format!(
            "{}, stores in {}, {} generator, {} s per point, {} rounds, medians; \
             load average (1/5/15 min) {} before, {} after.\n\n",
            self.device,
            self.scratch_dir,
            self.generator,
            self.duration_s,
            self.rounds,
            self.load_before,
            self.load_after
        );
        if self.stores.contains(&StoreKind::Etcd) {
            t.push_str(&format!(
                "etcd store: a 3-member cluster at {} (daemon `{EMULATE_ETCD}`), next to the \
                 SQLite store (daemon `{EMULATE}`, group-committed) in the same run.\n\n\
                 | clients | PR IN SQLite req/s | PR IN etcd req/s | etcd ÷ SQLite | PR IN \
                 SQLite p50 / p99 µs | PR IN etcd p50 / p99 µs | durable PR OUT SQLite req/s \
                 | durable PR OUT etcd req/s | etcd ÷ SQLite | PR OUT SQLite p50 / p99 µs | PR \
                 OUT etcd p50 / p99 µs |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
                self.etcd_endpoints.join(", ")
            ));
            let lat = |h: &str, w: &str, c: u32| {
                self.point(h, w, c).map_or("–".into(), |p| {
                    format!("{:.0} / {:.0}", p.p50_us, p.p99_us)
                })
            };
            for &c in &clients {
                let (sin, ein) = (
                    self.rate(EMULATE, PR_IN, c),
                    self.rate(EMULATE_ETCD, PR_IN, c),
                );
                let (sout, eout) = (
                    self.rate(EMULATE, PR_OUT, c),
                    self.rate(EMULATE_ETCD, PR_OUT, c),
                );
                t.push_str(&format!(
                    "| {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    f(sin),
                    f(ein),
                    ratio(ein, sin),
                    lat(EMULATE, PR_IN, c),
                    lat(EMULATE_ETCD, PR_IN, c),
                    f(sout),
                    f(eout),
                    ratio(eout, sout),
                    lat(EMULATE, PR_OUT, c),
                    lat(EMULATE_ETCD, PR_OUT, c),
                ));
            }
            t.push('\n');
        }
        t.push_str(
            "| clients | PR IN passthrough req/s | PR IN emulate req/s | emulate ÷ passthrough \
             | PR OUT passthrough req/s | durable PR OUT, one fsync each | durable PR OUT, \
             group-committed | group-commit gain |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for &c in &clients {
            let pin = self.rate(PASSTHROUGH, PR_IN, c);
            let ein = self.rate(EMULATE, PR_IN, c);
            let pout = self.rate(PASSTHROUGH, PR_OUT, c);
            let single = self.rate(FSYNC_EACH, PR_OUT, c);
            let group = self.rate(EMULATE, PR_OUT, c);
            t.push_str(&format!(
                "| {c} | {} | {} | {} | {} | {} | {} | {} |\n",
                f(pin),
                f(ein),
                ratio(ein, pin),
                f(pout),
                f(single),
                f(group),
                ratio(group, single)
            ));
        }
        t.push_str("\n| helper | workload | clients | p50 µs | p99 µs | GOOD / replies | errors |\n|---|---|---:|---:|---:|---:|---:|\n");
        for p in &self.summary {
            t.push_str(&format!(
                "| {} | {} | {} | {:.1} | {:.1} | {} / {} | {} |\n",
                p.helper, p.workload, p.clients, p.p50_us, p.p99_us, p.good, p.replies, p.errors
            ));
        }
        let best_in = clients
            .iter()
            .filter_map(|&c| self.rate(EMULATE, PR_IN, c))
            .fold(f64::NAN, f64::max);
        t.push_str(&format!(
            "\nGoal PR IN ≥ 100k requests/s: best {:.0} ({}). Goal group-committed PR OUT ≥ \
             10× one fsync per command at 64 clients: {}.\n",
            best_in,
            if best_in >= 100_000.0 {
                "met"
            } else {
                "missed"
            },
            self.group_commit_gain(64)
                .map_or("not measured".into(), |g| format!(
                    "{g:.1}× ({})",
                    if g >= 10.0 { "met" } else { "missed" }
                ))
        ));
        t
    }
}

/// Runs the sweep and writes results.json and summary.md to `args.results`.
pub fn run(args: &EmulateArgs, command_line: String) -> Result<EmulateResults, String> {
    crate::procinfo::raise_nofile(65_536);
    fs::create_dir_all(&args.results)
        .map_err(|e| format!("cannot create {}: {e}", args.results.display()))?;
    let results_dir = fs::canonicalize(&args.results).map_err(|e| e.to_string())?;
    let ours = match &args.ours {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("pr-helper"),
    };
    let ours = fs::canonicalize(&ours).map_err(|e| format!("{}: {e}", ours.display()))?;
    let tmp = args
        .scratch_dir
        .join(format!("pr-bench-emulate-{}", std::process::id()));
    fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let result = run_in(args, command_line, &ours, &tmp, &results_dir);
    let _ = fs::remove_dir_all(&tmp);
    result
}

/// The `--config` of an emulating daemon.
fn config(device: &Path, store: &Path, max_batch: Option<usize>) -> String {
    let mut c = format!(
        "[[device]]\npath = {:?}\nbackend = \"emulate\"\nlu = \"pr-bench\"\n\n[emulate]\nstore = {:?}\n",
        device.display().to_string(),
        store.display().to_string()
    );
    if let Some(b) = max_batch {
        c.push_str(&format!("max_batch = {b}\n"));
    }
    c
}

/// The `--config` of the daemon emulating the device on etcd.
fn etcd_config(device: &Path, endpoints: &[String]) -> String {
    let list = endpoints
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[device]]\npath = {:?}\nbackend = \"emulate\"\nlu = \"pr-bench\"\n\n[emulate.store]\n\
         kind = \"etcd\"\nendpoints = [{list}]\nprefix = \"/pr-bench-{}/\"\nhost_id = \"pr-bench\"\n",
        device.display().to_string(),
        std::process::id()
    )
}

fn run_in(
    args: &EmulateArgs,
    command_line: String,
    ours: &Path,
    tmp: &Path,
    results_dir: &Path,
) -> Result<EmulateResults, String> {
    let device = Device::open(&FdKind::Loop, tmp)
        .map_err(|e| format!("cannot set up the loop device: {e}"))?;
    let loop_path = device
        .loop_path()
        .ok_or("the loop device has no path")?
        .to_path_buf();
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let p = tmp.join(name);
        fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    };
    let group = write(
        "emulate.toml",
        &config(&loop_path, &tmp.join("emulate.db"), None),
    )?;
    let single = write(
        "fsync-each.toml",
        &config(&loop_path, &tmp.join("fsync-each.db"), Some(1)),
    )?;
    let start = |name: &'static str, cfg: Option<&Path>| {
        let mut extra = Vec::new();
        if let Some(c) = cfg {
            extra.push("--config".to_string());
            extra.push(c.display().to_string());
        }
        HelperProcess::start(
            name,
            ours,
            &extra,
            &[],
            &tmp.join(format!("{name}.sock")),
            &results_dir.join(format!("{name}.log")),
        )
        .map_err(|e| format!("cannot start {name} ({}): {e}", ours.display()))
    };
    let sqlite = args.stores.contains(&StoreKind::Sqlite);
    let etcd = args.stores.contains(&StoreKind::Etcd);
    // The cluster lives until the end of the run (its members are killed, by pid, on drop).
    let mut cluster = None;
    let mut etcd_endpoints = args.etcd_endpoints.clone();
    if etcd && etcd_endpoints.is_empty() {
        let c =
            pr_store_etcd::cluster::Cluster::start(3, pr_store_etcd::cluster::Timing::default())
                .map_err(|e| format!("cannot start the etcd cluster: {e}"))?;
        etcd_endpoints = c.endpoints();
        cluster = Some(c);
    }
    let on_etcd = write("etcd.toml", &etcd_config(&loop_path, &etcd_endpoints))?;
    let passthrough = start(PASSTHROUGH, None)?;
    let emulate = sqlite.then(|| start(EMULATE, Some(&group))).transpose()?;
    let fsync_each = sqlite
        .then(|| start(FSYNC_EACH, Some(&single)))
        .transpose()?;
    let emulate_etcd = etcd
        .then(|| start(EMULATE_ETCD, Some(&on_etcd)))
        .transpose()?;
    let all: Vec<&HelperProcess> = [
        Some(&passthrough),
        emulate.as_ref(),
        fsync_each.as_ref(),
        emulate_etcd.as_ref(),
    ]
    .into_iter()
    .flatten()
    .collect();

    let load_cfg = |h: &HelperProcess, clients: u32, workload: &str| LoadConfig {
        socket: h.socket.clone(),
        clients,
        stop: Stop::Duration(args.duration),
        max_duration: args.duration + Duration::from_secs(60),
        mix: mix_of(workload),
        io_timeout: Duration::from_secs(30),
        server_pid: Some(h.pid()),
        generator: args.generator.generator(),
    };
    for &h in &all {
        for w in [PR_IN, PR_OUT] {
            let mut cfg = load_cfg(h, 4, w);
            cfg.stop = Stop::Count(500);
            let r = load::run(&cfg, &device.file, &device.description);
            eprintln!(
                "warm-up {} {w}: {} requests, {} errors, {:?}",
                h.name, r.requests, r.errors, r.statuses
            );
        }
    }
    let mut res = EmulateResults {
        machine: Machine::describe(),
        command: command_line,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        device: device.description.clone(),
        scratch_dir: args.scratch_dir.display().to_string(),
        generator: args.generator.generator().to_string(),
        duration_s: args.duration.as_secs_f64(),
        rounds: args.rounds,
        program: ours.display().to_string(),
        stores: args.stores.clone(),
        etcd_endpoints: if etcd {
            etcd_endpoints.clone()
        } else {
            Vec::new()
        },
        load_before: loadavg(),
        load_after: String::new(),
        runs: Vec::new(),
        summary: Vec::new(),
    };
    let mut step = 0usize;
    for round in 0..args.rounds {
        for &clients in &args.clients {
            for workload in [PR_IN, PR_OUT] {
                let order: Vec<&HelperProcess> = all
                    .iter()
                    .copied()
                    .filter(|h| workload == PR_OUT || h.name != FSYNC_EACH)
                    .collect();
                let mut order = order;
                // Rotate who goes first so slow drift does not favour one.
                let n = order.len();
                order.rotate_left(step % n);
                step += 1;
                for h in order {
                    let load_average = load1();
                    let r = load::run(
                        &load_cfg(h, clients, workload),
                        &device.file,
                        &device.description,
                    );
                    eprintln!(
                        "round {round} {} {workload} {clients} clients: {:.0} req/s, {} errors, {:?}",
                        h.name, r.requests_per_s, r.errors, r.statuses
                    );
                    res.runs.push(EmulateRun {
                        helper: h.name.to_string(),
                        workload: workload.to_string(),
                        round,
                        load_average,
                        result: r,
                    });
                }
            }
        }
    }
    res.load_after = loadavg();
    drop(all);
    drop(emulate_etcd);
    drop(fsync_each);
    drop(emulate);
    drop(passthrough);
    drop(cluster);
    drop(device);
    res.summarise();
    // The emulated daemons must have answered GOOD to every command: anything else would be
    // measuring refusals.
    for p in &res.summary {
        if p.helper != PASSTHROUGH && (p.good != p.replies || p.replies == 0) {
            return Err(format!(
                "{} {} at {} clients: only {} of {} replies were GOOD (see {}/{}.log)",
                p.helper,
                p.workload,
                p.clients,
                p.good,
                p.replies,
                results_dir.display(),
                p.helper
            ));
        }
    }
    let json = serde_json::to_string_pretty(&res).map_err(|e| e.to_string())?;
    let write_result = |name: &str, data: &str| {
        fs::write(results_dir.join(name), data).map_err(|e| format!("cannot write {name}: {e}"))
    };
    write_result("results.json", &json)?;
    write_result("summary.md", &res.to_markdown())?;
    Ok(res)
}
