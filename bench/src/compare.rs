//! The side-by-side runner: start QEMU's C helper and ours on temporary sockets, measure both
//! with the same load on the same descriptor kind, alternating between them so drift on a
//! shared machine hits both alike, and compute the ratios.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cli::CompareArgs;
use crate::device::Device;
use crate::idle::{self, IdleConfig, IdleResult};
use crate::load::{self, LoadConfig, RunResult, Stop};
use crate::procinfo::{Machine, ProcSnapshot};
use crate::stats::median;

/// The two helpers, by the key used in results.
pub const C_HELPER: &str = "qemu-pr-helper";
pub const OURS: &str = "pr-helper";

/// Open-file limit wanted for both helpers and this process (10,000 idle connections plus the
/// sweep's clients and slack). Without CAP_SYS_RESOURCE the hard limit caps it.
const NOFILE: u64 = 65_536;

/// A helper process that is killed (by its pid) when dropped. It is also started with a
/// parent-death signal, so it does not outlive this process even if we are killed.
#[derive(Debug)]
pub struct HelperProcess {
    pub name: &'static str,
    pub socket: PathBuf,
    child: Child,
}

impl HelperProcess {
    pub fn start(
        name: &'static str,
        program: &Path,
        extra: &[String],
        env: &[String],
        socket: &Path,
        log: &Path,
    ) -> io::Result<HelperProcess> {
        let _ = fs::remove_file(socket);
        let log = File::create(log)?;
        let nofile = crate::procinfo::raise_nofile(NOFILE);
        // setpriv and prlimit exec in place, so the child's pid is the helper's.
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "prlimit"])
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(program)
            .arg("-k")
            .arg(socket)
            .args(extra)
            .envs(env.iter().filter_map(|kv| kv.split_once('=')))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut h = HelperProcess {
            name,
            socket: socket.to_path_buf(),
            child,
        };
        let t0 = Instant::now();
        loop {
            if let Some(status) = h.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{name} exited at start: {status}"
                )));
            }
            if UnixStream::connect(socket).is_ok() {
                // Let the prlimit/setpriv exec chain settle on the helper's image.
                std::thread::sleep(Duration::from_millis(300));
                return Ok(h);
            }
            if t0.elapsed() > Duration::from_secs(5) {
                return Err(io::Error::other(format!(
                    "{name} did not create {} within 5 s",
                    socket.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket);
    }
}

/// One measurement in the sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRun {
    pub helper: String,
    pub round: u32,
    pub result: RunResult,
    /// The helper's CPU time (all threads, user + system) per completed request during the
    /// run: its cost independent of how fast the load generator can drive it.
    #[serde(default)]
    pub server_cpu_us_per_request: Option<f64>,
}

/// Medians over the rounds for one helper at one client count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub clients: u32,
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub errors: u64,
    /// Median over rounds of the helper's CPU µs per request.
    #[serde(default)]
    pub cpu_us_per_request: Option<f64>,
}

/// Everything one `compare` invocation measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareResults {
    pub machine: Machine,
    pub command: String,
    pub started_unix: u64,
    pub fd_kind: String,
    pub device: String,
    pub mix: String,
    /// How the clients were driven (results from before the event-driven generator: threads).
    #[serde(default = "threads_generator")]
    pub generator: String,
    /// The set's name in a report: its results directory's name.
    #[serde(skip)]
    pub label: String,
    pub duration_s: f64,
    pub rounds: u32,
    pub programs: BTreeMap<String, String>,
    /// Each helper's memory right after start, before any connection.
    pub startup: BTreeMap<String, ProcSnapshot>,
    /// Each helper's memory after the sweep, with every client gone.
    pub after_sweep: BTreeMap<String, ProcSnapshot>,
    pub idle: BTreeMap<String, IdleResult>,
    pub runs: Vec<SweepRun>,
    pub summary: BTreeMap<String, Vec<Point>>,
}

