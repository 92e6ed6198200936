//! The load loop: N clients, each on its own connection and thread, sending the request mix
//! as fast as replies come back (closed loop, one request in flight per client, as QEMU does).
//!
//! Every run stops by itself: at the duration, or after the request count, and in any case at
//! `max_duration`; a socket timeout ends a client whose server stopped answering.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use pr_proto::{FEATURES_SIZE, REPLY_HEADER_SIZE};
use serde::{Deserialize, Serialize};

use crate::mix::{Mix, PR_IN_ALLOCATION_LENGTH};
use crate::procinfo::ProcSnapshot;
use crate::stats::{rate, Latency};

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// Every client sends until this much time has passed.
    Duration(Duration),
    /// The clients together send this many requests.
    Count(u64),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub socket: PathBuf,
    pub clients: u32,
    pub stop: Stop,
    /// Hard bound on the run's length, whatever `stop` says.
    pub max_duration: Duration,
    pub mix: Mix,
    /// Longest wait for any single reply or connection step.
    pub io_timeout: Duration,
    pub server_pid: Option<u32>,
    pub generator: Generator,
}

/// How the clients are driven. Both keep one request in flight per client (closed loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Generator {
    /// This many threads, each driving its share of the connections through epoll (the
    /// default: the generator takes little of the CPU the helper needs).
    Events { threads: u32 },
    /// One blocking thread per client, sending as QEMU does (CDB with the descriptor, then the
    /// parameter data in a second write). Costs a thread wake-up per reply.
    Threads,
}

impl Generator {
    fn threads() -> Generator {
        Generator::Threads
    }
}

impl std::fmt::Display for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Generator::Events { threads: 1 } => write!(f, "event-driven, 1 thread"),
            Generator::Events { threads } => write!(f, "event-driven, {threads} threads"),
            Generator::Threads => write!(f, "a thread per client"),
        }
    }
}

/// The server's state around a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerSnapshots {
    pub pid: Option<u32>,
    /// Before the clients connected.
    pub before: Option<ProcSnapshot>,
    /// After the load, with every client still connected.
    pub loaded: Option<ProcSnapshot>,
    /// After the clients disconnected (and a short pause for the server to notice).
    pub after: Option<ProcSnapshot>,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub socket: PathBuf,
    pub clients: u32,
    pub connected: u32,
    pub mix: String,
    pub device: String,
    /// Results written before the event-driven generator existed came from threads.
    #[serde(default = "Generator::threads")]
    pub generator: Generator,
    pub stop: Stop,
    pub requests: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub latency: Latency,
    /// Replies by SCSI status name.
    pub statuses: BTreeMap<String, u64>,
    pub server: ServerSnapshots,
}

pub(crate) struct ClientOutcome {
    pub(crate) latencies: Vec<u64>,
    pub(crate) statuses: BTreeMap<u8, u64>,
    pub(crate) error: Option<String>,
    pub(crate) end: Instant,
    pub(crate) stream: Option<UnixStream>,
}

impl ClientOutcome {
    /// Nothing measured yet; `end` is where the client's time ends if it never sends.
    pub(crate) fn new(end: Instant, error: Option<String>) -> ClientOutcome {
        ClientOutcome {
            latencies: Vec::new(),
            statuses: BTreeMap::new(),
            error,
            end,
            stream: None,
        }
    }
}

/// Connects and performs the client's half of the handshake (read the helper's word, send 0).
pub fn connect(socket: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut word = [0u8; FEATURES_SIZE];
    s.read_exact(&mut word)?;
    s.write_all(&[0u8; FEATURES_SIZE])?;
    Ok(s)
}

/// Sends one request on `s` with `device` attached and reads the whole reply. Returns the
/// SCSI status byte.
pub fn round_trip(
    s: &mut UnixStream,
    device: BorrowedFd<'_>,
    cdb: &[u8; 16],
    params: &[u8],
    data: &mut [u8],
) -> io::Result<u8> {
    let sent = pr_sys::scm::send_with_fds(s.as_fd(), cdb, &[device])?;
    s.write_all(&cdb[sent..])?;
    if !params.is_empty() {
        s.write_all(params)?;
    }
    let mut header = [0u8; REPLY_HEADER_SIZE];
    s.read_exact(&mut header)?;
    let status = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > data.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("reply data length {len} exceeds the allocation length"),
        ));
    }
    s.read_exact(&mut data[..len])?;
    Ok(status as u8)
}

