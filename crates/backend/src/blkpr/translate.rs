//! From a SCSI PERSISTENT RESERVE command to what the Linux block-layer PR ioctls can express,
//! and from their results back to SCSI replies. Pure: no descriptors, no I/O.
//!
//! | SCSI                               | Block layer                                  |
//! |------------------------------------|----------------------------------------------|
//! | REGISTER (APTPL=1)                 | IOC_PR_REGISTER                              |
//! | REGISTER AND IGNORE EXISTING KEY   | IOC_PR_REGISTER, PR_FL_IGNORE_KEY            |
//! | RESERVE / RELEASE (LU_SCOPE)       | IOC_PR_RESERVE / IOC_PR_RELEASE              |
//! | PREEMPT / PREEMPT AND ABORT        | IOC_PR_PREEMPT / IOC_PR_PREEMPT_ABORT        |
//! | CLEAR                              | IOC_PR_CLEAR                                 |
//! | READ KEYS / READ RESERVATION       | IOC_PR_READ_KEYS / IOC_PR_READ_RESERVATION   |
//! | REPORT CAPABILITIES                | synthesised: what this backend can express   |
//! | READ FULL STATUS                   | none (SG_IO when the device takes it)        |
//!
//! What the ioctls cannot express is refused with ILLEGAL REQUEST and a field pointer:
//! REGISTER AND MOVE and REPLACE LOST RESERVATION (CDB byte 1), a scope other than LU_SCOPE
//! (CDB byte 2 bit 7), SPEC_I_PT (parameter byte 20 bit 3), ALL_TG_PT (byte 20 bit 2) and, on
//! REGISTER, APTPL=0 (byte 20 bit 0): the kernel always registers with APTPL set.

use pr_proto::{Direction, Reply, RequestHeader};
use pr_scsi::param::BasicParameters;
use pr_scsi::prin::{type_mask_bit, Capabilities};
use pr_scsi::{PrInCdb, ReservationType, SenseCode, ServiceActionIn, ServiceActionOut, Status};
use pr_sys::blkpr::pr_type;

use crate::sgio::mapping;

/// A command in the block layer's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockCommand {
    Register {
        old_key: u64,
        new_key: u64,
        ignore_existing: bool,
    },
    Reserve {
        key: u64,
        pr_type: u32,
    },
    Release {
        key: u64,
        pr_type: u32,
    },
    Preempt {
        key: u64,
        victim: u64,
        pr_type: u32,
        abort: bool,
    },
    Clear {
        key: u64,
    },
    /// READ KEYS with room for this many keys in the allocation length.
    ReadKeys {
        capacity: usize,
    },
    ReadReservation,
    /// Answered without the device.
    ReportCapabilities,
    /// Only SG_IO can answer it.
    ReadFullStatus,
}

use crate::sgio::mapping::reply_of;
use crate::{pr_out_without_move, refuse_cdb, refused, Refusal};

/// Unregistering (REGISTER or REGISTER AND IGNORE EXISTING KEY with a SERVICE ACTION
/// RESERVATION KEY of zero) on an NVMe namespace. The kernel's nvme pr_ops turn IOC_PR_REGISTER
/// into Reservation Register with action Replace and a new key of zero, never Unregister: the
/// host would stay registered (with key 0, and its reservation), while the client is told it is
/// gone. Refused instead: ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST at the SERVICE
/// ACTION RESERVATION KEY field (parameter list bytes 8-15, SPC-4 table 191).
pub fn nvme_unregister_refusal() -> Box<Refusal> {
    Box::new(Refusal {
        reply: Reply::check_condition(
            SenseCode::INVALID_FIELD_IN_PARAMETER_LIST.to_fixed_with_field_pointer(false, 8, None),
        ),
        reason: "unregistering (service action reservation key 0) on an NVMe namespace: the \
                 kernel sends Reservation Register Replace with key 0, which leaves the host \
                 registered"
            .into(),
    })
}

fn refuse_param(bit: u8, reason: impl Into<String>) -> Box<Refusal> {
    Box::new(Refusal {
        reply: Reply::check_condition(
            SenseCode::INVALID_FIELD_IN_PARAMETER_LIST.to_fixed_with_field_pointer(
                false,
                20,
                Some(bit),
            ),
        ),
        reason: reason.into(),
    })
}

