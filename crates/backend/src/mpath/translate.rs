//! From SCSI PERSISTENT RESERVE commands to libmpathpersist's structures, and from its return
//! codes back to SCSI replies, as QEMU's qemu-pr-helper does (`multipath_pr_in/out`,
//! `mpath_reconstruct_sense`), with these differences:
//! - READ FULL STATUS is answered (QEMU refuses it): through SG_IO on the map, which the kernel
//!   sends down one active path — the library would decode the descriptors into its own
//!   structures that we would have to encode again.
//! - More than 32 TransportIDs (the library's `MPATH_MX_TIDS`) are refused with INSUFFICIENT
//!   REGISTRATION RESOURCES; QEMU writes past its list.
//! - A malformed parameter list gets the sense pr-scsi's parser names (length error, invalid
//!   field with its byte), not QEMU's generic INVALID FIELD IN PARAMETER LIST.
//!
//! Pure: no descriptors, no library calls.

use pr_proto::{Direction, Reply, RequestHeader};
use pr_scsi::param::BasicParameters;
use pr_scsi::transport_id::TransportId;
use pr_scsi::{PrInCdb, SenseCode, ServiceActionIn, Status};
use pr_sys::mpath::{
    status, PrinResp, ProutRequest, TransportIdC, MAX_PARAM_LEN, MAX_TRANSPORT_IDS,
};

use crate::{pr_out_without_move, refused, Refusal};

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MpathCommand {
    /// READ KEYS, READ RESERVATION or REPORT CAPABILITIES through the library.
    In { service_action: ServiceActionIn },
    /// READ FULL STATUS: SG_IO on the map (one active path).
    FullStatusViaSgIo,
    /// A PR OUT through the library (registrations reach every path).
    Out(ProutRequest),
}

/// Translates one request whose header passed the protocol checks.
pub fn translate(header: &RequestHeader, parameters: &[u8]) -> Result<MpathCommand, Box<Refusal>> {
    match header.direction {
        Direction::In => {
            let cdb = PrInCdb::parse(&header.cdb).map_err(|e| refused(e.sense(), e.to_string()))?;
            let sa = cdb
                .service_action()
                .map_err(|e| refused(e.sense(), e.to_string()))?;
            Ok(match sa {
                ServiceActionIn::ReadFullStatus => MpathCommand::FullStatusViaSgIo,
                s => MpathCommand::In { service_action: s },
            })
        }
        Direction::Out => translate_out(header, parameters),
    }
}

fn translate_out(header: &RequestHeader, parameters: &[u8]) -> Result<MpathCommand, Box<Refusal>> {
    let (cdb, sa) = pr_out_without_move(header, "cannot be expressed to libmpathpersist")?;
    let p = BasicParameters::parse(parameters).map_err(|e| refused(e.sense(), e.to_string()))?;
    if p.transport_ids.len() > MAX_TRANSPORT_IDS {
        return Err(refused(
            SenseCode::INSUFFICIENT_REGISTRATION_RESOURCES.to_fixed(),
            format!(
                "{} TransportIDs; libmpathpersist takes at most {MAX_TRANSPORT_IDS}",
                p.transport_ids.len()
            ),
        ));
    }
    // The TransportIDs as the client encoded them (the parser validated them).
    let mut transport_ids = Vec::with_capacity(p.transport_ids.len());
    let mut at = 28;
    while p.spec_i_pt && at < parameters.len() {
        let (_, used) = TransportId::parse(&parameters[at..], false).map_err(|e| {
            refused(
                SenseCode::INVALID_FIELD_IN_PARAMETER_LIST.to_fixed(),
                e.to_string(),
            )
        })?;
        transport_ids.push(transport_id_c(&parameters[at..at + used]));
        at += used;
    }
    Ok(MpathCommand::Out(ProutRequest {
        service_action: sa.code(),
        scope: cdb.scope_code,
        rtype: cdb.type_code,
        key: parameters[0..8]
            .try_into()
            .expect("parsed: 24 bytes or more"),
        sa_key: parameters[8..16]
            .try_into()
            .expect("parsed: 24 bytes or more"),
        sa_flags: parameters[20],
        transport_ids,
    }))
}

