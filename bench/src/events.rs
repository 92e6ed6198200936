//! The event-driven load generator: each generator thread drives its share of the clients'
//! connections through one epoll instance, instead of one blocking thread per client.
//!
//! The load is the same closed loop as the thread-per-client generator (every client has one
//! request in flight, as QEMU does, and sends the next as soon as the reply is complete), but the
//! generator itself costs far less: no thread wake-up and context switch per reply, and one
//! `sendmsg` per request (CDB and parameter data in one message, the descriptor on its first
//! byte) and usually one `recv` per reply. On a 2-CPU machine where the generator and the helper
//! share the cores, that leaves the helper most of the machine, which is what a throughput
//! comparison should measure.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use pr_proto::REPLY_HEADER_SIZE;
use rustix::buffer::spare_capacity;
use rustix::event::epoll;

use crate::load::{connect, ClientOutcome, LoadConfig, Stop};
use crate::mix::{Op, PR_IN_ALLOCATION_LENGTH};

/// How often, at most, clients are checked for a reply overdue by more than the I/O timeout.
const TIMEOUT_SCAN: Duration = Duration::from_millis(100);

/// One client's connection and where its current request stands.
struct Client {
    id: u32,
    stream: UnixStream,
    /// Each request of the schedule as it goes on the wire: CDB followed by parameter data.
    messages: Vec<Vec<u8>>,
    next: usize,
    /// When the request in flight was sent; `None` when the client has nothing in flight.
    sent_at: Option<Instant>,
    /// The reply so far: header, then up to the allocation length of data.
    reply: Vec<u8>,
    filled: usize,
    out: ClientOutcome,
    done: bool,
}

/// Runs clients `ids` on the calling thread until the configuration's stop, then returns one
/// outcome per client (in `ids` order). Connects and handshakes before waiting at `barrier`.
pub(crate) fn drive(
    cfg: &LoadConfig,
    ids: std::ops::Range<u32>,
    schedule: &[Op],
    device: BorrowedFd<'_>,
    barrier: &Barrier,
    issued: &AtomicU64,
) -> Vec<ClientOutcome> {
    let connected: Vec<(u32, io::Result<UnixStream>)> = ids
        .map(|id| {
            let s = connect(&cfg.socket, cfg.io_timeout).and_then(|s| {
                s.set_nonblocking(true)?;
                Ok(s)
            });
            (id, s)
        })
        .collect();
    let poller = epoll::create(epoll::CreateFlags::CLOEXEC);
    barrier.wait();
    let begin = Instant::now();
    let outcome = |error: Option<String>| ClientOutcome::new(begin, error);
    let poller = match poller {
        Ok(p) => p,
        Err(e) => {
            return connected
                .iter()
                .map(|_| outcome(Some(format!("epoll_create: {e}"))))
                .collect()
        }
    };
    let deadline = begin
        + match cfg.stop {
            Stop::Duration(d) => d.min(cfg.max_duration),
            Stop::Count(_) => cfg.max_duration,
        };
    let reserve = match cfg.stop {
        Stop::Duration(d) => (d.as_millis() as usize).min(1 << 18),
        Stop::Count(_) => 0,
    };

    let mut clients: Vec<Client> = Vec::with_capacity(connected.len());
    let mut failed: Vec<(u32, ClientOutcome)> = Vec::new();
    for (id, s) in connected {
        let stream = match s {
            Ok(s) => s,
            Err(e) => {
                failed.push((id, outcome(Some(format!("connect: {e}")))));
                continue;
            }
        };
        let slot = clients.len() as u64;
        if let Err(e) = epoll::add(
            &poller,
            &stream,
            epoll::EventData::new_u64(slot),
            epoll::EventFlags::IN,
        ) {
            failed.push((id, outcome(Some(format!("epoll_ctl: {e}")))));
            continue;
        }
        let messages = schedule
            .iter()
            .map(|op| {
                let (cdb, params) = op.request(id);
                let mut m = cdb.to_vec();
                m.extend_from_slice(&params);
                m
            })
            .collect();
        let mut out = outcome(None);
        out.latencies.reserve(reserve);
        clients.push(Client {
            id,
            stream,
            messages,
            next: id as usize,
            sent_at: None,
            reply: vec![0u8; REPLY_HEADER_SIZE + usize::from(PR_IN_ALLOCATION_LENGTH)],
            filled: 0,
            out,
            done: false,
        });
    }

    let mut active = 0;
    for c in &mut clients {
        if c.send_next(cfg, device, issued, deadline) {
            active += 1;
        }
    }
    let mut events = Vec::with_capacity(clients.len().clamp(1, 1024));
    let mut last_scan = Instant::now();
    while active > 0 {
        events.clear();
        let wait = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: TIMEOUT_SCAN.as_nanos() as i64,
        };
        match epoll::wait(&poller, spare_capacity(&mut events), Some(&wait)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                for c in clients.iter_mut().filter(|c| !c.done) {
                    c.fail(format!("epoll_wait: {e}"));
                }
                break;
            }
        }
        for ev in &events {
            let c = &mut clients[ev.data.u64() as usize];
            if c.done {
                continue;
            }
            match c.receive() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    let now = Instant::now();
                    let t0 = c
                        .sent_at
                        .take()
                        .expect("a reply answers a request in flight");
                    c.out
                        .latencies
                        .push(now.duration_since(t0).as_nanos() as u64);
                    *c.out.statuses.entry(status).or_insert(0) += 1;
                    c.out.end = now;
                    if !c.send_next(cfg, device, issued, deadline) {
                        active -= 1;
                    }
                }
                Err(e) => {
                    c.fail(format!("request: {e}"));
                    active -= 1;
                }
            }
        }
        let now = Instant::now();
        if now.duration_since(last_scan) >= TIMEOUT_SCAN {
            last_scan = now;
            for c in clients.iter_mut().filter(|c| !c.done) {
                if c.sent_at
                    .is_some_and(|t| now.duration_since(t) > cfg.io_timeout)
                {
                    c.fail(format!(
                        "request: no complete reply within {:?}",
                        cfg.io_timeout
                    ));
                    active -= 1;
                }
            }
        }
    }

    let mut all: Vec<(u32, ClientOutcome)> = clients
        .into_iter()
        .map(|mut c| {
            if c.out.error.is_none() {
                if let Err(e) = c.stream.set_nonblocking(false) {
                    c.out.error = Some(format!("set blocking: {e}"));
                } else {
                    c.out.stream = Some(c.stream);
                }
            }
            (c.id, c.out)
        })
        .chain(failed)
        .collect();
    all.sort_by_key(|(id, _)| *id);
    all.into_iter().map(|(_, o)| o).collect()
}

