//! CDB parsing: the one table of the commands we serve ([`OPCODES`]) and [`Command`], the
//! parsed form the device server matches on. Field layouts from SBC-3 (READ, WRITE, VERIFY,
//! WRITE SAME, UNMAP, SYNCHRONIZE CACHE, READ CAPACITY, START STOP UNIT) and SPC-4 (INQUIRY,
//! MODE SENSE, REQUEST SENSE, REPORT LUNS, REPORT SUPPORTED OPERATION CODES, PR IN/OUT).
//!
//! A parse error is the reply it must produce ([`SenseData`] with the field pointer): a CDB is
//! hostile input, never a panic.

use pr_engine::{CommandClass, SenseData};
use pr_scsi::SenseCode;

/// One supported command: operation code, service action (for the opcodes that have one),
/// CDB length and how persistent reservations treat it (pr-engine's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpInfo {
    /// OPERATION CODE.
    pub opcode: u8,
    /// SERVICE ACTION, for commands identified by opcode and service action.
    pub service_action: Option<u16>,
    /// CDB length in bytes.
    pub cdb_len: u8,
    /// The standard's name.
    pub name: &'static str,
}

const fn op(opcode: u8, cdb_len: u8, name: &'static str) -> OpInfo {
    OpInfo {
        opcode,
        service_action: None,
        cdb_len,
        name,
    }
}

/// SERVICE ACTION IN (16) (SBC-3), which carries READ CAPACITY (16).
pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
/// MAINTENANCE IN (SPC-4), which carries REPORT SUPPORTED OPERATION CODES.
pub const MAINTENANCE_IN: u8 = 0xa3;

/// Every command the target serves; anything else is INVALID COMMAND OPERATION CODE.
pub const OPCODES: &[OpInfo] = &[
    op(0x00, 6, "TEST UNIT READY"),
    op(0x03, 6, "REQUEST SENSE"),
    op(0x08, 6, "READ (6)"),
    op(0x0a, 6, "WRITE (6)"),
    op(0x12, 6, "INQUIRY"),
    op(0x1a, 6, "MODE SENSE (6)"),
    op(0x1b, 6, "START STOP UNIT"),
    op(0x25, 10, "READ CAPACITY (10)"),
    op(0x28, 10, "READ (10)"),
    op(0x2a, 10, "WRITE (10)"),
    op(0x2e, 10, "WRITE AND VERIFY (10)"),
    op(0x2f, 10, "VERIFY (10)"),
    op(0x35, 10, "SYNCHRONIZE CACHE (10)"),
    op(0x41, 10, "WRITE SAME (10)"),
    op(0x42, 10, "UNMAP"),
    op(0x5a, 10, "MODE SENSE (10)"),
    op(0x5e, 10, "PERSISTENT RESERVE IN"),
    op(0x5f, 10, "PERSISTENT RESERVE OUT"),
    op(0x88, 16, "READ (16)"),
    op(0x8a, 16, "WRITE (16)"),
    op(0x8e, 16, "WRITE AND VERIFY (16)"),
    op(0x8f, 16, "VERIFY (16)"),
    op(0x91, 16, "SYNCHRONIZE CACHE (16)"),
    op(0x93, 16, "WRITE SAME (16)"),
    OpInfo {
        opcode: SERVICE_ACTION_IN_16,
        service_action: Some(0x10),
        cdb_len: 16,
        name: "READ CAPACITY (16)",
    },
    op(0xa0, 12, "REPORT LUNS"),
    OpInfo {
        opcode: MAINTENANCE_IN,
        service_action: Some(0x0c),
        cdb_len: 12,
        name: "REPORT SUPPORTED OPERATION CODES",
    },
    op(0xa8, 12, "READ (12)"),
    op(0xaa, 12, "WRITE (12)"),
];

/// The table entry of `opcode` (and `service_action` for opcodes that have one).
pub fn lookup(opcode: u8, service_action: u16) -> Option<&'static OpInfo> {
    OPCODES
        .iter()
        .find(|o| o.opcode == opcode && o.service_action.is_none_or(|sa| sa == service_action))
}

