//! The `emulate` backend against the real daemon: real sockets, a real SQLite file in a
//! temporary directory, loop devices (which have no reservations of their own: every answer
//! here comes from the engine). Expected bytes are written out from SPC-4 (§6.15.2 READ KEYS,
//! §6.15.3 READ RESERVATION). Tests run as root (CI does).

mod common;

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::emulate::*;
use common::*;
use pr_backend::emulate::identity::derived_initiator_name;
use pr_client::Client;
use pr_proto::Reply;
use pr_scsi::Status;

/// nobody:nogroup, whom the daemons here run as.
fn nobody() -> (u32, u32) {
    let u = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let g = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    (u.uid.as_raw(), g.gid.as_raw())
}

/// A directory for the database that the dropped user can write (SQLite creates -wal, -shm).
fn store_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let (u, g) = nobody();
    std::os::unix::fs::chown(d.path(), Some(u), Some(g)).unwrap();
    d
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("pr-helper.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A configuration that emulates `lo` as logical unit "disk0" on `db`, plus `extra`.
fn emulate_config(dir: &Path, lo: &LoopDevice, db: &Path, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            "[[device]]\npath = \"{}\"\nbackend = \"emulate\"\nlu = \"disk0\"\n\n[emulate]\n\
             store = \"{}\"\n{extra}",
            lo.path.display(),
            db.display()
        ),
    )
}

/// Our daemon on `socket`, as nobody, with its log (-v) in `log`.
fn start_at(socket: &Path, config: &Path, log: &Path) -> Helper {
    start_emulating(socket, config, log, &[])
}

fn thread_status(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| {
            let t = e.unwrap().path();
            // A connection thread ends once its client has closed: gone since the listing.
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            let st = std::fs::read_to_string(t.join("status")).ok()?;
            let seccomp = st
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .unwrap()
                .trim()
                .to_string();
            Some((comm.trim().to_string(), seccomp))
        })
        .collect()
}

#[test]
fn register_reserve_and_read_through_pr_client_and_other_devices_keep_sg_io() {
    let store = store_dir();
    let lo = LoopDevice::new();
    let other = LoopDevice::new();
    let db = store.path().join("reservations.db");
    let cfg = emulate_config(store.path(), &lo, &db, "");
    let log = store.path().join("log");
    let sock = store.path().join("run/node-a.sock");
    let mut h = start_at(&sock, &cfg, &log);
    let dev = lo.open(true);
    let mut c = Client::connect(&h.socket).unwrap();

    assert_eq!(
        prout(&mut c, &dev, REGISTER, 0, 0, 0x1111).status,
        Status::GOOD
    );
    assert_eq!(
        prout(&mut c, &dev, RESERVE, WE_REGISTRANTS_ONLY, 0x1111, 0).status,
        Status::GOOD
    );
    // READ KEYS: PRGENERATION 1, ADDITIONAL LENGTH 8, one key.
    let r = read_keys(&mut c, &dev);
    assert_eq!(r.status, Status::GOOD);
    assert_eq!(
        r.data,
        [0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x11, 0x11]
    );
    // READ RESERVATION: generation 1, length 16, key, scope/type byte 21 = 05h.
    let r = read_reservation(&mut c, &dev);
    assert_eq!(
        r.data,
        [0, 0, 0, 1, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0x11, 0x11, 0, 0, 0, 0, 0, 0x05, 0, 0]
    );
    assert!(db.exists());

    // The other loop device is not configured: SG_IO, which a loop device refuses (EINVAL:
    // ILLEGAL REQUEST, INVALID FIELD IN CDB), as without emulation.
    let od = other.open(false);
    let r = read_keys(&mut c, &od);
    assert_eq!(
        (r.status, sense(&r)),
        (Status::CHECK_CONDITION, (0x05, 0x24, 0x00))
    );

    // Every thread has a seccomp filter, the store's two threads included.
    let threads = thread_status(h.pid());
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"pr-store"), "{names:?}");
    assert!(names.contains(&"pr-store-writer"), "{names:?}");
    for (name, seccomp) in &threads {
        assert_eq!(seccomp, "2", "thread {name} has no seccomp filter");
    }

    // A clean exit closes the store on its own thread (a syscall outside its list would kill
    // the daemon: exit status 0 says it did not).
    drop(c);
    assert_eq!(h.signal_and_wait(libc::SIGTERM).code(), Some(0));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("as initiator iSCSI name iqn.2026-12.org.pr-helper:socket"),
        "{log}"
    );
    assert!(
        log.contains("do not stop a fenced VM's writes (QEMU writes to the device itself)"),
        "{log}"
    );
}

