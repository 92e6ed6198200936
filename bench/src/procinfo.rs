//! What /proc says about the server under test (memory, descriptors, threads) and the machine.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::Path;

/// A snapshot of a process: resident memory and open descriptors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcSnapshot {
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

impl ProcSnapshot {
    /// Reads VmRSS and Threads from /proc/PID/status and counts /proc/PID/fd.
    pub fn take(pid: u32) -> io::Result<ProcSnapshot> {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
        Ok(ProcSnapshot {
            rss_kib: field("VmRSS:"),
            fds,
            threads: field("Threads:"),
        })
    }
}

/// CPU time a process has used so far (user + system, all threads), in microseconds, from
/// /proc/PID/stat (fields 14 and 15, in clock ticks).
pub fn cpu_time_us(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; the fields after it follow the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let tick = |i: usize| -> io::Result<u64> {
        f.get(i - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))
    };
    let ticks = tick(14)? + tick(15)?;
    let hz = rustix::param::clock_ticks_per_second();
    Ok(ticks * 1_000_000 / hz.max(1))
}

/// Finds the process listening on the Unix socket at `path`: the socket's inode from
/// /proc/net/unix, then the process holding `socket:[inode]` among its descriptors.
pub fn pid_listening_on(path: &Path) -> io::Result<u32> {
    let want = path.to_string_lossy();
    let table = fs::read_to_string("/proc/net/unix")?;
    // Columns: Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = listening.
    let inode = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 8 && cols[7] == want && cols[3] == "00010000").then(|| cols[6])
        })
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no listening socket at {want} in /proc/net/unix"),
            )
        })?;
    let target = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                return Ok(pid);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no process holds {target} ({want})"),
    ))
}

/// The machine a run happened on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_mib: u64,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let memory_mib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(0, |k| k / 1024);
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
            memory_mib,
        }
    }
}

/// Raises this process's open-file limit to at least `want` (soft and hard; needs root to raise
/// the hard limit). Returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.current.is_some_and(|c| c >= want) {
        return cur.current.unwrap_or(want);
    }
    let max = cur.maximum.map_or(want, |m| m.max(want));
    let new = Rlimit {
        current: Some(want),
        maximum: Some(max),
    };
    if setrlimit(Resource::Nofile, new).is_err() {
        // Not root: go as high as the hard limit allows.
        let capped = Rlimit {
            current: cur.maximum,
            maximum: cur.maximum,
        };
        let _ = setrlimit(Resource::Nofile, capped);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(want)
}

#[cfg(test)]
mod cpu_tests {
    #[test]
    fn cpu_time_of_this_process_grows() {
        let me = std::process::id();
        let a = super::cpu_time_us(me).unwrap();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let b = super::cpu_time_us(me).unwrap();
        assert!(b >= a + 50_000, "{a} -> {b}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_of_self() {
        let s = ProcSnapshot::take(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.fds >= 3);
        assert!(s.threads >= 1);
    }

    #[test]
    fn finds_own_listener() {
        let dir = std::env::temp_dir().join(format!("pr-bench-pid-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let path = dir.join("s");
        let _ = fs::remove_file(&path);
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(pid_listening_on(&path).unwrap(), std::process::id());
        let _ = fs::remove_dir_all(&dir);
    }
}
