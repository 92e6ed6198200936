//! The etcd store against a real 3-member etcd cluster on loopback (Debian's etcd-server,
//! which scripts/setup installs): the store's semantics next to the SQLite store's, unit
//! attentions across hosts, exactly-once across a lost answer, and bounded errors when etcd
//! is unreachable.

use std::time::{Duration, Instant};

use pr_engine::{EngineConfig, LogicalUnit};
use pr_scsi::{SenseCode, Status};
use pr_store::{ErrorKind, LuId, SqliteStore, Store};
use pr_store_etcd::cluster::{Cluster, Timing};
use pr_store_etcd::proxy::Proxy;
use pr_store_etcd::workload::{self, key, nexus, pr_in, pr_out};
use pr_store_etcd::{EtcdConfig, EtcdStore};

fn config(endpoints: Vec<String>, host: &str, prefix: &str) -> EtcdConfig {
    let mut c = EtcdConfig::new(endpoints);
    c.host_id = Some(host.into());
    c.prefix = prefix.into();
    c.command_timeout = Duration::from_secs(2);
    c.request_timeout = Duration::from_millis(700);
    c.connect_timeout = Duration::from_secs(3);
    c
}

fn lu() -> LuId {
    LuId::new("naa.6001405000000000000000000000e7c1").unwrap()
}

/// Waits for `cond`, at most `timeout`, naming `what` when it does not come.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn same_answers_as_the_sqlite_store_for_a_command_mix() {
    let cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    let etcd = EtcdStore::open(config(cluster.endpoints(), "a", "/t1/")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("s.db")).unwrap();
    let cfg = EngineConfig::default();
    let lu = lu();
    let mut rng = workload::Rng::new(7);
    for n in 0..150 {
        let me = rng.below(4) as u16;
        let (cdb, params) = workload::command(&mut rng, workload::Mix::Cluster, me, 4, n);
        let a = etcd.execute(&lu, &nexus(me), &cdb, &params, &cfg).unwrap();
        let b = sqlite
            .execute(&lu, &nexus(me), &cdb, &params, &cfg)
            .unwrap();
        assert_eq!(a, b, "command {n} ({cdb:02x?}) answered differently");
    }
    assert_eq!(etcd.load(&lu).unwrap(), sqlite.load(&lu).unwrap());
    assert_eq!(etcd.list().unwrap(), vec![lu.clone()]);
    // Power loss, import and clear behave like SQLite's.
    etcd.power_loss(&lu).unwrap();
    sqlite.power_loss(&lu).unwrap();
    assert_eq!(etcd.load(&lu).unwrap(), sqlite.load(&lu).unwrap());
    let mut s = LogicalUnit::default();
    let (c, p) = pr_out(0, 0, 0, 0x77);
    s = s.execute(&nexus(9), &c, &p, &cfg).state.unwrap();
    etcd.import(&lu, &s).unwrap();
    assert_eq!(etcd.load(&lu).unwrap(), Some(s));
    let mut bad = LogicalUnit::default();
    bad.registrants.push(pr_engine::Registrant {
        nexus: nexus(1),
        key: pr_scsi::ReservationKey(0),
        all_tg_pt: false,
    });
    assert_eq!(
        etcd.import(&lu, &bad).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    etcd.clear(&lu).unwrap();
    assert_eq!(etcd.load(&lu).unwrap(), None);
    assert!(etcd.list().unwrap().is_empty());
    etcd.clear(&lu).unwrap();
}

#[test]
fn a_preempted_nexus_on_another_host_gets_its_unit_attention_there() {
    let cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    let eps = cluster.endpoints();
    let a = EtcdStore::open(config(eps.clone(), "host-a", "/t2/")).unwrap();
    let b = EtcdStore::open(config(eps, "host-b", "/t2/")).unwrap();
    let cfg = EngineConfig::default();
    let lu = lu();
    let run = |s: &EtcdStore, who: u16, (c, p): (Vec<u8>, Vec<u8>)| {
        s.execute(&lu, &nexus(who), &c, &p, &cfg).unwrap()
    };
    // B (nexus 2) registers and reserves WRITE EXCLUSIVE - REGISTRANTS ONLY; A (nexus 1)
    // registers and preempts it.
    assert_eq!(
        run(&b, 2, pr_out(6, 0, 0, key(2))).reply.status,
        Status::GOOD
    );
    assert_eq!(
        run(&b, 2, pr_out(1, 5, key(2), 0)).reply.status,
        Status::GOOD
    );
    assert_eq!(
        run(&a, 1, pr_out(6, 0, 0, key(1))).reply.status,
        Status::GOOD
    );
    let o = run(&a, 1, pr_out(4, 5, key(1), key(2)));
    assert_eq!(o.reply.status, Status::GOOD);
    assert_eq!(o.access_lost, vec![nexus(2)]);
    // On host B, nexus 2's next command reports REGISTRATIONS PREEMPTED (SPC-4 §5.13.11.4),
    // once.
    let ua = run(&b, 2, pr_in(0));
    assert_eq!(ua.reply.status, Status::CHECK_CONDITION);
    assert_eq!(
        ua.reply.sense.unwrap().code,
        SenseCode::REGISTRATIONS_PREEMPTED
    );
    let keys = run(&b, 2, pr_in(0));
    assert_eq!(keys.reply.status, Status::GOOD);
    // READ KEYS: generation 3 (three registrations changed it... REGISTER, REGISTER, PREEMPT),
    // one key, A's.
    let mut want = vec![0, 0, 0, 3, 0, 0, 0, 8];
    want.extend_from_slice(&key(1).to_be_bytes());
    assert_eq!(keys.reply.data, want);
}