/// A TransportID (as validated bytes) in the library's form: FC and SAS names as 8 bytes,
/// iSCSI as its 2-byte ADDITIONAL LENGTH (≤ 252) followed by the name, which is how the library
/// encodes it again.
fn transport_id_c(raw: &[u8]) -> TransportIdC {
    let mut c = TransportIdC {
        format_code: raw[0] & 0xc0,
        protocol_id: raw[0] & 0x0f,
        name: [0; 256],
    };
    let name: &[u8] = match c.protocol_id {
        pr_scsi::transport_id::PROTOCOL_FC => &raw[8..16],
        pr_scsi::transport_id::PROTOCOL_SAS => &raw[4..12],
        _ => &raw[2..],
    };
    let n = name.len().min(c.name.len());
    c.name[..n].copy_from_slice(&name[..n]);
    c
}

/// PR IN data from the library's response: the header fields it converted to host order put
/// back in big-endian, the rest as the device sent it.
pub fn prin_data(sa: ServiceActionIn, resp: &PrinResp) -> Vec<u8> {
    let raw = &resp.raw;
    match sa {
        ServiceActionIn::ReportCapabilities => {
            let length = u16::from_ne_bytes([raw[0], raw[1]]);
            let mask = u16::from_ne_bytes([raw[4], raw[5]]);
            let mut d = Vec::with_capacity(8);
            d.extend_from_slice(&length.to_be_bytes());
            d.extend_from_slice(&raw[2..4]);
            d.extend_from_slice(&mask.to_be_bytes());
            d.extend_from_slice(&[0, 0]);
            d
        }
        _ => {
            let generation = u32::from_ne_bytes(raw[0..4].try_into().expect("4"));
            let additional = u32::from_ne_bytes(raw[4..8].try_into().expect("4"));
            let n = (additional as usize).min(MAX_PARAM_LEN);
            let mut d = Vec::with_capacity(8 + n);
            d.extend_from_slice(&generation.to_be_bytes());
            d.extend_from_slice(&additional.to_be_bytes());
            d.extend_from_slice(&raw[8..8 + n]);
            d
        }
    }
}

/// How a library return code is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reply(Reply),
    /// The library saw a CHECK CONDITION but kept the sense: ask the device with TEST UNIT
    /// READY, and use this code if that comes back GOOD.
    SenseFromTestUnitReady(SenseCode),
}

fn check(code: SenseCode) -> Outcome {
    Outcome::Reply(Reply::check_condition(code.to_fixed()))
}

/// The reply for a library return code (QEMU's `mpath_reconstruct_sense`).
pub fn outcome(r: i32) -> Outcome {
    match r {
        status::SUCCESS => Outcome::Reply(Reply::good(Vec::new())),
        status::SENSE_NOT_READY => Outcome::SenseFromTestUnitReady(SenseCode::NOT_READY),
        status::SENSE_MEDIUM_ERROR => Outcome::SenseFromTestUnitReady(SenseCode::READ_ERROR),
        status::SENSE_HARDWARE_ERROR => Outcome::SenseFromTestUnitReady(SenseCode::TARGET_FAILURE),
        status::SENSE_ABORTED_COMMAND => {
            Outcome::SenseFromTestUnitReady(SenseCode::IO_PROCESS_TERMINATED)
        }
        // The library retried and swallowed the unit attention; say something happened.
        status::SENSE_UNIT_ATTENTION => check(SenseCode::SCSI_BUS_RESET),
        status::SENSE_INVALID_OP => check(SenseCode::INVALID_COMMAND_OPERATION_CODE),
        status::ILLEGAL_REQ => check(SenseCode::INVALID_FIELD_IN_PARAMETER_LIST),
        status::NO_SENSE => check(SenseCode::NO_SENSE),
        status::RESERV_CONFLICT => Outcome::Reply(Reply::status(Status::RESERVATION_CONFLICT)),
        _ => check(SenseCode::LOGICAL_UNIT_COMMUNICATION_FAILURE),
    }
}

