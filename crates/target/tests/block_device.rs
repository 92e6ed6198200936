//! A block device as the backing of a logical unit: a real loop device over an image file in a
//! temporary directory (losetup; the tests run as root, as CI does). Expected bytes come from
//! SBC-3 (READ CAPACITY (16), §5.16.2) and from the image file itself, read back on the host.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pr_scsi::{RelativeTargetPort, Status};
use pr_target::backing::{Backing, BackingError};
use pr_target::scsi::{BlockDevice, DiskIdentity, DiskServer};

/// A loop device over a file of `len` bytes, detached on drop.
struct Loop {
    dev: PathBuf,
    image: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(len: u64) -> Loop {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let f = std::fs::File::create(&image).unwrap();
        // Data, not holes, so that a read of the device returns what the file holds.
        let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&pattern, 0).unwrap();
        f.sync_all().unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .expect("losetup runs");
        assert!(
            out.status.success(),
            "losetup failed (the tests run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Loop {
            dev,
            image,
            _dir: dir,
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
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
    let ro = DiskServer::new(Backing::open(&lo.dev, true).unwrap(), identity(), 512, true);
    let r = run(&ro, &[0x2a, 0, 0, 0, 0, 100, 0, 0, 1, 0], &data);
    assert_eq!(r.status, Status::CHECK_CONDITION);
    let sense = r.sense.expect("sense data").to_fixed();
    assert_eq!((sense[2] & 0x0f, sense[12], sense[13]), (0x07, 0x27, 0x00));
}