#[test]
fn a_retry_after_a_lost_answer_is_answered_from_the_record_not_applied_twice() {
    let cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    // Host A reaches the cluster only through proxies whose answers the test can lose.
    let proxies: Vec<Proxy> = cluster.proxies().unwrap();
    let mut cfg_a = config(proxies.iter().map(Proxy::url).collect(), "host-a", "/t3/");
    cfg_a.command_timeout = Duration::from_secs(6);
    cfg_a.request_timeout = Duration::from_millis(500);
    let a = EtcdStore::open(cfg_a).unwrap();
    let observer = EtcdStore::open(config(cluster.endpoints(), "obs", "/t3/")).unwrap();
    let cfg = EngineConfig::default();
    let lu = lu();
    let (c, p) = pr_out(6, 0, 0, key(1));
    a.execute(&lu, &nexus(1), &c, &p, &cfg).unwrap();
    let generation = |s: &EtcdStore| s.load(&lu).unwrap().map(|l| l.generation.0);
    assert_eq!(generation(&observer), Some(1));
    // REGISTER AND IGNORE EXISTING KEY with a new key, while every answer to A is lost.
    for p in &proxies {
        p.cut_answers();
    }
    let (c, p) = pr_out(6, 0, 0, key(1) + 100);
    let outcome = std::thread::scope(|s| {
        let call = s.spawn(|| a.execute(&lu, &nexus(1), &c, &p, &cfg));
        // The command is applied in etcd although A heard nothing...
        wait_for(
            "A's command applied in etcd",
            Duration::from_secs(5),
            || generation(&observer) == Some(2),
        );
        // ...then the network recovers before A's deadline.
        std::thread::sleep(Duration::from_millis(600)); // let at least one attempt time out
        for p in &proxies {
            p.heal();
        }
        call.join().unwrap()
    });
    let outcome = outcome.expect("answered from the record of the first attempt");
    assert_eq!(outcome.reply.status, Status::GOOD);
    assert!(a.statistics().deduplicated >= 1, "{:?}", a.statistics());
    assert_eq!(generation(&observer), Some(2), "applied exactly once");
    // A caller's own retry with the same sequence number is answered the same way.
    let seq = a.new_sequence();
    let (c, p) = pr_out(6, 0, 0, key(1) + 200);
    let first = a.execute_as(seq, &lu, &nexus(1), &c, &p, &cfg).unwrap();
    assert_eq!(generation(&observer), Some(3));
    // (The record of a finished call is dropped by the client's next write; until then a
    // retry of the same number is recognised.)
    let again = a.execute_as(seq, &lu, &nexus(1), &c, &p, &cfg).unwrap();
    assert_eq!(first.reply, again.reply);
    assert_eq!(
        generation(&observer),
        Some(3),
        "a retried sequence number applies once"
    );
}