/// The library's name for a return code, for logs.
pub fn status_name(r: i32) -> &'static str {
    match r {
        status::SUCCESS => "MPATH_PR_SUCCESS",
        status::SYNTAX_ERROR => "MPATH_PR_SYNTAX_ERROR",
        status::SENSE_NOT_READY => "MPATH_PR_SENSE_NOT_READY",
        status::SENSE_MEDIUM_ERROR => "MPATH_PR_SENSE_MEDIUM_ERROR",
        status::SENSE_HARDWARE_ERROR => "MPATH_PR_SENSE_HARDWARE_ERROR",
        status::ILLEGAL_REQ => "MPATH_PR_ILLEGAL_REQ",
        status::SENSE_UNIT_ATTENTION => "MPATH_PR_SENSE_UNIT_ATTENTION",
        status::SENSE_INVALID_OP => "MPATH_PR_SENSE_INVALID_OP",
        status::SENSE_ABORTED_COMMAND => "MPATH_PR_SENSE_ABORTED_COMMAND",
        status::NO_SENSE => "MPATH_PR_NO_SENSE",
        status::SENSE_MALFORMED => "MPATH_PR_SENSE_MALFORMED",
        status::RESERV_CONFLICT => "MPATH_PR_RESERV_CONFLICT",
        status::FILE_ERROR => "MPATH_PR_FILE_ERROR",
        status::DMMP_ERROR => "MPATH_PR_DMMP_ERROR",
        status::THREAD_ERROR => "MPATH_PR_THREAD_ERROR",
        _ => "MPATH_PR_OTHER",
    }
}

#[cfg(test)]
mod tests {
    //! Expected bytes from SPC-4 (tables 163, 178, 183; TransportIDs §7.6.4), the library's
    //! structures from <mpath_persist.h>, and QEMU's choices of sense.
    use super::*;