/// A range of logical blocks a command addresses; checked against the capacity by the device
/// server, so parsing needs no capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// LOGICAL BLOCK ADDRESS.
    pub lba: u64,
    /// Number of blocks (already the 256 of a zero READ/WRITE (6) length).
    pub blocks: u32,
}

/// A parsed CDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    TestUnitReady,
    RequestSense {
        descriptor: bool,
        allocation: u16,
    },
    Inquiry {
        /// `Some(page)` with EVPD=1.
        vpd: Option<u8>,
        allocation: u16,
    },
    ModeSense {
        /// MODE SENSE (10) rather than (6).
        ten: bool,
        dbd: bool,
        llbaa: bool,
        /// PC: 0 current, 1 changeable, 2 default, 3 saved.
        page_control: u8,
        page: u8,
        subpage: u8,
        allocation: u16,
    },
    StartStopUnit,
    ReadCapacity10,
    ReadCapacity16 {
        allocation: u32,
    },
    Read {
        extent: Extent,
    },
    Write {
        extent: Extent,
        fua: bool,
        /// WRITE AND VERIFY: the data is verified after writing (BYTCHK=00b: the medium is
        /// read back, which our medium always passes).
        verify: bool,
        /// WRITE AND VERIFY with BYTCHK=01b (SBC-3 §5.40): the blocks are read back after
        /// the write and compared byte for byte with the data-out (MISCOMPARE if they differ).
        compare: bool,
    },
    Verify {
        extent: Extent,
        /// BYTCHK=01b: compare the data-out with the medium.
        compare: bool,
    },
    SynchronizeCache {
        extent: Extent,
    },
    WriteSame {
        extent: Extent,
        unmap: bool,
    },
    Unmap {
        parameter_length: u16,
    },
    ReportLuns {
        allocation: u32,
    },
    ReportSupportedOperationCodes {
        /// RCTD: a command timeouts descriptor with each command descriptor.
        rctd: bool,
        options: u8,
        opcode: u8,
        service_action: u16,
        allocation: u32,
    },
    /// PERSISTENT RESERVE IN: executed by the engine.
    PersistentReserveIn,
    /// PERSISTENT RESERVE OUT with its PARAMETER LIST LENGTH: executed by the engine.
    PersistentReserveOut {
        parameter_length: u32,
    },
}

fn be16(c: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([c[at], c[at + 1]])
}
fn be32(c: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([c[at], c[at + 1], c[at + 2], c[at + 3]])
}
fn be64(c: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&c[at..at + 8]);
    u64::from_be_bytes(b)
}

fn field(byte: u16, bit: Option<u8>) -> SenseData {
    SenseData::invalid_cdb_field(byte, bit)
}

/// RDPROTECT/WRPROTECT/VRPROTECT (byte 1 bits 7–5): we format no protection information, so
/// anything but 000b is INVALID FIELD IN CDB (SBC-3 §4.22.2 tables for each command).
fn no_protect(c: &[u8]) -> Result<(), SenseData> {
    if c[1] & 0xe0 != 0 {
        return Err(field(1, Some(7)));
    }
    Ok(())
}

