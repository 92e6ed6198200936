//! The device server of one disk: [`DiskServer::prepare`] checks a CDB against the disk (LBA
//! range, transfer size) and says how much data-out the command needs;
//! [`DiskServer::execute`] runs it on the [`BlockDevice`].

use std::io;

use pr_engine::{Reply, SenseData};
use pr_scsi::{RelativeTargetPort, SenseCode};

use super::cdb::{Command, Extent, OpInfo};
use super::MAX_UNMAP_DESCRIPTORS;
use super::{pages, sense, MAX_PARAMETER_LIST, MAX_TRANSFER_BYTES, MAX_UNMAP_BLOCKS};

/// The medium of a disk. Offsets and lengths are in bytes and always inside
/// [`BlockDevice::size_bytes`] (the device server checks them first).
pub trait BlockDevice: Send + Sync {
    /// Size of the medium in bytes, fixed while the disk is served.
    fn size_bytes(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// `len` bytes from `offset`, in a new vector. The default zero-fills one and calls
    /// [`BlockDevice::read_at`]; a device that can read into uninitialised memory skips the
    /// zeroing (a whole pass over a 1 MiB READ).
    fn read_vec(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_at(&mut buf, offset)?;
        Ok(buf)
    }
    /// Writes `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Whether [`BlockDevice::discard`] works and discarded blocks then read as zeros
    /// (LBPU, LBPWS and LBPRZ are reported from this).
    fn can_discard(&self) -> bool;
    /// Deallocates `len` bytes at `offset`; they read as zeros afterwards.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
}

/// What INQUIRY reports about the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIdentity {
    /// T10 VENDOR IDENTIFICATION, space padded.
    pub vendor: [u8; 8],
    /// PRODUCT IDENTIFICATION, space padded.
    pub product: [u8; 16],
    /// PRODUCT REVISION LEVEL, space padded.
    pub revision: [u8; 4],
    /// PRODUCT SERIAL NUMBER of VPD page 80h (printable ASCII).
    pub serial: String,
    /// The NAA designator of VPD page 83h: 8 bytes (NAA 5) or 16 bytes (NAA 6).
    pub naa: Vec<u8>,
}

/// A command checked against the disk, with the data-out it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The parsed command.
    pub command: Command,
    /// Its table entry.
    pub info: &'static OpInfo,
    /// Bytes of data-out the command reads (0 for data-in and no-data commands).
    pub data_out_len: usize,
}

/// The device server of one disk (see the module documentation).
#[derive(Debug)]
pub struct DiskServer<D> {
    device: D,
    identity: DiskIdentity,
    block_size: u32,
    blocks: u64,
    read_only: bool,
}

/// Where the TRANSFER LENGTH field is, for the field pointer (SBC-3 READ/WRITE CDB tables).
fn transfer_length_byte(info: &OpInfo) -> u16 {
    match info.cdb_len {
        6 => 4,
        10 => 7,
        12 => 6,
        _ => 10,
    }
}

fn check(code: SenseCode) -> Reply {
    Reply::check(SenseData::new(code))
}

impl<D: BlockDevice> DiskServer<D> {
    /// A disk of `device`'s whole length in blocks of `block_size` (512 or 4096; a partial
    /// last block is not served).
    pub fn new(device: D, identity: DiskIdentity, block_size: u32, read_only: bool) -> Self {
        let blocks = device.size_bytes() / u64::from(block_size.max(1));
        DiskServer {
            device,
            identity,
            block_size,
            blocks,
            read_only,
        }
    }

    /// The block size.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The number of logical blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The medium.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The identity INQUIRY reports.
    pub fn identity(&self) -> &DiskIdentity {
        &self.identity
    }

    /// Whether the disk is write protected.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether UNMAP and WRITE SAME with UNMAP are served.
    pub fn thin(&self) -> bool {
        !self.read_only && self.device.can_discard()
    }

    fn extent_bytes(&self, e: Extent, info: &OpInfo, transfers: bool) -> Result<usize, Reply> {
        let end = e.lba.checked_add(u64::from(e.blocks));
        if end.is_none_or(|end| end > self.blocks) || e.lba > self.blocks {
            return Err(check(sense::LBA_OUT_OF_RANGE));
        }
        if !transfers {
            return Ok(0);
        }
        let bytes = u64::from(e.blocks) * u64::from(self.block_size);
        match usize::try_from(bytes) {
            Ok(b) if b <= MAX_TRANSFER_BYTES => Ok(b),
            _ => Err(Reply::check(SenseData::invalid_cdb_field(
                transfer_length_byte(info),
                None,
            ))),
        }
    }