    fn out(sa: u8, byte2: u8, params: &[u8]) -> Result<MpathCommand, Box<Refusal>> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x5f;
        cdb[1] = sa;
        cdb[2] = byte2;
        cdb[5..9].copy_from_slice(&(params.len() as u32).to_be_bytes());
        translate(&RequestHeader::parse(cdb).unwrap(), params)
    }

    fn basic(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p[20] = flags;
        p
    }

    #[test]
    fn pr_out_fields_reach_the_library_unchanged() {
        let MpathCommand::Out(r) = out(0x01, 0x05, &basic(0x1111, 0, 0)).unwrap() else {
            panic!()
        };
        assert_eq!((r.service_action, r.scope, r.rtype), (1, 0, 5));
        assert_eq!(r.key, [0, 0, 0, 0, 0, 0, 0x11, 0x11]);
        assert_eq!(r.sa_key, [0; 8]);
        assert!(r.transport_ids.is_empty());
        let MpathCommand::Out(r) = out(0x06, 0, &basic(0, 0xabc, 0x05)).unwrap() else {
            panic!()
        };
        assert_eq!((r.service_action, r.sa_flags), (6, 0x05));
        assert_eq!(r.sa_key, [0, 0, 0, 0, 0, 0, 0x0a, 0xbc]);
    }

    #[test]
    fn transport_ids_in_the_librarys_form() {
        // SPEC_I_PT with a SAS TransportID (24 bytes: 06h, reserved, address at 4–11) and an
        // iSCSI one (05h, reserved, length 12, "iqn.a:b\0" padded to 12).
        let mut p = basic(0, 0x1, 0x09);
        let mut sas = vec![0x06, 0, 0, 0, 0x50, 0x01, 0x40, 0x50, 0, 0, 0, 0x01];
        sas.resize(24, 0);
        let iscsi = [vec![0x05, 0, 0, 12], b"iqn.a:b\0\0\0\0\0".to_vec()].concat();
        let list = [sas, iscsi].concat();
        p.extend_from_slice(&(list.len() as u32).to_be_bytes());
        p.extend_from_slice(&list);
        let MpathCommand::Out(r) = out(0x00, 0, &p).unwrap() else {
            panic!()
        };
        assert_eq!(r.transport_ids.len(), 2);
        assert_eq!(
            (
                r.transport_ids[0].format_code,
                r.transport_ids[0].protocol_id
            ),
            (0, 6)
        );
        assert_eq!(
            &r.transport_ids[0].name[..8],
            &[0x50, 0x01, 0x40, 0x50, 0, 0, 0, 0x01]
        );
        assert_eq!(
            (
                r.transport_ids[1].format_code,
                r.transport_ids[1].protocol_id
            ),
            (0, 5)
        );
        assert_eq!(
            &r.transport_ids[1].name[..15],
            b"\x00\x0ciqn.a:b\x00\x00\x00\x00\x00\x00"
        );
    }

    #[test]
    fn refusals() {
        // REGISTER AND MOVE: INVALID FIELD IN CDB, byte 1 bit 4 (sense bytes 15–17 CCh 00h 01h).
        let r = out(0x07, 0x01, &basic(1, 2, 0)).unwrap_err();
        assert_eq!((r.reply.sense[2], r.reply.sense[12]), (0x05, 0x24));
        assert_eq!(&r.reply.sense[15..18], &[0xcc, 0x00, 0x01]);
        // 25-byte list: PARAMETER LIST LENGTH ERROR.
        let r = out(0x00, 0, &[0u8; 25]).unwrap_err();
        assert_eq!((r.reply.sense[2], r.reply.sense[12]), (0x05, 0x1a));
        // 33 SAS TransportIDs: INSUFFICIENT REGISTRATION RESOURCES (55h/04h).
        let mut p = basic(0, 1, 0x08);
        let mut id = vec![0x06u8, 0, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 1];
        id.resize(24, 0);
        let list: Vec<u8> = std::iter::repeat_n(id, 33).flatten().collect();
        p.extend_from_slice(&(list.len() as u32).to_be_bytes());
        p.extend_from_slice(&list);
        let r = out(0x00, 0, &p).unwrap_err();
        assert_eq!(
            (r.reply.sense[2], r.reply.sense[12], r.reply.sense[13]),
            (0x05, 0x55, 0x04)
        );
    }

    #[test]
    fn pr_in_data_back_in_big_endian() {
        let mut resp = PrinResp { raw: [0; 8200] };
        resp.raw[0..4].copy_from_slice(&7u32.to_ne_bytes());
        resp.raw[4..8].copy_from_slice(&16u32.to_ne_bytes());
        resp.raw[8..24]
            .copy_from_slice(&[0, 0, 0, 0, 0, 0, 0x11, 0x11, 0, 0, 0, 0, 0, 0, 0x22, 0x22]);
        assert_eq!(
            prin_data(ServiceActionIn::ReadKeys, &resp),
            [0, 0, 0, 7, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0x11, 0x11, 0, 0, 0, 0, 0, 0, 0x22, 0x22]
        );
        let mut cap = PrinResp { raw: [0; 8200] };
        cap.raw[0..2].copy_from_slice(&8u16.to_ne_bytes());
        cap.raw[2] = 0x0d;
        cap.raw[3] = 0x81;
        cap.raw[4..6].copy_from_slice(&0xea01u16.to_ne_bytes());
        assert_eq!(
            prin_data(ServiceActionIn::ReportCapabilities, &cap),
            [0, 8, 0x0d, 0x81, 0xea, 0x01, 0, 0]
        );
    }

    #[test]
    fn return_codes_as_qemu_answers_them() {
        let sense = |r| match outcome(r) {
            Outcome::Reply(rep) => (rep.status, rep.sense[2], rep.sense[12], rep.sense[13]),
            o => panic!("{o:?}"),
        };
        assert_eq!(sense(status::SUCCESS).0, Status::GOOD);
        assert_eq!(
            sense(status::RESERV_CONFLICT),
            (Status::RESERVATION_CONFLICT, 0, 0, 0)
        );
        assert_eq!(
            sense(status::SENSE_UNIT_ATTENTION),
            (Status::CHECK_CONDITION, 0x06, 0x29, 0x02)
        );
        assert_eq!(
            sense(status::SENSE_INVALID_OP),
            (Status::CHECK_CONDITION, 0x05, 0x20, 0x00)
        );
        assert_eq!(
            sense(status::ILLEGAL_REQ),
            (Status::CHECK_CONDITION, 0x05, 0x26, 0x00)
        );
        assert_eq!(
            sense(status::NO_SENSE),
            (Status::CHECK_CONDITION, 0x00, 0x00, 0x00)
        );
        for r in [
            status::SYNTAX_ERROR,
            status::FILE_ERROR,
            status::DMMP_ERROR,
            status::OTHER,
            99,
        ] {
            assert_eq!(sense(r), (Status::CHECK_CONDITION, 0x0b, 0x08, 0x00), "{r}");
        }
        assert_eq!(
            outcome(status::SENSE_NOT_READY),
            Outcome::SenseFromTestUnitReady(SenseCode::NOT_READY)
        );
        assert_eq!(
            outcome(status::SENSE_ABORTED_COMMAND),
            Outcome::SenseFromTestUnitReady(SenseCode::IO_PROCESS_TERMINATED)
        );
    }
}