impl CompareResults {
    /// Medians per helper and client count.
    pub fn summarise(&mut self) {
        let mut counts: Vec<u32> = self.runs.iter().map(|r| r.result.clients).collect();
        counts.sort_unstable();
        counts.dedup();
        self.summary.clear();
        for helper in [C_HELPER, OURS] {
            let points = counts
                .iter()
                .filter_map(|&c| {
                    let sweep: Vec<&SweepRun> = self
                        .runs
                        .iter()
                        .filter(|r| r.helper == helper && r.result.clients == c)
                        .collect();
                    let rs: Vec<&RunResult> = sweep.iter().map(|r| &r.result).collect();
                    let cpu: Vec<f64> = sweep
                        .iter()
                        .filter_map(|r| r.server_cpu_us_per_request)
                        .collect();
                    let m = |f: &dyn Fn(&RunResult) -> f64| {
                        median(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
                    };
                    Some(Point {
                        clients: c,
                        requests_per_s: m(&|r| r.requests_per_s)?,
                        p50_us: m(&|r| r.latency.p50_us)?,
                        p99_us: m(&|r| r.latency.p99_us)?,
                        p999_us: m(&|r| r.latency.p999_us)?,
                        max_us: rs.iter().map(|r| r.latency.max_us).fold(0.0, f64::max),
                        errors: rs.iter().map(|r| r.errors).sum(),
                        cpu_us_per_request: median(&cpu),
                    })
                })
                .collect();
            self.summary.insert(helper.to_string(), points);
        }
    }

    pub fn point(&self, helper: &str, clients: u32) -> Option<&Point> {
        self.summary
            .get(helper)?
            .iter()
            .find(|p| p.clients == clients)
    }

    /// Ours ÷ C for requests/s at `clients`.
    pub fn throughput_ratio(&self, clients: u32) -> Option<f64> {
        let o = self.point(OURS, clients)?.requests_per_s;
        let c = self.point(C_HELPER, clients)?.requests_per_s;
        (c > 0.0).then(|| o / c)
    }

    /// The helpers' CPU µs per request at `clients`: (C, ours).
    pub fn cpu_per_request(&self, clients: u32) -> Option<(f64, f64)> {
        Some((
            self.point(C_HELPER, clients)?.cpu_us_per_request?,
            self.point(OURS, clients)?.cpu_us_per_request?,
        ))
    }

    /// Ours ÷ C for the single-client median latency.
    pub fn latency_ratio(&self) -> Option<f64> {
        let o = self.point(OURS, 1)?.p50_us;
        let c = self.point(C_HELPER, 1)?.p50_us;
        (c > 0.0).then(|| o / c)
    }

    /// Plain-text tables.
    pub fn to_text(&self) -> String {
        let mut t = format!(
            "fd kind {} ({}), mix {}, generator {}, {} s × {} rounds, medians\n",
            self.fd_kind, self.device, self.mix, self.generator, self.duration_s, self.rounds
        );
        t.push_str(&format!(
            "{:>7}  {:>12} {:>12} {:>7}  {:>9} {:>9}  {:>9} {:>9}\n",
            "clients",
            "C req/s",
            "ours req/s",
            "ratio",
            "C p50µs",
            "ours p50",
            "C p99µs",
            "ours p99"
        ));
        if let Some(points) = self.summary.get(C_HELPER) {
            for c in points {
                let Some(o) = self.point(OURS, c.clients) else {
                    continue;
                };
                t.push_str(&format!(
                    "{:>7}  {:>12.0} {:>12.0} {:>6.2}×  {:>9.1} {:>9.1}  {:>9.1} {:>9.1}\n",
                    c.clients,
                    c.requests_per_s,
                    o.requests_per_s,
                    o.requests_per_s / c.requests_per_s.max(f64::MIN_POSITIVE),
                    c.p50_us,
                    o.p50_us,
                    c.p99_us,
                    o.p99_us
                ));
            }
        }
        for c in self.summary.get(C_HELPER).into_iter().flatten() {
            if let Some((cc, oc)) = self.cpu_per_request(c.clients) {
                t.push_str(&format!(
                    "helper CPU per request at {:>4} clients: C {cc:.1} µs, ours {oc:.1} µs ({:.2}× less)\n",
                    c.clients,
                    cc / oc.max(f64::MIN_POSITIVE)
                ));
            }
        }
        if let Some(r) = self.latency_ratio() {
            t.push_str(&format!(
                "single-client median latency ratio (ours/C): {r:.2}\n"
            ));
        }
        for (h, s) in &self.startup {
            t.push_str(&format!(
                "{h}: idle RSS at start {} KiB ({} threads)\n",
                s.rss_kib, s.threads
            ));
        }
        for (h, i) in &self.idle {
            t.push_str(&format!(
                "{h}: {} of {} idle connections held, {} KiB per connection, answered while held: {}\n",
                i.held,
                i.requested,
                i.kib_per_connection.map_or("?".into(), |k| format!("{k:.2}")),
                i.all_held()
            ));
        }
        t
    }
}

/// Runs the whole comparison and writes results.json, throughput.svg and summary.txt to
/// `args.results`.
pub fn run(args: &CompareArgs, command_line: String) -> Result<CompareResults, String> {
    let kind = args.device.fd_kind()?;
    crate::procinfo::raise_nofile(NOFILE);
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
    let tmp = std::env::temp_dir().join(format!("pr-bench-compare-{}", std::process::id()));
    fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let result = run_in(args, command_line, &kind, &ours, &tmp, &results_dir);
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn run_in(
    args: &CompareArgs,
    command_line: String,
    kind: &crate::device::FdKind,
    ours: &Path,
    tmp: &Path,
    results_dir: &Path,
) -> Result<CompareResults, String> {
    let device = Device::open(kind, &args.device.scratch_dir)
        .map_err(|e| format!("cannot open the {kind} device: {e}"))?;
    let ours_extra: Vec<String> = args
        .ours_args
        .split_whitespace()
        .map(String::from)
        .collect();
    let c = HelperProcess::start(
        C_HELPER,
        &args.theirs,
        &[],
        &[],
        &tmp.join("c.sock"),
        &results_dir.join("qemu-pr-helper.log"),
    )
    .map_err(|e| format!("cannot start {}: {e}", args.theirs.display()))?;
    let o = HelperProcess::start(
        OURS,
        ours,
        &ours_extra,
        &args.ours_env,
        &tmp.join("ours.sock"),
        &results_dir.join("pr-helper.log"),
    )
    .map_err(|e| format!("cannot start {}: {e}", ours.display()))?;
    let helpers = [&c, &o];

    let mut res = CompareResults {
        machine: Machine::describe(),
        command: command_line,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        fd_kind: kind.to_string(),
        generator: args.generator.generator().to_string(),
        label: String::new(),
        device: device.description.clone(),
        mix: args.mix.to_string(),
        duration_s: args.duration.as_secs_f64(),
        rounds: args.rounds,
        programs: BTreeMap::from([
            (C_HELPER.to_string(), args.theirs.display().to_string()),
            (
                OURS.to_string(),
                format!(
                    "{} {} {}",
                    args.ours_env.join(" "),
                    ours.display(),
                    args.ours_args
                )
                .trim()
                .to_string(),
            ),
        ]),
        startup: BTreeMap::new(),
        after_sweep: BTreeMap::new(),
        idle: BTreeMap::new(),
        runs: Vec::new(),
        summary: BTreeMap::new(),
    };
    for h in helpers {
        if let Ok(s) = ProcSnapshot::take(h.pid()) {
            res.startup.insert(h.name.to_string(), s);
        }
    }

    let load_cfg = |h: &HelperProcess, clients: u32| LoadConfig {
        socket: h.socket.clone(),
        clients,
        stop: Stop::Duration(args.duration),
        max_duration: args.duration + Duration::from_secs(30),
        mix: args.mix.clone(),
        io_timeout: Duration::from_secs(10),
        server_pid: Some(h.pid()),
        generator: args.generator.generator(),
    };
    // Warm up both (page in code, grow pools) with a short run each.
    for h in helpers {
        let mut cfg = load_cfg(h, 4);
        cfg.stop = Stop::Count(2_000);
        let r = load::run(&cfg, &device.file, &device.description);
        eprintln!(
            "warm-up {}: {} requests, {} errors",
            h.name, r.requests, r.errors
        );
    }

    for round in 0..args.rounds {
        for (i, &clients) in args.clients.iter().enumerate() {
            // Alternate which helper goes first so slow drift does not favour one.
            let order = if (round as usize + i).is_multiple_of(2) {
                [&c, &o]
            } else {
                [&o, &c]
            };
            for h in order {
                let cpu_before = crate::procinfo::cpu_time_us(h.pid()).ok();
                let r = load::run(&load_cfg(h, clients), &device.file, &device.description);
                let cpu_after = crate::procinfo::cpu_time_us(h.pid()).ok();
                let cpu_per_request = match (cpu_before, cpu_after) {
                    (Some(a), Some(b)) if r.requests > 0 => {
                        Some(b.saturating_sub(a) as f64 / r.requests as f64)
                    }
                    _ => None,
                };
                eprintln!(
                    "round {} {:>15} {:>5} clients: {:>9.0} req/s p50 {:>8.1} µs p99 {:>9.1} µs{}",
                    round + 1,
                    h.name,
                    clients,
                    r.requests_per_s,
                    r.latency.p50_us,
                    r.latency.p99_us,
                    if r.errors > 0 {
                        format!(" ({} errors: {:?})", r.errors, r.first_errors)
                    } else {
                        String::new()
                    }
                );
                res.runs.push(SweepRun {
                    helper: h.name.to_string(),
                    round,
                    result: r,
                    server_cpu_us_per_request: cpu_per_request,
                });
            }
        }
    }
    for h in helpers {
        if let Ok(s) = ProcSnapshot::take(h.pid()) {
            res.after_sweep.insert(h.name.to_string(), s);
        }
    }

    if args.idle_connections > 0 {
        for h in helpers {
            let cfg = IdleConfig {
                socket: h.socket.clone(),
                connections: args.idle_connections,
                io_timeout: Duration::from_secs(10),
                max_duration: Duration::from_secs(120),
                server_pid: Some(h.pid()),
            };
            let r = idle::run(&cfg, &device.file);
            eprintln!("idle {}: {}", h.name, r.to_text().replace('\n', "; "));
            res.idle.insert(h.name.to_string(), r);
        }
    }
    drop(o);
    drop(c);
    drop(device);

    res.summarise();
    let json = serde_json::to_string_pretty(&res).map_err(|e| e.to_string())?;
    let write = |name: &str, data: &str| {
        fs::write(results_dir.join(name), data).map_err(|e| format!("cannot write {name}: {e}"))
    };
    write("results.json", &json)?;
    write("throughput.svg", &crate::svg::throughput_plot(&[&res]))?;
    write("summary.txt", &res.to_text())?;
    Ok(res)
}

fn threads_generator() -> String {
    crate::load::Generator::Threads.to_string()
}

/// Reads a results.json written by [`run`].
pub fn load_results(dir: &Path) -> Result<CompareResults, String> {
    let p = dir.join("results.json");
    let text = fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut r: CompareResults =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    // A set is named after its results directory in the report. A device given by path (an
    // LIO disk in the VM lab) is reproduced with the lab's wrapper, which runs the recorded
    // command in the guest.
    r.label = dir
        .file_name()
        .map_or_else(|| r.fd_kind.clone(), |n| n.to_string_lossy().into_owned());
    if r.fd_kind.starts_with('/') {
        r.command = format!("lab/bench    # in the VM lab guest: {}", r.command);
    }
    r.summarise();
    Ok(r)
}
