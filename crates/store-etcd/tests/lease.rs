//! The host fence against a real 3-member etcd cluster on loopback: a host's lease, renewed,
//! allows media I/O; cut off from etcd (its proxies cut, a real partition of its TCP
//! connections) it stops by itself while etcd still holds the lease; a command that takes
//! access away waits for the other host's acknowledgement, which comes only after that host
//! has applied the change and drained, or for the other host's lease to run out.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use pr_engine::{EngineConfig, LogicalUnit};
use pr_scsi::Status;
use pr_store::LuId;
use pr_store_etcd::cluster::{Cluster, Timing};
use pr_store_etcd::fence::{takes_access_away, HostFence, LeaseTiming, SharedLu};
use pr_store_etcd::proxy::Proxy;
use pr_store_etcd::workload::nexus;
use pr_store_etcd::{EtcdConfig, EtcdStore};

/// Short enough for a test, generous against a loaded machine: a renewal every 500 ms keeps
/// the validity about 2 s ahead; etcd cannot expire the lease until 1.5 s (+ 1 %) after the
/// host has stopped.
fn lease_timing() -> LeaseTiming {
    LeaseTiming {
        ttl: Duration::from_secs(4),
        renew_every: Duration::from_millis(500),
        margin: Duration::from_millis(1500),
        drift_ppm: 10_000,
    }
}

fn config(endpoints: Vec<String>, host: &str, prefix: &str) -> EtcdConfig {
    let mut c = EtcdConfig::new(endpoints);
    c.host_id = Some(host.into());
    c.prefix = prefix.into();
    c.request_timeout = Duration::from_secs(1);
    c.command_timeout = Duration::from_secs(3);
    c
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A served logical unit standing in for a target: it records what it applied, and can be
/// made to hold the next change, as a target whose write in flight has not finished yet.
#[derive(Default)]
struct Unit {
    revision: AtomicI64,
    state: Mutex<LogicalUnit>,
    hold: Mutex<Option<(mpsc::Sender<i64>, mpsc::Receiver<()>)>>,
    /// Revisions whose apply returned, in order.
    applied: Mutex<Vec<(i64, Instant)>>,
}

impl SharedLu for Unit {
    fn revision(&self) -> i64 {
        self.revision.load(Ordering::SeqCst)
    }
    fn apply(&self, revision: i64, state: LogicalUnit) {
        if let Some((started, release)) = self.hold.lock().unwrap().take() {
            started.send(revision).unwrap();
            release
                .recv_timeout(Duration::from_secs(30))
                .expect("released");
        }
        *self.state.lock().unwrap() = state;
        self.revision.store(revision, Ordering::SeqCst);
        self.applied
            .lock()
            .unwrap()
            .push((revision, Instant::now()));
    }
}

fn weak(u: &Arc<Unit>) -> Weak<dyn SharedLu> {
    Arc::downgrade(u) as Weak<dyn SharedLu>
}

fn params(key: u64, sa_key: u64) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p
}

// SPC-4 PERSISTENT RESERVE OUT: REGISTER (00h), RESERVE (01h) and PREEMPT (04h) with TYPE 5
// (WRITE EXCLUSIVE - REGISTRANTS ONLY), PARAMETER LIST LENGTH 24.
const REGISTER: [u8; 10] = [0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0];
const RESERVE_WE_RO: [u8; 10] = [0x5f, 0x01, 0x05, 0, 0, 0, 0, 0, 24, 0];
const PREEMPT_WE_RO: [u8; 10] = [0x5f, 0x04, 0x05, 0, 0, 0, 0, 0, 24, 0];

struct Hosts {
    _cluster: Cluster,
    proxies: Vec<Proxy>,
    observer: EtcdStore,
    a: HostFence,
    b: HostFence,
    unit_a: Arc<Unit>,
    unit_b: Arc<Unit>,
    lu_a: pr_store_etcd::fence::LuFence,
    _lu_b: pr_store_etcd::fence::LuFence,
}

