//! Idle connections: open and handshake N connections, hold them, and see what they cost the
//! server; then check that it still answers while they are held.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::load::{connect, round_trip};
use crate::mix::{Op, PR_IN_ALLOCATION_LENGTH};
use crate::procinfo::ProcSnapshot;

#[derive(Debug, Clone)]
pub struct IdleConfig {
    pub socket: PathBuf,
    pub connections: u32,
    pub io_timeout: Duration,
    /// Give up opening connections after this long.
    pub max_duration: Duration,
    pub server_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleResult {
    pub requested: u32,
    pub held: u32,
    pub open_error: Option<String>,
    pub open_s: f64,
    pub before: Option<ProcSnapshot>,
    pub holding: Option<ProcSnapshot>,
    pub after: Option<ProcSnapshot>,
    /// (RSS while holding − RSS before) / connections held.
    pub kib_per_connection: Option<f64>,
    /// A request on a new connection, and one on the first held connection, while all are held.
    pub answered_new: Result<String, String>,
    pub answered_held: Result<String, String>,
}

impl IdleResult {
    /// Whether every connection was held and the server answered both checks.
    pub fn all_held(&self) -> bool {
        self.held == self.requested && self.answered_new.is_ok() && self.answered_held.is_ok()
    }
}

fn check(s: &mut UnixStream, device: &std::fs::File) -> Result<String, String> {
    let (cdb, params) = Op::In(pr_scsi::ServiceActionIn::ReadKeys).request(0);
    let mut data = vec![0u8; usize::from(PR_IN_ALLOCATION_LENGTH)];
    round_trip(s, device.as_fd(), &cdb, &params, &mut data)
        .map(|st| {
            pr_scsi::Status(st)
                .name()
                .map_or_else(|| format!("{st:#04x}"), str::to_string)
        })
        .map_err(|e| e.to_string())
}

pub fn run(cfg: &IdleConfig, device: &std::fs::File) -> IdleResult {
    let snap = || cfg.server_pid.and_then(|p| ProcSnapshot::take(p).ok());
    let before = snap();
    let t0 = Instant::now();
    let mut held: Vec<UnixStream> = Vec::with_capacity(cfg.connections as usize);
    let mut open_error = None;
    while held.len() < cfg.connections as usize {
        if t0.elapsed() > cfg.max_duration {
            open_error = Some(format!("gave up after {:?}", cfg.max_duration));
            break;
        }
        match connect(&cfg.socket, cfg.io_timeout) {
            Ok(s) => held.push(s),
            Err(e) => {
                open_error = Some(format!("connection {}: {e}", held.len() + 1));
                break;
            }
        }
    }
    let open_s = t0.elapsed().as_secs_f64();
    // Let the server finish reading the last handshakes before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let holding = snap();
    let answered_new = connect(&cfg.socket, cfg.io_timeout)
        .map_err(|e| e.to_string())
        .and_then(|mut s| check(&mut s, device));
    let answered_held = match held.first_mut() {
        Some(s) => check(s, device),
        None => Err("no connection held".into()),
    };
    let n = held.len() as u32;
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    let after = snap();
    let kib_per_connection = match (before, holding) {
        (Some(b), Some(h)) if n > 0 => Some((h.rss_kib as f64 - b.rss_kib as f64) / f64::from(n)),
        _ => None,
    };
    IdleResult {
        requested: cfg.connections,
        held: n,
        open_error,
        open_s,
        before,
        holding,
        after,
        kib_per_connection,
        answered_new,
        answered_held,
    }
}

impl IdleResult {
    pub fn to_text(&self) -> String {
        let f = |s: &Option<ProcSnapshot>| {
            s.map_or("?".into(), |s| {
                format!(
                    "RSS {} KiB, {} fds, {} threads",
                    s.rss_kib, s.fds, s.threads
                )
            })
        };
        let mut t = format!(
            "held {}/{} idle connections (opened in {:.2} s)\n\
             server before: {}\nserver holding: {}\nserver after close: {}\n",
            self.held,
            self.requested,
            self.open_s,
            f(&self.before),
            f(&self.holding),
            f(&self.after),
        );
        if let Some(k) = self.kib_per_connection {
            t.push_str(&format!("per idle connection: {k:.2} KiB\n"));
        }
        if let Some(e) = &self.open_error {
            t.push_str(&format!("stopped opening: {e}\n"));
        }
        t.push_str(&format!(
            "request on a new connection while held: {}\nrequest on a held connection: {}\n",
            show(&self.answered_new),
            show(&self.answered_held)
        ));
        t
    }
}

fn show(r: &Result<String, String>) -> String {
    match r {
        Ok(s) => format!("answered ({s})"),
        Err(e) => format!("FAILED: {e}"),
    }
}