    /// Parses `cdb` and checks it against the disk; an `Err` is the reply that ends the
    /// command before any data moves.
    pub fn prepare(&self, cdb: &[u8]) -> Result<Prepared, Reply> {
        let (command, info) = Command::parse(cdb).map_err(Reply::check)?;
        let data_out_len = match &command {
            Command::Read { extent } => {
                self.extent_bytes(*extent, info, true)?;
                0
            }
            Command::Write { extent, .. } => self.extent_bytes(*extent, info, true)?,
            Command::Verify { extent, compare } => {
                let b = self.extent_bytes(*extent, info, *compare)?;
                if *compare {
                    b
                } else {
                    0
                }
            }
            Command::SynchronizeCache { extent } => {
                self.extent_bytes(*extent, info, false)?;
                0
            }
            Command::WriteSame { extent, .. } => {
                self.extent_bytes(*extent, info, false)?;
                // WSNZ=1 (VPD B0h): zero blocks is not "to the end of the medium".
                if extent.blocks == 0 || extent.blocks > MAX_UNMAP_BLOCKS {
                    return Err(Reply::check(SenseData::invalid_cdb_field(
                        transfer_length_byte(info),
                        None,
                    )));
                }
                self.block_size as usize
            }
            Command::Unmap { parameter_length } => {
                if !self.thin() {
                    return Err(check(SenseCode::INVALID_COMMAND_OPERATION_CODE));
                }
                usize::from(*parameter_length).min(MAX_PARAMETER_LIST)
            }
            Command::PersistentReserveOut { parameter_length } => {
                match usize::try_from(*parameter_length) {
                    Ok(n) if n <= MAX_PARAMETER_LIST => n,
                    _ => return Err(Reply::check(SenseData::invalid_cdb_field(5, None))),
                }
            }
            _ => 0,
        };
        Ok(Prepared {
            command,
            info,
            data_out_len,
        })
    }

    /// Runs a prepared medium or SPC command. `data_out` holds what the initiator sent (at
    /// most [`Prepared::data_out_len`] bytes; fewer is an error for commands that need it).
    /// `port` is the target port the command came through (VPD page 83h reports it).
    /// PERSISTENT RESERVE IN/OUT and REPORT LUNS are not the disk's: the caller serves them.
    pub fn execute(&self, p: &Prepared, data_out: &[u8], port: RelativeTargetPort) -> Reply {
        let bs = self.block_size as usize;
        match &p.command {
            Command::TestUnitReady | Command::StartStopUnit => Reply::good(Vec::new()),
            Command::RequestSense {
                descriptor,
                allocation,
            } => Reply::good(pages::no_sense(*descriptor, *allocation)),
            Command::Inquiry { vpd, allocation } => pages::inquiry(self, *vpd, *allocation, port),
            Command::ModeSense { .. } => pages::mode_sense(self, &p.command),
            Command::ReadCapacity10 => Reply::good(pages::read_capacity_10(self)),
            Command::ReadCapacity16 { allocation } => {
                Reply::good(pages::read_capacity_16(self, *allocation))
            }
            Command::ReportSupportedOperationCodes {
                rctd,
                options,
                opcode,
                service_action,
                allocation,
            } => pages::supported_operation_codes(
                self,
                *rctd,
                *options,
                *opcode,
                *service_action,
                *allocation,
            ),
            Command::Read { extent } => {
                match self
                    .device
                    .read_vec(extent.lba * bs as u64, extent.blocks as usize * bs)
                {
                    Ok(buf) if buf.len() == extent.blocks as usize * bs => Reply::good(buf),
                    _ => check(sense::READ_ERROR),
                }
            }
            Command::Write {
                extent,
                fua,
                compare,
                ..
            } => {
                if self.read_only {
                    return check(sense::WRITE_PROTECTED);
                }
                if data_out.len() < p.data_out_len {
                    return self.short_data_out(p);
                }
                let data = &data_out[..p.data_out_len];
                let offset = extent.lba * bs as u64;
                let written = self.device.write_at(data, offset).and_then(|()| {
                    if *fua {
                        self.device.flush()
                    } else {
                        Ok(())
                    }
                });
                if written.is_err() {
                    return check(sense::WRITE_ERROR);
                }
                if !*compare {
                    return Reply::good(Vec::new());
                }
                // BYTCHK=01b: what the medium now holds, byte for byte.
                let mut back = vec![0u8; data.len()];
                match self.device.read_at(&mut back, offset) {
                    Ok(()) if back == data => Reply::good(Vec::new()),
                    Ok(()) => check(sense::MISCOMPARE_DURING_VERIFY),
                    Err(_) => check(sense::READ_ERROR),
                }
            }
            Command::Verify { extent, compare } => {
                if !*compare {
                    return Reply::good(Vec::new());
                }
                if data_out.len() < p.data_out_len {
                    return self.short_data_out(p);
                }
                let mut buf = vec![0u8; p.data_out_len];
                match self.device.read_at(&mut buf, extent.lba * bs as u64) {
                    Ok(()) if buf == data_out[..p.data_out_len] => Reply::good(Vec::new()),
                    Ok(()) => check(sense::MISCOMPARE_DURING_VERIFY),
                    Err(_) => check(sense::READ_ERROR),
                }
            }
            Command::SynchronizeCache { .. } => match self.device.flush() {
                Ok(()) => Reply::good(Vec::new()),
                Err(_) => check(sense::WRITE_ERROR),
            },
            Command::WriteSame { extent, unmap } => self.write_same(p, *extent, *unmap, data_out),
            Command::Unmap { parameter_length } => self.unmap(*parameter_length, data_out),
            Command::ReportLuns { .. }
            | Command::PersistentReserveIn
            | Command::PersistentReserveOut { .. } => {
                check(SenseCode::INVALID_COMMAND_OPERATION_CODE)
            }
        }
    }