impl Command {
    /// Parses a CDB. `cdb` may be longer than the command (virtio-scsi sends 32 bytes); the
    /// extra bytes are ignored. Errors are the CHECK CONDITION to answer.
    pub fn parse(cdb: &[u8]) -> Result<(Command, &'static OpInfo), SenseData> {
        let invalid_opcode = || SenseData::new(SenseCode::INVALID_COMMAND_OPERATION_CODE);
        let opcode = *cdb.first().ok_or_else(invalid_opcode)?;
        let sa = match opcode {
            SERVICE_ACTION_IN_16 | MAINTENANCE_IN => {
                u16::from(cdb.get(1).copied().unwrap_or(0) & 0x1f)
            }
            _ => 0,
        };
        let info = lookup(opcode, sa).ok_or_else(|| {
            if matches!(opcode, SERVICE_ACTION_IN_16 | MAINTENANCE_IN) {
                // A known opcode with an unknown service action: the field is wrong.
                field(1, Some(4))
            } else {
                invalid_opcode()
            }
        })?;
        let c = cdb
            .get(..usize::from(info.cdb_len))
            .ok_or_else(invalid_opcode)?;
        let cmd = match opcode {
            0x00 => Command::TestUnitReady,
            0x03 => Command::RequestSense {
                descriptor: c[1] & 0x01 != 0,
                allocation: u16::from(c[4]),
            },
            0x12 => {
                if c[1] & 0x02 != 0 {
                    return Err(field(1, Some(1))); // CMDDT (obsolete)
                }
                let evpd = c[1] & 0x01 != 0;
                if !evpd && c[2] != 0 {
                    return Err(field(2, None)); // PAGE CODE without EVPD
                }
                Command::Inquiry {
                    vpd: evpd.then_some(c[2]),
                    allocation: be16(c, 3),
                }
            }
            0x1a | 0x5a => {
                let ten = opcode == 0x5a;
                Command::ModeSense {
                    ten,
                    dbd: c[1] & 0x08 != 0,
                    llbaa: ten && c[1] & 0x10 != 0,
                    page_control: c[2] >> 6,
                    page: c[2] & 0x3f,
                    subpage: c[3],
                    allocation: if ten { be16(c, 7) } else { u16::from(c[4]) },
                }
            }
            0x1b => Command::StartStopUnit,
            0x25 => {
                // PMI (obsolete in SBC-3) with a non-zero LBA is not supported.
                if c[8] & 0x01 != 0 || be32(c, 2) != 0 {
                    return Err(field(if c[8] & 0x01 != 0 { 8 } else { 2 }, None));
                }
                Command::ReadCapacity10
            }
            SERVICE_ACTION_IN_16 => Command::ReadCapacity16 {
                allocation: be32(c, 10),
            },
            0x08 | 0x0a => {
                let lba = u64::from(u32::from_be_bytes([0, c[1] & 0x1f, c[2], c[3]]));
                let blocks = if c[4] == 0 { 256 } else { u32::from(c[4]) };
                let extent = Extent { lba, blocks };
                if opcode == 0x08 {
                    Command::Read { extent }
                } else {
                    Command::Write {
                        extent,
                        fua: false,
                        verify: false,
                        compare: false,
                    }
                }
            }
            0x28 | 0x2a | 0x2e | 0x2f | 0xa8 | 0xaa | 0x88 | 0x8a | 0x8e | 0x8f => {
                no_protect(c)?;
                let extent = match info.cdb_len {
                    10 => Extent {
                        lba: u64::from(be32(c, 2)),
                        blocks: u32::from(be16(c, 7)),
                    },
                    12 => Extent {
                        lba: u64::from(be32(c, 2)),
                        blocks: be32(c, 6),
                    },
                    _ => Extent {
                        lba: be64(c, 2),
                        blocks: be32(c, 10),
                    },
                };
                let fua = c[1] & 0x08 != 0;
                match opcode {
                    0x28 | 0xa8 | 0x88 => Command::Read { extent },
                    0x2a | 0xaa | 0x8a => Command::Write {
                        extent,
                        fua,
                        verify: false,
                        compare: false,
                    },
                    0x2e | 0x8e => {
                        // BYTCHK (byte 1 bits 2-1): 00b verify the medium, 01b compare with
                        // the data-out; 10b and 11b are reserved for WRITE AND VERIFY.
                        let bytchk = (c[1] >> 1) & 0x03;
                        if bytchk > 1 {
                            return Err(field(1, Some(2)));
                        }
                        Command::Write {
                            extent,
                            fua: true,
                            verify: true,
                            compare: bytchk == 1,
                        }
                    }
                    _ => {
                        let bytchk = (c[1] >> 1) & 0x03;
                        if bytchk > 1 {
                            return Err(field(1, Some(2)));
                        }
                        Command::Verify {
                            extent,
                            compare: bytchk == 1,
                        }
                    }
                }
            }
            0x35 => Command::SynchronizeCache {
                extent: Extent {
                    lba: u64::from(be32(c, 2)),
                    blocks: u32::from(be16(c, 7)),
                },
            },
            0x91 => Command::SynchronizeCache {
                extent: Extent {
                    lba: be64(c, 2),
                    blocks: be32(c, 10),
                },
            },
            0x41 | 0x93 => {
                no_protect(c)?;
                if c[1] & 0x10 != 0 {
                    return Err(field(1, Some(4))); // ANCHOR
                }
                if c[1] & 0x06 != 0 {
                    return Err(field(1, Some(2))); // PBDATA / LBDATA (obsolete)
                }
                let extent = if opcode == 0x41 {
                    Extent {
                        lba: u64::from(be32(c, 2)),
                        blocks: u32::from(be16(c, 7)),
                    }
                } else {
                    if c[1] & 0x01 != 0 {
                        return Err(field(1, Some(0))); // NDOB
                    }
                    Extent {
                        lba: be64(c, 2),
                        blocks: be32(c, 10),
                    }
                };
                Command::WriteSame {
                    extent,
                    unmap: c[1] & 0x08 != 0,
                }
            }
            0x42 => {
                if c[1] & 0x01 != 0 {
                    return Err(field(1, Some(0))); // ANCHOR
                }
                Command::Unmap {
                    parameter_length: be16(c, 7),
                }
            }
            0xa0 => {
                if c[2] > 2 && !(0x10..=0x12).contains(&c[2]) {
                    return Err(field(2, None)); // SELECT REPORT
                }
                Command::ReportLuns {
                    allocation: be32(c, 6),
                }
            }
            MAINTENANCE_IN => {
                let options = c[2] & 0x07;
                if options > 3 {
                    return Err(field(2, Some(2)));
                }
                Command::ReportSupportedOperationCodes {
                    rctd: c[2] & 0x80 != 0,
                    options,
                    opcode: c[3],
                    service_action: be16(c, 4),
                    allocation: be32(c, 6),
                }
            }
            0x5e => Command::PersistentReserveIn,
            0x5f => Command::PersistentReserveOut {
                parameter_length: be32(c, 5),
            },
            _ => return Err(invalid_opcode()),
        };
        Ok((cmd, info))
    }

