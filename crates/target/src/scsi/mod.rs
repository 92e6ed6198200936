//! The SCSI device server of one disk: CDB and data-out in, status, sense and data-in out.
//!
//! Pure: it knows nothing of virtio, vhost-user, sockets or reservations. The medium is behind
//! the [`BlockDevice`] trait (a file or block device in production, memory in tests); the
//! reservation check is the caller's ([`crate::lu`]), which learns each command's
//! [`pr_engine::CommandClass`] from [`cdb::Command::class`]. Every CDB field the guest sends is
//! hostile: [`cdb::Command::parse`] bounds LBAs, lengths and transfer sizes before anything is
//! read or written, and never panics.
//!
//! The one table of the opcodes we serve is [`cdb::OPCODES`]; REPORT SUPPORTED OPERATION CODES
//! is built from it.
#![forbid(unsafe_code)]

pub mod cdb;
mod device;
mod pages;
pub mod sense;
#[cfg(test)]
pub(crate) mod tests;

pub use device::{BlockDevice, DiskIdentity, DiskServer, Prepared};
pub use pages::report_luns;

/// Largest data transfer of one command, in bytes (VPD page B0h MAXIMUM TRANSFER LENGTH is
/// this divided by the block size). Bounds the buffer of every READ, WRITE and WRITE SAME.
pub const MAX_TRANSFER_BYTES: usize = 1 << 20;

/// Largest parameter list we accept (UNMAP, PR OUT): bounds data-out of non-medium commands.
pub const MAX_PARAMETER_LIST: usize = 64 * 1024;

/// Most UNMAP block descriptors in one command (VPD B0h MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;

/// Most blocks one UNMAP command (all its descriptors) or WRITE SAME covers (VPD B0h MAXIMUM
/// UNMAP LBA COUNT and MAXIMUM WRITE SAME LENGTH): 2^20, the largest explicit limit libiscsi's
/// iscsi-test-cu (Inquiry.BlockLimits) accepts as sane.
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