impl Client {
    /// Sends the next request of the schedule unless the run is over. Returns whether a request
    /// is now in flight.
    fn send_next(
        &mut self,
        cfg: &LoadConfig,
        device: BorrowedFd<'_>,
        issued: &AtomicU64,
        deadline: Instant,
    ) -> bool {
        if let Stop::Count(n) = cfg.stop {
            if issued.fetch_add(1, Ordering::Relaxed) >= n {
                self.done = true;
                return false;
            }
        }
        let t0 = Instant::now();
        if t0 >= deadline {
            self.done = true;
            return false;
        }
        let message = &self.messages[self.next % self.messages.len()];
        self.next += 1;
        self.filled = 0;
        self.sent_at = Some(t0);
        match pr_sys::scm::send_with_fds(self.stream.as_fd(), message, &[device]) {
            Ok(n) if n == message.len() => true,
            Ok(n) => {
                // One request is at most 16 + 8192 bytes and nothing else is queued on the
                // socket, so a short send means the helper stopped reading.
                self.fail(format!(
                    "request: the helper took {n} of {} bytes of a request",
                    message.len()
                ));
                false
            }
            Err(e) => {
                self.fail(format!("request: send: {e}"));
                false
            }
        }
    }

    /// Reads what the socket has. Returns the SCSI status once the reply is complete.
    fn receive(&mut self) -> io::Result<Option<u8>> {
        loop {
            let n = match rustix::io::read(&self.stream, &mut self.reply[self.filled..]) {
                Ok(n) => n,
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the helper closed the connection",
                ));
            }
            self.filled += n;
            if self.filled < REPLY_HEADER_SIZE {
                continue;
            }
            let h = &self.reply;
            let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
            if len > usize::from(PR_IN_ALLOCATION_LENGTH) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("reply data length {len} exceeds the allocation length"),
                ));
            }
            if self.filled < REPLY_HEADER_SIZE + len {
                continue;
            }
            if self.filled > REPLY_HEADER_SIZE + len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} bytes after a reply of {len} data bytes, with no request in flight",
                        self.filled - REPLY_HEADER_SIZE - len
                    ),
                ));
            }
            return Ok(Some(h[3]));
        }
    }

    fn fail(&mut self, error: String) {
        self.out.error = Some(error);
        self.out.end = Instant::now();
        self.done = true;
    }
}
