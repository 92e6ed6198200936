//! The SQLite store on real database files in temporary directories.

mod common;

use std::sync::Barrier;
use std::time::Duration;

use common::*;
use pr_engine::{LogicalUnit, ReservationHolder};
use pr_scsi::ReservationKey;
use pr_store::{ErrorKind, LuId, SqliteOptions, SqliteStore, Store, SCHEMA_VERSION};
use rusqlite::Connection;

fn keys(state: &LogicalUnit) -> Vec<u64> {
    let mut k: Vec<u64> = state.registrants.iter().map(|r| r.key.0).collect();
    k.sort_unstable();
    k
}

#[test]
fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    let lu = lu();
    {
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(status(&register(&s, &lu, 1, 0x1111, 0)), GOOD);
        assert_eq!(status(&register(&s, &lu, 2, 0x2222, 0)), GOOD);
        let o = s
            .execute(
                &lu,
                &nexus(1),
                &pr_out(RESERVE, WRITE_EXCLUSIVE),
                &basic(0x1111, 0, 0),
                &config(),
            )
            .unwrap();
        assert_eq!(status(&o), GOOD);
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.list().unwrap(), std::slice::from_ref(&lu));
    let state = s.load(&lu).unwrap().unwrap();
    assert_eq!(state.generation.0, 2);
    assert_eq!(keys(&state), [0x1111, 0x2222]);
    assert_eq!(
        state.reservation.unwrap().holder,
        ReservationHolder::Registrant(nexus(1))
    );
    // READ KEYS through the store (SPC-4 table 166): generation 2, list length 16, both keys.
    let o = s
        .execute(&lu, &nexus(2), &pr_in(READ_KEYS, 64), &[], &config())
        .unwrap();
    assert_eq!(
        o.reply.data,
        [0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0x11, 0x11, 0, 0, 0, 0, 0, 0, 0x22, 0x22]
    );
    assert!(o.state.is_none());
}

#[test]
fn a_refused_command_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("pr.db")).unwrap();
    let lu = lu();
    // PR IN on an unknown logical unit creates no row.
    let o = s
        .execute(&lu, &nexus(1), &pr_in(READ_KEYS, 64), &[], &config())
        .unwrap();
    assert_eq!(o.reply.data, [0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(s.list().unwrap().is_empty());
    // A RESERVE from an unregistered nexus is refused, and nothing is created.
    let o = s
        .execute(
            &lu,
            &nexus(1),
            &pr_out(RESERVE, WRITE_EXCLUSIVE),
            &basic(0x1111, 0, 0),
            &config(),
        )
        .unwrap();
    assert_eq!(status(&o), RESERVATION_CONFLICT);
    assert!(s.list().unwrap().is_empty());
    register(&s, &lu, 1, 0x1111, 0);
    let before = s.load(&lu).unwrap().unwrap();
    // REGISTER with a wrong key: RESERVATION CONFLICT, the state is as it was.
    let o = s
        .execute(
            &lu,
            &nexus(1),
            &pr_out(REGISTER, 0),
            &basic(0x9999, 0x3333, 0),
            &config(),
        )
        .unwrap();
    assert_eq!(status(&o), RESERVATION_CONFLICT);
    assert_eq!(s.load(&lu).unwrap().unwrap(), before);
}

#[test]
fn a_new_file_gets_the_current_schema_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    drop(SqliteStore::open(&path).unwrap());
    drop(SqliteStore::open(&path).unwrap());
    let c = Connection::open(&path).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn a_corrupt_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    let junk: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &junk).unwrap();
    let e = SqliteStore::open(&path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), junk);
}