    fn short_data_out(&self, p: &Prepared) -> Reply {
        Reply::check(SenseData::invalid_cdb_field(
            transfer_length_byte(p.info),
            None,
        ))
    }

    fn write_same(&self, p: &Prepared, e: Extent, unmap: bool, data_out: &[u8]) -> Reply {
        if self.read_only {
            return check(sense::WRITE_PROTECTED);
        }
        if data_out.len() < p.data_out_len {
            return Reply::check(SenseData::new(SenseCode::PARAMETER_LIST_LENGTH_ERROR));
        }
        let bs = self.block_size as usize;
        let block = &data_out[..bs];
        let offset = e.lba * bs as u64;
        let len = u64::from(e.blocks) * bs as u64;
        let result = if unmap && self.thin() && block.iter().all(|&b| b == 0) {
            self.device.discard(offset, len)
        } else {
            let per_chunk = (MAX_TRANSFER_BYTES / bs).max(1);
            let chunk: Vec<u8> = block
                .iter()
                .copied()
                .cycle()
                .take(per_chunk.min(e.blocks as usize) * bs)
                .collect();
            let mut done = 0u64;
            let mut r = Ok(());
            while done < len && r.is_ok() {
                let n = (len - done).min(chunk.len() as u64) as usize;
                r = self.device.write_at(&chunk[..n], offset + done);
                done += n as u64;
            }
            r
        };
        match result {
            Ok(()) => Reply::good(Vec::new()),
            Err(_) => check(sense::WRITE_ERROR),
        }
    }

    /// UNMAP (SBC-3 §5.28): the parameter list is an 8-byte header and 16-byte block
    /// descriptors (LBA, number of blocks); every descriptor is checked before any is applied.
    fn unmap(&self, parameter_length: u16, data: &[u8]) -> Reply {
        let plen = usize::from(parameter_length);
        if plen == 0 {
            return Reply::good(Vec::new());
        }
        if plen < 8 || data.len() < plen {
            return check(SenseCode::PARAMETER_LIST_LENGTH_ERROR);
        }
        let data = &data[..plen];
        let desc_len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        let descriptors = data[8..].len().min(desc_len) / 16;
        if descriptors > MAX_UNMAP_DESCRIPTORS as usize {
            return Reply::check(SenseData::invalid_parameter_field(2, None));
        }
        let mut ranges = Vec::with_capacity(descriptors);
        // MAXIMUM UNMAP LBA COUNT bounds the whole command (SBC-3 §6.6.4).
        let mut total = 0u64;
        for i in 0..descriptors {
            let d = &data[8 + 16 * i..8 + 16 * (i + 1)];
            let lba = u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8]));
            let blocks = u32::from_be_bytes(d[8..12].try_into().unwrap_or([0; 4]));
            total += u64::from(blocks);
            if total > u64::from(MAX_UNMAP_BLOCKS) {
                return Reply::check(SenseData::invalid_parameter_field(
                    (8 + 16 * i + 8) as u16,
                    None,
                ));
            }
            if lba
                .checked_add(u64::from(blocks))
                .is_none_or(|end| end > self.blocks)
            {
                return check(sense::LBA_OUT_OF_RANGE);
            }
            ranges.push((lba, blocks));
        }
        let bs = u64::from(self.block_size);
        for (lba, blocks) in ranges {
            if blocks > 0
                && self
                    .device
                    .discard(lba * bs, u64::from(blocks) * bs)
                    .is_err()
            {
                return check(sense::WRITE_ERROR);
            }
        }
        Reply::good(Vec::new())
    }
}
