//! From an SG_IO outcome to a helper reply, as QEMU does it (`scsi/utils.c`
//! `scsi_sense_from_errno` and `scsi_sense_from_host_status`, and `do_sgio_worker` in
//! `scsi/qemu-pr-helper.c`, QEMU 7.2).

use std::io;

use pr_proto::{Reply, SENSE_SIZE};
use pr_scsi::{SenseCode, Status};
use pr_sys::sgio::{SgIoOutcome, DRIVER_TIMEOUT};

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

/// Builds the reply for one SG_IO call. `sense` is the buffer the kernel wrote the device's
/// sense into (all zeros if none); `data` is the PR IN buffer (empty for PR OUT).
pub fn reply_from_sg_io(
    result: io::Result<SgIoOutcome>,
    sense: [u8; SENSE_SIZE],
    mut data: Vec<u8>,
) -> Reply {
    let (status, built) = match &result {
        Err(e) => from_errno(e.raw_os_error().unwrap_or(libc::EIO)),
        Ok(o) if o.host_status != host::OK => from_host_status(o.host_status),
        Ok(o) if o.driver_status & DRIVER_TIMEOUT != 0 => (Status::BUSY, None),
        Ok(o) => (Status(o.status), None),
    };
    let sense = match built {
        Some(code) => code.to_fixed(),
        None => sense,
    };
    if status == Status::GOOD {
        let resid = match result {
            Ok(o) => usize::try_from(o.resid).unwrap_or(0),
            Err(_) => 0,
        };
        let len = data.len().saturating_sub(resid);
        data.truncate(len);
        Reply {
            status,
            sense,
            data,
        }
    } else {
        Reply {
            status,
            sense,
            data: Vec::new(),
        }
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
            vec![],
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
            vec![],
        );
        assert_eq!((r.status, r.sense), (Status(0x18), [0; 96]));
        let r = reply_from_sg_io(
            Err(io::Error::from_raw_os_error(libc::EDOM)),
            [0; 96],
            vec![],
        );
        assert_eq!(r.status, Status(0x28));
        let r = reply_from_sg_io(
            Err(io::Error::from_raw_os_error(libc::ENOMEM)),
            [0; 96],
            vec![],
        );
        assert_eq!(
            (r.status, r.sense[2], r.sense[12]),
            (Status(0x02), 0x04, 0x44)
        );
    }

    #[test]
    fn host_and_driver_status() {
        assert_eq!(
            reply_from_sg_io(ok(0, 0x02, 0, 0), [0; 96], vec![]).status,
            Status(0x08)
        );
        assert_eq!(
            reply_from_sg_io(ok(0, 0, 0x06, 0), [0; 96], vec![]).status,
            Status(0x08)
        );
        let r = reply_from_sg_io(ok(0, 0x0e, 0, 0), [0; 96], vec![]);
        assert_eq!(
            (r.status, r.sense[2], r.sense[12], r.sense[13]),
            (Status(0x02), 0x0b, 0x29, 0x07)
        );
        // DID_ERROR (07h): QEMU says GOOD; we say LOGICAL UNIT COMMUNICATION FAILURE.
        let r = reply_from_sg_io(ok(0, 0x07, 0, 0), [0; 96], vec![1, 2]);
        assert_eq!(
            (r.status, r.sense[12], r.data.len()),
            (Status(0x02), 0x08, 0)
        );
    }

    #[test]
    fn device_status_keeps_device_sense_and_trims_resid() {
        let mut dev_sense = [0u8; 96];
        dev_sense[..3].copy_from_slice(&[0x70, 0, 0x06]);
        let r = reply_from_sg_io(ok(0x02, 0, 0x08, 0), dev_sense, vec![0; 8]);
        assert_eq!(
            (r.status, r.sense, r.data.len()),
            (Status(0x02), dev_sense, 0)
        );
        let r = reply_from_sg_io(ok(0x18, 0, 0, 0), [0; 96], vec![0; 8]);
        assert_eq!((r.status, r.data.len()), (Status(0x18), 0));
        let r = reply_from_sg_io(ok(0, 0, 0, 24), [0; 96], vec![7; 32]);
        assert_eq!((r.status, r.data), (Status(0), vec![7; 8]));
        // A resid larger than the buffer (a confused driver) leaves no data rather than panicking.
        let r = reply_from_sg_io(ok(0, 0, 0, 99), [0; 96], vec![7; 32]);
        assert!(r.data.is_empty());
    }
}
