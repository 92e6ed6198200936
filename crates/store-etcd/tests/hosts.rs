//! Three hosts (separate `pr-etcd-load` processes, each its own store client and identity)
//! run concurrent persistent-reservation command mixes on one logical unit of a real 3-member
//! etcd cluster, while the test kills a follower, kills the leader and partitions host C from
//! etcd (a proxy that stops forwarding). Every recorded history, all hosts together, must be
//! linearizable with the engine as the model; the partitioned host must answer errors within a
//! bound and recover; service must go on with a member down and resume after the leader's
//! death within the election time.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pr_engine::EngineConfig;
use pr_store_etcd::cluster::{Cluster, Timing};
use pr_store_etcd::history::{self, Ending, Event};
use pr_store_etcd::linearizability::{check, Verdict};
use pr_store_etcd::proxy::Proxy;

const COMMAND_TIMEOUT: Duration = Duration::from_millis(1500);
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

struct Host {
    name: &'static str,
    child: Child,
    history: PathBuf,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_host(
    name: &'static str,
    endpoints: &[String],
    first: u16,
    threads: u16,
    all: u16,
    dir: &Path,
    prefix: &str,
    seed: u64,
) -> Host {
    let history = dir.join(format!("{name}.jsonl"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_pr-etcd-load"))
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .arg("--prefix")
        .arg(prefix)
        .arg("--host-id")
        .arg(name)
        .arg("--first-nexus")
        .arg(first.to_string())
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--all-nexuses")
        .arg(all.to_string())
        .arg("--ops")
        .arg("100000")
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--pause-ms")
        .arg("10")
        .arg("--command-timeout-ms")
        .arg(COMMAND_TIMEOUT.as_millis().to_string())
        .arg("--request-timeout-ms")
        .arg(REQUEST_TIMEOUT.as_millis().to_string())
        .arg("--history")
        .arg(&history)
        .arg("--start-file")
        .arg(dir.join("start"))
        .arg("--stop-file")
        .arg(dir.join("stop"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("pr-etcd-load");
    // "ready" once its store is open.
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "host {name} did not open its store");
    Host {
        name,
        child,
        history,
    }
}

fn finish(mut hosts: Vec<Host>, dir: &Path) -> Vec<Event> {
    std::fs::write(dir.join("stop"), b"").unwrap();
    let deadline = Instant::now() + COMMAND_TIMEOUT * 3 + Duration::from_secs(10);
    let mut all = Vec::new();
    for h in hosts.iter_mut() {
        loop {
            match h.child.try_wait().unwrap() {
                Some(status) => {
                    assert!(status.success(), "host {} exited with {status}", h.name);
                    break;
                }
                None if Instant::now() >= deadline => panic!("host {} did not stop", h.name),
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let f = std::fs::File::open(&h.history).unwrap();
        all.extend(history::read(BufReader::new(f)).unwrap());
    }
    all
}

/// Ok answers of `host` whose call began after `t`.
fn first_ok_after(events: &[Event], host: Option<&str>, t: u64) -> Option<u64> {
    events
        .iter()
        .filter(|e| host.is_none_or(|h| e.client.starts_with(&format!("{h}/"))))
        .filter(|e| e.invoke >= t && matches!(e.result, Ending::Ok(_)))
        .map(|e| e.ret)
        .min()
}

fn wait_ops(dir: &Path, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within 20 s ({dir:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_linearizable(events: &[Event], what: &str) {
    let t0 = Instant::now();
    match check(events, &EngineConfig::default(), 20_000_000) {
        Verdict::Linearizable(order) => {
            assert_eq!(order.len() + skipped(events), events.len());
            eprintln!(
                "{what}: {} commands linearizable (checked in {:?})",
                events.len(),
                t0.elapsed()
            );
        }
        v => {
            let dump = std::env::temp_dir().join(format!("pr-etcd-{what}.jsonl"));
            let _ = history::write(std::fs::File::create(&dump).unwrap(), events);
            panic!(
                "{what}: history not linearizable: {v:?}; history in {}",
                dump.display()
            );
        }
    }
}

fn skipped(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e.result, Ending::NotApplied(_)))
        .count()
}

#[test]
fn three_hosts_through_member_and_leader_loss_and_a_partition_stay_linearizable() {
    let timing = Timing::FAST;
    let mut cluster = Cluster::start(3, timing).expect("etcd cluster");
    let dir = tempfile::tempdir().unwrap();
    // Host C reaches every member through a proxy the test can cut.
    let proxies: Vec<Proxy> = cluster.proxies().unwrap();
    let direct = cluster.endpoints();
    let through: Vec<String> = proxies.iter().map(Proxy::url).collect();
    let hosts = vec![
        spawn_host("a", &direct, 0, 2, 6, dir.path(), "/hosts/", 11),
        spawn_host("b", &direct, 2, 2, 6, dir.path(), "/hosts/", 12),
        spawn_host("c", &through, 4, 2, 6, dir.path(), "/hosts/", 13),
    ];
    // Progress is watched through a fourth client, on the LU's generation-independent
    // revision: every state change moves it.
    let watcher = pr_store_etcd::EtcdStore::open({
        let mut c = pr_store_etcd::EtcdConfig::new(direct.clone());
        c.prefix = "/hosts/".into();
        c.host_id = Some("watcher".into());
        c
    })
    .unwrap();
    let lu = pr_store::LuId::new("naa.600140500000000000000000000e7cd0").unwrap();
    let changes = || {
        use pr_store::Store;
        watcher
            .load(&lu)
            .ok()
            .flatten()
            .map(|l| l.generation.0)
            .unwrap_or(0)
    };
    let progressed = |from: u32| move || changes() != from;
    std::fs::write(dir.path().join("start"), b"").unwrap();
    wait_ops(dir.path(), "first commands", progressed(0));

    // 1. Kill a follower: service goes on.
    let leader = cluster.leader(Duration::from_secs(5)).unwrap();
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    let follower_killed = history::now();
    let g = changes();
    wait_ops(dir.path(), "progress with a follower down", progressed(g));
    cluster.restart(follower).unwrap();

    // 2. Kill the leader: service resumes within the election time.
    let leader = cluster.leader(Duration::from_secs(5)).unwrap();
    cluster.kill(leader);
    let leader_killed = history::now();
    let g = changes();
    wait_ops(
        dir.path(),
        "progress after the leader's death",
        progressed(g),
    );
    cluster.restart(leader).unwrap();
    cluster.leader(Duration::from_secs(5)).unwrap();

    // 3. Partition host C from every member for 3 s.
    let g = changes();
    wait_ops(dir.path(), "progress before the partition", progressed(g));
    for p in &proxies {
        p.cut();
    }
    let cut = history::now();
    std::thread::sleep(Duration::from_secs(4)); // the partition's length, not a wait for a condition
    for p in &proxies {
        p.heal();
    }
    let healed = history::now();
    // C serves again after the heal: a write of C's client appears in the stored value.
    let c_written = || {
        watcher
            .load_stored(&lu)
            .ok()
            .flatten()
            .and_then(|s| {
                s.clients
                    .iter()
                    .filter(|(id, _)| id.starts_with("c#"))
                    .map(|(_, e)| e.written)
                    .max()
            })
            .unwrap_or(0)
    };
    let before = c_written();
    wait_ops(dir.path(), "host C writing again after the heal", || {
        c_written() > before
    });
    let events = finish(hosts, dir.path());

    // Every call ended within the store's bound.
    let bound = COMMAND_TIMEOUT + Duration::from_millis(1500);
    for e in &events {
        assert!(
            e.latency() <= bound,
            "{} took {:?} (bound {bound:?}): {e:?}",
            e.client,
            e.latency()
        );
    }
    // A member down: others went on (an Ok answer to a command sent after the kill).
    assert!(first_ok_after(&events, Some("a"), follower_killed).is_some());
    // The leader's death: the first Ok answer to a command sent after it came within twice the
    // election timeout (etcd randomizes it up to 2x) and one request timeout.
    let resumed = first_ok_after(&events, None, leader_killed).expect("service resumed");
    let gap = Duration::from_nanos(resumed - leader_killed);
    assert!(
        gap <= timing.election * 2 + REQUEST_TIMEOUT + Duration::from_millis(500),
        "service resumed {gap:?} after the leader was killed"
    );
    // Host C during the partition: no Ok answer to a command sent after the cut that
    // returned before the heal.
    let c_during: Vec<&Event> = events
        .iter()
        .filter(|e| e.client.starts_with("c/") && e.invoke > cut + 1_000_000 && e.ret < healed)
        .collect();
    assert!(
        !c_during.is_empty(),
        "host C sent nothing during the partition"
    );
    for e in &c_during {
        assert!(
            !matches!(e.result, Ending::Ok(_)),
            "host C answered from isolation: {e:?}"
        );
    }
    // ...and C served again after the heal.
    assert!(
        events.iter().any(|e| e.client.starts_with("c/")
            && e.ret > healed
            && matches!(e.result, Ending::Ok(_))),
        "host C never recovered after the heal"
    );
    let oks = events
        .iter()
        .filter(|e| matches!(e.result, Ending::Ok(_)))
        .count();
    eprintln!(
        "{} commands, {oks} answered, {} partitioned-host errors",
        events.len(),
        c_during.len()
    );
    // No host ever saw a state that contradicts the others.
    assert_linearizable(&events, "three-hosts");
}

#[test]
fn the_checker_rejects_a_tampered_real_history() {
    // A real history from two hosts, then one READ KEYS answer swapped for another's: the
    // generation or key list no longer fits any order.
    let cluster = Cluster::start(3, Timing::default()).expect("etcd cluster");
    let dir = tempfile::tempdir().unwrap();
    let eps = cluster.endpoints();
    let hosts = vec![
        spawn_host("a", &eps, 0, 1, 2, dir.path(), "/tamper/", 21),
        spawn_host("b", &eps, 1, 1, 2, dir.path(), "/tamper/", 22),
    ];
    std::fs::write(dir.path().join("start"), b"").unwrap();
    let watcher = pr_store_etcd::EtcdStore::open({
        let mut c = pr_store_etcd::EtcdConfig::new(eps.clone());
        c.prefix = "/tamper/".into();
        c
    })
    .unwrap();
    let lu = pr_store::LuId::new("naa.600140500000000000000000000e7cd0").unwrap();
    wait_ops(dir.path(), "a few state changes", || {
        use pr_store::Store;
        watcher
            .load(&lu)
            .ok()
            .flatten()
            .is_some_and(|l| l.generation.0 >= 15)
    });
    let mut events = finish(hosts, dir.path());
    assert_linearizable(&events, "untampered");
    // Find two READ KEYS answers that differ, the earlier one returning before the later one
    // was sent, and swap them.
    let reads: Vec<usize> = (0..events.len())
        .filter(|&i| events[i].cdb[..2] == [0x5e, 0x00])
        .filter(|&i| matches!(&events[i].result, Ending::Ok(a) if a.status == 0))
        .collect();
    let pair = reads
        .iter()
        .flat_map(|&i| reads.iter().map(move |&j| (i, j)))
        .find(|&(i, j)| events[i].ret < events[j].invoke && events[i].result != events[j].result)
        .expect("two different READ KEYS answers in sequence");
    let (i, j) = pair;
    let ri = events[i].result.clone();
    events[i].result = events[j].result.clone();
    events[j].result = ri;
    match check(&events, &EngineConfig::default(), 20_000_000) {
        Verdict::Violation { .. } => {}
        v => panic!("a tampered history was accepted: {v:?}"),
    }
}
