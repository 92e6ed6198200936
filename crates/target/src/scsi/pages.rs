//! The data-in a disk reports about itself: INQUIRY (standard data and VPD pages), MODE
//! SENSE pages, READ CAPACITY, REPORT SUPPORTED OPERATION CODES, REPORT LUNS and the sense
//! data of REQUEST SENSE. Layouts cite the SPC-4/SBC-3 table each follows.

use pr_engine::{Reply, SenseData};
use pr_scsi::RelativeTargetPort;

use super::cdb::{lookup, Command, OPCODES};
use super::device::{BlockDevice, DiskServer};
use super::{sense, MAX_TRANSFER_BYTES, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS};

/// The VPD pages we serve, in ascending order (SPC-4 "Supported VPD Pages VPD page").
pub const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

fn truncate(mut v: Vec<u8>, allocation: usize) -> Vec<u8> {
    v.truncate(allocation);
    v
}

/// REQUEST SENSE data with nothing to report: NO SENSE, fixed (SPC-4 table "Fixed format
/// sense data", 18 bytes) or descriptor format (table "Descriptor format sense data", 8).
pub fn no_sense(descriptor: bool, allocation: u16) -> Vec<u8> {
    let v = if descriptor {
        vec![0x72, 0, 0, 0, 0, 0, 0, 0]
    } else {
        let mut v = vec![0u8; 18];
        v[0] = 0x70;
        v[7] = 10;
        v
    };
    truncate(v, allocation.into())
}

pub fn inquiry<D: BlockDevice>(
    disk: &DiskServer<D>,
    vpd: Option<u8>,
    allocation: u16,
    port: RelativeTargetPort,
) -> Reply {
    let data = match vpd {
        None => standard_inquiry(disk),
        Some(0x00) => page(0x00, VPD_PAGES.to_vec()),
        Some(0x80) => page(0x80, disk.identity().serial.as_bytes().to_vec()),
        Some(0x83) => page(0x83, device_identification(disk, port)),
        Some(0xb0) => page(0xb0, block_limits(disk)),
        Some(0xb1) => page(0xb1, block_device_characteristics()),
        Some(0xb2) => page(0xb2, logical_block_provisioning(disk)),
        Some(_) => return Reply::check(SenseData::invalid_cdb_field(2, None)),
    };
    Reply::good(truncate(data, allocation.into()))
}

/// Standard INQUIRY data (SPC-4 table "Standard INQUIRY data format"): direct-access block
/// device, VERSION 06h (SPC-4), HISUP and RESPONSE DATA FORMAT 2, CMDQUE, identification,
/// and version descriptors SAM-5 (00A0h), SPC-4 (0460h), SBC-3 (04C0h).
fn standard_inquiry<D: BlockDevice>(disk: &DiskServer<D>) -> Vec<u8> {
    let id = disk.identity();
    let mut v = vec![0u8; 74];
    v[2] = 0x06;
    v[3] = 0x12;
    v[4] = (v.len() - 5) as u8;
    v[7] = 0x02;
    v[8..16].copy_from_slice(&id.vendor);
    v[16..32].copy_from_slice(&id.product);
    v[32..36].copy_from_slice(&id.revision);
    for (i, d) in [0x00a0u16, 0x0460, 0x04c0].iter().enumerate() {
        v[58 + 2 * i..60 + 2 * i].copy_from_slice(&d.to_be_bytes());
    }
    v
}

/// A VPD page: peripheral byte 0, the page code, a 2-byte page length, the payload.
fn page(code: u8, payload: Vec<u8>) -> Vec<u8> {
    let len = payload.len().min(u16::MAX as usize) as u16;
    let mut v = vec![0, code];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend(payload);
    v
}

/// Device Identification VPD page designators (SPC-4 table "Designation descriptor"): the
/// LU's NAA designator (code set 1 binary, association 00b, type 3) and the target port's
/// relative target port identifier (association 01b, type 4, SPC-4 table "Relative target
/// port designator format").
fn device_identification<D: BlockDevice>(
    disk: &DiskServer<D>,
    port: RelativeTargetPort,
) -> Vec<u8> {
    let naa = &disk.identity().naa;
    let mut v = vec![0x01, 0x03, 0x00, naa.len() as u8];
    v.extend_from_slice(naa);
    v.extend_from_slice(&[0x01, 0x14, 0x00, 0x04, 0x00, 0x00]);
    v.extend_from_slice(&port.0.to_be_bytes());
    v
}

