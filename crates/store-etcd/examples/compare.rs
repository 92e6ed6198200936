//! PR IN and PR OUT requests/s and latency through the etcd store (a 3-member cluster on
//! loopback, started here) next to the SQLite store, at 1, 16 and 64 clients, in one run.
//! Not a test: docs/performance.md records its output.
//!
//! cargo run --release -p pr-store-etcd --example compare -- [SECONDS_PER_POINT]

use std::sync::Barrier;
use std::time::{Duration, Instant};

use pr_engine::EngineConfig;
use pr_store::{LuId, SqliteStore, Store};
use pr_store_etcd::cluster::{Cluster, Timing};
use pr_store_etcd::workload::{self, Mix, Rng};
use pr_store_etcd::{EtcdConfig, EtcdStore};

struct Point {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn measure(store: &dyn Store, lu: &LuId, clients: u16, mix: Mix, seconds: f64) -> Point {
    let cfg = EngineConfig::default();
    let start = Barrier::new(clients as usize + 1);
    let until = Duration::from_secs_f64(seconds);
    let (elapsed, lats) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let (start, cfg) = (&start, &cfg);
                s.spawn(move || {
                    let nexus = workload::nexus(c);
                    let mut rng = Rng::new(u64::from(c) + 1);
                    let mut lats = Vec::new();
                    start.wait();
                    let t0 = Instant::now();
                    let mut n = 0;
                    while t0.elapsed() < until {
                        let (cdb, params) = workload::command(&mut rng, mix, c, clients, n);
                        let t = Instant::now();
                        let o = store
                            .execute(lu, &nexus, &cdb, &params, cfg)
                            .expect("store");
                        lats.push(t.elapsed());
                        assert_eq!(o.reply.status.0, 0, "benchmark command refused");
                        n += 1;
                    }
                    lats
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let lats: Vec<Duration> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        (t0.elapsed(), lats)
    });
    let mut latencies = lats;
    latencies.sort();
    Point {
        ops: latencies.len(),
        elapsed,
        latencies,
    }
}

fn pct(l: &[Duration], p: f64) -> f64 {
    l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
        .map(|d| d.as_secs_f64() * 1e6)
        .unwrap_or(0.0)
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let cluster = Cluster::start(3, Timing::default()).expect("etcd cluster");
    let etcd = EtcdStore::open(EtcdConfig::new(cluster.endpoints())).expect("etcd store");
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("bench.db")).expect("sqlite store");
    println!(
        "| command | clients | store | requests/s | p50 µs | p99 µs | etcd/SQLite requests/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, mix) in [
        ("PR IN READ KEYS", Mix::ReadKeys),
        ("PR OUT REGISTER AND IGNORE", Mix::Register),
    ] {
        for clients in [1u16, 16, 64] {
            let lu = LuId::new(format!("naa.60014050000000000000000000b{clients:05}")).unwrap();
            // Registrations first, so that READ KEYS reads a realistic state.
            let mut points = Vec::new();
            for (label, store) in [
                ("SQLite", &sqlite as &dyn Store),
                ("etcd", &etcd as &dyn Store),
            ] {
                if mix == Mix::ReadKeys {
                    measure(store, &lu, clients, Mix::Register, 0.2);
                }
                let p = measure(store, &lu, clients, mix, seconds);
                points.push((label, p));
            }
            let rate = |p: &Point| p.ops as f64 / p.elapsed.as_secs_f64();
            let ratio = rate(&points[1].1) / rate(&points[0].1);
            for (label, p) in &points {
                println!(
                    "| {name} | {clients} | {label} | {:.0} | {:.0} | {:.0} | {} |",
                    rate(p),
                    pct(&p.latencies, 0.5),
                    pct(&p.latencies, 0.99),
                    if *label == "etcd" {
                        format!("{ratio:.2}")
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    let s = etcd.statistics();
    println!(
        "\netcd store: {} transactions, {} conflicts (retried on the returned value), {} retries",
        s.transactions, s.conflicts, s.retries
    );
}
