//! From an SG_IO outcome to a helper reply, as QEMU does it (`scsi/utils.c`
//! `scsi_sense_from_errno` and `scsi_sense_from_host_status`, and `do_sgio_worker` in
//! `scsi/qemu-pr-helper.c`, QEMU 7.2).

use std::io;

use pr_proto::{Reply, SENSE_SIZE};
use pr_scsi::{SenseCode, Status};
use pr_sys::sgio::{DataInBuffer, SgIoOutcome, DRIVER_TIMEOUT};

/// Host (adapter) status codes, `DID_*` in the kernel.
mod host {
    pub const OK: u16 = 0x00;
    pub const NO_CONNECT: u16 = 0x01;
    pub const BUS_BUSY: u16 = 0x02;
    pub const TIME_OUT: u16 = 0x03;
    pub const BAD_TARGET: u16 = 0x04;
    pub const ABORT: u16 = 0x05;
    pub const RESET: u16 = 0x08;
    pub const TRANSPORT_DISRUPTED: u16 = 0x0e;
    pub const TARGET_FAILURE: u16 = 0x10;
    pub const NEXUS_FAILURE: u16 = 0x11;
    pub const ALLOC_FAILURE: u16 = 0x12;
    pub const MEDIUM_ERROR: u16 = 0x13;
}

/// A status, and the sense to build when it is CHECK CONDITION.
type Outcome = (Status, Option<SenseCode>);

/// The reply for an outcome: CHECK CONDITION carries the built sense, other statuses none.
pub fn reply_of((status, code): Outcome) -> Reply {
    Reply {
        status,
        sense: code.map_or([0; SENSE_SIZE], |c| c.to_fixed()),
        data: Vec::new(),
    }
}

/// What an SG_IO errno means (QEMU `scsi_sense_from_errno`).
pub fn from_errno(errno: i32) -> Outcome {
    let cc = |c| (Status::CHECK_CONDITION, Some(c));
    match errno {
        libc::EDOM => (Status::TASK_SET_FULL, None),
        libc::EBADE => (Status::RESERVATION_CONFLICT, None),
        libc::ENODATA => cc(SenseCode::READ_ERROR),
        libc::EREMOTEIO => cc(SenseCode::TARGET_FAILURE),
        libc::ENOMEDIUM => cc(SenseCode::NO_MEDIUM),
        libc::ENOMEM => cc(SenseCode::TARGET_FAILURE),
        libc::EINVAL => cc(SenseCode::INVALID_FIELD_IN_CDB),
        libc::ENOSPC => cc(SenseCode::SPACE_ALLOCATION_FAILED_WRITE_PROTECT),
        _ => cc(SenseCode::IO_PROCESS_TERMINATED),
    }
}

/// What a non-zero host status means (QEMU `scsi_sense_from_host_status`).
///
/// Deliberate difference: QEMU answers GOOD for a host status it does not list (DID_ERROR,
/// DID_SOFT_ERROR, DID_IMM_RETRY, …), reporting success for a command the adapter failed. We
/// answer CHECK CONDITION, ABORTED COMMAND, LOGICAL UNIT COMMUNICATION FAILURE instead.
pub fn from_host_status(host_status: u16) -> Outcome {
    let cc = |c| (Status::CHECK_CONDITION, Some(c));
    match host_status {
        host::NO_CONNECT => cc(SenseCode::LOGICAL_UNIT_DOES_NOT_RESPOND_TO_SELECTION),
        host::BUS_BUSY => (Status::BUSY, None),
        host::TIME_OUT => cc(SenseCode::COMMAND_TIMEOUT_DURING_PROCESSING),
        host::BAD_TARGET => cc(SenseCode::LOGICAL_UNIT_COMMUNICATION_FAILURE),
        host::ABORT => cc(SenseCode::COMMANDS_CLEARED_BY_DEVICE_SERVER),
        host::RESET => cc(SenseCode::POWER_ON_RESET),
        host::TRANSPORT_DISRUPTED => cc(SenseCode::I_T_NEXUS_LOSS_OCCURRED),
        host::TARGET_FAILURE => cc(SenseCode::TARGET_FAILURE),
        host::NEXUS_FAILURE => (Status::RESERVATION_CONFLICT, None),
        host::ALLOC_FAILURE => cc(SenseCode::SPACE_ALLOCATION_FAILED_WRITE_PROTECT),
        host::MEDIUM_ERROR => cc(SenseCode::READ_ERROR),
        _ => cc(SenseCode::LOGICAL_UNIT_COMMUNICATION_FAILURE),
    }
}

