//! A block device as the backing of a logical unit: a real loop device over an image file in a
//! temporary directory (losetup; the tests run as root, as CI does). Expected bytes come from
//! SBC-3 (READ CAPACITY (16), §5.16.2) and from the image file itself, read back on the host.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pr_scsi::{RelativeTargetPort, Status};
use pr_target::backing::{Backing, BackingError};
use pr_target::scsi::{BlockDevice, DiskIdentity, DiskServer};

mod common;
use common::open_after_drop;

/// A loop device over a file of `len` bytes, detached on drop.
struct Loop {
    dev: PathBuf,
    image: PathBuf,
    _dir: tempfile::TempDir,
}

/// Attaches a loop device (with losetup's `extra` options) over `image`; its path.
fn attach(image: &Path, extra: &[&str]) -> PathBuf {
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .args(extra)
        .arg(image)
        .output()
        .expect("losetup runs");
    assert!(
        out.status.success(),
        "losetup {extra:?} failed (the tests run as root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn detach(dev: &Path) {
    let _ = Command::new("losetup").arg("-d").arg(dev).status();
}

impl Loop {
    fn new(len: u64) -> Loop {
        Loop::with(len, &[])
    }

    fn with(len: u64, extra: &[&str]) -> Loop {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let f = std::fs::File::create(&image).unwrap();
        // Data, not holes, so that a read of the device returns what the file holds.
        let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&pattern, 0).unwrap();
        f.sync_all().unwrap();
        let dev = attach(&image, extra);
        Loop {
            dev,
            image,
            _dir: dir,
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        detach(&self.dev);
    }
}

/// A second loop device over the image of a [`Loop`], detached on drop: another block device
/// on the same medium, with a page cache of its own (as a second host has).
struct SecondLoop(PathBuf);

impl Drop for SecondLoop {
    fn drop(&mut self) {
        detach(&self.0);
    }
}

fn identity() -> DiskIdentity {
    DiskIdentity {
        vendor: *b"PR-HELP ",
        product: *b"pr-target       ",
        revision: *b"0001",
        serial: "BLK1".into(),
        naa: vec![0x50, 0x01, 0x40, 0x5a, 0xbc, 0xde, 0xf0, 0x34],
    }
}

fn run<D: BlockDevice>(d: &DiskServer<D>, cdb: &[u8], data_out: &[u8]) -> pr_engine::Reply {
    match d.prepare(cdb) {
        Ok(p) => d.execute(&p, data_out, RelativeTargetPort(1)),
        Err(r) => r,
    }
}

fn image_bytes(image: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0; len];
    std::fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut b, offset)
        .unwrap();
    b
}

