//! The PR IN fast path of the SQLite store: PR IN is answered from the committed state without
//! the writer thread, unless it reports (and so clears) a unit attention, and it sees every
//! command acknowledged before it started — by this store's writer, by another store on the
//! file, or by another process.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use pr_engine::Outcome;
use pr_store::{SqliteStore, Store};

/// PR OUT PREEMPT (SPC-4 table 179).
const PREEMPT: u8 = 0x04;
/// CHECK CONDITION (SAM-5 table 39).
const CHECK_CONDITION: u8 = 0x02;
/// Environment variable that selects the child role of `another_process`: the database path.
const CHILD: &str = "PR_STORE_FAST_PATH_CHILD";
/// Bound on every wait for the child.
const PATIENCE: Duration = Duration::from_secs(60);

/// READ KEYS parameter data (SPC-4 table 166): the generation and the keys.
fn read_keys(o: &Outcome) -> (u32, Vec<u64>) {
    let d = &o.reply.data;
    assert_eq!(status(o), GOOD, "READ KEYS refused: {:?}", o.reply);
    assert!(d.len() >= 8, "short READ KEYS data {d:?}");
    let generation = u32::from_be_bytes(d[0..4].try_into().unwrap());
    let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
    assert_eq!(
        d.len(),
        8 + len,
        "READ KEYS truncated (allocation length too small)"
    );
    let mut keys: Vec<u64> = d[8..]
        .chunks_exact(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect();
    keys.sort_unstable();
    (generation, keys)
}

fn keys_of(store: &dyn Store, n: u32) -> (u32, Vec<u64>) {
    read_keys(
        &store
            .execute(&lu(), &nexus(n), &pr_in(READ_KEYS, 8192), &[], &config())
            .unwrap(),
    )
}

#[test]
fn pr_in_is_answered_without_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("pr.db")).unwrap();
    // An unknown logical unit: empty, and nothing queued or written.
    assert_eq!(keys_of(&s, 1), (0, vec![]));
    assert_eq!(s.statistics().queued, 0);
    assert!(s.list().unwrap().is_empty());
    assert_eq!(status(&register(&s, &lu(), 1, 0x1111, 0)), GOOD);
    assert_eq!(status(&register(&s, &lu(), 2, 0x2222, 0)), GOOD);
    for _ in 0..100 {
        assert_eq!(keys_of(&s, 3), (2, vec![0x1111, 0x2222]));
    }
    let stats = s.statistics();
    assert_eq!((stats.queued, stats.applied), (2, 2), "{stats:?}");
    assert_eq!(stats.read_only, 101, "{stats:?}");
}

/// A PR IN on a nexus with a pending unit attention changes the state (the report clears the
/// condition): it goes through the writer, the clearing is durable, and the next PR IN takes
/// the fast path again.
#[test]
fn pr_in_that_reports_a_unit_attention_is_a_durable_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    let s = SqliteStore::open(&path).unwrap();
    let lu = lu();
    assert_eq!(status(&register(&s, &lu, 1, 0x1111, 0)), GOOD);
    assert_eq!(status(&register(&s, &lu, 2, 0x2222, 0)), GOOD);
    // Warm the reader's view of the logical unit, then change it through the writer.
    assert_eq!(keys_of(&s, 1), (2, vec![0x1111, 0x2222]));
    // Nexus 2 preempts nexus 1's registration (no reservation: §5.13.11.4.4); nexus 1 gets
    // REGISTRATIONS PREEMPTED.
    let o = s
        .execute(
            &lu,
            &nexus(2),
            &pr_out(PREEMPT, WRITE_EXCLUSIVE),
            &basic(0x2222, 0x1111, 0),
            &config(),
        )
        .unwrap();
    assert_eq!(status(&o), GOOD);
    let before = s.statistics();
    let o = s
        .execute(&lu, &nexus(1), &pr_in(READ_KEYS, 8192), &[], &config())
        .unwrap();
    // CHECK CONDITION, fixed-format sense: key UNIT ATTENTION (6h), ASC/ASCQ 2Ah/05h
    // REGISTRATIONS PREEMPTED (SPC-4 table 50 and annex D).
    assert_eq!(status(&o), CHECK_CONDITION);
    let sense = o.reply.sense.unwrap().to_fixed();
    assert_eq!((sense[2] & 0x0f, sense[12], sense[13]), (0x06, 0x2a, 0x05));
    let after = s.statistics();
    assert_eq!(after.queued, before.queued + 1, "{after:?}");
    assert_eq!(after.read_only, before.read_only, "{after:?}");
    // Durable: another store on the file sees no pending condition for nexus 1.
    let other = SqliteStore::open(&path).unwrap();
    assert!(other
        .load(&lu)
        .unwrap()
        .unwrap()
        .pending_unit_attentions(&nexus(1))
        .is_empty());
    // The next PR IN from nexus 1 is GOOD, from the fast path.
    assert_eq!(keys_of(&s, 1), (3, vec![0x2222]));
    let last = s.statistics();
    assert_eq!(last.queued, after.queued);
    assert_eq!(last.read_only, after.read_only + 1);
}