/// The Linux `pr_type` of a SCSI reservation type.
pub fn linux_type(t: ReservationType) -> u32 {
    match t {
        ReservationType::WriteExclusive => pr_type::WRITE_EXCLUSIVE,
        ReservationType::ExclusiveAccess => pr_type::EXCLUSIVE_ACCESS,
        ReservationType::WriteExclusiveRegistrantsOnly => pr_type::WRITE_EXCLUSIVE_REG_ONLY,
        ReservationType::ExclusiveAccessRegistrantsOnly => pr_type::EXCLUSIVE_ACCESS_REG_ONLY,
        ReservationType::WriteExclusiveAllRegistrants => pr_type::WRITE_EXCLUSIVE_ALL_REGS,
        ReservationType::ExclusiveAccessAllRegistrants => pr_type::EXCLUSIVE_ACCESS_ALL_REGS,
    }
}

/// The SCSI reservation type of a Linux `pr_type` (None for 0, no reservation, or unknown).
pub fn scsi_type(t: u32) -> Option<ReservationType> {
    ReservationType::ALL
        .iter()
        .copied()
        .find(|s| linux_type(*s) == t)
}

/// Translates one request. The header has already passed the protocol checks (opcode,
/// lengths); `parameters` is the whole PR OUT parameter list.
pub fn translate(header: &RequestHeader, parameters: &[u8]) -> Result<BlockCommand, Box<Refusal>> {
    match header.direction {
        Direction::In => translate_in(header),
        Direction::Out => translate_out(header, parameters),
    }
}

fn translate_in(header: &RequestHeader) -> Result<BlockCommand, Box<Refusal>> {
    let cdb = PrInCdb::parse(&header.cdb).map_err(|e| refused(e.sense(), e.to_string()))?;
    let sa = cdb
        .service_action()
        .map_err(|e| refused(e.sense(), e.to_string()))?;
    Ok(match sa {
        ServiceActionIn::ReadKeys => BlockCommand::ReadKeys {
            capacity: usize::from(cdb.allocation_length)
                .saturating_sub(8)
                .div_ceil(8),
        },
        ServiceActionIn::ReadReservation => BlockCommand::ReadReservation,
        ServiceActionIn::ReportCapabilities => BlockCommand::ReportCapabilities,
        ServiceActionIn::ReadFullStatus => BlockCommand::ReadFullStatus,
    })
}

fn translate_out(header: &RequestHeader, parameters: &[u8]) -> Result<BlockCommand, Box<Refusal>> {
    let (cdb, sa) = pr_out_without_move(header, "has no block-layer ioctl")?;
    let p = BasicParameters::parse(parameters).map_err(|e| refused(e.sense(), e.to_string()))?;
    if p.spec_i_pt {
        return Err(refuse_param(
            3,
            "SPEC_I_PT: the block layer registers only the issuing nexus",
        ));
    }
    let key = p.reservation_key.0;
    let sa_key = p.service_action_reservation_key.0;
    // Scope and type matter only where a reservation is created, released or taken over.
    let scoped_type = || -> Result<u32, Box<Refusal>> {
        if cdb.scope_code != 0 {
            return Err(refuse_cdb(
                2,
                7,
                format!(
                    "scope {:#x}: the block layer knows only LU_SCOPE",
                    cdb.scope_code
                ),
            ));
        }
        cdb.reservation_type()
            .map(linux_type)
            .map_err(|e| refused(e.sense(), e.to_string()))
    };
    Ok(match sa {
        ServiceActionOut::Register | ServiceActionOut::RegisterAndIgnoreExistingKey => {
            if p.all_tg_pt {
                return Err(refuse_param(
                    2,
                    "ALL_TG_PT: the block layer registers only the issuing nexus",
                ));
            }
            if !p.aptpl {
                return Err(refuse_param(
                    0,
                    "APTPL=0: the kernel always registers with APTPL=1",
                ));
            }
            BlockCommand::Register {
                old_key: key,
                new_key: sa_key,
                ignore_existing: sa == ServiceActionOut::RegisterAndIgnoreExistingKey,
            }
        }
        ServiceActionOut::Reserve => BlockCommand::Reserve {
            key,
            pr_type: scoped_type()?,
        },
        ServiceActionOut::Release => BlockCommand::Release {
            key,
            pr_type: scoped_type()?,
        },
        ServiceActionOut::Preempt | ServiceActionOut::PreemptAndAbort => BlockCommand::Preempt {
            key,
            victim: sa_key,
            pr_type: scoped_type()?,
            abort: sa == ServiceActionOut::PreemptAndAbort,
        },
        ServiceActionOut::Clear => BlockCommand::Clear { key },
        ServiceActionOut::RegisterAndMove | ServiceActionOut::ReplaceLostReservation => {
            unreachable!("refused above")
        }
    })
}

