//! Cross-host fencing by content (issue 12): two pr-target logical units on one backing file,
//! "host A" and "host B", each with its own etcd client and host fence over a real 3-member
//! etcd cluster on loopback (B's client through proxies the test cuts: a real partition of its
//! TCP connections). B writes numbered blocks through its pr-target while A preempts it; after
//! A's PREEMPT returns, no further block of B's may reach the shared file, which the test reads
//! directly. The commands go through pr-target's request execution (`FencedLu::prepare` +
//! `run`, the layer below vhost-user) as CDB bytes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use pr_engine::{EngineConfig, Nexus};
use pr_scsi::transport_id::TransportId;
use pr_scsi::{RelativeTargetPort, Status};
use pr_store::{LuId, Store};
use pr_store_etcd::cluster::{Cluster, Timing};
use pr_store_etcd::fence::{HostFence, LeaseTiming};
use pr_store_etcd::proxy::Proxy;
use pr_store_etcd::{EtcdConfig, EtcdStore};
use pr_target::backing::{Backing, BackingError};
use pr_target::lu::{FencedLu, SlotId};
use pr_target::scsi::{BlockDevice, DiskIdentity, DiskServer};

mod common;
use common::open_after_drop;

const BLOCK: usize = 512;
/// B writes block n at LBA n % REGION.
const REGION: u64 = 64;
const FILE_BLOCKS: u64 = 256;