#[test]
fn a_foreign_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE photos (id INTEGER); INSERT INTO photos VALUES (1);")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let e = SqliteStore::open(&path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Foreign, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("photos"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // Another application's id, even without tables, is foreign too.
    let path2 = dir.path().join("app.db");
    Connection::open(&path2)
        .unwrap()
        .execute_batch("PRAGMA application_id = 1234;")
        .unwrap();
    let e = SqliteStore::open(&path2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Foreign, "{e}");
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    drop(SqliteStore::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {};", SCHEMA_VERSION + 1))
        .unwrap();
    let e = SqliteStore::open(&path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NewerSchema, "{e}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

#[test]
fn a_missing_directory_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent").join("pr.db");
    let e = SqliteStore::open(&path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Open, "{e}");
    assert!(e.to_string().contains("absent"), "{e}");
}

#[test]
fn a_lock_held_past_the_busy_timeout_is_a_busy_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(50),
        ..SqliteOptions::default()
    };
    let s = SqliteStore::open_with(&path, options).unwrap();
    let lu = lu();
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let e = s
        .execute(
            &lu,
            &nexus(1),
            &pr_out(REGISTER, 0),
            &basic(0, 1, 0),
            &config(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains("locked by another process"), "{e}");
    other.execute_batch("COMMIT").unwrap();
    assert_eq!(s.load(&lu).unwrap(), None);
    assert_eq!(status(&register(&s, &lu, 1, 1, 0)), GOOD);
}

#[test]
fn an_unreadable_state_fails_only_its_logical_unit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    let s = SqliteStore::open(&path).unwrap();
    let bad = LuId::new("naa.bad").unwrap();
    let good = lu();
    register(&s, &bad, 1, 1, 0);
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE logical_units SET state = '{\"generation\": \"x\"}' WHERE lu_id = 'naa.bad'",
            [],
        )
        .unwrap();
    assert_eq!(s.load(&bad).unwrap_err().kind(), ErrorKind::CorruptState);
    let e = s
        .execute(&bad, &nexus(1), &pr_in(READ_KEYS, 64), &[], &config())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CorruptState);
    assert!(e.to_string().contains("naa.bad"), "{e}");
    assert_eq!(status(&register(&s, &good, 1, 1, 0)), GOOD);
}

#[test]
fn power_loss_drops_aptpl_0_registrations_and_keeps_aptpl_1_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("pr.db")).unwrap();
    let (volatile, persistent) = (LuId::new("lu-a").unwrap(), LuId::new("lu-b").unwrap());
    register(&s, &volatile, 1, 0xa1, 0);
    register(&s, &volatile, 2, 0xa2, 0);
    register(&s, &persistent, 1, 0xb1, APTPL);
    register(&s, &persistent, 2, 0xb2, APTPL);
    s.power_loss(&volatile).unwrap();
    s.power_loss(&persistent).unwrap();
    s.power_loss(&LuId::new("lu-unknown").unwrap()).unwrap();
    assert!(s.load(&volatile).unwrap().unwrap().registrants.is_empty());
    let p = s.load(&persistent).unwrap().unwrap();
    assert_eq!(keys(&p), [0xb1, 0xb2]);
    assert_eq!(p.generation.0, 0);
    assert_eq!(s.list().unwrap(), [volatile, persistent]);
}

#[test]
fn clear_import_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("pr.db")).unwrap();
    let (a, b) = (LuId::new("lu-a").unwrap(), LuId::new("lu-b").unwrap());
    register(&s, &a, 1, 0x11, 0);
    register(&s, &a, 2, 0x22, 0);
    let exported = serde_json::to_string(&s.load(&a).unwrap().unwrap()).unwrap();
    let state: LogicalUnit = serde_json::from_str(&exported).unwrap();
    s.import(&b, &state).unwrap();
    assert_eq!(s.load(&b).unwrap().unwrap(), state);
    s.clear(&a).unwrap();
    s.clear(&a).unwrap();
    assert_eq!(s.load(&a).unwrap(), None);
    assert_eq!(s.list().unwrap(), std::slice::from_ref(&b));
    // A state breaking an invariant is refused and nothing is written.
    let mut broken = state.clone();
    broken.registrants[1].key = ReservationKey(0);
    let e = s.import(&b, &broken).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    assert!(e.to_string().contains("lu-b"), "{e}");
    assert_eq!(s.load(&b).unwrap().unwrap(), state);
}

