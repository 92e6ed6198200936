//! Benchmark (not a test): the CPU time pr-target spends per 4 KiB READ (10) and WRITE (10)
//! through `FencedLu::run` on a real backing file (in the page cache) and a real SQLite store,
//! under a reservation (WRITE EXCLUSIVE – REGISTRANTS ONLY held by another nexus, this one
//! registered), so the access check decides every command. Built normally it runs the check;
//! built with `--features bench-no-check` the check and the in-flight accounting are compiled
//! out. bench/check-cost.sh runs both builds alternately and prints the difference: the
//! check's cost per command, without a guest or a virtqueue in the way.
//!
//!   check_cost DIR COMMANDS     # prints "read NS write NS" (thread CPU ns per command)

use std::sync::Arc;

use pr_engine::{EngineConfig, Nexus};
use pr_scsi::transport_id::TransportId;
use pr_scsi::{RelativeTargetPort, Status};
use pr_store::{LuId, SqliteStore, Store};
use pr_target::backing::Backing;
use pr_target::lu::{FencedLu, SlotId};
use pr_target::scsi::{DiskIdentity, DiskServer};

const BLOCKS: u64 = 64 * 1024 * 1024 / 512;

fn nexus(name: &str, port: u16) -> Nexus {
    Nexus {
        initiator: TransportId::Iscsi {
            name: format!("iqn.2026-12.org.pr-helper.bench:{name}"),
            isid: None,
        },
        relative_target_port: RelativeTargetPort(port),
    }
}

fn thread_cpu_ns() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

fn cmd(lu: &FencedLu<Backing>, slot: SlotId, cdb: &[u8], data: &[u8]) -> Status {
    match lu.prepare(cdb) {
        Ok(p) => lu.run(slot, cdb, &p, data).status,
        Err(r) => r.status,
    }
}

fn pr_out(lu: &FencedLu<Backing>, slot: SlotId, sa: u8, ty: u8, key: u64, sa_key: u64) {
    let mut params = vec![0u8; 24];
    params[..8].copy_from_slice(&key.to_be_bytes());
    params[8..16].copy_from_slice(&sa_key.to_be_bytes());
    let status = cmd(lu, slot, &[0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0], &params);
    assert_eq!(status, Status::GOOD, "PR OUT {sa:#x}");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: check_cost DIR COMMANDS";
    let dir = std::path::PathBuf::from(args.next().expect(usage));
    let commands: u64 = args
        .next()
        .expect(usage)
        .parse()
        .expect("COMMANDS: a number");
    std::fs::create_dir_all(&dir).expect("DIR can be created");
    let image = dir.join(format!("check-cost-{}.img", std::process::id()));
    let db = dir.join(format!("check-cost-{}.db", std::process::id()));
    let f = std::fs::File::create(&image).expect("the image can be created");
    f.set_len(BLOCKS * 512).unwrap();
    // Data, not holes (a read of a hole is cheaper): one pass of writes.
    let chunk = vec![0x5au8; 1 << 20];
    for i in 0..BLOCKS * 512 / chunk.len() as u64 {
        std::os::unix::fs::FileExt::write_all_at(&f, &chunk, i * chunk.len() as u64).unwrap();
    }
    drop(f);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).expect("the store opens"));
    let identity = DiskIdentity {
        vendor: *b"PR-HELP ",
        product: *b"pr-target       ",
        revision: *b"0001",
        serial: "BENCH".into(),
        naa: vec![0x50, 0x01, 0x40, 0x5a, 0xbc, 0xde, 0xf0, 0x56],
    };
    let disk = DiskServer::new(Backing::open(&image, false).unwrap(), identity, 512, false);
    let mut lu = FencedLu::new(
        LuId::new("bench").unwrap(),
        disk,
        store,
        EngineConfig::default(),
    )
    .unwrap();
    let (me, holder) = (lu.attach(nexus("me", 1)), lu.attach(nexus("holder", 2)));
    // Both registered, the other holds WRITE EXCLUSIVE – REGISTRANTS ONLY: every read and
    // write of ours goes through the conflict table to "allowed".
    pr_out(&lu, me, 0x00, 0, 0, 0x1111);
    pr_out(&lu, holder, 0x00, 0, 0, 0x2222);
    pr_out(&lu, holder, 0x01, 0x05, 0x2222, 0);
    let data = vec![0xa5u8; 4096];
    let mut lba = 0x9e37_79b9u64;
    let mut next = || {
        // A fixed pseudo-random walk over the medium, the same in both builds.
        lba = lba
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((lba >> 16) % (BLOCKS - 8)) as u32
    };
    let mut run = |write: bool| {
        let start = thread_cpu_ns();
        for _ in 0..commands {
            let l = next().to_be_bytes();
            let op = if write { 0x2a } else { 0x28 };
            let cdb = [op, 0, l[0], l[1], l[2], l[3], 0, 0, 8, 0];
            let status = cmd(&lu, me, &cdb, if write { &data } else { &[] });
            assert_eq!(status, Status::GOOD);
        }
        (thread_cpu_ns() - start) / u128::from(commands)
    };
    // Warm-up: the page cache and the allocator.
    run(false);
    let read = run(false);
    let write = run(true);
    println!("read {read} write {write}");
    drop(lu);
    let _ = std::fs::remove_file(&image);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}
