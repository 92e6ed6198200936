//! Crash safety, proven by killing: a child process (this test binary re-executed in the role
//! of `crash_child`) registers distinct I_T nexuses with distinct keys through the SQLite
//! store from 1–4 threads and prints `ACK n` as each REGISTER is acknowledged; the parent
//! kills it with SIGKILL at a random instant, reopens the store and checks that every
//! acknowledged registration is there, the one in flight on each thread is wholly there or
//! wholly absent, nothing else is, the generation counts exactly the registrations, and the
//! engine's invariants hold.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use pr_store::{SqliteStore, Store};

/// Environment variable that selects the child role: `PATH;FIRST;THREADS`.
const CHILD: &str = "PR_STORE_CRASH_CHILD";
/// Registrations a child thread may make (far more than it lives to make).
const PER_THREAD: u32 = 10_000;
/// Kills in total, and kills that share one database file (state accumulates across them).
const KILLS: usize = 1000;
const KILLS_PER_FILE: usize = 25;
/// Bound on every wait for the child.
const PATIENCE: Duration = Duration::from_secs(60);

/// Registration `j` of thread `t` of a child whose first nexus is `first`.
fn nexus_number(first: u32, threads: u32, t: u32, j: u32) -> u32 {
    first + t + threads * j
}

/// The child role: never returns while the parent wants it (it is killed first).
#[test]
#[ignore = "the child role of sigkill_at_random_instants, run by it"]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut parts = spec.split(';');
    let path = parts.next().unwrap().to_owned();
    let first: u32 = parts.next().unwrap().parse().unwrap();
    let threads: u32 = parts.next().unwrap().parse().unwrap();
    let store = SqliteStore::open(&path).unwrap();
    let lu = lu();
    writeln!(std::io::stdout().lock(), "READY").unwrap();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (store, lu) = (&store, &lu);
            s.spawn(move || {
                for j in 0..PER_THREAD {
                    let n = nexus_number(first, threads, t, j);
                    let o = register(store, lu, n, n.into(), 0);
                    assert_eq!(status(&o), GOOD);
                    // Stdout is line-buffered: the line is written when the newline is.
                    writeln!(std::io::stdout().lock(), "ACK {n}").unwrap();
                }
            });
        }
    });
}

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one killed child left: per thread, how many registrations were acknowledged and
/// whether the one in flight made it.
struct Kill {
    acked: usize,
    in_flight_present: usize,
}

/// Runs one child on `path`, kills it at a random instant, and checks the store against
/// `known` (the registrations found after the previous kill), which it then updates.
fn kill_once(
    path: &Path,
    first: u32,
    threads: u32,
    rng: &mut Rng,
    known: &mut BTreeSet<u32>,
) -> Kill {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, format!("{};{first};{threads}", path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
    let mut acked: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); threads as usize];
    let record = |line: &str, acked: &mut [BTreeSet<u32>]| {
        if let Some(n) = line.strip_prefix("ACK ") {
            let n: u32 = n.parse().unwrap();
            let t = (n - first) % threads;
            acked[t as usize].insert((n - first) / threads);
            true
        } else {
            false
        }
    };
    // Wait (bounded) for the child to open the store and acknowledge 0–7 commands, then let
    // it run for another 0–2 ms more so that the kill lands anywhere in a transaction.
    let target = rng.below(8) as usize;
    let deadline = Instant::now() + PATIENCE;
    let mut ready = false;
    let mut seen = 0;
    while !ready || seen < target {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the child stopped answering");
        ready |= line.ends_with("READY");
        seen += usize::from(record(&line, &mut acked));
    }
    std::thread::sleep(Duration::from_micros(rng.below(2000)));
    child.kill().unwrap();
    child.wait().unwrap();
    // Everything the child printed before it died counts as acknowledged.
    while let Ok(line) = rx.recv_timeout(PATIENCE) {
        record(&line, &mut acked);
    }
    reader.join().unwrap();

    let store = SqliteStore::open(path).unwrap();
    let state = store.load(&lu()).unwrap().unwrap_or_default();
    state.check_invariants().unwrap();
    let mut found = BTreeSet::new();
    for r in &state.registrants {
        let n = match r.nexus.initiator {
            pr_scsi::transport_id::TransportId::Sas { sas_address } => {
                u32::from_be_bytes(sas_address[4..].try_into().unwrap())
            }
            ref other => panic!("unexpected initiator {other:?}"),
        };
        assert_eq!(
            r.key.0,
            u64::from(n),
            "registration of nexus {n} has another key"
        );
        assert_eq!(r.nexus, nexus(n));
        found.insert(n);
    }
    assert_eq!(
        state.generation.0 as usize,
        found.len(),
        "generation counts registrations"
    );
    assert!(found.is_superset(known), "an earlier registration was lost");
    let mut in_flight_present = 0;
    let mut expected = known.clone();
    for (t, acks) in acked.iter().enumerate() {
        let a = acks.len() as u32;
        assert!(
            acks.iter().copied().eq(0..a),
            "thread {t} acknowledged out of order"
        );
        expected.extend((0..a).map(|j| nexus_number(first, threads, t as u32, j)));
        let next = nexus_number(first, threads, t as u32, a);
        if found.contains(&next) {
            in_flight_present += 1;
            expected.insert(next);
        }
    }
    assert_eq!(found, expected, "registrations after the kill");
    *known = found;
    Kill {
        acked: acked.iter().map(BTreeSet::len).sum(),
        in_flight_present,
    }
}

#[test]
fn sigkill_at_random_instants() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let seed = std::env::var("PR_STORE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    println!("seed {seed} (PR_STORE_CRASH_SEED reproduces the instants' choices)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (mut acked, mut in_flight_present) = (0, 0);
    let mut next_first = 1u32;
    for file in 0..KILLS / KILLS_PER_FILE {
        let path = dir.path().join(format!("crash-{file}.db"));
        let mut known = BTreeSet::new();
        for _ in 0..KILLS_PER_FILE {
            let threads = 1 + rng.below(4) as u32;
            let k = kill_once(&path, next_first, threads, &mut rng, &mut known);
            acked += k.acked;
            in_flight_present += k.in_flight_present;
            next_first += threads * PER_THREAD;
        }
    }
    println!(
        "{KILLS} kills in {:.1} s: {acked} acknowledged registrations kept, {in_flight_present} \
         in-flight ones found committed",
        started.elapsed().as_secs_f64()
    );
}
