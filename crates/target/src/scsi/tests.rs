//! The device server driven with raw CDBs. Expected bytes are written out literally from the
//! standard's tables (cited per test), never built from the code's own constants.

use std::io;
use std::sync::Mutex;

use pr_engine::Reply;
use pr_scsi::{RelativeTargetPort, Status};
use proptest::prelude::*;

use super::*;

/// A disk in memory; `discard` zeroes.
#[derive(Debug)]
pub(crate) struct MemDisk {
    pub data: Mutex<Vec<u8>>,
    pub thin: bool,
}

impl MemDisk {
    pub fn new(len: usize, thin: bool) -> MemDisk {
        MemDisk {
            data: Mutex::new(vec![0; len]),
            thin,
        }
    }
}

impl BlockDevice for MemDisk {
    fn size_bytes(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.data.lock().unwrap();
        d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn can_discard(&self) -> bool {
        self.thin
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut d = self.data.lock().unwrap();
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

pub(crate) fn identity() -> DiskIdentity {
    DiskIdentity {
        vendor: *b"PR-HELP ",
        product: *b"pr-target       ",
        revision: *b"0001",
        serial: "SER1".into(),
        naa: vec![0x50, 0x01, 0x40, 0x5a, 0xbc, 0xde, 0xf0, 0x12],
    }
}

/// 2048 blocks of 512 bytes (1 MiB), thin.
fn disk() -> DiskServer<MemDisk> {
    DiskServer::new(MemDisk::new(1 << 20, true), identity(), 512, false)
}

fn run(d: &DiskServer<MemDisk>, cdb: &[u8], data_out: &[u8]) -> Reply {
    match d.prepare(cdb) {
        Ok(p) => d.execute(&p, data_out, RelativeTargetPort(1)),
        Err(r) => r,
    }
}

fn good(r: Reply) -> Vec<u8> {
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    r.data
}

/// (sense key, ASC, ASCQ) of a CHECK CONDITION.
fn sense(r: &Reply) -> (u8, u8, u8) {
    assert_eq!(r.status, Status::CHECK_CONDITION, "{r:?}");
    let s = r.sense.unwrap().code;
    (s.key.0, s.asc, s.ascq)
}

#[test]
fn standard_inquiry_follows_spc4_standard_inquiry_data_format() {
    // INQUIRY, allocation length 255 (SPC-4 §6.6).
    let d = good(run(&disk(), &[0x12, 0, 0, 0, 0xff, 0], &[]));
    // Byte 0 PERIPHERAL QUALIFIER 000b / DEVICE TYPE 00h, byte 2 VERSION 06h (SPC-4), byte 3
    // HISUP=1 and RESPONSE DATA FORMAT 2, byte 4 ADDITIONAL LENGTH (n - 4), byte 7 CMDQUE.
    assert_eq!(&d[..8], &[0x00, 0x00, 0x06, 0x12, 69, 0x00, 0x00, 0x02]);
    assert_eq!(d.len(), 74);
    assert_eq!(&d[8..16], b"PR-HELP ");
    assert_eq!(&d[16..32], b"pr-target       ");
    assert_eq!(&d[32..36], b"0001");
    // VERSION DESCRIPTORS: SAM-5 00A0h, SPC-4 0460h, SBC-3 04C0h (SPC-4 table of version
    // descriptor values).
    assert_eq!(&d[58..64], &[0x00, 0xa0, 0x04, 0x60, 0x04, 0xc0]);
    // Allocation length 36 truncates.
    assert_eq!(good(run(&disk(), &[0x12, 0, 0, 0, 36, 0], &[])).len(), 36);
    // PAGE CODE without EVPD: INVALID FIELD IN CDB (05h/24h/00h), field pointer byte 2.
    let r = run(&disk(), &[0x12, 0, 0x80, 0, 0xff, 0], &[]);
    assert_eq!(sense(&r), (0x05, 0x24, 0x00));
    assert_eq!(&r.sense.unwrap().to_fixed()[15..18], &[0xc0, 0x00, 0x02]);
}

#[test]
fn vpd_pages_follow_spc4_and_sbc3() {
    let vpd = |page: u8| good(run(&disk(), &[0x12, 1, page, 0, 0xff, 0], &[]));
    // Supported VPD Pages (SPC-4): 00h 80h 83h B0h B1h B2h.
    assert_eq!(vpd(0x00), [0, 0, 0, 6, 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    // Unit Serial Number (SPC-4).
    assert_eq!(vpd(0x80), [0, 0x80, 0, 4, b'S', b'E', b'R', b'1']);
    // Device Identification (SPC-4 designation descriptor): NAA, code set 1 (binary),
    // association 00b, designator type 3, length 8; relative target port, association 01b,
    // type 4, length 4, port 1.
    assert_eq!(
        vpd(0x83),
        [
            0, 0x83, 0, 20, //
            0x01, 0x03, 0x00, 0x08, 0x50, 0x01, 0x40, 0x5a, 0xbc, 0xde, 0xf0, 0x12, //
            0x01, 0x14, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01
        ]
    );
    // Block Limits (SBC-3): PAGE LENGTH 003Ch; WSNZ (byte 4 bit 0); MAXIMUM TRANSFER LENGTH
    // (bytes 8–11) = 1 MiB / 512 = 800h blocks; MAXIMUM UNMAP LBA COUNT (20–23) 100000h
    // (2^20, the most libiscsi's Inquiry.BlockLimits accepts); MAXIMUM UNMAP BLOCK DESCRIPTOR
    // COUNT (24–27) 256; MAXIMUM WRITE SAME LENGTH (36–43) 100000h.
    let b0 = vpd(0xb0);
    assert_eq!(b0.len(), 64);
    assert_eq!(&b0[..5], &[0, 0xb0, 0x00, 0x3c, 0x01]);
    assert_eq!(&b0[8..12], &[0, 0, 0x08, 0]);
    assert_eq!(&b0[20..28], &[0, 0x10, 0, 0, 0, 0, 1, 0]);
    assert_eq!(&b0[36..44], &[0, 0, 0, 0, 0, 0x10, 0, 0]);
    // Block Device Characteristics (SBC-3): MEDIUM ROTATION RATE 0001h, non-rotating.
    assert_eq!(&vpd(0xb1)[..6], &[0, 0xb1, 0, 0x3c, 0, 1]);
    // Logical Block Provisioning (SBC-3): LBPU, LBPWS, LBPWS10 and LBPRZ in byte 5,
    // PROVISIONING TYPE 010b (thin) in byte 6.
    assert_eq!(vpd(0xb2), [0, 0xb2, 0, 4, 0, 0xe4, 0x02, 0]);
    // An unknown page: INVALID FIELD IN CDB.
    assert_eq!(
        sense(&run(&disk(), &[0x12, 1, 0x86, 0, 0xff, 0], &[])),
        (5, 0x24, 0)
    );
    // Fully provisioned (no discard): page B2h all zero, B0h without unmap limits.
    let full = DiskServer::new(MemDisk::new(1 << 20, false), identity(), 512, false);
    assert_eq!(
        good(run(&full, &[0x12, 1, 0xb2, 0, 0xff, 0], &[])),
        [0, 0xb2, 0, 4, 0, 0, 0, 0]
    );
}

#[test]
fn read_capacity_follows_sbc3() {
    // READ CAPACITY (10): RETURNED LOGICAL BLOCK ADDRESS 7FFh, BLOCK LENGTH 512.
    assert_eq!(
        good(run(&disk(), &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])),
        [0, 0, 0x07, 0xff, 0, 0, 0x02, 0]
    );
    // READ CAPACITY (16) (SERVICE ACTION IN 9Eh / 10h), allocation 32: LBPME and LBPRZ in
    // byte 14 (thin).
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let d = good(run(&disk(), &cdb, &[]));
    assert_eq!(d.len(), 32);
    assert_eq!(
        &d[..16],
        &[0, 0, 0, 0, 0, 0, 0x07, 0xff, 0, 0, 0x02, 0, 0, 0, 0xc0, 0]
    );
    // SERVICE ACTION IN with another service action: INVALID FIELD IN CDB.
    cdb[1] = 0x11;
    assert_eq!(sense(&run(&disk(), &cdb, &[])), (5, 0x24, 0));
    // 4096-byte blocks: 256 blocks.
    let d4k = DiskServer::new(MemDisk::new(1 << 20, true), identity(), 4096, false);
    assert_eq!(
        good(run(&d4k, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])),
        [0, 0, 0, 0xff, 0, 0, 0x10, 0]
    );
}

#[test]
fn mode_sense_follows_spc4_and_sbc3() {
    // MODE SENSE (6), page 08h (caching), allocation 255, block descriptor included.
    let d = good(run(&disk(), &[0x1a, 0, 0x08, 0, 0xff, 0], &[]));
    // Header (SPC-4 mode parameter header (6)): MODE DATA LENGTH 31 (= 4 + 8 + 20 - 1),
    // MEDIUM TYPE 0, DEVICE-SPECIFIC PARAMETER DPOFUA (bit 4), BLOCK DESCRIPTOR LENGTH 8.
    assert_eq!(&d[..4], &[31, 0, 0x10, 8]);
    // Short LBA block descriptor (SBC-3): 800h blocks, block length 200h.
    assert_eq!(&d[4..12], &[0, 0, 0x08, 0, 0, 0, 0x02, 0]);
    // Caching page (SBC-3): page code 08h, length 12h, WCE (byte 2 bit 2).
    assert_eq!(&d[12..15], &[0x08, 0x12, 0x04]);
    assert_eq!(d.len(), 32);
    // MODE SENSE (10), DBD, all pages (3Fh): header (8 bytes), caching then control (0Ah).
    let d = good(run(
        &disk(),
        &[0x5a, 0x08, 0x3f, 0, 0, 0, 0, 0, 0xff, 0],
        &[],
    ));
    assert_eq!(&d[..8], &[0, 38, 0, 0x10, 0, 0, 0, 0]);
    assert_eq!(&d[28..32], &[0x0a, 0x0a, 0x00, 0x10]);
    assert_eq!(d.len(), 40);
    // MODE SENSE (10) with LLBAA: the long LBA block descriptor (16 bytes), LONGLBA set.
    let d = good(run(
        &disk(),
        &[0x5a, 0x10, 0x08, 0, 0, 0, 0, 0, 0xff, 0],
        &[],
    ));
    assert_eq!(&d[..8], &[0, 42, 0, 0x10, 1, 0, 0, 16]);
    assert_eq!(
        &d[8..24],
        &[0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0x02, 0]
    );
    // Saved values: SAVING PARAMETERS NOT SUPPORTED (05h/39h/00h).
    assert_eq!(
        sense(&run(&disk(), &[0x1a, 0, 0xc8, 0, 0xff, 0], &[])),
        (5, 0x39, 0)
    );
    // An unknown page: INVALID FIELD IN CDB.
    assert_eq!(
        sense(&run(&disk(), &[0x1a, 0, 0x1c, 0, 0xff, 0], &[])),
        (5, 0x24, 0)
    );
    // Write protected: WP in the DEVICE-SPECIFIC PARAMETER.
    let ro = DiskServer::new(MemDisk::new(1 << 20, true), identity(), 512, true);
    assert_eq!(
        good(run(&ro, &[0x1a, 0x08, 0x08, 0, 0xff, 0], &[]))[2],
        0x90
    );
}

#[test]
fn reads_and_writes_of_every_size() {
    let d = disk();
    let block: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    // WRITE (10), LBA 5, 2 blocks.
    good(run(&d, &[0x2a, 0, 0, 0, 0, 5, 0, 0, 2, 0], &block));
    // READ (6), LBA 5, 2 blocks; READ (12) and READ (16) the same.
    assert_eq!(good(run(&d, &[0x08, 0, 0, 5, 2, 0], &[])), block);
    assert_eq!(
        good(run(&d, &[0xa8, 0, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0], &[])),
        block
    );
    let mut r16 = [0u8; 16];
    r16[0] = 0x88;
    r16[9] = 5;
    r16[13] = 2;
    assert_eq!(good(run(&d, &r16, &[])), block);
    // READ (6) with TRANSFER LENGTH 0 transfers 256 blocks (SBC-3 READ (6)).
    assert_eq!(good(run(&d, &[0x08, 0, 0, 0, 0, 0], &[])).len(), 256 * 512);
    // READ (10) with TRANSFER LENGTH 0 transfers nothing and is not an error.
    assert_eq!(
        good(run(&d, &[0x28, 0, 0, 0, 0, 5, 0, 0, 0, 0], &[])),
        Vec::<u8>::new()
    );
    // The last block is readable, the one after is LBA OUT OF RANGE (05h/21h/00h).
    good(run(&d, &[0x28, 0, 0, 0, 0x07, 0xff, 0, 0, 1, 0], &[]));
    assert_eq!(
        sense(&run(&d, &[0x28, 0, 0, 0, 0x07, 0xff, 0, 0, 2, 0], &[])),
        (5, 0x21, 0)
    );
    // An LBA near 2^64 does not wrap around.
    let mut w16 = [0u8; 16];
    w16[0] = 0x8a;
    w16[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
    w16[13] = 2;
    assert_eq!(sense(&run(&d, &w16, &block)), (5, 0x21, 0));
    // More than the maximum transfer length: INVALID FIELD IN CDB at TRANSFER LENGTH.
    let big = DiskServer::new(MemDisk::new(4 << 20, true), identity(), 512, false);
    let r = run(&big, &[0x28, 0, 0, 0, 0, 0, 0, 0x08, 0x01, 0], &[]);
    assert_eq!(sense(&r), (5, 0x24, 0));
    assert_eq!(&r.sense.unwrap().to_fixed()[15..18], &[0xc0, 0x00, 0x07]);
    // WRITE with fewer bytes of data-out than the CDB says: nothing is written.
    let before = d.device().data.lock().unwrap().clone();
    assert_eq!(
        sense(&run(&d, &[0x2a, 0, 0, 0, 0, 9, 0, 0, 2, 0], &block[..512])),
        (5, 0x24, 0)
    );
    assert_eq!(*d.device().data.lock().unwrap(), before);
    // RDPROTECT/WRPROTECT: no protection information, INVALID FIELD IN CDB.
    assert_eq!(
        sense(&run(&d, &[0x28, 0x20, 0, 0, 0, 5, 0, 0, 1, 0], &[])),
        (5, 0x24, 0)
    );
    // WRITE (6) and FUA on WRITE (16).
    good(run(&d, &[0x0a, 0, 0, 7, 1, 0], &block[..512]));
    w16 = [0u8; 16];
    w16[0] = 0x8a;
    w16[1] = 0x08;
    w16[9] = 8;
    w16[13] = 1;
    good(run(&d, &w16, &block[512..]));
    assert_eq!(
        good(run(&d, &[0x28, 0, 0, 0, 0, 7, 0, 0, 2, 0], &[])),
        block
    );
    // A read-only disk: DATA PROTECT, WRITE PROTECTED (07h/27h/00h); reads work.
    let ro = DiskServer::new(MemDisk::new(1 << 20, true), identity(), 512, true);
    assert_eq!(
        sense(&run(&ro, &[0x2a, 0, 0, 0, 0, 5, 0, 0, 1, 0], &block)),
        (7, 0x27, 0)
    );
    good(run(&ro, &[0x28, 0, 0, 0, 0, 5, 0, 0, 1, 0], &[]));
}

#[test]
fn verify_write_same_unmap_and_synchronize_cache() {
    let d = disk();
    let block = vec![0xabu8; 512];
    good(run(&d, &[0x2a, 0, 0, 0, 0, 3, 0, 0, 1, 0], &block));
    // VERIFY (10) BYTCHK=01b: equal data is GOOD, different data is MISCOMPARE (0Eh/1Dh/00h).
    good(run(&d, &[0x2f, 0x02, 0, 0, 0, 3, 0, 0, 1, 0], &block));
    assert_eq!(
        sense(&run(&d, &[0x2f, 0x02, 0, 0, 0, 3, 0, 0, 1, 0], &[0u8; 512])),
        (0x0e, 0x1d, 0)
    );
    // VERIFY BYTCHK=0: the medium is checked (range only here).
    good(run(&d, &[0x2f, 0, 0, 0, 0, 3, 0, 0, 1, 0], &[]));
    // WRITE AND VERIFY (10).
    good(run(&d, &[0x2e, 0, 0, 0, 0, 4, 0, 0, 1, 0], &block));
    // WRITE AND VERIFY (10) and (16) with BYTCHK=01b (byte 1 bit 1, SBC-3 §5.40/§5.41):
    // written, read back and compared: GOOD, and the blocks hold the data.
    let other = vec![0x5au8; 1024];
    good(run(&d, &[0x2e, 0x02, 0, 0, 0, 5, 0, 0, 2, 0], &other));
    assert_eq!(
        good(run(&d, &[0x28, 0, 0, 0, 0, 5, 0, 0, 2, 0], &[])),
        other
    );
    let mut wv16 = [0u8; 16];
    wv16[..2].copy_from_slice(&[0x8e, 0x02]);
    wv16[9] = 7;
    wv16[13] = 1;
    good(run(&d, &wv16, &block));
    assert_eq!(
        good(run(&d, &[0x28, 0, 0, 0, 0, 7, 0, 0, 1, 0], &[])),
        block
    );
    // BYTCHK 10b and 11b are reserved for WRITE AND VERIFY: INVALID FIELD IN CDB.
    for b1 in [0x04u8, 0x06] {
        assert_eq!(
            sense(&run(&d, &[0x2e, b1, 0, 0, 0, 4, 0, 0, 1, 0], &block)),
            (5, 0x24, 0),
            "{b1:#x}"
        );
    }
    // WRITE SAME (10), LBA 10, 4 blocks of one block's data.
    let pattern: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
    good(run(&d, &[0x41, 0, 0, 0, 0, 10, 0, 0, 4, 0], &pattern));
    assert_eq!(
        good(run(&d, &[0x28, 0, 0, 0, 0, 10, 0, 0, 4, 0], &[])),
        pattern.repeat(4)
    );
    // WRITE SAME (16) with NUMBER OF LOGICAL BLOCKS 0: WSNZ=1, INVALID FIELD IN CDB.
    let mut ws16 = [0u8; 16];
    ws16[0] = 0x93;
    assert_eq!(sense(&run(&d, &ws16, &pattern)), (5, 0x24, 0));
    // WRITE SAME (16) with UNMAP and zeros: deallocated, reads zeros.
    ws16[1] = 0x08;
    ws16[9] = 10;
    ws16[13] = 2;
    good(run(&d, &ws16, &[0u8; 512]));
    assert_eq!(
        good(run(&d, &[0x28, 0, 0, 0, 0, 10, 0, 0, 2, 0], &[])),
        vec![0; 1024]
    );
    // UNMAP (SBC-3 UNMAP parameter list): header (UNMAP DATA LENGTH, BLOCK DESCRIPTOR DATA
    // LENGTH), one descriptor LBA 3, 2 blocks.
    let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
    list.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 0]);
    good(run(&d, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list));
    assert_eq!(
        good(run(&d, &[0x28, 0, 0, 0, 0, 3, 0, 0, 2, 0], &[])),
        vec![0; 1024]
    );
    // A descriptor past the end: LBA OUT OF RANGE, and the valid one before it is not applied.
    good(run(&d, &[0x2a, 0, 0, 0, 0, 3, 0, 0, 1, 0], &block));
    let mut list = vec![0, 38, 0, 32, 0, 0, 0, 0];
    list.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0]);
    list.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x07, 0xff, 0, 0, 0, 2, 0, 0, 0, 0]);
    assert_eq!(
        sense(&run(&d, &[0x42, 0, 0, 0, 0, 0, 0, 0, 40, 0], &list)),
        (5, 0x21, 0)
    );
    assert_eq!(
        good(run(&d, &[0x28, 0, 0, 0, 0, 3, 0, 0, 1, 0], &[])),
        block
    );
    // More blocks than MAXIMUM UNMAP LBA COUNT (2^20) in one command: INVALID FIELD IN
    // PARAMETER LIST (05h/26h/00h), checked before the range.
    let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
    list.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 1, 0, 0, 0, 0]);
    assert_eq!(
        sense(&run(&d, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list)),
        (5, 0x26, 0)
    );
    // A parameter list shorter than 8 bytes: PARAMETER LIST LENGTH ERROR (05h/1Ah/00h).
    assert_eq!(
        sense(&run(&d, &[0x42, 0, 0, 0, 0, 0, 0, 0, 4, 0], &[0; 4])),
        (5, 0x1a, 0)
    );
    // Without discard UNMAP is not a command of this disk.
    let full = DiskServer::new(MemDisk::new(1 << 20, false), identity(), 512, false);
    assert_eq!(
        sense(&run(&full, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &[])),
        (5, 0x20, 0)
    );
    // SYNCHRONIZE CACHE (10) and (16); past the end: LBA OUT OF RANGE.
    good(run(&d, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
    let mut sc16 = [0u8; 16];
    sc16[0] = 0x91;
    good(run(&d, &sc16, &[]));
    assert_eq!(
        sense(&run(&d, &[0x35, 0, 0, 0, 0x08, 0x00, 0, 0, 1, 0], &[])),
        (5, 0x21, 0)
    );
}

#[test]
fn spc_commands_and_unknown_opcodes() {
    let d = disk();
    // TEST UNIT READY, START STOP UNIT: GOOD, no data.
    assert_eq!(good(run(&d, &[0, 0, 0, 0, 0, 0], &[])), Vec::<u8>::new());
    good(run(&d, &[0x1b, 0, 0, 0, 1, 0], &[]));
    // REQUEST SENSE: fixed format (SPC-4), NO SENSE: 70h, ADDITIONAL SENSE LENGTH 10.
    assert_eq!(
        good(run(&d, &[0x03, 0, 0, 0, 0xff, 0], &[])),
        [0x70, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    // DESC=1: descriptor format, 72h.
    assert_eq!(
        good(run(&d, &[0x03, 1, 0, 0, 0xff, 0], &[])),
        [0x72, 0, 0, 0, 0, 0, 0, 0]
    );
    // FORMAT UNIT (04h), RESERVE (6) (16h), MODE SELECT (6) (15h): INVALID COMMAND
    // OPERATION CODE (05h/20h/00h).
    for op in [0x04u8, 0x16, 0x15, 0xff] {
        assert_eq!(
            sense(&run(&d, &[op, 0, 0, 0, 0, 0], &[])),
            (5, 0x20, 0),
            "{op:#x}"
        );
    }
    // An empty or truncated CDB is refused, not a panic.
    assert_eq!(sense(&run(&d, &[], &[])), (5, 0x20, 0));
    assert_eq!(sense(&run(&d, &[0x28, 0, 0], &[])), (5, 0x20, 0));
}

#[test]
fn report_supported_operation_codes_follows_spc4() {
    let d = disk();
    // MAINTENANCE IN (A3h) / 0Ch, REPORTING OPTIONS 000b, allocation 4096.
    let all = good(run(&d, &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[]));
    let len = u32::from_be_bytes(all[..4].try_into().unwrap()) as usize;
    assert_eq!(len + 4, all.len());
    // Command descriptors (SPC-4 "Command descriptor format"), 8 bytes each: READ (10) has no
    // service action, CDB LENGTH 10; READ CAPACITY (16) is 9Eh/10h with SERVACTV.
    let descs: Vec<&[u8]> = all[4..].chunks(8).collect();
    assert!(descs.contains(&&[0x28, 0, 0, 0, 0, 0, 0, 10][..]));
    assert!(descs.contains(&&[0x9e, 0, 0, 0x10, 0, 1, 0, 16][..]));
    assert!(descs.contains(&&[0x5f, 0, 0, 0, 0, 0, 0, 10][..]));
    // One command, REPORTING OPTIONS 001b, READ (10): SUPPORT 011b, CDB SIZE 10, usage data
    // starting with the opcode.
    let one = good(run(
        &d,
        &[0xa3, 0x0c, 0x01, 0x28, 0, 0, 0, 0, 0, 0xff, 0, 0],
        &[],
    ));
    assert_eq!(&one[..5], &[0, 0x03, 0, 10, 0x28]);
    // An opcode we do not serve: SUPPORT 001b.
    let none = good(run(
        &d,
        &[0xa3, 0x0c, 0x01, 0x04, 0, 0, 0, 0, 0, 0xff, 0, 0],
        &[],
    ));
    assert_eq!(none, [0, 0x01, 0, 0]);
    // RCTD=1 (byte 2 bit 7): every command descriptor has CTDP (byte 5 bit 1) and is
    // followed by a command timeouts descriptor (SPC-4 "Command timeouts descriptor format":
    // DESCRIPTOR LENGTH 000Ah, 10 more bytes), 20 bytes per command.
    let timeouts = [0u8, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let all = good(run(
        &d,
        &[0xa3, 0x0c, 0x80, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
        &[],
    ));
    let descs: Vec<&[u8]> = all[4..].chunks(20).collect();
    assert!(descs
        .iter()
        .all(|c| c.len() == 20 && c[5] & 0x02 != 0 && c[8..] == timeouts));
    assert!(descs.contains(&&[&[0x28u8, 0, 0, 0, 0, 2, 0, 10][..], &timeouts[..]].concat()[..]));
    assert!(descs.contains(&&[&[0x9eu8, 0, 0, 0x10, 0, 3, 0, 16][..], &timeouts[..]].concat()[..]));
    // One command with RCTD: CTDP is byte 1 bit 7, the timeouts descriptor follows the usage
    // data.
    let one = good(run(
        &d,
        &[0xa3, 0x0c, 0x81, 0x28, 0, 0, 0, 0, 0, 0xff, 0, 0],
        &[],
    ));
    assert_eq!(&one[..5], &[0, 0x83, 0, 10, 0x28]);
    assert_eq!(one.len(), 4 + 10 + 12);
    assert_eq!(&one[14..], &timeouts);
    // REPORTING OPTIONS 001b for an opcode with service actions: INVALID FIELD IN CDB.
    assert_eq!(
        sense(&run(
            &d,
            &[0xa3, 0x0c, 0x01, 0x9e, 0, 0, 0, 0, 0, 0xff, 0, 0],
            &[]
        )),
        (5, 0x24, 0)
    );
}

#[test]
fn report_luns_follows_spc4() {
    // Peripheral device addressing below 256, flat space (01b) above (SAM-5).
    assert_eq!(
        report_luns(&[0, 300], 0xffff),
        [0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x41, 0x2c, 0, 0, 0, 0, 0, 0]
    );
}

proptest! {
    /// Any CDB and data-out: a reply, never a panic, and never data beyond the bound.
    #[test]
    fn hostile_cdbs_never_panic(cdb in proptest::collection::vec(any::<u8>(), 0..40),
                                data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let d = DiskServer::new(MemDisk::new(64 * 1024, true), identity(), 512, false);
        let r = run(&d, &cdb, &data);
        prop_assert!(r.data.len() <= MAX_TRANSFER_BYTES);
    }

    /// Commands whose opcode is one we serve, with random fields.
    #[test]
    fn hostile_fields_of_served_commands(i in 0..cdb::OPCODES.len(),
                                         rest in proptest::collection::vec(any::<u8>(), 16)) {
        let o = &cdb::OPCODES[i];
        let mut c = vec![o.opcode];
        c.extend_from_slice(&rest);
        if let Some(sa) = o.service_action { c[1] = (c[1] & 0xe0) | sa as u8; }
        let d = DiskServer::new(MemDisk::new(64 * 1024, true), identity(), 512, false);
        let _ = run(&d, &c, &rest);
    }
}