/// Block Limits VPD page (SBC-3 table "Block Limits VPD page"), 3Ch bytes of payload.
fn block_limits<D: BlockDevice>(disk: &DiskServer<D>) -> Vec<u8> {
    let bs = disk.block_size();
    let max_blocks = (MAX_TRANSFER_BYTES as u32) / bs;
    let mut v = vec![0u8; 0x3c];
    v[0] = 0x01; // WSNZ
    v[2..4].copy_from_slice(&1u16.to_be_bytes()); // OPTIMAL TRANSFER LENGTH GRANULARITY
    v[4..8].copy_from_slice(&max_blocks.to_be_bytes()); // MAXIMUM TRANSFER LENGTH
    v[8..12].copy_from_slice(&max_blocks.to_be_bytes()); // OPTIMAL TRANSFER LENGTH
    if disk.thin() {
        v[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
        v[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        v[24..28].copy_from_slice(&(4096 / bs).max(1).to_be_bytes()); // OPTIMAL UNMAP GRANULARITY
    }
    v[32..40].copy_from_slice(&u64::from(MAX_UNMAP_BLOCKS).to_be_bytes()); // MAXIMUM WRITE SAME LENGTH
    v
}

/// Block Device Characteristics VPD page (SBC-3): MEDIUM ROTATION RATE 0001h (non-rotating).
fn block_device_characteristics() -> Vec<u8> {
    let mut v = vec![0u8; 0x3c];
    v[0..2].copy_from_slice(&1u16.to_be_bytes());
    v
}

/// Logical Block Provisioning VPD page (SBC-3): with discard, LBPU, LBPWS, LBPWS10 and LBPRZ
/// set and PROVISIONING TYPE 010b (thin); else all zero (fully provisioned).
fn logical_block_provisioning<D: BlockDevice>(disk: &DiskServer<D>) -> Vec<u8> {
    if disk.thin() {
        vec![0x00, 0xe4, 0x02, 0x00]
    } else {
        vec![0u8; 4]
    }
}

/// READ CAPACITY (10) data (SBC-3): the last LBA (FFFFFFFFh when it does not fit) and the
/// block length.
pub fn read_capacity_10<D: BlockDevice>(disk: &DiskServer<D>) -> Vec<u8> {
    let last = u32::try_from(disk.blocks().saturating_sub(1)).unwrap_or(u32::MAX);
    let mut v = last.to_be_bytes().to_vec();
    v.extend_from_slice(&disk.block_size().to_be_bytes());
    v
}

/// READ CAPACITY (16) parameter data (SBC-3, 32 bytes): last LBA, block length, LBPME and
/// LBPRZ in byte 14 when thin provisioned.
pub fn read_capacity_16<D: BlockDevice>(disk: &DiskServer<D>, allocation: u32) -> Vec<u8> {
    let mut v = vec![0u8; 32];
    v[0..8].copy_from_slice(&disk.blocks().saturating_sub(1).to_be_bytes());
    v[8..12].copy_from_slice(&disk.block_size().to_be_bytes());
    if disk.thin() {
        v[14] = 0xc0;
    }
    truncate(v, allocation as usize)
}

/// Caching mode page (SBC-3 table "Caching mode page"): WCE=1, the medium is a host file
/// whose writes are durable after SYNCHRONIZE CACHE (or FUA).
fn caching_page(changeable: bool) -> Vec<u8> {
    let mut v = vec![0u8; 20];
    v[0] = 0x08;
    v[1] = 0x12;
    if !changeable {
        v[2] = 0x04;
    }
    v
}

/// Control mode page (SPC-4 table "Control mode page"): QUEUE ALGORITHM MODIFIER 1
/// (unrestricted reordering), BUSY TIMEOUT PERIOD FFFFh (unlimited).
fn control_page(changeable: bool) -> Vec<u8> {
    let mut v = vec![0u8; 12];
    v[0] = 0x0a;
    v[1] = 0x0a;
    if !changeable {
        v[3] = 0x10;
        v[8..10].copy_from_slice(&0xffffu16.to_be_bytes());
    }
    v
}

/// MODE SENSE (6)/(10) (SPC-4): header, block descriptor unless DBD, then the caching (08h)
/// and control (0Ah) pages, or both for 3Fh. Saved values are not supported.
pub fn mode_sense<D: BlockDevice>(disk: &DiskServer<D>, cmd: &Command) -> Reply {
    let Command::ModeSense {
        ten,
        dbd,
        llbaa,
        page_control,
        page,
        subpage,
        allocation,
    } = *cmd
    else {
        return Reply::check(SenseData::invalid_cdb_field(0, None));
    };
    if page_control == 3 {
        return Reply::check(SenseData::new(sense::SAVING_PARAMETERS_NOT_SUPPORTED));
    }
    let changeable = page_control == 1;
    let pages = match (page, subpage) {
        (0x08, 0) => caching_page(changeable),
        (0x0a, 0) => control_page(changeable),
        (0x3f, 0 | 0xff) => [caching_page(changeable), control_page(changeable)].concat(),
        (0x08 | 0x0a | 0x3f, _) => return Reply::check(SenseData::invalid_cdb_field(3, None)),
        _ => return Reply::check(SenseData::invalid_cdb_field(2, Some(5))),
    };
    let blocks = disk.blocks();
    let bs = disk.block_size();
    let descriptor = if dbd {
        Vec::new()
    } else if llbaa {
        // Long LBA mode parameter block descriptor (SBC-3).
        let mut d = blocks.to_be_bytes().to_vec();
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&bs.to_be_bytes());
        d
    } else {
        // Short LBA mode parameter block descriptor (SBC-3).
        let mut d = u32::try_from(blocks)
            .unwrap_or(u32::MAX)
            .to_be_bytes()
            .to_vec();
        d.push(0);
        d.extend_from_slice(&bs.to_be_bytes()[1..]);
        d
    };
    // DEVICE-SPECIFIC PARAMETER (SBC-3): WP bit 7, DPOFUA bit 4.
    let dsp = if disk.read_only() { 0x90 } else { 0x10 };
    let body_len = descriptor.len() + pages.len();
    let mut v = if ten {
        let total = 8 + body_len;
        let mut h = ((total - 2) as u16).to_be_bytes().to_vec();
        h.extend_from_slice(&[0, dsp, u8::from(llbaa && !dbd), 0]);
        h.extend_from_slice(&(descriptor.len() as u16).to_be_bytes());
        h
    } else {
        vec![(4 + body_len - 1) as u8, 0, dsp, descriptor.len() as u8]
    };
    v.extend(descriptor);
    v.extend(pages);
    Reply::good(truncate(v, allocation.into()))
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35): all commands (REPORTING OPTIONS 000b, the
/// "Command descriptor format" table) or one (001b–011b, "One_command parameter data
/// format", SUPPORT 011b with a CDB usage map whose bits are all set except in the control
/// byte).
/// The command timeouts descriptor (SPC-4 table "Command timeouts descriptor format"):
/// DESCRIPTOR LENGTH 000Ah, then NOMINAL COMMAND PROCESSING TIMEOUT and RECOMMENDED COMMAND
/// TIMEOUT both 0, "not specified" (no command of ours has a timeout of its own).
const COMMAND_TIMEOUTS: [u8; 12] = [0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

pub fn supported_operation_codes<D: BlockDevice>(
    disk: &DiskServer<D>,
    rctd: bool,
    options: u8,
    opcode: u8,
    service_action: u16,
    allocation: u32,
) -> Reply {
    let served = |o: &&super::cdb::OpInfo| disk.thin() || o.opcode != 0x42;
    let data = match options {
        0 => {
            let mut d = Vec::new();
            for o in OPCODES.iter().filter(served) {
                d.push(o.opcode);
                d.push(0);
                d.extend_from_slice(&o.service_action.unwrap_or(0).to_be_bytes());
                d.push(0);
                // Byte 5: CTDP (bit 1) when a timeouts descriptor follows, SERVACTV (bit 0).
                d.push(u8::from(rctd) << 1 | u8::from(o.service_action.is_some()));
                d.extend_from_slice(&u16::from(o.cdb_len).to_be_bytes());
                if rctd {
                    d.extend_from_slice(&COMMAND_TIMEOUTS);
                }
            }
            let mut v = (d.len() as u32).to_be_bytes().to_vec();
            v.extend(d);
            v
        }
        _ => {
            let has_sa = OPCODES
                .iter()
                .any(|o| o.opcode == opcode && o.service_action.is_some());
            match (options, has_sa) {
                (1, true) | (2, false) => {
                    return Reply::check(SenseData::invalid_cdb_field(2, Some(2)))
                }
                _ => {}
            }
            match lookup(opcode, service_action).filter(|o| served(o)) {
                Some(o) => {
                    let n = usize::from(o.cdb_len);
                    let mut usage = vec![0xffu8; n];
                    usage[0] = o.opcode;
                    if o.service_action.is_some() {
                        usage[1] = 0x1f;
                    }
                    usage[n - 1] = 0;
                    // Byte 1: CTDP (bit 7), SUPPORT 011b (supported as the standard says).
                    let mut v = vec![0, u8::from(rctd) << 7 | 0x03];
                    v.extend_from_slice(&(n as u16).to_be_bytes());
                    v.extend(usage);
                    if rctd {
                        v.extend_from_slice(&COMMAND_TIMEOUTS);
                    }
                    v
                }
                None => vec![0, 0x01, 0, 0],
            }
        }
    };
    Reply::good(truncate(data, allocation as usize))
}

/// REPORT LUNS parameter data (SPC-4 table "REPORT LUNS parameter data format"): LUNs below
/// 256 in peripheral device addressing, the others in flat space addressing (SAM-5).
pub fn report_luns(luns: &[u16], allocation: u32) -> Vec<u8> {
    let mut v = ((luns.len() * 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&[0; 4]);
    for &l in luns {
        let [hi, lo] = l.to_be_bytes();
        let first = if l < 256 { 0 } else { 0x40 | (hi & 0x3f) };
        v.extend_from_slice(&[first, lo, 0, 0, 0, 0, 0, 0]);
    }
    truncate(v, allocation as usize)
}