/// Runs the load described by `cfg`, sending `device` with every request.
pub fn run(cfg: &LoadConfig, device: &std::fs::File, device_desc: &str) -> RunResult {
    let pid = cfg.server_pid;
    let snap = || pid.and_then(|p| ProcSnapshot::take(p).ok());
    let before = snap();

    let issued = AtomicU64::new(0);
    let schedule = cfg.mix.schedule();
    let (mut outcomes, start) = match cfg.generator {
        Generator::Threads => drive_threads(cfg, &schedule, device, &issued),
        Generator::Events { threads } => drive_events(cfg, threads, &schedule, device, &issued),
    };

    let end = outcomes.iter().map(|o| o.end).max().unwrap_or(start);
    let elapsed = end.saturating_duration_since(start);
    let loaded = snap();
    let connected = outcomes.iter().filter(|o| o.stream.is_some()).count() as u32;
    let mut latencies = Vec::new();
    let mut statuses = BTreeMap::new();
    let mut errors = 0;
    let mut first_errors = Vec::new();
    for o in &mut outcomes {
        latencies.append(&mut o.latencies);
        for (&s, &n) in &o.statuses {
            let name = pr_scsi::Status(s)
                .name()
                .map_or_else(|| format!("{s:#04x}"), str::to_string);
            *statuses.entry(name).or_insert(0) += n;
        }
        if let Some(e) = o.error.take() {
            errors += 1;
            if first_errors.len() < 5 && !first_errors.contains(&e) {
                first_errors.push(e);
            }
        }
    }
    drop(outcomes);
    let after = pid.and_then(|p| {
        std::thread::sleep(Duration::from_millis(300));
        ProcSnapshot::take(p).ok()
    });
    let requests = latencies.len() as u64;
    RunResult {
        socket: cfg.socket.clone(),
        clients: cfg.clients,
        connected,
        mix: cfg.mix.to_string(),
        device: device_desc.to_string(),
        generator: cfg.generator,
        stop: cfg.stop,
        requests,
        errors,
        first_errors,
        elapsed_s: elapsed.as_secs_f64(),
        requests_per_s: rate(requests, elapsed),
        latency: Latency::from_nanos(&mut latencies),
        statuses,
        server: ServerSnapshots {
            pid,
            before,
            loaded,
            after,
        },
    }
}

/// One blocking thread per client.
fn drive_threads(
    cfg: &LoadConfig,
    schedule: &[crate::mix::Op],
    device: &std::fs::File,
    issued: &AtomicU64,
) -> (Vec<ClientOutcome>, Instant) {
    let (outcomes, start) = on_threads(
        cfg.clients,
        "client",
        |client, barrier| {
            vec![client_loop(
                cfg,
                client,
                schedule,
                device.as_fd(),
                barrier,
                issued,
            )]
        },
        |_, error| vec![failed(error)],
    );
    (outcomes.into_iter().flatten().collect(), start)
}

/// Event-driven: `threads` generator threads (at most one per client), clients spread evenly.
fn drive_events(
    cfg: &LoadConfig,
    threads: u32,
    schedule: &[crate::mix::Op],
    device: &std::fs::File,
    issued: &AtomicU64,
) -> (Vec<ClientOutcome>, Instant) {
    let threads = threads.clamp(1, cfg.clients.max(1));
    let ids = |t: u32| cfg.clients * t / threads..cfg.clients * (t + 1) / threads;
    let (outcomes, start) = on_threads(
        threads,
        "generator",
        |t, barrier| crate::events::drive(cfg, ids(t), schedule, device.as_fd(), barrier, issued),
        |t, error| ids(t).map(|_| failed(error.clone())).collect(),
    );
    (outcomes.into_iter().flatten().collect(), start)
}