fn lease_timing() -> LeaseTiming {
    LeaseTiming {
        ttl: Duration::from_secs(4),
        renew_every: Duration::from_millis(500),
        margin: Duration::from_millis(1500),
        drift_ppm: 10_000,
    }
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The real backing file, with a write that can be held in flight (armed, the next write
/// reports that it started and waits to be released before it reaches the file).
struct Held {
    file: Backing,
    armed: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl BlockDevice for Held {
    fn size_bytes(&self) -> u64 {
        self.file.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let armed = self.armed.lock().unwrap().take();
        if let Some((started, release)) = armed {
            started.send(()).unwrap();
            release
                .recv_timeout(Duration::from_secs(60))
                .expect("the held write was released");
        }
        self.file.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.file.flush()
    }
    fn can_discard(&self) -> bool {
        false
    }
    fn discard(&self, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
}

fn nexus(name: &str, port: u16) -> Nexus {
    Nexus {
        initiator: TransportId::Iscsi {
            name: format!("iqn.2026-12.org.test:{name}"),
            isid: None,
        },
        relative_target_port: RelativeTargetPort(port),
    }
}

struct Host {
    lu: Arc<FencedLu<Held>>,
    slot: SlotId,
    fence: HostFence,
}

impl Host {
    fn cmd(&self, cdb: &[u8], data: &[u8]) -> pr_engine::Reply {
        match self.lu.prepare(cdb) {
            Ok(p) => self.lu.run(self.slot, cdb, &p, data),
            Err(r) => r,
        }
    }
}

/// One pr-target's logical unit on `path`, shared through etcd at `endpoints`.
fn host(endpoints: Vec<String>, id: &str, prefix: &str, path: &std::path::Path, n: Nexus) -> Host {
    host_with(endpoints, id, prefix, path, n, lease_timing())
}

/// [`host`] with its lease fence on `timing`.
fn host_with(
    endpoints: Vec<String>,
    id: &str,
    prefix: &str,
    path: &std::path::Path,
    n: Nexus,
    timing: LeaseTiming,
) -> Host {
    let mut c = EtcdConfig::new(endpoints);
    c.host_id = Some(id.into());
    c.prefix = prefix.into();
    c.request_timeout = Duration::from_secs(1);
    c.command_timeout = Duration::from_secs(3);
    let store = Arc::new(EtcdStore::open(c).unwrap());
    let fence = HostFence::start(Arc::clone(&store), timing).unwrap();
    let disk = Held {
        file: Backing::open_shared(path, false, BLOCK as u32).unwrap(),
        armed: Mutex::new(None),
    };
    let identity = DiskIdentity {
        vendor: *b"PR-HELP ",
        product: *b"pr-target       ",
        revision: *b"0001",
        serial: "SHARED0".into(),
        naa: vec![
            0x60, 0x01, 0x40, 0x5a, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ],
    };
    let mut lu = FencedLu::new_shared(
        LuId::new("shared0").unwrap(),
        DiskServer::new(disk, identity, BLOCK as u32, false),
        Arc::clone(&store),
        EngineConfig::default(),
    )
    .unwrap();
    let slot = lu.attach(n);
    let lu = Arc::new(lu);
    lu.share(&fence).unwrap();
    Host { lu, slot, fence }
}

fn params(key: u64, sa_key: u64) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p
}

// SPC-4 PERSISTENT RESERVE OUT (5Fh), PARAMETER LIST LENGTH 24: REGISTER (00h), RESERVE
// (01h), PREEMPT (04h) and PREEMPT AND ABORT (05h), TYPE 5 = WRITE EXCLUSIVE - REGISTRANTS
// ONLY.
const REGISTER: [u8; 10] = [0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0];
const RESERVE_WE_RO: [u8; 10] = [0x5f, 0x01, 0x05, 0, 0, 0, 0, 0, 24, 0];
const PREEMPT_WE_RO: [u8; 10] = [0x5f, 0x04, 0x05, 0, 0, 0, 0, 0, 24, 0];
const PREEMPT_ABORT_WE_RO: [u8; 10] = [0x5f, 0x05, 0x05, 0, 0, 0, 0, 0, 24, 0];

/// SBC-3 READ (10) of one block at `lba`.
fn read10(lba: u64) -> [u8; 10] {
    let l = (lba as u32).to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, 0, 1, 0]
}

/// SBC-3 WRITE (10) of one block at `lba`.
fn write10(lba: u64) -> [u8; 10] {
    let l = (lba as u32).to_be_bytes();
    [0x2a, 0, l[0], l[1], l[2], l[3], 0, 0, 1, 0]
}

/// Block `n` of host `tag`: its number, the tag, then the number's low byte.
fn block(tag: u8, n: u64) -> Vec<u8> {
    let mut b = vec![n as u8; BLOCK];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[8] = tag;
    b
}

/// The region's blocks as (tag, number), read from the file itself.
fn region(path: &std::path::Path) -> Vec<(u8, u64)> {
    let data = std::fs::read(path).unwrap();
    (0..REGION as usize)
        .map(|i| {
            let b = &data[i * BLOCK..(i + 1) * BLOCK];
            (b[8], u64::from_be_bytes(b[..8].try_into().unwrap()))
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Attempt {
    n: u64,
    started: Instant,
    status: Status,
    /// (sense key, ASC, ASCQ) when there is sense data.
    sense: Option<(u8, u8, u8)>,
}

/// B's writer: block after block until `stop`, each attempt recorded.
fn writer(b: Arc<Host>, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Attempt>>>) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let r = b.cmd(&write10(n % REGION), &block(b'B', n));
        let sense = r.sense.map(|s| (s.code.key.0, s.code.asc, s.code.ascq));
        log.lock().unwrap().push(Attempt {
            n,
            started,
            status: r.status,
            sense,
        });
        n += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Setup {
    _cluster: Cluster,
    proxies: Vec<Proxy>,
    observer: EtcdStore,
    a: Host,
    b: Arc<Host>,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A and B on one file; both registered, B holding WRITE EXCLUSIVE - REGISTRANTS ONLY.
fn setup(prefix: &str) -> Setup {
    let cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    let proxies: Vec<Proxy> = cluster.proxies().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared0.img");
    std::fs::write(&path, vec![0u8; FILE_BLOCKS as usize * BLOCK]).unwrap();
    let a = host(cluster.endpoints(), "a", prefix, &path, nexus("a", 1));
    let b = host(
        proxies.iter().map(Proxy::url).collect(),
        "b",
        prefix,
        &path,
        nexus("b", 2),
    );
    let mut c = EtcdConfig::new(cluster.endpoints());
    c.prefix = prefix.into();
    let observer = EtcdStore::open(c).unwrap();
    assert_eq!(a.cmd(&REGISTER, &params(0, 0xa)).status, Status::GOOD);
    assert_eq!(b.cmd(&REGISTER, &params(0, 0xb)).status, Status::GOOD);
    assert_eq!(b.cmd(&RESERVE_WE_RO, &params(0xb, 0)).status, Status::GOOD);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.fence.media_allowed() && b.fence.media_allowed()) {
        assert!(
            Instant::now() < deadline,
            "both hosts allowing media I/O within 10 s (A: {:?}, B: {:?})",
            a.fence.last_error(),
            b.fence.last_error()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Setup {
        _cluster: cluster,
        proxies,
        observer,
        a,
        b: Arc::new(b),
        path,
        _dir: dir,
    }
}

fn good_writes(log: &Mutex<Vec<Attempt>>) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|a| a.status == Status::GOOD)
        .count()
}

/// After `returned`: B's writer goes on for `more` attempts, none of which may succeed, and
/// the region of the file does not change. Then A overwrites the region and the file holds
/// A's blocks only. Returns the attempts after `returned`.
fn nothing_from_b_after(
    s: &Setup,
    log: &Mutex<Vec<Attempt>>,
    returned: Instant,
    more: usize,
) -> Vec<Attempt> {
    let snapshot = region(&s.path);
    wait_for(
        "B's writer trying again after the preemption",
        Duration::from_secs(30),
        || {
            log.lock()
                .unwrap()
                .iter()
                .filter(|a| a.started > returned)
                .count()
                >= more
        },
    );
    let after: Vec<Attempt> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.started > returned)
        .cloned()
        .collect();
    for a in &after {
        assert_ne!(
            a.status,
            Status::GOOD,
            "B's write of block {} started after A's PREEMPT returned and succeeded",
            a.n
        );
    }
    assert_eq!(
        region(&s.path),
        snapshot,
        "a block of B's reached the file after A's PREEMPT returned"
    );
    for lba in 0..REGION {
        // A may refuse for a moment when a renewal round of its own is late (a loaded
        // machine): LOGICAL UNIT COMMUNICATION FAILURE, then it serves again.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = s.a.cmd(&write10(lba), &block(b'A', lba));
            if r.status == Status::GOOD {
                break;
            }
            let lease = r
                .sense
                .is_some_and(|x| (x.code.asc, x.code.ascq) == (0x08, 0x00));
            assert!(
                lease && Instant::now() < deadline,
                "A's write at {lba}: {r:?} (A's fence: {:?})",
                s.a.fence.last_error()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    after
}

/// SPC-4: UNIT ATTENTION (6), REGISTRATIONS PREEMPTED (2Ah/05h).
const REGISTRATIONS_PREEMPTED: (u8, u8, u8) = (0x6, 0x2a, 0x05);

#[test]
fn a_preempted_host_writes_nothing_after_the_preempt_returns() {
    let s = setup("/fence1/");
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let w = {
        let (b, stop, log) = (Arc::clone(&s.b), Arc::clone(&stop), Arc::clone(&log));
        std::thread::spawn(move || writer(b, stop, log))
    };
    wait_for("B writing", Duration::from_secs(20), || {
        good_writes(&log) >= 10
    });
    // Hold B's next write inside its medium: in flight when A preempts.
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    *s.b.lu.disk().device().armed.lock().unwrap() = Some((started_tx, release_rx));
    started
        .recv_timeout(Duration::from_secs(20))
        .expect("B's write started");
    let held = log.lock().unwrap().len() as u64; // the held write is the next attempt
    let (done_tx, done) = mpsc::channel();
    let preempt = {
        let (a_lu, a_slot) = (Arc::clone(&s.a.lu), s.a.slot);
        std::thread::spawn(move || {
            let p = a_lu.prepare(&PREEMPT_WE_RO).unwrap();
            let r = a_lu.run(a_slot, &PREEMPT_WE_RO, &p, &params(0xa, 0xb));
            done_tx.send(Instant::now()).unwrap();
            r
        })
    };
    if done.recv_timeout(Duration::from_millis(1500)).is_ok() {
        let r = preempt.join().unwrap();
        release.send(()).unwrap();
        panic!("A's PREEMPT returned while B's write was in flight: {r:?}");
    }
    // B's lease is alive: A is waiting for B's acknowledgement, not for an expiry.
    assert!(s
        .observer
        .lease_remaining(s.b.fence.lease_id())
        .unwrap()
        .is_some());
    release.send(()).unwrap();
    let returned = done
        .recv_timeout(lease_timing().ack_wait() + Duration::from_secs(10))
        .expect("A's PREEMPT returned");
    let r = preempt.join().unwrap();
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    // The held write landed before the PREEMPT returned.
    let lba = (held % REGION) as usize;
    assert_eq!(
        region(&s.path)[lba],
        (b'B', held),
        "the held block is in the file"
    );
    nothing_from_b_after(&s, &log, returned, 20);
    // After the held write, B reports the preemption once, then conflicts (a command may
    // also meet B's renewal round not done yet: the held drain kept B's view unsettled, and
    // B refuses media I/O then, LOGICAL UNIT COMMUNICATION FAILURE).
    wait_for(
        "B conflicting after the preemption",
        Duration::from_secs(30),
        || {
            log.lock()
                .unwrap()
                .iter()
                .any(|a| a.started > returned && a.status == Status::RESERVATION_CONFLICT)
        },
    );
    let log_now = log.lock().unwrap().clone();
    let since_held: Vec<&Attempt> = log_now.iter().filter(|a| a.n > held).collect();
    let ua = since_held
        .iter()
        .filter(|a| a.sense == Some(REGISTRATIONS_PREEMPTED))
        .count();
    assert_eq!(
        ua, 1,
        "REGISTRATIONS PREEMPTED reported once: {since_held:?}"
    );
    for a in &since_held {
        assert_ne!(a.status, Status::GOOD, "{a:?}");
    }
    // B acknowledged (its lease never lapsed).
    assert_eq!(s.b.fence.grants(), 1);
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    assert!(region(&s.path).iter().all(|&(tag, _)| tag == b'A'));
}

#[test]
fn a_partitioned_host_writes_nothing_after_the_preempt_returns() {
    let s = setup("/fence2/");
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let w = {
        let (b, stop, log) = (Arc::clone(&s.b), Arc::clone(&stop), Arc::clone(&log));
        std::thread::spawn(move || writer(b, stop, log))
    };
    wait_for("B writing", Duration::from_secs(20), || {
        good_writes(&log) >= 10
    });
    let b_lease = s.b.fence.lease_id();
    for p in &s.proxies {
        p.cut();
    }
    let cut = Instant::now();
    // Cut off, B stops by itself: its writes end with CHECK CONDITION, LOGICAL UNIT
    // COMMUNICATION FAILURE (SPC-4 ASC 08h, ASCQ 00h).
    wait_for(
        "B answering errors while partitioned",
        Duration::from_secs(20),
        || {
            log.lock().unwrap().iter().any(|a| {
                a.started > cut
                    && a.status == Status::CHECK_CONDITION
                    && a.sense
                        .is_some_and(|(_, asc, ascq)| (asc, ascq) == (0x08, 0x00))
            })
        },
    );
    assert!(!s.b.fence.media_allowed());
    let r = s.a.cmd(&PREEMPT_ABORT_WE_RO, &params(0xa, 0xb));
    let returned = Instant::now();
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    // It could return only because B's lease ran out in etcd, after B stopped.
    assert_eq!(s.observer.lease_remaining(b_lease).unwrap(), None);
    let v = s.b.fence.valid_until().expect("B had a validity");
    assert!(v < returned);
    let after = nothing_from_b_after(&s, &log, returned, 20);
    assert!(after.iter().all(|a| a.status == Status::CHECK_CONDITION));

    // Healed, B catches up before it touches the medium: its writes report the preemption
    // and conflict, and the file keeps A's blocks.
    for p in &s.proxies {
        p.heal();
    }
    let healed = Instant::now();
    wait_for("B under a new lease", Duration::from_secs(30), || {
        s.b.fence.grants() >= 2 && s.b.fence.media_allowed()
    });
    wait_for(
        "B conflicting after the heal",
        Duration::from_secs(30),
        || {
            log.lock()
                .unwrap()
                .iter()
                .any(|a| a.started > healed && a.status == Status::RESERVATION_CONFLICT)
        },
    );
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    let log = log.lock().unwrap();
    for a in log.iter().filter(|a| a.started > returned) {
        assert_ne!(
            a.status,
            Status::GOOD,
            "B's block {} after the preemption",
            a.n
        );
    }
    assert!(log
        .iter()
        .any(|a| a.started > healed && a.sense == Some(REGISTRATIONS_PREEMPTED)));
    assert!(region(&s.path).iter().all(|&(tag, _)| tag == b'A'));
    // The state B serves is the one etcd holds (B no longer registered).
    let stored = s
        .observer
        .load(&LuId::new("shared0").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(s.b.lu.state(), stored);
    assert!(stored.registration(&nexus("b", 2)).is_none());
}

#[test]
fn a_shared_backing_admits_other_fenced_targets_and_refuses_a_local_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.img");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let one = Backing::open_shared(&path, false, 512).unwrap();
    let two = Backing::open_shared(&path, false, 512).unwrap();
    assert!(matches!(
        Backing::open(&path, false),
        Err(BackingError::Locked { .. })
    ));
    drop((one, two));
    let local = open_after_drop("a local open after both shared ones were dropped", || {
        Backing::open(&path, false)
    });
    let e = Backing::open_shared(&path, false, 512).unwrap_err();
    assert!(matches!(e, BackingError::LockedExclusive { .. }));
    assert!(e.to_string().contains("locked exclusively"), "{e}");
    drop(local);
}

/// The gRPC messages the cluster's members have received so far, by etcd's own count (its
/// `/metrics` page on each client URL: `grpc_server_msg_received_total`, summed over methods
/// and members; a unary request is one message, a stream counts each).
fn etcd_messages_received(cluster: &Cluster) -> u64 {
    use std::io::{Read, Write};
    let mut total = 0u64;
    for m in &cluster.members {
        let addr = m.client_addr();
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {addr} for /metrics: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut page = String::new();
        s.read_to_string(&mut page)
            .unwrap_or_else(|e| panic!("reading {addr}/metrics: {e}"));
        let mut found = false;
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") {
                let v = rest.rsplit(' ').next().unwrap_or("");
                let v: f64 = v
                    .parse()
                    .unwrap_or_else(|_| panic!("{addr}/metrics: not a count: {line}"));
                total += v as u64;
                found = true;
            }
        }
        assert!(
            found,
            "{addr}/metrics has no grpc_server_msg_received_total: {}",
            page.chars().take(300).collect::<String>()
        );
    }
    total
}

/// The claim of docs/etcd.md and docs/performance.md that steady-state media I/O on a shared
/// LU makes no etcd round trip, counted by etcd itself: while one host runs thousands of READs
/// and WRITEs through pr-target's request execution under a reservation, the cluster receives
/// no gRPC message at all (the window is taken between two renewal rounds of a long renewal
/// period; a window that a round fell into is taken again). A PR OUT afterwards is counted,
/// so the count does see this host's requests.
#[test]
fn steady_state_media_io_sends_etcd_no_request() {
    const IOS: u64 = 2000;
    let cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared0.img");
    std::fs::write(&path, vec![0u8; FILE_BLOCKS as usize * BLOCK]).unwrap();
    let prefix = "/no-round-trip/";
    // Another host registers both nexuses and reserves WRITE EXCLUSIVE - REGISTRANTS ONLY for
    // B, then leaves: A's writes are allowed by its registration, checked on every command.
    {
        let mut c = EtcdConfig::new(cluster.endpoints());
        c.prefix = prefix.into();
        c.host_id = Some("setup".into());
        let other = EtcdStore::open(c).unwrap();
        let lu = LuId::new("shared0").unwrap();
        let cfg = EngineConfig::default();
        for (n, cdb, p) in [
            (nexus("b", 2), REGISTER, params(0, 0xb)),
            (nexus("b", 2), RESERVE_WE_RO, params(0xb, 0)),
            (nexus("a", 1), REGISTER, params(0, 0xa)),
        ] {
            let o = other.execute(&lu, &n, &cdb, &p, &cfg).unwrap();
            assert_eq!(o.reply.status, Status::GOOD);
        }
    }
    // Renewal rounds 10 s apart (TTL 30 s): the windows fall between them.
    let timing = LeaseTiming {
        ttl: Duration::from_secs(30),
        renew_every: Duration::from_secs(10),
        margin: Duration::from_secs(1),
        drift_ppm: 10_000,
    };
    let a = host_with(
        cluster.endpoints(),
        "a",
        prefix,
        &path,
        nexus("a", 1),
        timing,
    );
    wait_for("A allowing media I/O", Duration::from_secs(10), || {
        a.fence.media_allowed()
    });
    // Warm-up: the first commands of the nexus on this state.
    for lba in 0..10 {
        assert_eq!(a.cmd(&write10(lba), &block(b'A', lba)).status, Status::GOOD);
        assert_eq!(a.cmd(&read10(lba), &[]).status, Status::GOOD);
    }
    let mut clean = None;
    for attempt in 0..3 {
        wait_for(
            "no renewal round in flight",
            Duration::from_secs(20),
            || {
                let (started, ended) = a.fence.rounds();
                started == ended
            },
        );
        let rounds = a.fence.rounds();
        let before = etcd_messages_received(&cluster);
        for i in 0..IOS / 2 {
            let lba = i % REGION;
            let w = a.cmd(&write10(lba), &block(b'A', i));
            assert_eq!(w.status, Status::GOOD, "write {i}: {w:?}");
            let r = a.cmd(&read10(lba), &[]);
            assert_eq!(r.status, Status::GOOD, "read {i}: {r:?}");
        }
        let after = etcd_messages_received(&cluster);
        if a.fence.rounds() != rounds {
            eprintln!("window {attempt}: a renewal round fell into it; again");
            continue;
        }
        clean = Some(after - before);
        break;
    }
    let during = clean.expect("a window without a renewal round in 3 tries (10 s apart)");
    assert_eq!(
        during, 0,
        "etcd received {during} gRPC messages during {IOS} media I/Os in steady state"
    );
    // The count sees this host: a PR OUT (a new key for A) is a transaction.
    let before = etcd_messages_received(&cluster);
    assert_eq!(a.cmd(&REGISTER, &params(0xa, 0xa2)).status, Status::GOOD);
    let after = etcd_messages_received(&cluster);
    assert!(
        after > before,
        "a PR OUT was not counted ({before} → {after})"
    );
}