/// Hosts A (direct) and B (through proxies that can be cut) serving one LU, with nexus 1
/// (A's) and nexus 2 (B's, say) registered and nexus 2 holding WRITE EXCLUSIVE - REGISTRANTS
/// ONLY.
fn two_hosts(prefix: &str) -> Hosts {
    let cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    let proxies: Vec<Proxy> = cluster.proxies().unwrap();
    let sa = Arc::new(EtcdStore::open(config(cluster.endpoints(), "a", prefix)).unwrap());
    let sb = Arc::new(
        EtcdStore::open(config(
            proxies.iter().map(Proxy::url).collect(),
            "b",
            prefix,
        ))
        .unwrap(),
    );
    let observer = EtcdStore::open(config(cluster.endpoints(), "o", prefix)).unwrap();
    let a = HostFence::start(Arc::clone(&sa), lease_timing()).unwrap();
    let b = HostFence::start(Arc::clone(&sb), lease_timing()).unwrap();
    let lu = LuId::new("shared0").unwrap();
    let (unit_a, unit_b) = (Arc::new(Unit::default()), Arc::new(Unit::default()));
    let lu_a = a.serve(&lu, weak(&unit_a)).unwrap();
    let lu_b = b.serve(&lu, weak(&unit_b)).unwrap();
    let cfg = EngineConfig::default();
    for (n, key) in [(1, 0xa), (2, 0xb)] {
        let c = lu_a
            .execute(&nexus(n), &REGISTER, &params(0, key), &cfg)
            .unwrap();
        assert_eq!(c.outcome.reply.status, Status::GOOD);
    }
    let c = lu_a
        .execute(&nexus(2), &RESERVE_WE_RO, &params(0xb, 0), &cfg)
        .unwrap();
    assert_eq!(c.outcome.reply.status, Status::GOOD);
    // B's view catches up through its watch and it acknowledges.
    wait_for(
        "B applying the reservation",
        Duration::from_secs(10),
        || unit_b.revision() >= c.revision,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.media_allowed() && b.media_allowed()) {
        assert!(
            Instant::now() < deadline,
            "both hosts allowing media I/O: not within 10 s (A: {:?}, B: {:?})",
            a.last_error(),
            b.last_error()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Hosts {
        _cluster: cluster,
        proxies,
        observer,
        a,
        b,
        unit_a,
        unit_b,
        lu_a,
        _lu_b: lu_b,
    }
}

#[test]
fn a_partitioned_host_stops_media_io_before_its_lease_expires_in_etcd() {
    let h = two_hosts("/lease1/");
    let first = h.b.valid_until().unwrap();
    wait_for("two more renewals", Duration::from_secs(10), || {
        h.b.renewals() >= 3
    });
    assert!(h.b.valid_until().unwrap() > first, "renewals extend it");
    let id = h.b.lease_id();
    assert!(h.observer.lease_remaining(id).unwrap().is_some());

    for p in &h.proxies {
        p.cut();
    }
    let cut = Instant::now();
    // An observer polls etcd for the lease while the host runs out. The host stops admitting
    // at its validity V by construction; some observation sent after V must still find the
    // lease alive (etcd expires it only after the margin). An observation that fails (a loaded
    // machine) proves nothing either way and is not counted.
    let mut last_alive_sent = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the lease never expired in etcd");
        let sent = Instant::now();
        match h.observer.lease_remaining(id) {
            Ok(Some(_)) => last_alive_sent = Some(sent),
            Ok(None) => break,
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let alive = last_alive_sent.expect("the lease was alive after the cut");
    let v = h.b.valid_until().expect("a validity");
    assert!(
        v < alive,
        "the partitioned host still allowed media I/O when etcd could have expired its lease \
         (the last observation finding the lease alive was sent {:?} before V)",
        v.saturating_duration_since(alive)
    );
    // V came from a renewal round started before the cut (none succeeds after it).
    assert!(v < cut + lease_timing().ttl);
    assert!(!h.b.media_allowed());
    assert!(h.b.last_error().is_some());
    // A, not partitioned, goes on.
    wait_for("A allowing media I/O", Duration::from_secs(10), || {
        h.a.media_allowed()
    });

    // Healed: a new lease, and media I/O again.
    for p in &h.proxies {
        p.heal();
    }
    wait_for(
        "the healed host allowing media I/O under a new lease",
        Duration::from_secs(20),
        || h.b.grants() >= 2 && h.b.media_allowed(),
    );
    assert_ne!(h.b.lease_id(), id);
}

#[test]
fn a_fencing_command_waits_for_the_other_hosts_ack_after_its_drain() {
    let h = two_hosts("/lease2/");
    let cfg = EngineConfig::default();
    // B will hold the next change in its apply, as a write in flight being drained.
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    *h.unit_b.hold.lock().unwrap() = Some((started_tx, release_rx));
    let c = h
        .lu_a
        .execute(&nexus(1), &PREEMPT_WE_RO, &params(0xa, 0xb), &cfg)
        .unwrap();
    assert_eq!(c.outcome.reply.status, Status::GOOD);
    let before = c.before.clone().unwrap();
    assert!(takes_access_away(
        &before,
        c.outcome.state.as_ref().unwrap()
    ));
    let r = c.revision;
    let held = started
        .recv_timeout(Duration::from_secs(10))
        .expect("B's watch delivered the preemption");
    assert_eq!(held, r);
    let (done_tx, done) = mpsc::channel();
    let waiter = {
        let lu_a = h.lu_a;
        std::thread::spawn(move || {
            let result = lu_a.wait_acks(r);
            done_tx.send(Instant::now()).unwrap();
            result
        })
    };
    assert_eq!(
        done.recv_timeout(Duration::from_millis(1000)),
        Err(mpsc::RecvTimeoutError::Timeout),
        "wait_acks returned while the other host was still draining"
    );
    release.send(()).unwrap();
    let returned = done
        .recv_timeout(lease_timing().ack_wait() + Duration::from_secs(5))
        .expect("wait_acks returned after the ack");
    waiter.join().unwrap().expect("acknowledged");
    let applied = h.unit_b.applied.lock().unwrap().clone();
    let (_, at) = applied
        .iter()
        .find(|(rev, _)| *rev >= r)
        .expect("B applied the preemption");
    assert!(*at < returned, "the ack came before B's apply returned");
    // B's lease was alive throughout: it acknowledged, it did not expire. (B may have
    // refused media I/O for a moment meanwhile: while its apply was held, its view was not
    // settled and its renewal rounds did not extend the validity.)
    assert!(h
        .observer
        .lease_remaining(h.b.lease_id())
        .unwrap()
        .is_some());
    assert_eq!(h.b.grants(), 1);
    // A has it too (its own watch), and nobody waits for A itself.
    wait_for("A applying its own change", Duration::from_secs(10), || {
        h.unit_a.revision() >= r
    });
}

#[test]
fn a_fencing_command_waits_for_a_partitioned_hosts_lease_to_run_out() {
    let h = two_hosts("/lease3/");
    let cfg = EngineConfig::default();
    let b_lease = h.b.lease_id();
    for p in &h.proxies {
        p.cut();
    }
    let cut = Instant::now();
    let c = h
        .lu_a
        .execute(&nexus(1), &PREEMPT_WE_RO, &params(0xa, 0xb), &cfg)
        .unwrap();
    assert_eq!(c.outcome.reply.status, Status::GOOD);
    h.lu_a.wait_acks(c.revision).expect("B's lease ran out");
    let returned = Instant::now();
    // It returned because B's lease is gone in etcd, after B had stopped by itself.
    assert_eq!(h.observer.lease_remaining(b_lease).unwrap(), None);
    assert!(!h.b.media_allowed());
    let v = h.b.valid_until().expect("B had a validity");
    assert!(v < returned, "A returned while B could still run I/O");
    assert!(h.unit_b.revision() < c.revision, "B never saw it");
    assert!(
        returned - cut < lease_timing().ack_wait(),
        "the wait is bounded by the lease"
    );
    // Healed, B catches up before it runs I/O again, under a new lease.
    for p in &h.proxies {
        p.heal();
    }
    wait_for(
        "B allowing media I/O again",
        Duration::from_secs(20),
        || h.b.media_allowed(),
    );
    assert!(
        h.unit_b.revision() >= c.revision,
        "B's view is current first"
    );
    assert!(h.b.grants() >= 2);
    wait_for(
        "B acknowledging the preemption under its new lease",
        Duration::from_secs(10),
        || {
            let acks = h.lu_a.acknowledgements().unwrap();
            acks.get(h.b.host()).is_some_and(|&r| r >= c.revision)
        },
    );
}

#[test]
fn lease_timings_are_checked() {
    let t = LeaseTiming {
        ttl: Duration::from_millis(1500),
        ..LeaseTiming::default()
    };
    assert!(t
        .validate()
        .unwrap_err()
        .to_string()
        .contains("whole seconds"));
    let t = LeaseTiming {
        ttl: Duration::from_secs(2),
        renew_every: Duration::from_secs(1),
        margin: Duration::from_secs(1),
        drift_ppm: 10_000,
    };
    assert!(t
        .validate()
        .unwrap_err()
        .to_string()
        .contains("renew more often"));
    let t = LeaseTiming {
        drift_ppm: 700_000,
        ..LeaseTiming::default()
    };
    assert!(t
        .validate()
        .unwrap_err()
        .to_string()
        .contains("drift 700000 ppm"));
    let t = LeaseTiming {
        margin: Duration::ZERO,
        ..LeaseTiming::default()
    };
    assert!(t
        .validate()
        .unwrap_err()
        .to_string()
        .contains("margin 0ns: expected at least 100ms"));
    LeaseTiming::default().validate().unwrap();
    // With the store's request timeout: a round taking the whole of it must still end
    // within the validity (6 s × 0.99 − 1 s = 4.94 s).
    LeaseTiming::default()
        .validate_with(Duration::from_secs(2))
        .unwrap();
    let e = LeaseTiming::default()
        .validate_with(Duration::from_secs(3))
        .unwrap_err()
        .to_string();
    assert!(e.contains("renew_every 2s + request_timeout 3s"), "{e}");
    // The validity is measured from the send, shrunk by the drift bound, less the margin.
    let t = LeaseTiming::default();
    let sent = Instant::now();
    let v = t.valid_until(sent, Duration::from_secs(6)).unwrap();
    assert_eq!(
        v - sent,
        Duration::from_millis(5940) - Duration::from_secs(1)
    );
}

#[test]
fn what_takes_access_away() {
    let cfg = EngineConfig::default();
    let run = |lu: &LogicalUnit, n: u16, cdb: &[u8], p: Vec<u8>| {
        let o = lu.execute(&nexus(n), cdb, &p, &cfg);
        o.state.unwrap_or_else(|| lu.clone())
    };
    let empty = LogicalUnit::default();
    let one = run(&empty, 1, &REGISTER, params(0, 0xa));
    assert!(!takes_access_away(&empty, &one), "a new registration");
    let two = run(&one, 2, &REGISTER, params(0, 0xb));
    let reserved = run(&two, 1, &RESERVE_WE_RO, params(0xa, 0));
    assert!(takes_access_away(&two, &reserved), "a new reservation");
    let preempted = run(&reserved, 1, &PREEMPT_WE_RO, params(0xa, 0xb));
    assert!(takes_access_away(&reserved, &preempted), "a preemption");
    let unregistered = run(&two, 2, &REGISTER, params(0xb, 0));
    assert!(takes_access_away(&two, &unregistered), "an unregistration");
    let rekeyed = run(&two, 2, &REGISTER, params(0xb, 0xc));
    assert!(!takes_access_away(&two, &rekeyed), "a new key");
    // RELEASE (02h) of the reservation only gives access back.
    let release = [0x5f, 0x02, 0x05, 0, 0, 0, 0, 0, 24, 0];
    let released = run(&reserved, 1, &release, params(0xa, 0));
    assert!(released.reservation.is_none());
    assert!(!takes_access_away(&reserved, &released), "a release");
}