    /// How persistent reservations treat the command (pr-engine's [`CommandClass`], after the
    /// SPC-4 table "SPC commands that are allowed in the presence of various reservations" and
    /// SBC-3's table of block commands): medium reads are `Read`; writes, WRITE SAME, UNMAP and
    /// SYNCHRONIZE CACHE are `Write`; MODE SENSE is `Other`; INQUIRY, REPORT LUNS and REQUEST
    /// SENSE are `Exempt`; the rest are `Allowed` (unit attentions reported, never blocked).
    pub fn class(&self) -> CommandClass {
        match self {
            Command::Read { .. } | Command::Verify { .. } => CommandClass::Read,
            Command::Write { .. }
            | Command::WriteSame { .. }
            | Command::Unmap { .. }
            | Command::SynchronizeCache { .. } => CommandClass::Write,
            Command::ModeSense { .. } => CommandClass::Other,
            Command::Inquiry { .. } | Command::ReportLuns { .. } | Command::RequestSense { .. } => {
                CommandClass::Exempt
            }
            Command::TestUnitReady
            | Command::StartStopUnit
            | Command::ReadCapacity10
            | Command::ReadCapacity16 { .. }
            | Command::ReportSupportedOperationCodes { .. }
            | Command::PersistentReserveIn
            | Command::PersistentReserveOut { .. } => CommandClass::Allowed,
        }
    }
}