/// Runs `body(i, barrier)` on `n` scoped threads named `name-i`; each waits at the barrier once
/// it is ready, and the clock starts when all are. A thread that cannot be started is stood in
/// for by a minimal one that waits at the barrier and returns `failed_to_start(i, reason)`.
/// Results come back in thread order, with the start time.
fn on_threads<T: Send>(
    n: u32,
    name: &str,
    body: impl Fn(u32, &Barrier) -> T + Sync,
    failed_to_start: impl Fn(u32, String) -> T + Sync,
) -> (Vec<T>, Instant) {
    let barrier = Barrier::new(n as usize + 1);
    let mut results = Vec::with_capacity(n as usize);
    let mut start = Instant::now();
    std::thread::scope(|scope| {
        let (barrier, body, failed_to_start) = (&barrier, &body, &failed_to_start);
        let handles: Vec<_> = (0..n)
            .map(|i| {
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .stack_size(128 * 1024)
                    .spawn_scoped(scope, move || body(i, barrier))
                    .unwrap_or_else(|e| {
                        let reason = format!("cannot start {name} thread: {e}");
                        std::thread::Builder::new()
                            .spawn_scoped(scope, move || {
                                barrier.wait();
                                failed_to_start(i, reason)
                            })
                            .expect("a small thread starts")
                    })
            })
            .collect();
        barrier.wait();
        start = Instant::now();
        for h in handles {
            results.push(h.join().expect("load threads do not panic"));
        }
    });
    (results, start)
}

/// The outcome of a client that never ran.
fn failed(error: String) -> ClientOutcome {
    ClientOutcome::new(Instant::now(), Some(error))
}

fn client_loop(
    cfg: &LoadConfig,
    client: u32,
    schedule: &[crate::mix::Op],
    device: BorrowedFd<'_>,
    barrier: &Barrier,
    issued: &AtomicU64,
) -> ClientOutcome {
    let conn = connect(&cfg.socket, cfg.io_timeout);
    barrier.wait();
    let begin = Instant::now();
    let mut out = ClientOutcome::new(begin, None);
    let mut s = match conn {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("connect: {e}"));
            return out;
        }
    };
    let requests: Vec<_> = schedule.iter().map(|op| op.request(client)).collect();
    let mut data = vec![0u8; usize::from(PR_IN_ALLOCATION_LENGTH)];
    let deadline = begin
        + match cfg.stop {
            Stop::Duration(d) => d.min(cfg.max_duration),
            Stop::Count(_) => cfg.max_duration,
        };
    if let Stop::Duration(d) = cfg.stop {
        // Room for a few hundred thousand samples up front; grows if needed.
        out.latencies.reserve((d.as_millis() as usize).min(1 << 18));
    }
    let mut i = client as usize;
    loop {
        if let Stop::Count(n) = cfg.stop {
            if issued.fetch_add(1, Ordering::Relaxed) >= n {
                break;
            }
        }
        let t0 = Instant::now();
        if t0 >= deadline {
            break;
        }
        let (cdb, params) = &requests[i % requests.len()];
        i += 1;
        match round_trip(&mut s, device, cdb, params, &mut data) {
            Ok(status) => {
                out.latencies.push(t0.elapsed().as_nanos() as u64);
                *out.statuses.entry(status).or_insert(0) += 1;
            }
            Err(e) => {
                out.error = Some(format!("request: {e}"));
                break;
            }
        }
    }
    out.end = Instant::now();
    if out.error.is_none() {
        out.stream = Some(s);
    }
    out
}

impl RunResult {
    /// A few human-readable lines.
    pub fn to_text(&self) -> String {
        let mut t = format!(
            "{} clients ({} connected), mix {}, {}\n\
             {} requests in {:.2} s: {:.0} requests/s, {} errors\n\
             latency µs: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}\n\
             replies: {}\n",
            self.clients,
            self.connected,
            self.mix,
            self.device,
            self.requests,
            self.elapsed_s,
            self.requests_per_s,
            self.errors,
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.latency.max_us,
            self.latency.mean_us,
            self.statuses
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        for e in &self.first_errors {
            t.push_str(&format!("error: {e}\n"));
        }
        if let Some(pid) = self.server.pid {
            let f = |s: &Option<ProcSnapshot>| {
                s.map_or("?".into(), |s| {
                    format!(
                        "RSS {} KiB, {} fds, {} threads",
                        s.rss_kib, s.fds, s.threads
                    )
                })
            };
            t.push_str(&format!(
                "server pid {pid}: before {}; loaded {}; after {}\n",
                f(&self.server.before),
                f(&self.server.loaded),
                f(&self.server.after)
            ));
        }
        t
    }
}