/// REPORT CAPABILITIES as this backend can honour it: persist-through-power-loss capable (the
/// kernel registers with APTPL=1), no SPEC_I_PT, no ALL_TG_PT, all six types. PTPL_A is left 0:
/// the ioctls cannot read the device's APTPL state.
pub fn capabilities() -> Vec<u8> {
    Capabilities {
        ptpl_c: true,
        tmv: true,
        type_mask: ReservationType::ALL
            .iter()
            .fold(0, |m, t| m | type_mask_bit(*t)),
        ..Capabilities::default()
    }
    .encode()
}

/// READ KEYS data from IOC_PR_READ_KEYS: the ADDITIONAL LENGTH counts every key the device
/// holds, even those that did not fit (the server truncates to the allocation length).
pub fn read_keys_data(generation: u32, total: u32, keys: &[u64]) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + keys.len() * 8);
    d.extend_from_slice(&generation.to_be_bytes());
    d.extend_from_slice(&total.saturating_mul(8).to_be_bytes());
    for k in keys {
        d.extend_from_slice(&k.to_be_bytes());
    }
    d
}

/// READ RESERVATION data from IOC_PR_READ_RESERVATION (`pr_type` 0: no reservation).
pub fn read_reservation_data(
    generation: u32,
    key: u64,
    linux: u32,
) -> Result<Vec<u8>, Box<Refusal>> {
    let mut d = Vec::with_capacity(24);
    d.extend_from_slice(&generation.to_be_bytes());
    if linux == 0 {
        d.extend_from_slice(&0u32.to_be_bytes());
        return Ok(d);
    }
    let t = scsi_type(linux).ok_or_else(|| {
        refused(
            SenseCode::IO_PROCESS_TERMINATED.to_fixed(),
            format!("the kernel reported an unknown reservation type {linux}"),
        )
    })?;
    // An all-registrants reservation has no holder: SPC-4 (5.14.10) reports its key as 0.
    // Linux's nvme_pr_read_reservation returns the first registrant's key with the holder bit
    // set, which nvmet sets for every registrant of such a reservation.
    let key = if matches!(t.code(), 7 | 8) { 0 } else { key };
    d.extend_from_slice(&16u32.to_be_bytes());
    d.extend_from_slice(&key.to_be_bytes());
    // Obsolete (4 bytes), reserved, SCOPE (LU_SCOPE, 0) | TYPE, obsolete (2 bytes): SPC-4
    // table 175 puts the type in byte 21 of the data, byte 5 of the descriptor.
    d.extend_from_slice(&[0, 0, 0, 0, 0, t.code(), 0, 0]);
    Ok(d)
}

/// The reply for a positive ioctl result: the device's status as the driver reports it. Its
/// low byte is a SAM status and bits 16–23 a host byte, both for the SCSI result older kernels
/// return and for the `PR_STS_*` codes of Linux ≥ 6.5, which reuse those values.
/// CHECK CONDITION reaches us without its sense (the kernel keeps it), so it is answered with
/// ABORTED COMMAND, I/O PROCESS TERMINATED, as QEMU answers a failed SG_IO.
pub fn reply_from_status(result: i32) -> Reply {
    let host = ((result >> 16) & 0xff) as u16;
    let status = (result & 0xff) as u8;
    let (status, code) = if host != 0 {
        mapping::from_host_status(host)
    } else {
        match Status(status) {
            Status::GOOD => (Status::GOOD, None),
            s @ (Status::RESERVATION_CONFLICT | Status::BUSY | Status::TASK_SET_FULL) => (s, None),
            _ => (
                Status::CHECK_CONDITION,
                Some(SenseCode::IO_PROCESS_TERMINATED),
            ),
        }
    };
    reply_of((status, code))
}