/// The data-in side of an SG_IO call.
#[derive(Debug, Clone, Copy)]
pub enum DataIn<'a> {
    /// PR OUT: no data comes back.
    None,
    /// PR IN: the buffer the device wrote into, and the length it was given.
    Buffer(&'a DataInBuffer, usize),
}

/// Builds the reply for one SG_IO call. `sense` is the buffer the kernel wrote the device's
/// sense into (all zeros if none).
///
/// What the kernel and the device report is not trusted: sense bytes past the length the kernel
/// says it wrote are cleared; a reserved status byte becomes CHECK CONDITION, LOGICAL UNIT
/// COMMUNICATION FAILURE; a residual below zero counts as none and one above the length given
/// as all of it, so the data sent back is always a prefix of the bytes the device was allowed
/// to write (docs/protocol.md, "What a device may do to the helper's buffers").
pub fn reply_from_sg_io(
    result: io::Result<SgIoOutcome>,
    mut sense: [u8; SENSE_SIZE],
    data_in: DataIn<'_>,
) -> Reply {
    let (status, built) = match &result {
        Err(e) => from_errno(e.raw_os_error().unwrap_or(libc::EIO)),
        Ok(o) if o.host_status != host::OK => from_host_status(o.host_status),
        Ok(o) if o.driver_status & DRIVER_TIMEOUT != 0 => (Status::BUSY, None),
        Ok(o) if Status(o.status).name().is_none() => (
            Status::CHECK_CONDITION,
            Some(SenseCode::LOGICAL_UNIT_COMMUNICATION_FAILURE),
        ),
        Ok(o) => (Status(o.status), None),
    };
    let sense = match (built, &result) {
        (Some(code), _) => code.to_fixed(),
        (None, Ok(o)) => {
            sense[usize::from(o.sense_len_written).min(SENSE_SIZE)..].fill(0);
            sense
        }
        (None, Err(_)) => sense,
    };
    let data = match (status, data_in, &result) {
        (Status::GOOD, DataIn::Buffer(buffer, len), Ok(o)) => {
            let resid = usize::try_from(o.resid).unwrap_or(0);
            buffer.data(len.saturating_sub(resid))
        }
        _ => Vec::new(),
    };
    Reply {
        status,
        sense,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(status: u8, host_status: u16, driver_status: u16, resid: i32) -> io::Result<SgIoOutcome> {
        Ok(SgIoOutcome {
            status,
            host_status,
            driver_status,
            resid,
            ..Default::default()
        })
    }

    #[test]
    fn errno_mapping_follows_qemu() {
        let r = reply_from_sg_io(
            Err(io::Error::from_raw_os_error(libc::ENOTTY)),
            [0; 96],
            DataIn::None,
        );
        assert_eq!(r.status, Status(0x02));
        // ABORTED COMMAND (0Bh), I/O PROCESS TERMINATED (00h/06h), fixed format.
        assert_eq!(
            (r.sense[0], r.sense[2], r.sense[7], r.sense[12], r.sense[13]),
            (0x70, 0x0b, 10, 0x00, 0x06)
        );
        let r = reply_from_sg_io(
            Err(io::Error::from_raw_os_error(libc::EBADE)),
            [0; 96],
            DataIn::None,
        );
        assert_eq!((r.status, r.sense), (Status(0x18), [0; 96]));
        let r = reply_from_sg_io(
            Err(io::Error::from_raw_os_error(libc::EDOM)),
            [0; 96],
            DataIn::None,
        );
        assert_eq!(r.status, Status(0x28));
        let r = reply_from_sg_io(
            Err(io::Error::from_raw_os_error(libc::ENOMEM)),
            [0; 96],
            DataIn::None,
        );
        assert_eq!(
            (r.status, r.sense[2], r.sense[12]),
            (Status(0x02), 0x04, 0x44)
        );
    }

    #[test]
    fn host_and_driver_status() {
        assert_eq!(
            reply_from_sg_io(ok(0, 0x02, 0, 0), [0; 96], DataIn::None).status,
            Status(0x08)
        );
        assert_eq!(
            reply_from_sg_io(ok(0, 0, 0x06, 0), [0; 96], DataIn::None).status,
            Status(0x08)
        );
        let r = reply_from_sg_io(ok(0, 0x0e, 0, 0), [0; 96], DataIn::None);
        assert_eq!(
            (r.status, r.sense[2], r.sense[12], r.sense[13]),
            (Status(0x02), 0x0b, 0x29, 0x07)
        );
        // DID_ERROR (07h): QEMU says GOOD; we say LOGICAL UNIT COMMUNICATION FAILURE.
        let buffer = DataInBuffer::new(2);
        let r = reply_from_sg_io(ok(0, 0x07, 0, 0), [0; 96], DataIn::Buffer(&buffer, 2));
        assert_eq!(
            (r.status, r.sense[12], r.data.len()),
            (Status(0x02), 0x08, 0)
        );
    }

    fn ok_sense(status: u8, resid: i32, sense_len_written: u8) -> io::Result<SgIoOutcome> {
        Ok(SgIoOutcome {
            status,
            resid,
            sense_len_written,
            ..Default::default()
        })
    }

    #[test]
    fn device_status_keeps_device_sense_and_trims_resid() {
        let buffer = DataInBuffer::new(32);
        let mut dev_sense = [0u8; 96];
        dev_sense[..3].copy_from_slice(&[0x70, 0, 0x06]);
        let r = reply_from_sg_io(ok_sense(0x02, 0, 3), dev_sense, DataIn::Buffer(&buffer, 8));
        assert_eq!(
            (r.status, r.sense, r.data.len()),
            (Status(0x02), dev_sense, 0)
        );
        let r = reply_from_sg_io(ok(0x18, 0, 0, 0), [0; 96], DataIn::Buffer(&buffer, 8));
        assert_eq!((r.status, r.data.len()), (Status(0x18), 0));
        let r = reply_from_sg_io(ok(0, 0, 0, 24), [0; 96], DataIn::Buffer(&buffer, 32));
        assert_eq!((r.status, r.data.len()), (Status(0), 8));
    }

    #[test]
    fn a_hostile_device_gets_a_defined_reply() {
        let buffer = DataInBuffer::new(32);
        // A residual larger than the length given: no data, never a read beyond it.
        let r = reply_from_sg_io(ok(0, 0, 0, 99), [0; 96], DataIn::Buffer(&buffer, 32));
        assert_eq!((r.status, r.data.len()), (Status(0), 0));
        let r = reply_from_sg_io(ok(0, 0, 0, i32::MAX), [0; 96], DataIn::Buffer(&buffer, 32));
        assert_eq!(r.data.len(), 0);
        // A negative residual counts as none: exactly the length given, not one byte more.
        for resid in [-1, -20, i32::MIN] {
            let r = reply_from_sg_io(ok(0, 0, 0, resid), [0; 96], DataIn::Buffer(&buffer, 32));
            assert_eq!((r.status, r.data.len()), (Status(0), 32), "resid {resid}");
        }
        // Sense bytes beyond what the kernel says it wrote are not sent on; a length above the
        // buffer's keeps the whole buffer.
        let mut dev_sense = [0u8; 96];
        dev_sense[..18].copy_from_slice(&[
            0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0,
        ]);
        dev_sense[95] = 0xee;
        let r = reply_from_sg_io(ok_sense(0x02, 0, 18), dev_sense, DataIn::None);
        assert_eq!(
            (r.status, &r.sense[..18], r.sense[95]),
            (Status(0x02), &dev_sense[..18], 0)
        );
        let r = reply_from_sg_io(ok_sense(0x02, 0, 255), dev_sense, DataIn::None);
        assert_eq!(r.sense, dev_sense);
        // A status SAM-5 table 32 reserves (or made obsolete) is not passed on: CHECK
        // CONDITION, ABORTED COMMAND (0Bh), LOGICAL UNIT COMMUNICATION FAILURE (08h/00h), and
        // no data.
        for status in [0x01, 0x10, 0x14, 0x22, 0x7e, 0xff] {
            let r = reply_from_sg_io(ok(status, 0, 0, 0), dev_sense, DataIn::Buffer(&buffer, 32));
            assert_eq!(
                (
                    r.status,
                    r.sense[0],
                    r.sense[2],
                    r.sense[12],
                    r.sense[13],
                    r.data.len()
                ),
                (Status(0x02), 0x70, 0x0b, 0x08, 0x00, 0),
                "status {status:#04x}"
            );
        }
    }
}