#[test]
fn an_unreachable_cluster_is_a_clear_error_in_bounded_time() {
    let cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    let proxies: Vec<Proxy> = cluster.proxies().unwrap();
    let cfg_a = config(proxies.iter().map(Proxy::url).collect(), "host-a", "/t4/");
    let bound = cfg_a.command_timeout + Duration::from_millis(1500);
    let a = EtcdStore::open(cfg_a).unwrap();
    let cfg = EngineConfig::default();
    let lu = lu();
    let (c, p) = pr_out(6, 0, 0, key(1));
    a.execute(&lu, &nexus(1), &c, &p, &cfg).unwrap();
    for p in &proxies {
        p.cut();
    }
    for (name, (c, p)) in [("PR IN", pr_in(0)), ("PR OUT", pr_out(1, 1, key(1), 0))] {
        let t0 = Instant::now();
        let e = a.execute(&lu, &nexus(1), &c, &p, &cfg).unwrap_err();
        let took = t0.elapsed();
        assert!(
            took <= bound,
            "{name}: error after {took:?}, bound {bound:?}"
        );
        assert!(
            matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::OutcomeUnknown),
            "{name}: {e}"
        );
        assert!(e.to_string().contains("etcd ["), "{name}: {e}");
    }
    // The PR IN was not answered from the cached state, and a read-only command whose answer
    // was lost is "unavailable" (nothing applied), not "unknown".
    let t0 = Instant::now();
    let e = a.load(&lu).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(t0.elapsed() <= bound);
    for p in &proxies {
        p.heal();
    }
    // Service comes back once the network does.
    let (c, p) = pr_in(0);
    wait_for("A answers again", Duration::from_secs(10), || {
        a.execute(&lu, &nexus(1), &c, &p, &cfg).is_ok()
    });
    // A cluster that is not there at all: open fails within the connect timeout.
    let mut dead = config(vec!["http://127.0.0.1:9".into()], "x", "/t4/");
    dead.connect_timeout = Duration::from_millis(800);
    let t0 = Instant::now();
    let e = EtcdStore::open(dead).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}

#[test]
fn import_all_writes_every_logical_unit_in_one_transaction_or_none() {
    let cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    let etcd = EtcdStore::open(config(cluster.endpoints(), "a", "/t5/")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("s.db")).unwrap();
    let cfg = EngineConfig::default();
    let lus: Vec<LuId> = (0..3)
        .map(|i| LuId::new(format!("naa.60014050000000000000000000000{i:03}")).unwrap())
        .collect();
    // A state per LU: nexus i registered with key i+1 (REGISTER AND IGNORE EXISTING KEY).
    let state = |who: u16| {
        let (c, p) = pr_out(6, 0, 0, key(who));
        LogicalUnit::default()
            .execute(&nexus(who), &c, &p, &cfg)
            .state
            .unwrap()
    };
    // One LU already has another state; the import replaces it.
    let (c, p) = pr_out(6, 0, 0, key(9));
    etcd.execute(&lus[0], &nexus(9), &c, &p, &cfg).unwrap();
    let states: Vec<(LuId, LogicalUnit)> = lus
        .iter()
        .enumerate()
        .map(|(i, lu)| (lu.clone(), state(i as u16 + 1)))
        .collect();
    etcd.import_all(&states).unwrap();
    sqlite.import_all(&states).unwrap();
    for (lu, s) in &states {
        assert_eq!(etcd.load(lu).unwrap().as_ref(), Some(s));
        assert_eq!(etcd.load(lu).unwrap(), sqlite.load(lu).unwrap());
    }
    assert_eq!(etcd.list().unwrap(), lus);
    // A broken state, a logical unit named twice, more than one transaction can carry: refused
    // before anything is written.
    let mut bad = LogicalUnit::default();
    bad.registrants.push(pr_engine::Registrant {
        nexus: nexus(1),
        key: pr_scsi::ReservationKey(0),
        all_tg_pt: false,
    });
    let other = vec![(lus[0].clone(), state(7)), (lus[1].clone(), bad)];
    assert_eq!(
        etcd.import_all(&other).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    let twice = vec![(lus[0].clone(), state(7)), (lus[0].clone(), state(8))];
    assert_eq!(
        etcd.import_all(&twice).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    let many: Vec<(LuId, LogicalUnit)> = (0..=pr_store_etcd::MAX_IMPORT)
        .map(|i| (LuId::new(format!("lu-{i}")).unwrap(), state(7)))
        .collect();
    assert_eq!(
        etcd.import_all(&many).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    for (lu, s) in &states {
        assert_eq!(etcd.load(lu).unwrap().as_ref(), Some(s), "{lu} changed");
    }
    assert_eq!(etcd.list().unwrap(), lus);
    // Commands after the import run on the imported states (the store's cached guesses were
    // dropped): nexus 1 is registered on LU 0, and READ KEYS shows its key.
    let keys = etcd
        .execute(&lus[0], &nexus(1), &pr_in(0).0, &[], &cfg)
        .unwrap();
    let mut want = vec![0, 0, 0, 1, 0, 0, 0, 8];
    want.extend_from_slice(&key(1).to_be_bytes());
    assert_eq!(keys.reply.data, want);
}