/// How an ioctl errno is answered, or None when the daemon should treat it as a failure to
/// execute (a missing privilege: our problem, not the device's).
pub fn reply_from_errno(errno: i32) -> Option<Reply> {
    match errno {
        libc::EPERM | libc::EACCES => None,
        // No pr_ops (the driver has no persistent reservations) or an unknown ioctl.
        libc::EOPNOTSUPP | libc::ENOTTY => Some(Reply::check_condition(
            SenseCode::INVALID_COMMAND_OPERATION_CODE.to_fixed(),
        )),
        e => Some(reply_of(mapping::from_errno(e))),
    }
}

#[cfg(test)]
mod tests {
    //! Expected bytes are written out from the standards: CDB layouts from SPC-4 tables 163 and
    //! 178, parameter list from table 183, sense-key specific field pointers from §4.5.2.4.2,
    //! REPORT CAPABILITIES from table 169, and the `pr_type` values from <linux/pr.h>.
    use super::*;

    fn out(cdb_sa_byte1: u8, byte2: u8, params: [u8; 24]) -> Result<BlockCommand, Box<Refusal>> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x5f;
        cdb[1] = cdb_sa_byte1;
        cdb[2] = byte2;
        cdb[8] = 24;
        let h = RequestHeader::parse(cdb).unwrap();
        translate(&h, &params)
    }

    fn params(key: u64, sa_key: u64, byte20: u8) -> [u8; 24] {
        let mut p = [0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p[20] = byte20;
        p
    }

    fn sense_of(r: Result<BlockCommand, Box<Refusal>>) -> [u8; 18] {
        let reply = r.unwrap_err().reply;
        assert_eq!(reply.status, Status::CHECK_CONDITION);
        reply.sense[..18].try_into().unwrap()
    }

    #[test]
    fn every_out_service_action_the_block_layer_has() {
        assert_eq!(
            out(0x00, 0x00, params(0xa, 0xb, 0x01)).unwrap(),
            BlockCommand::Register {
                old_key: 0xa,
                new_key: 0xb,
                ignore_existing: false
            }
        );
        assert_eq!(
            out(0x06, 0x00, params(0, 0xb, 0x01)).unwrap(),
            BlockCommand::Register {
                old_key: 0,
                new_key: 0xb,
                ignore_existing: true
            }
        );
        // SCSI type codes 1, 3, 5, 6, 7, 8 become Linux pr_type 1 … 6.
        for (scsi, linux) in [(1u8, 1u32), (3, 2), (5, 3), (6, 4), (7, 5), (8, 6)] {
            assert_eq!(
                out(0x01, scsi, params(0xa, 0, 0)).unwrap(),
                BlockCommand::Reserve {
                    key: 0xa,
                    pr_type: linux
                }
            );
            assert_eq!(
                out(0x02, scsi, params(0xa, 0, 0)).unwrap(),
                BlockCommand::Release {
                    key: 0xa,
                    pr_type: linux
                }
            );
        }
        assert_eq!(
            out(0x04, 0x05, params(0xa, 0xb, 0)).unwrap(),
            BlockCommand::Preempt {
                key: 0xa,
                victim: 0xb,
                pr_type: 3,
                abort: false
            }
        );
        assert_eq!(
            out(0x05, 0x06, params(0xa, 0xb, 0)).unwrap(),
            BlockCommand::Preempt {
                key: 0xa,
                victim: 0xb,
                pr_type: 4,
                abort: true
            }
        );
        assert_eq!(
            out(0x03, 0x00, params(0xa, 0, 0)).unwrap(),
            BlockCommand::Clear { key: 0xa }
        );
        // Scope and type are ignored where SPC-4 ignores them (REGISTER, CLEAR).
        assert!(out(0x03, 0x2f, params(0xa, 0, 0)).is_ok());
        assert!(out(0x00, 0x2f, params(0, 1, 1)).is_ok());
    }

    #[test]
    fn what_the_ioctls_cannot_express_is_refused_with_a_field_pointer() {
        // ILLEGAL REQUEST (5h), INVALID FIELD IN CDB (24h/00h); SKSV|C/D|BPV|bit 4, byte 1.
        let cdb_byte1 = [
            0x70, 0, 0x05, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x24, 0x00, 0, 0xcc, 0x00, 0x01,
        ];
        assert_eq!(sense_of(out(0x07, 0x01, params(0xa, 0xb, 0))), cdb_byte1);
        assert_eq!(sense_of(out(0x08, 0x01, params(0xa, 0xb, 0))), cdb_byte1);
        assert_eq!(sense_of(out(0x1f, 0x01, params(0xa, 0xb, 0))), cdb_byte1);
        // Scope 1 on RESERVE: byte 2 bit 7 (SKSV|C/D|BPV|7 = CFh).
        assert_eq!(
            sense_of(out(0x01, 0x11, params(0xa, 0, 0))),
            [0x70, 0, 0x05, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x24, 0x00, 0, 0xcf, 0x00, 0x02]
        );
        // Reserved type 2 on PREEMPT: byte 2 bit 3 (CBh).
        assert_eq!(
            sense_of(out(0x04, 0x02, params(0xa, 0xb, 0))),
            [0x70, 0, 0x05, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x24, 0x00, 0, 0xcb, 0x00, 0x02]
        );
        // INVALID FIELD IN PARAMETER LIST (26h/00h), byte 20: APTPL=0 on REGISTER (bit 0,
        // SKSV|BPV|0 = 88h), ALL_TG_PT (bit 2, 8Ah).
        assert_eq!(
            sense_of(out(0x00, 0, params(0, 0xb, 0x00))),
            [0x70, 0, 0x05, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x26, 0x00, 0, 0x88, 0x00, 0x14]
        );
        assert_eq!(
            sense_of(out(0x06, 0, params(0, 0xb, 0x05))),
            [0x70, 0, 0x05, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x26, 0x00, 0, 0x8a, 0x00, 0x14]
        );
    }

    #[test]
    fn unregistering_on_nvme_points_at_the_service_action_reservation_key() {
        // ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST (26h/00h); SKSV set, C/D and BPV
        // clear (80h), field pointer 0008h: the SERVICE ACTION RESERVATION KEY (SPC-4 table 191).
        assert_eq!(
            sense_of(Err(nvme_unregister_refusal())),
            [0x70, 0, 0x05, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x26, 0x00, 0, 0x80, 0x00, 0x08]
        );
    }

    #[test]
    fn spec_i_pt_and_bad_lengths() {
        // SPEC_I_PT with a valid empty TransportID list: byte 20 bit 3 (8Bh).
        let mut cdb = [0u8; 16];
        cdb[0] = 0x5f;
        cdb[8] = 28;
        let h = RequestHeader::parse(cdb).unwrap();
        let mut p = params(0, 0xb, 0x09).to_vec();
        p.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            sense_of(translate(&h, &p)),
            [0x70, 0, 0x05, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x26, 0x00, 0, 0x8b, 0x00, 0x14]
        );
        // A 25-byte list: PARAMETER LIST LENGTH ERROR (1Ah/00h).
        cdb[8] = 25;
        let h = RequestHeader::parse(cdb).unwrap();
        let s = sense_of(translate(&h, &[0u8; 25]));
        assert_eq!((s[2], s[12], s[13]), (0x05, 0x1a, 0x00));
    }

    #[test]
    fn in_service_actions() {
        let prin = |sa: u8, alloc: u16| {
            let mut cdb = [0u8; 16];
            cdb[0] = 0x5e;
            cdb[1] = sa;
            cdb[7..9].copy_from_slice(&alloc.to_be_bytes());
            translate(&RequestHeader::parse(cdb).unwrap(), &[])
        };
        assert_eq!(prin(0, 8).unwrap(), BlockCommand::ReadKeys { capacity: 0 });
        assert_eq!(prin(0, 24).unwrap(), BlockCommand::ReadKeys { capacity: 2 });
        assert_eq!(prin(0, 25).unwrap(), BlockCommand::ReadKeys { capacity: 3 });
        assert_eq!(prin(1, 24).unwrap(), BlockCommand::ReadReservation);
        assert_eq!(prin(2, 8).unwrap(), BlockCommand::ReportCapabilities);
        assert_eq!(prin(3, 8).unwrap(), BlockCommand::ReadFullStatus);
        let s = sense_of(prin(4, 8));
        assert_eq!((s[12], s[15], s[17]), (0x24, 0xcc, 0x01));
    }

    #[test]
    fn synthesised_data() {
        // Length 8; PTPL_C; TMV; type mask WR_EX_AR|EX_AC_RO|WR_EX_RO|EX_AC|WR_EX, EX_AC_AR.
        assert_eq!(
            capabilities(),
            [0x00, 0x08, 0x01, 0x80, 0xea, 0x01, 0x00, 0x00]
        );
        assert_eq!(
            read_keys_data(7, 3, &[0x11, 0x22]),
            [0, 0, 0, 7, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0, 0, 0, 0x22]
        );
        assert_eq!(
            read_reservation_data(9, 0, 0).unwrap(),
            [0, 0, 0, 9, 0, 0, 0, 0]
        );
        assert_eq!(
            read_reservation_data(9, 0xab, 3).unwrap(),
            [0, 0, 0, 9, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xab, 0, 0, 0, 0, 0, 0x05, 0, 0]
        );
        // EX_AC_AR (pr_type 6, SCSI 8): key 0 whatever the kernel said.
        assert_eq!(
            read_reservation_data(9, 0xab, 6).unwrap(),
            [0, 0, 0, 9, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0, 0]
        );
        assert!(read_reservation_data(9, 0xab, 9).is_err());
    }

    #[test]
    fn status_and_errno_table() {
        let r = reply_from_status(0x18);
        assert_eq!((r.status, r.sense[2]), (Status::RESERVATION_CONFLICT, 0));
        // CHECK CONDITION / PR_STS_IOERR: sense is lost, ABORTED COMMAND, I/O PROCESS TERMINATED.
        let r = reply_from_status(0x02);
        assert_eq!(
            (r.status, r.sense[2], r.sense[12], r.sense[13]),
            (Status::CHECK_CONDITION, 0x0b, 0x00, 0x06)
        );
        // PR_STS_PATH_FAILED (DID_NO_CONNECT): ABORTED COMMAND, LOGICAL UNIT DOES NOT RESPOND
        // TO SELECTION (QEMU's choice of sense key for it).
        let r = reply_from_status(0x1_0000);
        assert_eq!(
            (r.status, r.sense[2], r.sense[12], r.sense[13]),
            (Status::CHECK_CONDITION, 0x0b, 0x05, 0x00)
        );
        // PR_STS_RETRY_PATH_FAILURE (DID_TRANSPORT_DISRUPTED): ABORTED COMMAND, I_T NEXUS LOSS.
        let r = reply_from_status(0xe_0000);
        assert_eq!((r.sense[2], r.sense[12], r.sense[13]), (0x0b, 0x29, 0x07));
        assert_eq!(reply_from_status(0x08).status, Status::BUSY);
        assert_eq!(reply_from_status(0x28).status, Status::TASK_SET_FULL);
        // An NVMe status on old kernels (DNR | Invalid Command Opcode) is not a SAM status.
        assert_eq!(reply_from_status(0x4001).status, Status::CHECK_CONDITION);

        assert!(reply_from_errno(libc::EPERM).is_none());
        assert!(reply_from_errno(libc::EACCES).is_none());
        for e in [libc::EOPNOTSUPP, libc::ENOTTY] {
            let r = reply_from_errno(e).unwrap();
            assert_eq!((r.sense[2], r.sense[12]), (0x05, 0x20));
        }
        let r = reply_from_errno(libc::EBADE).unwrap();
        assert_eq!(r.status, Status::RESERVATION_CONFLICT);
        let r = reply_from_errno(libc::EINVAL).unwrap();
        assert_eq!((r.sense[2], r.sense[12]), (0x05, 0x24));
        let r = reply_from_errno(libc::EIO).unwrap();
        assert_eq!((r.sense[2], r.sense[12], r.sense[13]), (0x0b, 0x00, 0x06));
    }
}