#[test]
fn a_loop_device_backs_a_logical_unit_locked_sized_read_and_written() {
    const LEN: u64 = 4 << 20;
    let lo = Loop::new(LEN);
    let backing = Backing::open(&lo.dev, false).unwrap();
    assert_eq!(backing.size_bytes(), LEN);
    // A block device's discard does not promise zeros when read back: served fully
    // provisioned, no UNMAP.
    assert!(!backing.can_discard());
    // Locked against a second target, by path or through another name of the same device.
    match Backing::open(&lo.dev, false) {
        Err(BackingError::Locked { path }) => assert_eq!(path, lo.dev.display().to_string()),
        other => panic!("a second open of a served device must be refused: {other:?}"),
    }

    let disk = DiskServer::new(backing, identity(), 512, false);
    // READ CAPACITY (16): RETURNED LOGICAL BLOCK ADDRESS = blocks - 1, LOGICAL BLOCK LENGTH
    // 512, LBPME 0 (not thin).
    let r = run(
        &disk,
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
    );
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    assert_eq!(r.data[..8], (LEN / 512 - 1).to_be_bytes());
    assert_eq!(r.data[8..12], 512u32.to_be_bytes());
    assert_eq!(r.data[14] & 0x80, 0, "LBPME must be 0 on a block device");

    // READ (10) of blocks 16..18 returns what the image holds there.
    let r = run(&disk, &[0x28, 0, 0, 0, 0, 16, 0, 0, 2, 0], &[]);
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    assert_eq!(r.data, image_bytes(&lo.image, 16 * 512, 1024));

    // WRITE (10) of block 100, SYNCHRONIZE CACHE (10), and the image file holds the data.
    let data: Vec<u8> = (0..512u32).map(|i| (i * 7 + 3) as u8).collect();
    let r = run(&disk, &[0x2a, 0, 0, 0, 0, 100, 0, 0, 1, 0], &data);
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    let r = run(&disk, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    // The loop device writes through to its file: read the file back without the device.
    assert_eq!(image_bytes(&lo.image, 100 * 512, 512), data);

    // Past the end: LOGICAL BLOCK ADDRESS OUT OF RANGE (ILLEGAL REQUEST, 21h/00h).
    let last = (LEN / 512) as u32;
    let l = last.to_be_bytes();
    let r = run(&disk, &[0x28, 0, l[0], l[1], l[2], l[3], 0, 0, 1, 0], &[]);
    assert_eq!(r.status, Status::CHECK_CONDITION);
    let sense = r.sense.expect("sense data").to_fixed();
    assert_eq!((sense[2] & 0x0f, sense[12], sense[13]), (0x05, 0x21, 0x00));

    // UNMAP is refused on a fully provisioned device (INVALID COMMAND OPERATION CODE,
    // 20h/00h) rather than answered GOOD without zeroing anything.
    let unmap = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    let mut list = vec![0u8; 24];
    list[1] = 22;
    list[3] = 16;
    list[8..16].copy_from_slice(&200u64.to_be_bytes());
    list[16..20].copy_from_slice(&8u32.to_be_bytes());
    let r = run(&disk, &unmap, &list);
    assert_eq!(r.status, Status::CHECK_CONDITION, "{r:?}");
    let sense = r.sense.expect("sense data").to_fixed();
    assert_eq!((sense[2] & 0x0f, sense[12]), (0x05, 0x20));
    assert_eq!(
        image_bytes(&lo.image, 200 * 512, 8 * 512),
        (200 * 512..208 * 512u64)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
    );

    // Read-only: a WRITE is refused with DATA PROTECT, WRITE PROTECTED (07h, 27h/00h).
    drop(disk);
    let ro_backing = open_after_drop(
        "a read-only open after the writable one was dropped",
        || Backing::open(&lo.dev, true),
    );
    let ro = DiskServer::new(ro_backing, identity(), 512, true);
    let r = run(&ro, &[0x2a, 0, 0, 0, 0, 100, 0, 0, 1, 0], &data);
    assert_eq!(r.status, Status::CHECK_CONDITION);
    let sense = r.sense.expect("sense data").to_fixed();
    assert_eq!((sense[2] & 0x0f, sense[12], sense[13]), (0x07, 0x27, 0x00));
}

/// The stale read a shared block device gives a buffered host, and its cure. One image file,
/// two loop devices over it: host A and host B, one block device each, each with its own page
/// cache (as two hypervisors on one SAN LUN). B reads block K, A overwrites block K and
/// flushes, B reads block K again. Through buffered reads on B's device (the control) the
/// second read is answered from B's page cache with the old bytes; through `open_shared`
/// (O_DIRECT) B reads A's new bytes.
#[test]
fn a_shared_block_device_reads_what_another_host_wrote_where_a_buffered_one_reads_stale_data() {
    const LEN: u64 = 4 << 20;
    const BS: u32 = 4096;
    const K: u64 = 37;
    let a = Loop::new(LEN);
    let b = SecondLoop(attach(&a.image, &[]));
    let old = image_bytes(&a.image, K * u64::from(BS), BS as usize);

    let host_a = Backing::open_shared(&a.dev, false, BS).unwrap();
    let host_b = Backing::open_shared(&b.0, false, BS).unwrap();
    for h in [&host_a, &host_b] {
        let fl = rustix::fs::fcntl_getfl(h).unwrap();
        assert!(fl.contains(rustix::fs::OFlags::DIRECT), "{fl:?}");
    }
    // The control: a buffered reader on B's device, reading block K into B's page cache.
    let buffered_b = std::fs::File::open(&b.0).unwrap();
    let read_buffered = || {
        let mut v = vec![0u8; BS as usize];
        buffered_b.read_exact_at(&mut v, K * u64::from(BS)).unwrap();
        v
    };
    assert_eq!(read_buffered(), old);
    let disk_a = DiskServer::new(host_a, identity(), BS, false);
    let disk_b = DiskServer::new(host_b, identity(), BS, false);
    let read10 = [0x28, 0, 0, 0, 0, K as u8, 0, 0, 1, 0];
    let r = run(&disk_b, &read10, &[]);
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    assert_eq!(r.data, old);

    // Host A: WRITE (10) of block K, SYNCHRONIZE CACHE (10).
    let new: Vec<u8> = (0..BS).map(|i| (i * 11 + 5) as u8 ^ 0xa5).collect();
    assert_ne!(new, old);
    let r = run(&disk_a, &[0x2a, 0, 0, 0, 0, K as u8, 0, 0, 1, 0], &new);
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    let r = run(&disk_a, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    // The medium holds A's bytes (the image file, read without either device).
    assert_eq!(image_bytes(&a.image, K * u64::from(BS), BS as usize), new);

    // The control: B's page cache still answers the old bytes (the staleness this fixes; if it
    // did not, this test could not tell the fix from no fix).
    let control = read_buffered();
    assert!(
        control == old,
        "a buffered read on B's device was expected to be served stale from its page cache: \
         it read {:02x?}…, the old bytes are {:02x?}…",
        &control[..8],
        &old[..8]
    );
    // B's shared backing reads the medium: A's bytes.
    let r = run(&disk_b, &read10, &[]);
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    assert!(
        r.data == new,
        "host B read stale data through its shared backing: {:02x?}…, A wrote {:02x?}…",
        &r.data[..r.data.len().min(8)],
        &new[..8]
    );
    // And WRITE AND VERIFY (BYTCHK=1) and WRITE SAME on B, read back on A.
    let block: Vec<u8> = (0..BS).map(|i| (i % 7) as u8 + 1).collect();
    let r = run(&disk_b, &[0x2e, 0x02, 0, 0, 0, K as u8, 0, 0, 1, 0], &block);
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    let r = run(&disk_b, &[0x41, 0, 0, 0, 0, 64, 0, 0, 3, 0], &block);
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    let r = run(&disk_b, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    let r = run(&disk_a, &read10, &[]);
    assert_eq!(r.data, block);
    let r = run(&disk_a, &[0x28, 0, 0, 0, 0, 64, 0, 0, 3, 0], &[]);
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    assert_eq!(r.data, block.repeat(3));
    assert_eq!(
        image_bytes(&a.image, 64 * u64::from(BS), 3 * BS as usize),
        block.repeat(3)
    );
}

/// A shared backing on a block device of 4096-byte logical blocks cannot serve 512-byte
/// blocks with O_DIRECT: refused at open, naming the device, both sizes and the remedy. The
/// same device serves 4096-byte blocks, and a local (buffered) backing still serves 512.
#[test]
fn a_shared_backing_refuses_a_block_size_its_direct_io_cannot_move() {
    let lo = Loop::with(1 << 20, &["--sector-size", "4096"]);
    let e = Backing::open_shared(&lo.dev, false, 512).unwrap_err();
    let path = lo.dev.display().to_string();
    match &e {
        BackingError::Misaligned {
            path: p,
            block_size: 512,
            needed: 4096,
            ..
        } if *p == path => {}
        other => panic!("expected a misaligned-block-size refusal: {other:?}"),
    }
    let msg = e.to_string();
    for want in [path.as_str(), "512", "4096", "block_size = 4096"] {
        assert!(msg.contains(want), "{want:?} missing from: {msg}");
    }
    let ok = Backing::open_shared(&lo.dev, false, 4096).unwrap();
    assert_eq!(ok.direct().map(|d| d.offset), Some(4096));
    drop(ok);
    let local = open_after_drop("a local open after the shared one was dropped", || {
        Backing::open(&lo.dev, false)
    });
    let disk = DiskServer::new(local, identity(), 512, false);
    let r = run(&disk, &[0x28, 0, 0, 0, 0, 3, 0, 0, 1, 0], &[]);
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    assert_eq!(r.data, image_bytes(&lo.image, 3 * 512, 512));
}
