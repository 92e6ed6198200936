//! SCSI persistent reservations (SPC-4 §5.13, §6.15, §6.16) as plain data.
//!
//! Everything here is pure: byte slices in, typed values out, and back. Nothing in this crate knows
//! about sockets, file descriptors, QEMU or Linux. The one table of opcodes and service actions lives
//! in [`cdb`]; sense codes are named after the standard in [`sense`].
#![forbid(unsafe_code)]

pub mod cdb;
pub mod ids;
pub mod param;
pub mod prin;
pub mod sense;
pub mod status;
pub mod transport_id;
pub mod vpd;

pub use cdb::{PrInCdb, PrOutCdb, ReservationType, Scope, ServiceActionIn, ServiceActionOut};
pub use ids::{Generation, RelativeTargetPort, ReservationKey};
pub use sense::{Sense, SenseCode, SenseKey};
pub use status::Status;

/// Operation code of PERSISTENT RESERVE IN (5Eh, SPC-4 §6.15).
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
/// Operation code of PERSISTENT RESERVE OUT (5Fh, SPC-4 §6.16).
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
