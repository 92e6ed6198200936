//! pr-bench: load for persistent-reservation helpers (ours or QEMU's C helper), and a runner
//! that measures both side by side. Absolute figures on a shared machine are noise; the ratios
//! measured in one run, alternating the helpers, are what count.
#![forbid(unsafe_code)]

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pr-bench",
    version,
    about = "Benchmark persistent-reservation helpers"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Drive one helper socket with concurrent clients sending PR IN READ KEYS.
    Run {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        clients: u32,
        /// Device (or file) whose descriptor each request carries.
        #[arg(long)]
        device: PathBuf,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
        seconds: u64,
    },
    /// Start a helper, hold N idle connections, report its memory.
    Idle {
        #[arg(long)]
        helper: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        connections: u32,
    },
    /// Start QEMU's C helper and ours, run the same sweep against both, print ratios.
    Compare {
        #[arg(long, default_value = "target/release/pr-helper")]
        ours: PathBuf,
        #[arg(long, default_value = "/usr/bin/qemu-pr-helper")]
        c_helper: PathBuf,
        /// Devices to measure with (a regular file measures the helpers' own overhead; a block
        /// device such as a loop device goes through SG_IO in both).
        #[arg(long, num_args = 1.., required = true)]
        device: Vec<PathBuf>,
        #[arg(long, num_args = 1.., default_values_t = [1u32, 16, 64])]
        clients: Vec<u32>,
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        #[arg(long, default_value_t = 10_000)]
        idle: u32,
        /// Write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// Result of one load run.
#[derive(Debug, Clone, Copy)]
struct Load {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn load(socket: &Path, clients: u32, device: &Path, seconds: u64) -> Result<Load, String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (socket, device) = (socket.to_path_buf(), device.to_path_buf());
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || -> Result<Vec<Duration>, String> {
                    let f = std::fs::File::open(&device)
                        .map_err(|e| format!("{}: {e}", device.display()))?;
                    let mut c = pr_client::Client::connect(&socket).map_err(|e| e.to_string())?;
                    let cdb =
                        pr_scsi::PrInCdb::new(pr_scsi::ServiceActionIn::ReadKeys, 64).to_bytes();
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        c.execute(f.as_fd(), &cdb, &[]).map_err(|e| e.to_string())?;
                        lat.push(t.elapsed());
                    }
                    Ok(lat)
                })
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| "client thread panicked".to_string())??,
        );
    }
    all.sort();
    Ok(Load {
        rps: all.len() as f64 / seconds as f64,
        p50_us: percentile(&all, 0.5),
        p99_us: percentile(&all, 0.99),
    })
}

/// A helper process on a temporary socket, killed on drop.
struct Helper {
    child: Child,
    socket: PathBuf,
}

impl Helper {
    fn start(binary: &Path, tag: &str) -> Result<Helper, String> {
        let socket =
            std::env::temp_dir().join(format!("pr-bench-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(binary)
            .arg("-k")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let h = Helper { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&h.socket).is_err() {
            if Instant::now() > deadline {
                return Err(format!("{} did not listen within 10 s", binary.display()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(h)
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Idle RSS, RSS with `n` idle connections, and whether a new client is still served.
fn idle(binary: &Path, n: u32) -> Result<(u64, u64, bool), String> {
    raise_nofile();
    let h = Helper::start(binary, "idle")?;
    std::thread::sleep(Duration::from_millis(300));
    let before = h.rss_kib();
    let mut conns = Vec::with_capacity(n as usize);
    for i in 0..n {
        let c =
            pr_client::Client::connect(&h.socket).map_err(|e| format!("connection {i}: {e}"))?;
        conns.push(c);
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = h.rss_kib();
    let served =
        pr_client::Client::connect_with_timeout(&h.socket, Some(Duration::from_secs(5))).is_ok();
    Ok((before, after, served))
}

fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    let _ = setrlimit(Resource::Nofile, lim);
}

fn compare(
    ours: &Path,
    c_helper: &Path,
    devices: &[PathBuf],
    clients: &[u32],
    seconds: u64,
    idle_n: u32,
    json: Option<&Path>,
) -> Result<(), String> {
    raise_nofile();
    let c = Helper::start(c_helper, "c")?;
    let o = Helper::start(ours, "ours")?;
    let mut rows = Vec::new();
    println!(
        "{:<24} {:>7} {:>12} {:>12} {:>7} {:>10} {:>10} {:>7}",
        "device", "clients", "C req/s", "ours req/s", "ratio", "C p50 µs", "ours p50", "ratio"
    );
    for dev in devices {
        for &n in clients {
            // Alternate the helpers so that drift on a shared machine hits both alike.
            let a = load(&c.socket, n, dev, seconds)?;
            let b = load(&o.socket, n, dev, seconds)?;
            println!(
                "{:<24} {:>7} {:>12.0} {:>12.0} {:>6.2}x {:>10.1} {:>10.1} {:>6.2}x",
                dev.display(),
                n,
                a.rps,
                b.rps,
                b.rps / a.rps,
                a.p50_us,
                b.p50_us,
                b.p50_us / a.p50_us
            );
            rows.push(serde_json::json!({
                "device": dev, "clients": n,
                "c": {"rps": a.rps, "p50_us": a.p50_us, "p99_us": a.p99_us},
                "ours": {"rps": b.rps, "p50_us": b.p50_us, "p99_us": b.p99_us},
            }));
        }
    }
    let (c_rss, o_rss) = (c.rss_kib(), o.rss_kib());
    drop((c, o));
    let (ci0, ci1, cserved) = idle(c_helper, idle_n)?;
    let (oi0, oi1, oserved) = idle(ours, idle_n)?;
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / f64::from(idle_n.max(1));
    println!("RSS after load: C {c_rss} KiB, ours {o_rss} KiB");
    println!("idle RSS: C {ci0} KiB, ours {oi0} KiB");
    println!(
        "{idle_n} idle connections: C {ci1} KiB ({:.2} KiB/conn, new client served: {cserved}), ours {oi1} KiB ({:.2} KiB/conn, new client served: {oserved})",
        per(ci0, ci1),
        per(oi0, oi1)
    );
    if let Some(path) = json {
        let doc = serde_json::json!({
            "load": rows,
            "idle": {"connections": idle_n,
                     "c": {"idle_kib": ci0, "loaded_kib": ci1, "served": cserved},
                     "ours": {"idle_kib": oi0, "loaded_kib": oi1, "served": oserved}},
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).expect("json"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Run {
            socket,
            clients,
            device,
            seconds,
        } => load(&socket, clients, &device, seconds).map(|l| {
            println!(
                "{:.0} req/s, p50 {:.1} µs, p99 {:.1} µs",
                l.rps, l.p50_us, l.p99_us
            );
        }),
        Cmd::Idle {
            helper,
            connections,
        } => idle(&helper, connections).map(|(a, b, s)| {
            println!(
                "idle {a} KiB, with {connections} connections {b} KiB, new client served: {s}"
            );
        }),
        Cmd::Compare {
            ours,
            c_helper,
            device,
            clients,
            seconds,
            idle,
            json,
        } => compare(
            &ours,
            &c_helper,
            &device,
            &clients,
            seconds,
            idle,
            json.as_deref(),
        ),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pr-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