/// With no connection threads every request is read by the pollers, and each PR OUT is
/// answered from the store's writer once its commit is durable (the poller goes on to the next
/// request meanwhile). Many clients at once: every command is answered, GOOD, exactly once,
/// and every one is in the state, before and after a restart.
#[test]
fn pr_outs_answered_from_the_commit_by_the_pollers_are_all_answered_and_durable() {
    const CLIENTS: u64 = 16;
    const EACH: u64 = 40;
    let store = store_dir();
    let lo = LoopDevice::new();
    let db = store.path().join("reservations.db");
    let cfg = emulate_config(store.path(), &lo, &db, "");
    let log = store.path().join("log");
    let sock = store.path().join("run/pollers.sock");
    let mut h = start_emulating(&sock, &cfg, &log, &["--connection-threads", "0"]);
    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let socket = h.socket.clone();
            let dev = lo.open(true);
            std::thread::spawn(move || {
                let mut c =
                    Client::connect_with_timeout(&socket, Some(std::time::Duration::from_secs(30)))
                        .unwrap();
                for n in 0..EACH {
                    let r = c
                        .execute(
                            dev.as_fd(),
                            &cdb(&[0x5f, REGISTER_AND_IGNORE, 0, 0, 0, 0, 0, 0, 24, 0]),
                            &params(0, (i << 32) | (n + 1)),
                        )
                        .unwrap_or_else(|e| panic!("client {i}, command {n}: {e}"));
                    assert_eq!(r.status, Status::GOOD, "client {i}, command {n}: {r:?}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // No thread of its own served a connection: the pollers read every request.
    let names: Vec<String> = thread_status(h.pid()).into_iter().map(|(n, _)| n).collect();
    assert!(!names.iter().any(|n| n == "pr-helper-conn"), "{names:?}");
    // Every REGISTER AND IGNORE EXISTING KEY that succeeds increments PRGENERATION (SPC-4
    // §6.16.2); all came through one socket, one I_T nexus, so one registration remains.
    let expect_generation = (CLIENTS * EACH) as u32;
    let dev = lo.open(true);
    let check = |c: &mut Client| {
        let r = read_keys(c, &dev);
        assert_eq!(r.status, Status::GOOD);
        assert_eq!(r.data[..4], expect_generation.to_be_bytes(), "{:?}", r.data);
        assert_eq!(r.data[4..8], 8u32.to_be_bytes(), "one key: {:?}", r.data);
    };
    check(&mut Client::connect(&h.socket).unwrap());
    assert_eq!(h.signal_and_wait(libc::SIGTERM).code(), Some(0));
    let h = start_emulating(&sock, &cfg, &log, &["--connection-threads", "0"]);
    check(&mut Client::connect(&h.socket).unwrap());
}

/// More clients busy than there are CPUs: the daemon tries both ways of serving them (a thread
/// each, the pollers) and moves the connections between them while they send (busy.rs,
/// choose.rs). Every command sent across those moves is answered, GOOD, exactly once: the
/// generation counts each REGISTER AND IGNORE EXISTING KEY (SPC-4 §6.16.2), and READ KEYS,
/// sent between them, never sees a generation go back.
#[test]
fn busy_connections_moving_between_threads_and_pollers_lose_no_command() {
    const CLIENTS: u64 = 16;
    let store = store_dir();
    let lo = LoopDevice::new();
    let db = store.path().join("reservations.db");
    let cfg = emulate_config(store.path(), &lo, &db, "");
    let log = store.path().join("log");
    let sock = store.path().join("run/moves.sock");
    let h = start_emulating(&sock, &cfg, &log, &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (socket, stop) = (h.socket.clone(), stop.clone());
            let dev = lo.open(true);
            std::thread::spawn(move || {
                let mut c =
                    Client::connect_with_timeout(&socket, Some(std::time::Duration::from_secs(30)))
                        .unwrap();
                let (mut registered, mut seen) = (0u64, 0u32);
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let r = c
                        .execute(
                            dev.as_fd(),
                            &cdb(&[0x5f, REGISTER_AND_IGNORE, 0, 0, 0, 0, 0, 0, 24, 0]),
                            &params(0, (i << 32) | (registered + 1)),
                        )
                        .unwrap_or_else(|e| panic!("client {i}, register {registered}: {e}"));
                    assert_eq!(r.status, Status::GOOD, "client {i}: {r:?}");
                    registered += 1;
                    for _ in 0..4 {
                        let r = read_keys(&mut c, &dev);
                        assert_eq!(r.status, Status::GOOD, "client {i}: {r:?}");
                        let generation = u32::from_be_bytes(r.data[..4].try_into().unwrap());
                        assert!(generation >= seen, "client {i}: {generation} after {seen}");
                        seen = generation;
                    }
                }
                registered
            })
        })
        .collect();
    // Wait for a move to the pollers and one back, while all clients send.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let to_pollers = text.find("busy connections: served by the pollers");
        let back = to_pollers
            .and_then(|at| text[at..].find("busy connections: served by a thread per connection"));
        if back.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{CLIENTS} busy clients were not moved to the pollers and back within 60 s: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let registered: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let r = read_keys(&mut Client::connect(&h.socket).unwrap(), &lo.open(true));
    assert_eq!(r.status, Status::GOOD);
    assert_eq!(
        u32::from_be_bytes(r.data[..4].try_into().unwrap()) as u64,
        registered,
        "generation against the registrations answered GOOD"
    );
}

/// The replies the store's writer sends must never wait for a client: one that sends PR OUTs
/// and stops reading the replies gets them from a thread of its own once its socket is full,
/// while another client's commands are committed and answered. The I/O timeout is an hour, so
/// a writer held up by the first client would leave the second unanswered (its client gives up
/// after 30 s and the test fails).
#[test]
fn a_client_that_stops_reading_replies_holds_up_no_other_commit() {
    let store = store_dir();
    let lo = LoopDevice::new();
    let db = store.path().join("reservations.db");
    let cfg = emulate_config(store.path(), &lo, &db, "");
    let log = store.path().join("log");
    let sock = store.path().join("run/stall.sock");
    let h = start_emulating(
        &sock,
        &cfg,
        &log,
        &["--connection-threads", "0", "--io-timeout", "3600"],
    );
    let mut greedy = Conn::connect(&h.socket);
    let greedy_stream = greedy.stream.try_clone().unwrap();
    let dev = lo.open(true);
    let sender = std::thread::spawn(move || {
        let cdb = pr_out(REGISTER_AND_IGNORE, 0, 24);
        let mut sent = 0u64;
        // Never reads: blocks once the daemon stops reading it, until the socket is shut down.
        while greedy.send(&cdb, &[dev.as_fd()]).is_ok()
            && greedy.stream.write_all(&params(0, sent + 1)).is_ok()
        {
            sent += 1;
        }
        sent
    });
    let reply_threads = |h: &Helper| {
        thread_status(h.pid())
            .into_iter()
            .filter(|(n, _)| n == "pr-helper-reply")
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while reply_threads(&h) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no reply was handed to a thread of its own in 60 s: the client's socket never filled"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The other client's commands go through the same writer meanwhile.
    let dev = lo.open(true);
    let mut c =
        Client::connect_with_timeout(&h.socket, Some(std::time::Duration::from_secs(30))).unwrap();
    for n in 0..20u64 {
        let r = c
            .execute(
                dev.as_fd(),
                &cdb(&[0x5f, REGISTER_AND_IGNORE, 0, 0, 0, 0, 0, 0, 24, 0]),
                &params(0, 0x5000 + n),
            )
            .unwrap_or_else(|e| panic!("command {n} while another client stalls: {e}"));
        assert_eq!(r.status, Status::GOOD);
    }
    assert_eq!(reply_threads(&h), 1, "the stalled reply is still waiting");
    // The stalled client goes away: its reply thread fails and ends.
    greedy_stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(greedy_stream);
    let sent = sender.join().unwrap();
    assert!(sent > 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while reply_threads(&h) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reply thread of a closed connection did not end in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn two_daemons_on_one_database_are_two_initiators_that_fence_each_other() {
    let store = store_dir();
    let lo = LoopDevice::new();
    let db = store.path().join("reservations.db");
    let cfg = emulate_config(store.path(), &lo, &db, "");
    let a = start_at(
        &store.path().join("a/pr.sock"),
        &cfg,
        &store.path().join("a.log"),
    );
    let b = start_at(
        &store.path().join("b/pr.sock"),
        &cfg,
        &store.path().join("b.log"),
    );
    let dev = lo.open(true);
    let mut ca = Client::connect(&a.socket).unwrap();
    let mut cb = Client::connect(&b.socket).unwrap();

    let log = store.path().join("a.log");
    fence_each_other(
        &mut ca,
        &mut cb,
        &dev,
        || {},
        || std::fs::read_to_string(&log).unwrap_or_default(),
    );
}

#[test]
fn state_and_identity_survive_a_restart_under_libvirt_managed_paths() {
    let store = store_dir();
    let lo = LoopDevice::new();
    let db = store.path().join("reservations.db");
    let cfg = emulate_config(store.path(), &lo, &db, "");
    let log = store.path().join("log");
    let dev = lo.open(true);
    // libvirt: <libDir>/domain-<id>-<name>/pr-helper0.sock; the id changes on every VM start.
    let first = store.path().join("domain-5-node-a/pr-helper0.sock");
    let mut h = start_at(&first, &cfg, &log);
    let mut c = Client::connect(&h.socket).unwrap();
    assert_eq!(
        prout(&mut c, &dev, REGISTER, 0, 0, 0x1111).status,
        Status::GOOD
    );
    drop(c);
    assert_eq!(h.signal_and_wait(libc::SIGTERM).code(), Some(0));
    drop(h);

    let second = store.path().join("domain-6-node-a/pr-helper0.sock");
    let h = start_at(&second, &cfg, &log);
    let mut c = Client::connect(&h.socket).unwrap();
    let r = read_keys(&mut c, &dev);
    assert_eq!(
        r.data,
        [0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x11, 0x11]
    );
    // The same initiator: the key registered before the restart is its own.
    assert_eq!(
        prout(&mut c, &dev, RESERVE, WRITE_EXCLUSIVE, 0x1111, 0).status,
        Status::GOOD
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains(
            "as initiator iSCSI name iqn.2026-12.org.pr-helper:vm.node-a on relative target port 1"
        ),
        "{log}"
    );

    // Another VM's socket is another initiator: the key is not its own.
    let other = store.path().join("domain-7-node-b/pr-helper0.sock");
    let hb = start_at(&other, &cfg, &store.path().join("b.log"));
    let mut cb = Client::connect(&hb.socket).unwrap();
    assert_eq!(
        prout(&mut cb, &dev, RESERVE, WRITE_EXCLUSIVE, 0x1111, 0).status,
        Status::RESERVATION_CONFLICT
    );
}

#[test]
fn a_configured_initiator_replaces_the_derived_one() {
    let store = store_dir();
    let lo = LoopDevice::new();
    let db = store.path().join("reservations.db");
    let cfg = emulate_config(
        store.path(),
        &lo,
        &db,
        "initiator = \"iqn.2026-01.com.example:node1\"\nrelative_target_port = 2\n",
    );
    let dev = lo.open(true);
    let a = start_at(
        &store.path().join("a.sock"),
        &cfg,
        &store.path().join("a.log"),
    );
    let mut c = Client::connect(&a.socket).unwrap();
    assert_eq!(
        prout(&mut c, &dev, REGISTER, 0, 0, 0x1111).status,
        Status::GOOD
    );
    // Another socket with the same configured initiator is the same I_T nexus.
    let b = start_at(
        &store.path().join("b.sock"),
        &cfg,
        &store.path().join("b.log"),
    );
    let mut c = Client::connect(&b.socket).unwrap();
    assert_eq!(
        prout(&mut c, &dev, RESERVE, WRITE_EXCLUSIVE, 0x1111, 0).status,
        Status::GOOD
    );
    let log = std::fs::read_to_string(store.path().join("b.log")).unwrap();
    assert!(
        log.contains(
            "as initiator iSCSI name iqn.2026-01.com.example:node1 on relative target port 2"
        ),
        "{log}"
    );
}

#[test]
fn bad_emulate_configurations_and_stores_stop_the_start_naming_the_input() {
    let store = store_dir();
    let lo = LoopDevice::new();
    let sock = store.path().join("s.sock");
    let run = |cfg: &Path| {
        let out = Command::new(our_helper())
            .arg("-k")
            .arg(&sock)
            .arg("--config")
            .arg(cfg)
            .args(["-u", "nobody", "-g", "nogroup"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(!sock.exists());
        String::from_utf8(out.stderr).unwrap()
    };
    let cfg = write_config(
        store.path(),
        &format!(
            "[[device]]\npath = \"{}\"\nbackend = \"emulate\"\n",
            lo.path.display()
        ),
    );
    // A loop device answers no INQUIRY (SG_IO is EINVAL there): no VPD page 0x83, no lu.
    let e = run(&cfg);
    assert!(
        e.starts_with(&format!(
            "pr-helper: --config: {}: [[device]] entry 1: backend \"emulate\" needs the logical \
             unit's identity: {} has no VPD page 0x83 identifier (INQUIRY through SG_IO failed: ",
            cfg.display(),
            lo.path.display()
        )) && e.ends_with("; give lu = \"NAME\", its name in the store\n"),
        "{e}"
    );
    let db = store.path().join("reservations.db");
    let cfg = emulate_config(store.path(), &lo, &db, "initiator = \"Node 1\"\n");
    let e = run(&cfg);
    assert!(
        e.starts_with(&format!(
            "pr-helper: --config: {}: [emulate]: initiator = \"Node 1\" is not an iSCSI name",
            cfg.display()
        )),
        "{e}"
    );

    // A file that is not a SQLite database: refused, and left as it was.
    let cfg = emulate_config(store.path(), &lo, &db, "");
    std::fs::write(&db, vec![0x5a; 8192]).unwrap();
    let e = run(&cfg);
    assert!(
        e.starts_with(&format!(
            "pr-helper: cannot start the emulate backend: the store database {} is corrupt",
            db.display()
        )),
        "{e}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), vec![0x5a; 8192]);

    // A database the dropped user cannot open.
    let locked = tempfile::tempdir().unwrap(); // root's, mode 0700
    let db = locked.path().join("reservations.db");
    let cfg = emulate_config(store.path(), &lo, &db, "");
    let e = run(&cfg);
    assert!(
        e.starts_with(&format!(
            "pr-helper: cannot start the emulate backend: cannot open the store database {}",
            db.display()
        )),
        "{e}"
    );
    assert!(
        e.contains("must be writable by the user pr-helper runs as"),
        "{e}"
    );
}

#[test]
fn a_missing_store_directory_is_created_for_the_dropped_user() {
    let store = store_dir();
    let lo = LoopDevice::new();
    let db = store.path().join("var/lib/pr-helper/reservations.db");
    let cfg = emulate_config(store.path(), &lo, &db, "");
    let h = start_at(
        &store.path().join("s.sock"),
        &cfg,
        &store.path().join("log"),
    );
    let dev = lo.open(true);
    let mut c = Client::connect(&h.socket).unwrap();
    assert_eq!(
        prout(&mut c, &dev, REGISTER, 0, 0, 0x1111).status,
        Status::GOOD
    );
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(db.parent().unwrap()).unwrap();
    assert_eq!((md.uid(), md.gid()), nobody());
    assert_eq!(md.mode() & 0o777, 0o750);
}

#[test]
fn a_store_that_cannot_execute_answers_logical_unit_communication_failure() {
    let store = store_dir();
    let lo = LoopDevice::new();
    let db = store.path().join("reservations.db");
    let cfg = emulate_config(store.path(), &lo, &db, "");
    let h = start_at(
        &store.path().join("s.sock"),
        &cfg,
        &store.path().join("log"),
    );
    let dev = lo.open(true);
    let mut c = Client::connect(&h.socket).unwrap();
    assert_eq!(
        prout(&mut c, &dev, REGISTER, 0, 0, 0x1111).status,
        Status::GOOD
    );
    // Another process holds the database's write lock for longer than the store's 5 s busy
    // timeout: the command cannot be executed, and nothing is written.
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let r = prout(&mut c, &dev, RESERVE, WRITE_EXCLUSIVE, 0x1111, 0);
    // CHECK CONDITION, ABORTED COMMAND, LOGICAL UNIT COMMUNICATION FAILURE (0Bh/08h/00h).
    assert_eq!(
        (r.status, sense(&r)),
        (Status::CHECK_CONDITION, (0x0b, 0x08, 0x00))
    );
    other.execute_batch("ROLLBACK").unwrap();
    let r = read_reservation(&mut c, &dev);
    assert_eq!(r.data, [0, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(
        prout(&mut c, &dev, RESERVE, WRITE_EXCLUSIVE, 0x1111, 0).status,
        Status::GOOD
    );
    let log = std::fs::read_to_string(store.path().join("log")).unwrap();
    assert!(
        log.contains("the store failed for logical unit disk0") && log.contains("stayed locked"),
        "{log}"
    );
}

/// iSCSI TransportID, format 00b (SPC-4 §7.6.4.6, table "iSCSI TransportID format"): byte 0
/// FORMAT CODE 00b and PROTOCOL IDENTIFIER 5h, byte 1 reserved, bytes 2–3 ADDITIONAL LENGTH,
/// then the iSCSI name, NUL-terminated and padded with NULs to a multiple of 4 bytes.
fn iscsi_transport_id(name: &str) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    while !body.len().is_multiple_of(4) {
        body.push(0);
    }
    let mut t = vec![0x05, 0x00];
    t.extend_from_slice(&(body.len() as u16).to_be_bytes());
    t.extend_from_slice(&body);
    t
}

/// READ FULL STATUS (SPC-4 §6.15.5): per descriptor the key, the RELATIVE TARGET PORT
/// IDENTIFIER (bytes 18–19) and the TransportID (after the 24-byte header), in list order.
fn full_status(r: &Reply) -> Vec<(u64, u16, Vec<u8>)> {
    assert_eq!(r.status, Status::GOOD);
    let d = &r.data;
    let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
    assert_eq!(d.len(), 8 + len);
    let mut out = Vec::new();
    let mut at = 8;
    while at < d.len() {
        let key = u64::from_be_bytes(d[at..at + 8].try_into().unwrap());
        let port = u16::from_be_bytes([d[at + 18], d[at + 19]]);
        let tid_len = u32::from_be_bytes(d[at + 20..at + 24].try_into().unwrap()) as usize;
        out.push((key, port, d[at + 24..at + 24 + tid_len].to_vec()));
        at += 24 + tid_len;
    }
    out
}

/// One daemon, three sockets: `-k` and two `[[socket]]` entries (one with a configured
/// initiator, one with its initiator derived from its path and relative target port 2). Each
/// is its own I_T nexus: they see each other's registrations, conflict, and one preempts the
/// other, which gets the unit attention; READ FULL STATUS names each nexus.
#[test]
fn several_sockets_of_one_daemon_are_initiators_that_fence_each_other() {
    let store = store_dir();
    let lo = LoopDevice::new();
    let db = store.path().join("reservations.db");
    let vm2 = store.path().join("vm2.sock");
    let vm3 = store.path().join("vm3.sock");
    let cfg = emulate_config(
        store.path(),
        &lo,
        &db,
        &format!(
            "\n[[socket]]\npath = \"{}\"\ninitiator = \"iqn.2026-01.com.example:vm2\"\n\n\
             [[socket]]\npath = \"{}\"\nrelative_target_port = 2\n",
            vm2.display(),
            vm3.display()
        ),
    );
    let log = store.path().join("log");
    let mut h = start_at(&store.path().join("vm1.sock"), &cfg, &log);
    // All three exist once -k does (bound before it is announced).
    assert!(vm2.exists() && vm3.exists());
    let dev = lo.open(true);
    let mut c1 = Client::connect(&h.socket).unwrap();
    let mut c2 = Client::connect(&vm2).unwrap();
    let mut c3 = Client::connect(&vm3).unwrap();
    for (c, key) in [(&mut c1, 0x1111), (&mut c2, 0x2222), (&mut c3, 0x3333)] {
        assert_eq!(prout(c, &dev, REGISTER, 0, 0, key).status, Status::GOOD);
    }
    assert_eq!(
        prout(&mut c1, &dev, RESERVE, WRITE_EXCLUSIVE, 0x1111, 0).status,
        Status::GOOD
    );
    // vm2 sees every key (generation 3) and its RESERVE conflicts with vm1's reservation.
    let r = read_keys(&mut c2, &dev);
    assert_eq!(&r.data[..8], [0, 0, 0, 3, 0, 0, 0, 24]);
    assert_eq!(
        prout(&mut c2, &dev, RESERVE, WRITE_EXCLUSIVE, 0x2222, 0).status,
        Status::RESERVATION_CONFLICT
    );
    // READ FULL STATUS names the three nexuses.
    let r = c3
        .execute(
            dev.as_fd(),
            &cdb(&[0x5e, 0x03, 0, 0, 0, 0, 0, 0x10, 0x00, 0]),
            &[],
        )
        .unwrap();
    // Sockets without a configured initiator get the one derived from their path (the
    // derivation has its own tests in pr-backend's identity.rs).
    let vm1_name = derived_initiator_name(&h.socket);
    let vm3_name = derived_initiator_name(&vm3);
    assert_ne!(vm1_name, vm3_name);
    assert_eq!(
        full_status(&r),
        [
            (0x1111, 1, iscsi_transport_id(&vm1_name)),
            (0x2222, 1, iscsi_transport_id("iqn.2026-01.com.example:vm2")),
            (0x3333, 2, iscsi_transport_id(&vm3_name)),
        ]
    );
    // vm2 fences vm1: PREEMPT vm1's key, vm2 holds WRITE EXCLUSIVE (generation 4).
    assert_eq!(
        prout(&mut c2, &dev, PREEMPT, WRITE_EXCLUSIVE, 0x2222, 0x1111).status,
        Status::GOOD
    );
    let r = read_reservation(&mut c3, &dev);
    assert_eq!(
        r.data,
        [0, 0, 0, 4, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0x22, 0x22, 0, 0, 0, 0, 0, 0x01, 0, 0]
    );
    // vm1 gets UNIT ATTENTION, REGISTRATIONS PREEMPTED (06h/2Ah/05h) once, then its key is
    // gone; vm3, not preempted, gets none.
    let r = read_keys(&mut c1, &dev);
    assert_eq!(
        (r.status, sense(&r)),
        (Status::CHECK_CONDITION, (0x06, 0x2a, 0x05))
    );
    let r = read_keys(&mut c1, &dev);
    assert_eq!(
        r.data,
        [0, 0, 0, 4, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0x22, 0x22, 0, 0, 0, 0, 0, 0, 0x33, 0x33]
    );
    assert_eq!(
        prout(&mut c1, &dev, RESERVE, WRITE_EXCLUSIVE, 0x1111, 0).status,
        Status::RESERVATION_CONFLICT
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!(
            "emulate: connections on {} are initiator iSCSI name iqn.2026-01.com.example:vm2 \
             on relative target port 1",
            vm2.display()
        )),
        "{text}"
    );
    drop((c1, c2, c3));
    assert_eq!(h.signal_and_wait(libc::SIGTERM).code(), Some(0));
    // Every socket file is removed at exit (the directory is the dropped user's here).
    assert!(!vm2.exists() && !vm3.exists() && !h.socket.exists());
}

/// Extra sockets that cannot work stop the start, naming the entry and its line, and leave no
/// socket behind.
#[test]
fn bad_socket_entries_stop_the_start() {
    let store = store_dir();
    let lo = LoopDevice::new();
    let db = store.path().join("reservations.db");
    let main = store.path().join("main.sock");
    let run = |extra: &str| {
        let cfg = emulate_config(store.path(), &lo, &db, extra);
        let out = Command::new(our_helper())
            .arg("-k")
            .arg(&main)
            .arg("--config")
            .arg(&cfg)
            .args(["-u", "nobody", "-g", "nogroup"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(!main.exists());
        let left: Vec<_> = std::fs::read_dir(store.path())
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().into_string().unwrap();
                n.ends_with(".sock").then_some(n)
            })
            .collect();
        assert!(left.is_empty(), "sockets left: {left:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    // The emulate config ends at line 7; here the [[socket]] table's path is on line 10.
    let e = run(&format!("\n[[socket]]\npath = \"{}\"\n", main.display()));
    assert!(
        e.starts_with(&format!(
            "pr-helper: --config: [[socket]] entry 1 (line 10): path = \"{}\" is the -k \
             socket; expected another path\n",
            main.display()
        )),
        "{e}"
    );
    let other = store.path().join("other.sock");
    let e = run(&format!(
        "initiator = \"iqn.2026-01.com.example:a\"\n\n[[socket]]\npath = \"{}\"\n\
         initiator = \"iqn.2026-01.com.example:a\"\n",
        other.display()
    ));
    assert!(
        e.starts_with(
            "pr-helper: cannot start the emulate backend: --config: [[socket]] entry 1 (line \
             11): initiator iSCSI name iqn.2026-01.com.example:a on relative target port 1 is \
             already the -k socket's; expected another initiator or relative_target_port\n"
        ),
        "{e}"
    );
}