/// Two stores on one file (two connections with their own writer threads, as two helper
/// processes have) registering concurrently: no registration is lost, so every
/// read-modify-write was serialised.
#[test]
fn two_stores_on_one_file_stay_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    let stores = [
        SqliteStore::open(&path).unwrap(),
        SqliteStore::open(&path).unwrap(),
    ];
    let lu = lu();
    const THREADS: u32 = 4;
    const EACH: u32 = 25;
    std::thread::scope(|s| {
        for (i, store) in stores.iter().enumerate() {
            for t in 0..THREADS {
                let lu = &lu;
                s.spawn(move || {
                    for j in 0..EACH {
                        let n = (i as u32 * THREADS + t) * EACH + j + 1;
                        assert_eq!(status(&register(store, lu, n, n.into(), 0)), GOOD);
                    }
                });
            }
        }
    });
    let total = 2 * THREADS * EACH;
    for store in &stores {
        let state = store.load(&lu).unwrap().unwrap();
        assert_eq!(keys(&state), (1..=u64::from(total)).collect::<Vec<_>>());
        assert_eq!(state.generation.0, total);
        state.check_invariants().unwrap();
    }
}

/// Many threads of one store racing for one reservation through the group-committing writer:
/// every REGISTER is answered GOOD, exactly one RESERVE wins and the others get RESERVATION
/// CONFLICT, and the stored state agrees with the answers.
#[test]
fn group_commit_answers_each_command_with_the_state_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("pr.db")).unwrap();
    let lu = lu();
    const THREADS: u32 = 64;
    let start = Barrier::new(THREADS as usize);
    let winners: Vec<u32> = std::thread::scope(|sc| {
        let handles: Vec<_> = (1..=THREADS)
            .map(|n| {
                let (s, lu, start) = (&s, &lu, &start);
                sc.spawn(move || {
                    start.wait();
                    assert_eq!(status(&register(s, lu, n, n.into(), 0)), GOOD);
                    let o = s
                        .execute(
                            lu,
                            &nexus(n),
                            &pr_out(RESERVE, WRITE_EXCLUSIVE),
                            &basic(n.into(), 0, 0),
                            &config(),
                        )
                        .unwrap();
                    match status(&o) {
                        GOOD => Some(n),
                        RESERVATION_CONFLICT => None,
                        other => panic!("RESERVE answered status {other:#x}"),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let state = s.load(&lu).unwrap().unwrap();
    assert_eq!(state.generation.0, THREADS);
    assert_eq!(keys(&state), (1..=u64::from(THREADS)).collect::<Vec<_>>());
    assert_eq!(
        state.reservation.unwrap().holder,
        ReservationHolder::Registrant(nexus(winners[0]))
    );
}

/// Commands queued while another process holds the write lock are applied together: once the
/// lock is released, at most two transactions (the command the writer had already taken, and
/// everything queued behind it) answer all of them, each with the state left by the ones
/// before it.
#[test]
fn commands_queued_behind_a_lock_are_committed_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    let options = SqliteOptions {
        busy_timeout: Duration::from_secs(600),
        ..SqliteOptions::default()
    };
    let s = SqliteStore::open_with(&path, options).unwrap();
    let lu = lu();
    const THREADS: u32 = 32;
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    std::thread::scope(|sc| {
        let handles: Vec<_> = (1..=THREADS)
            .map(|n| {
                let (s, lu) = (&s, &lu);
                sc.spawn(move || status(&register(s, lu, n, n.into(), 0)))
            })
            .collect();
        // Bounded wait for a condition: every command is in the writer's queue.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while s.statistics().queued < u64::from(THREADS) {
            assert!(std::time::Instant::now() < deadline, "commands not queued");
            std::thread::yield_now();
        }
        other.execute_batch("COMMIT").unwrap();
        for h in handles {
            assert_eq!(h.join().unwrap(), GOOD);
        }
    });
    let stats = s.statistics();
    assert_eq!(stats.applied, u64::from(THREADS));
    assert!(stats.transactions <= 2, "{stats:?}");
    let state = s.load(&lu).unwrap().unwrap();
    assert_eq!(state.generation.0, THREADS);
    assert_eq!(keys(&state), (1..=u64::from(THREADS)).collect::<Vec<_>>());
}

/// Several logical units imported in one transaction: when the database refuses the second
/// (a trigger here, standing for any failure of the write), the first is not written either;
/// without the trigger both are; a state breaking an invariant or a logical unit named twice
/// writes nothing.
#[test]
fn import_all_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    let s = SqliteStore::open(&path).unwrap();
    let (a, b) = (LuId::new("lu-a").unwrap(), LuId::new("lu-b").unwrap());
    register(&s, &a, 1, 0x11, 0);
    register(&s, &a, 2, 0x22, 0);
    let state = s.load(&a).unwrap().unwrap();
    s.clear(&a).unwrap();
    let other = Connection::open(&path).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER refuse_b BEFORE INSERT ON logical_units WHEN NEW.lu_id = 'lu-b'
             BEGIN SELECT RAISE(ABORT, 'lu-b refused by the test'); END;",
        )
        .unwrap();
    let both = [(a.clone(), state.clone()), (b.clone(), state.clone())];
    let e = s.import_all(&both).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Database, "{e}");
    assert_eq!(
        s.load(&a).unwrap(),
        None,
        "the first logical unit was written"
    );
    assert!(s.list().unwrap().is_empty());
    other.execute_batch("DROP TRIGGER refuse_b").unwrap();
    s.import_all(&both).unwrap();
    assert_eq!(s.list().unwrap(), [a.clone(), b.clone()]);
    assert_eq!(s.load(&b).unwrap().unwrap(), state);
    // Checked before anything is written.
    let mut broken = state.clone();
    broken.registrants[1].key = ReservationKey(0);
    let c = LuId::new("lu-c").unwrap();
    let e = s
        .import_all(&[(c.clone(), state.clone()), (a.clone(), broken)])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    assert!(e.to_string().contains("lu-a"), "{e}");
    let e = s
        .import_all(&[(c.clone(), state.clone()), (c.clone(), state.clone())])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    assert_eq!(s.load(&c).unwrap(), None);
    assert_eq!(s.list().unwrap(), [a, b]);
}

/// A store opened read-only reads what is there (PR IN included), writes nothing, and
/// refuses every write with a ReadOnly error naming the file.
#[test]
fn a_read_only_store_reads_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    let lu = lu();
    {
        let s = SqliteStore::open(&path).unwrap();
        register(&s, &lu, 1, 0x11, 0);
    }
    let before = std::fs::read(&path).unwrap();
    let r = SqliteStore::open_read_only(&path).unwrap();
    assert_eq!(r.list().unwrap(), std::slice::from_ref(&lu));
    assert_eq!(r.load(&lu).unwrap().unwrap().generation.0, 1);
    let o = r
        .execute(&lu, &nexus(2), &pr_in(READ_KEYS, 64), &[], &config())
        .unwrap();
    assert_eq!(
        o.reply.data,
        [0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0x11]
    );
    let e = r.power_loss(&lu).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    let e = r
        .execute(
            &lu,
            &nexus(2),
            &pr_out(REGISTER, 0),
            &basic(0, 0x22, 0),
            &config(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    drop(r);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // An empty file holds no logical unit; a missing one is an open error.
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let r = SqliteStore::open_read_only(&empty).unwrap();
    assert!(r.list().unwrap().is_empty());
    assert_eq!(r.load(&lu).unwrap(), None);
    assert_eq!(std::fs::read(&empty).unwrap(), b"");
    let e = SqliteStore::open_read_only(dir.path().join("missing.db")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Open);
}

/// `execute_later` queues a PR OUT for the writer and returns; the completion is called once,
/// on the writer's thread, when the command is durable: a second store on the file sees it.
/// Commands queued together share commits, and a completion that panics leaves the writer
/// serving.
#[test]
fn execute_later_answers_from_the_writer_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.db");
    let lu = lu();
    let s = SqliteStore::open(&path).unwrap();
    assert!(s.answers_later());
    let caller = std::thread::current().id();
    let (tx, rx) = std::sync::mpsc::channel();
    const N: u32 = 50;
    for n in 1..=N {
        let tx = tx.clone();
        s.execute_later(
            &lu,
            &nexus(n),
            &pr_out(REGISTER, 0),
            &basic(0, u64::from(n), 0),
            &config(),
            Box::new(move |r| {
                tx.send((n, std::thread::current().id(), r)).unwrap();
            }),
        );
    }
    // A completion that panics: its command is committed, the writer goes on.
    s.execute_later(
        &lu,
        &nexus(N + 1),
        &pr_out(REGISTER, 0),
        &basic(0, u64::from(N + 1), 0),
        &config(),
        Box::new(|_| panic!("a completion that panics")),
    );
    let mut answered = Vec::new();
    for _ in 0..N {
        let (n, thread, r) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("every completion is called within 30 s");
        assert_ne!(thread, caller, "answered on the writer's thread");
        assert_eq!(status(&r.unwrap()), GOOD);
        answered.push(n);
    }
    answered.sort_unstable();
    assert_eq!(answered, (1..=N).collect::<Vec<_>>());
    // The writer still serves, and everything answered is in the file.
    assert_eq!(status(&register(&s, &lu, N + 2, 0x9999, 0)), GOOD);
    let other = SqliteStore::open_read_only(&path).unwrap();
    let state = other.load(&lu).unwrap().unwrap();
    assert_eq!(state.registrants.len(), N as usize + 2);
    let stats = s.statistics();
    assert_eq!(stats.applied, u64::from(N) + 2);
    assert!(stats.transactions <= stats.applied);
    // Nothing is called twice.
    assert!(rx.try_recv().is_err());
    drop(tx);

    // A PR IN is answered at once, on the caller's thread (the fast path).
    let (tx, rx) = std::sync::mpsc::channel();
    s.execute_later(
        &lu,
        &nexus(1),
        &pr_in(READ_KEYS, 8),
        &[],
        &config(),
        Box::new(move |r| tx.send((std::thread::current().id(), r)).unwrap()),
    );
    let (thread, r) = rx
        .try_recv()
        .expect("answered before execute_later returned");
    assert_eq!(thread, caller);
    // PRGENERATION: one increment per registration (SPC-4 §6.16.2).
    assert_eq!(r.unwrap().reply.data[..4], (N + 2).to_be_bytes());

    // A read-only store answers a PR OUT's completion with the refusal, before returning.
    assert!(!other.answers_later());
    let (tx, rx) = std::sync::mpsc::channel();
    other.execute_later(
        &lu,
        &nexus(1),
        &pr_out(REGISTER, 0),
        &basic(1, 2, 0),
        &config(),
        Box::new(move |r| tx.send(r).unwrap()),
    );
    let e = rx.try_recv().expect("answered at once").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
}

/// Helper processes started together on a new file (two daemons of one cluster sharing a
/// store, as the nested-emulate lab starts them) all open it: none sees the file half set up
/// by another, and none is refused because another took the lock it needed to switch the
/// journal to WAL. Each round is a fresh file and four stores opening it at one instant; the
/// store that opens last must then read what the first one wrote.
#[test]
fn stores_opening_a_new_file_at_once_all_open_it() {
    const ROUNDS: usize = 100;
    const STORES: usize = 4;
    let lu = lu();
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pr.db");
        let start = Barrier::new(STORES);
        let opened: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..STORES)
                .map(|_| {
                    let (path, start) = (&path, &start);
                    s.spawn(move || {
                        start.wait();
                        SqliteStore::open(path)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut stores = Vec::new();
        for r in opened {
            match r {
                Ok(s) => stores.push(s),
                Err(e) => failures.push(format!("round {round}: {e}")),
            }
        }
        if let [first, .., last] = &stores[..] {
            assert_eq!(status(&register(first, &lu, 1, 0x1234, 0)), GOOD);
            let state = last
                .load(&lu)
                .unwrap()
                .expect("the first store's registration");
            assert_eq!(keys(&state), [0x1234], "round {round}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} opens failed, the first: {:?}",
        failures.len(),
        ROUNDS * STORES,
        &failures[..failures.len().min(3)]
    );
}
