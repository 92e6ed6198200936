//! Measuring durable PR OUT throughput of the SQLite store, group-committed against one
//! transaction and one fsync per command (`max_batch = 1`). Not a test: pr-bench and
//! `examples/group_commit.rs` report it.

use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use pr_engine::{EngineConfig, Nexus};
use pr_scsi::transport_id::TransportId;
use pr_scsi::{RelativeTargetPort, Status};

use crate::{LuId, SqliteOptions, SqliteStore, Store, StoreError};

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrOutRate {
    /// Client threads issuing PR OUT concurrently.
    pub threads: usize,
    /// Whether commands were group-committed (else `max_batch = 1`).
    pub group_commit: bool,
    /// Commands applied (each one changed the state and was durable before its reply).
    pub commands: usize,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Write transactions (fsyncs) that carried them.
    pub transactions: u64,
}

impl PrOutRate {
    /// Mean commands per transaction (per fsync).
    pub fn batch(&self) -> f64 {
        self.commands as f64 / self.transactions.max(1) as f64
    }

    /// Durable PR OUT per second.
    pub fn per_second(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64()
    }
}

/// A SAS initiator numbered `n` on target port 1.
fn initiator(n: u64) -> Nexus {
    let mut sas_address = (0x5000_0000_0000_0000 | n).to_be_bytes();
    sas_address[0] = 0x50;
    Nexus {
        initiator: TransportId::Sas { sas_address },
        relative_target_port: RelativeTargetPort(1),
    }
}

/// PR OUT REGISTER AND IGNORE EXISTING KEY (SPC-4 table 178, service action 06h) with a
/// 24-byte basic parameter list whose SERVICE ACTION RESERVATION KEY is `key`.
fn register_ignore(key: u64) -> ([u8; 10], [u8; 24]) {
    let cdb = [0x5f, 0x06, 0, 0, 0, 0, 0, 0, 24, 0];
    let mut params = [0u8; 24];
    params[8..16].copy_from_slice(&key.to_be_bytes());
    (cdb, params)
}

/// Opens a new store in `dir` and has `threads` clients, each its own I_T nexus, issue
/// `per_thread` REGISTER AND IGNORE EXISTING KEY each (every one changes the key, so every one
/// is a durable write) on one logical unit.
pub fn pr_out_rate(
    dir: &Path,
    threads: usize,
    per_thread: usize,
    group_commit: bool,
) -> Result<PrOutRate, StoreError> {
    let path = dir.join(format!(
        "bench-{threads}-{}.db",
        if group_commit { "group" } else { "single" }
    ));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let options = SqliteOptions {
        max_batch: if group_commit {
            SqliteOptions::default().max_batch
        } else {
            1
        },
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(&path, options)?;
    let lu = LuId::new("naa.6001405000000000000000000000b0")?;
    let config = EngineConfig::default();
    let start = Barrier::new(threads + 1);
    let (elapsed, results) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (store, lu, config, start) = (&store, &lu, &config, &start);
                s.spawn(move || -> Result<(), StoreError> {
                    let nexus = initiator(t as u64 + 1);
                    start.wait();
                    for i in 0..per_thread {
                        let (cdb, params) =
                            register_ignore(((t as u64 + 1) << 32) | (i as u64 + 1));
                        let o = store.execute(lu, &nexus, &cdb, &params, config)?;
                        assert_eq!(o.reply.status, Status::GOOD, "benchmark command refused");
                    }
                    Ok(())
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let results: Vec<_> = workers
            .into_iter()
            .map(|w| w.join().expect("benchmark thread"))
            .collect();
        (t0.elapsed(), results)
    });
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(PrOutRate {
        threads,
        group_commit,
        commands: threads * per_thread,
        elapsed,
        transactions: store.statistics().transactions,
    })
}