/// PR IN on one store sees what another store on the same file (another connection, its own
/// writer) committed, immediately after the acknowledgement, each time.
#[test]
fn pr_in_sees_another_stores_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    let mut expected = Vec::new();
    for n in 1..=50u32 {
        // Both readers have a cached view before the other store's write.
        assert_eq!(keys_of(&a, 1000), (n - 1, expected.clone()));
        assert_eq!(keys_of(&b, 1000), (n - 1, expected.clone()));
        let writer: &dyn Store = if n % 2 == 0 { &a } else { &b };
        assert_eq!(status(&register(writer, &lu(), n, n.into(), 0)), GOOD);
        expected.push(n.into());
        assert_eq!(keys_of(&a, 1000), (n, expected.clone()));
        assert_eq!(keys_of(&b, 1000), (n, expected.clone()));
    }
}

/// Readers racing writers in one process: a PR IN never reports an older generation than the
/// number of registrations acknowledged before it started, and a reader's generations never
/// go backwards.
#[test]
fn pr_in_never_misses_an_acknowledged_command() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("pr.db")).unwrap();
    const WRITERS: u32 = 4;
    const EACH: u32 = 50;
    let acked = AtomicU32::new(0);
    let done = AtomicBool::new(false);
    let reads = std::thread::scope(|sc| {
        let readers: Vec<_> = (0..4)
            .map(|r| {
                let (s, acked, done) = (&s, &acked, &done);
                sc.spawn(move || {
                    let mut last = 0;
                    let mut reads = 0u32;
                    while !done.load(Ordering::SeqCst) {
                        let floor = acked.load(Ordering::SeqCst);
                        let (generation, keys) = keys_of(s, 10_000 + r);
                        assert!(
                            generation >= floor,
                            "PR IN saw generation {generation} after {floor} acknowledged"
                        );
                        assert!(generation >= last, "generation went back");
                        assert_eq!(keys.len() as u32, generation);
                        last = generation;
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (s, acked) = (&s, &acked);
                sc.spawn(move || {
                    for j in 0..EACH {
                        let n = w * EACH + j + 1;
                        assert_eq!(status(&register(s, &lu(), n, n.into(), 0)), GOOD);
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        readers.into_iter().map(|r| r.join().unwrap()).sum::<u32>()
    });
    assert_eq!(keys_of(&s, 1).0, WRITERS * EACH);
    assert!(reads > 0);
}

/// The child role of `another_process`: a store on the file named by `CHILD`, driven from
/// stdin (`REG n`: register nexus n with key n; `KEYS`: READ KEYS), answering on stdout in
/// lines that begin with `child: ` (the test harness prints its own).
#[test]
#[ignore = "the child role of pr_in_sees_another_processes_commits, run by it"]
fn another_process() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    let store = SqliteStore::open(&path).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "child: READY").unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("REG ") {
            let n: u32 = n.parse().unwrap();
            assert_eq!(status(&register(&store, &lu(), n, n.into(), 0)), GOOD);
            writeln!(out, "child: ACK {n}").unwrap();
        } else if line == "KEYS" {
            let (generation, keys) = keys_of(&store, 7);
            let keys: Vec<String> = keys.iter().map(u64::to_string).collect();
            writeln!(out, "child: {generation} {}", keys.join(",")).unwrap();
        }
        out.flush().unwrap();
    }
    // Every PR IN of the child took the fast path.
    assert_eq!(store.statistics().queued, store.statistics().applied);
}

/// Two processes on one database file, each with a warm cache: what one acknowledges, the
/// other's next PR IN reports, in both directions, 100 times.
#[test]
fn pr_in_sees_another_processes_commits() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    let store = SqliteStore::open(&path).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "another_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    // The test harness prints its own lines first: wait for ours (bounded).
    let next = |what: &str| loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the child did not answer {what} in time"));
        // (The harness's "test another_process ... " may precede the first line.)
        if let Some(at) = line.find("child: ") {
            return line[at + "child: ".len()..].to_owned();
        }
    };
    assert_eq!(next("READY"), "READY");
    let mut expected: Vec<u64> = Vec::new();
    let ask = |to_child: &mut std::process::ChildStdin, line: &str| {
        writeln!(to_child, "{line}").unwrap();
        to_child.flush().unwrap();
    };
    for n in 1..=100u32 {
        let generation = n - 1;
        // Warm both caches.
        assert_eq!(keys_of(&store, 1), (generation, expected.clone()));
        ask(&mut to_child, "KEYS");
        let listed: Vec<String> = expected.iter().map(u64::to_string).collect();
        assert_eq!(next("KEYS"), format!("{generation} {}", listed.join(",")));
        if n % 2 == 1 {
            // The child writes; our next PR IN must see it.
            ask(&mut to_child, &format!("REG {n}"));
            assert_eq!(next("REG"), format!("ACK {n}"));
            expected.push(n.into());
            assert_eq!(keys_of(&store, 1), (n, expected.clone()));
        } else {
            // We write; the child's next PR IN must see it.
            assert_eq!(status(&register(&store, &lu(), n, n.into(), 0)), GOOD);
            expected.push(n.into());
            ask(&mut to_child, "KEYS");
            let listed: Vec<String> = expected.iter().map(u64::to_string).collect();
            assert_eq!(next("KEYS"), format!("{n} {}", listed.join(",")));
        }
    }
    drop(to_child);
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
    reader.join().unwrap();
    assert_eq!(store.statistics().queued, 50);
}
