//! Sense data (SPC-4 §4.5): sense keys, additional sense codes named after the standard, and the
//! fixed-format sense buffer the QEMU protocol carries.

use std::fmt;

/// Size of the sense buffer in a helper reply (and of QEMU's `SCSI_SENSE_BUF_SIZE`).
pub const SENSE_BUFFER_SIZE: usize = 96;

/// A sense key (SPC-4 table 47).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenseKey(pub u8);

impl SenseKey {
    pub const NO_SENSE: SenseKey = SenseKey(0x0);
    pub const RECOVERED_ERROR: SenseKey = SenseKey(0x1);
    pub const NOT_READY: SenseKey = SenseKey(0x2);
    pub const MEDIUM_ERROR: SenseKey = SenseKey(0x3);
    pub const HARDWARE_ERROR: SenseKey = SenseKey(0x4);
    pub const ILLEGAL_REQUEST: SenseKey = SenseKey(0x5);
    pub const UNIT_ATTENTION: SenseKey = SenseKey(0x6);
    pub const DATA_PROTECT: SenseKey = SenseKey(0x7);
    pub const ABORTED_COMMAND: SenseKey = SenseKey(0xb);

    /// The standard's name for the key.
    pub fn name(self) -> &'static str {
        match self.0 {
            0x0 => "NO SENSE",
            0x1 => "RECOVERED ERROR",
            0x2 => "NOT READY",
            0x3 => "MEDIUM ERROR",
            0x4 => "HARDWARE ERROR",
            0x5 => "ILLEGAL REQUEST",
            0x6 => "UNIT ATTENTION",
            0x7 => "DATA PROTECT",
            0x8 => "BLANK CHECK",
            0x9 => "VENDOR SPECIFIC",
            0xa => "COPY ABORTED",
            0xb => "ABORTED COMMAND",
            0xd => "VOLUME OVERFLOW",
            0xe => "MISCOMPARE",
            0xf => "COMPLETED",
            _ => "RESERVED",
        }
    }
}

impl fmt::Debug for SenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#x})", self.name(), self.0)
    }
}

/// A sense key with its additional sense code and qualifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenseCode {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
}

const fn code(key: SenseKey, asc: u8, ascq: u8) -> SenseCode {
    SenseCode { key, asc, ascq }
}

// The codes below are the ones a PR helper produces. Values from SPC-4 Annex D (table D.1).
impl SenseCode {
    pub const NO_SENSE: SenseCode = code(SenseKey::NO_SENSE, 0x00, 0x00);
    /// NOT READY, LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE (04h/00h).
    pub const NOT_READY: SenseCode = code(SenseKey::NOT_READY, 0x04, 0x00);
    /// NOT READY, MEDIUM NOT PRESENT (3Ah/00h).
    pub const NO_MEDIUM: SenseCode = code(SenseKey::NOT_READY, 0x3a, 0x00);
    /// MEDIUM ERROR, UNRECOVERED READ ERROR (11h/00h).
    pub const READ_ERROR: SenseCode = code(SenseKey::MEDIUM_ERROR, 0x11, 0x00);
    /// HARDWARE ERROR, INTERNAL TARGET FAILURE (44h/00h).
    pub const TARGET_FAILURE: SenseCode = code(SenseKey::HARDWARE_ERROR, 0x44, 0x00);
    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR (1Ah/00h).
    pub const PARAMETER_LIST_LENGTH_ERROR: SenseCode = code(SenseKey::ILLEGAL_REQUEST, 0x1a, 0x00);
    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (20h/00h).
    pub const INVALID_COMMAND_OPERATION_CODE: SenseCode =
        code(SenseKey::ILLEGAL_REQUEST, 0x20, 0x00);
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB (24h/00h).
    pub const INVALID_FIELD_IN_CDB: SenseCode = code(SenseKey::ILLEGAL_REQUEST, 0x24, 0x00);
    /// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25h/00h).
    pub const LOGICAL_UNIT_NOT_SUPPORTED: SenseCode = code(SenseKey::ILLEGAL_REQUEST, 0x25, 0x00);
    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST (26h/00h).
    pub const INVALID_FIELD_IN_PARAMETER_LIST: SenseCode =
        code(SenseKey::ILLEGAL_REQUEST, 0x26, 0x00);
    /// ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION (26h/04h).
    pub const INVALID_RELEASE_OF_PERSISTENT_RESERVATION: SenseCode =
        code(SenseKey::ILLEGAL_REQUEST, 0x26, 0x04);
    /// ILLEGAL REQUEST, INSUFFICIENT REGISTRATION RESOURCES (55h/04h).
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: SenseCode =
        code(SenseKey::ILLEGAL_REQUEST, 0x55, 0x04);
    /// UNIT ATTENTION, POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/00h).
    pub const POWER_ON_RESET: SenseCode = code(SenseKey::UNIT_ATTENTION, 0x29, 0x00);
    /// UNIT ATTENTION, SCSI BUS RESET OCCURRED (29h/02h).
    pub const SCSI_BUS_RESET: SenseCode = code(SenseKey::UNIT_ATTENTION, 0x29, 0x02);
    /// UNIT ATTENTION, RESERVATIONS PREEMPTED (2Ah/03h).
    pub const RESERVATIONS_PREEMPTED: SenseCode = code(SenseKey::UNIT_ATTENTION, 0x2a, 0x03);
    /// UNIT ATTENTION, RESERVATIONS RELEASED (2Ah/04h).
    pub const RESERVATIONS_RELEASED: SenseCode = code(SenseKey::UNIT_ATTENTION, 0x2a, 0x04);
    /// UNIT ATTENTION, REGISTRATIONS PREEMPTED (2Ah/05h).
    pub const REGISTRATIONS_PREEMPTED: SenseCode = code(SenseKey::UNIT_ATTENTION, 0x2a, 0x05);
    /// DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (27h/07h).
    pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: SenseCode =
        code(SenseKey::DATA_PROTECT, 0x27, 0x07);
    /// ABORTED COMMAND, I/O PROCESS TERMINATED (00h/06h).
    pub const IO_PROCESS_TERMINATED: SenseCode = code(SenseKey::ABORTED_COMMAND, 0x00, 0x06);
    /// ABORTED COMMAND, LOGICAL UNIT DOES NOT RESPOND TO SELECTION (05h/00h).
    pub const LOGICAL_UNIT_DOES_NOT_RESPOND_TO_SELECTION: SenseCode =
        code(SenseKey::ABORTED_COMMAND, 0x05, 0x00);
    /// ABORTED COMMAND, LOGICAL UNIT COMMUNICATION FAILURE (08h/00h).
    pub const LOGICAL_UNIT_COMMUNICATION_FAILURE: SenseCode =
        code(SenseKey::ABORTED_COMMAND, 0x08, 0x00);
    /// ABORTED COMMAND, I_T NEXUS LOSS OCCURRED (29h/07h).
    pub const I_T_NEXUS_LOSS_OCCURRED: SenseCode = code(SenseKey::ABORTED_COMMAND, 0x29, 0x07);
    /// ABORTED COMMAND, COMMAND TIMEOUT DURING PROCESSING (2Eh/02h).
    pub const COMMAND_TIMEOUT_DURING_PROCESSING: SenseCode =
        code(SenseKey::ABORTED_COMMAND, 0x2e, 0x02);
    /// ABORTED COMMAND, COMMANDS CLEARED BY DEVICE SERVER (2Fh/02h).
    pub const COMMANDS_CLEARED_BY_DEVICE_SERVER: SenseCode =
        code(SenseKey::ABORTED_COMMAND, 0x2f, 0x02);

    /// Fixed-format sense data (SPC-4 §4.5.3) for this code, padded with zeros to the 96-byte
    /// buffer of a helper reply: response code 70h, sense key at byte 2, additional sense length
    /// 10 at byte 7, ASC at byte 12, ASCQ at byte 13.
    pub fn to_fixed(self) -> [u8; SENSE_BUFFER_SIZE] {
        let mut buf = [0u8; SENSE_BUFFER_SIZE];
        buf[0] = 0x70;
        buf[2] = self.key.0;
        buf[7] = 10;
        buf[12] = self.asc;
        buf[13] = self.ascq;
        buf
    }

    /// Like [`SenseCode::to_fixed`], with a sense-key specific field pointer (SPC-4 §4.5.2.4.2)
    /// naming the byte (and optionally bit) of the CDB or parameter list that was wrong.
    pub fn to_fixed_with_field_pointer(
        self,
        in_cdb: bool,
        byte: u16,
        bit: Option<u8>,
    ) -> [u8; SENSE_BUFFER_SIZE] {
        let mut buf = self.to_fixed();
        let mut b15 = 0x80; // SKSV
        if in_cdb {
            b15 |= 0x40; // C/D
        }
        if let Some(bit) = bit {
            b15 |= 0x08 | (bit & 0x7); // BPV and bit pointer
        }
        buf[15] = b15;
        buf[16..18].copy_from_slice(&byte.to_be_bytes());
        buf
    }

    /// A human description of the additional sense code, from SPC-4 Annex D, for the codes a
    /// persistent-reservation command can produce; `None` for others.
    pub fn description(self) -> Option<&'static str> {
        Some(match (self.asc, self.ascq) {
            (0x00, 0x00) => "no additional sense information",
            (0x00, 0x06) => "I/O process terminated",
            (0x04, 0x00) => "logical unit not ready, cause not reportable",
            (0x04, 0x03) => "logical unit not ready, manual intervention required",
            (0x05, 0x00) => "logical unit does not respond to selection",
            (0x08, 0x00) => "logical unit communication failure",
            (0x11, 0x00) => "unrecovered read error",
            (0x1a, 0x00) => "parameter list length error",
            (0x20, 0x00) => "invalid command operation code",
            (0x24, 0x00) => "invalid field in CDB",
            (0x25, 0x00) => "logical unit not supported",
            (0x26, 0x00) => "invalid field in parameter list",
            (0x26, 0x04) => "invalid release of persistent reservation",
            (0x27, 0x00) => "write protected",
            (0x27, 0x07) => "space allocation failed write protect",
            (0x29, 0x00) => "power on, reset, or bus device reset occurred",
            (0x29, 0x02) => "SCSI bus reset occurred",
            (0x29, 0x07) => "I_T nexus loss occurred",
            (0x2a, 0x03) => "reservations preempted",
            (0x2a, 0x04) => "reservations released",
            (0x2a, 0x05) => "registrations preempted",
            (0x2e, 0x02) => "command timeout during processing",
            (0x2f, 0x02) => "commands cleared by device server",
            (0x3a, 0x00) => "medium not present",
            (0x44, 0x00) => "internal target failure",
            (0x55, 0x04) => "insufficient registration resources",
            _ => return None,
        })
    }
}

impl fmt::Debug for SenseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{:02x}h/{:02x}h",
            self.key.name(),
            self.asc,
            self.ascq
        )
    }
}

impl fmt::Display for SenseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.description() {
            Some(d) => write!(
                f,
                "{}, {d} (ASC {:02x}h, ASCQ {:02x}h)",
                self.key.name(),
                self.asc,
                self.ascq
            ),
            None => write!(
                f,
                "{}, ASC {:02x}h ASCQ {:02x}h",
                self.key.name(),
                self.asc,
                self.ascq
            ),
        }
    }
}

/// Sense data as received: the decoded code plus, when present, the sense-key specific field.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Sense {
    pub code: SenseCode,
    /// Whether the response code says the error is deferred (71h/73h).
    pub deferred: bool,
    /// Sense-key specific bytes (fixed format bytes 15–17) when SKSV is set.
    pub key_specific: Option<[u8; 3]>,
}

impl Sense {
    /// Decodes fixed (70h/71h) or descriptor (72h/73h) sense data. Returns `None` for an empty or
    /// unrecognised buffer (including an all-zero one).
    pub fn parse(buf: &[u8]) -> Option<Sense> {
        let rc = *buf.first()? & 0x7f;
        match rc {
            0x70 | 0x71 => {
                if buf.len() < 3 {
                    return None;
                }
                let asc = buf.get(12).copied().unwrap_or(0);
                let ascq = buf.get(13).copied().unwrap_or(0);
                let key_specific = match buf.get(15..18) {
                    Some(s) if s[0] & 0x80 != 0 => Some([s[0], s[1], s[2]]),
                    _ => None,
                };
                Some(Sense {
                    code: code(SenseKey(buf[2] & 0x0f), asc, ascq),
                    deferred: rc == 0x71,
                    key_specific,
                })
            }
            0x72 | 0x73 => {
                if buf.len() < 4 {
                    return None;
                }
                Some(Sense {
                    code: code(SenseKey(buf[1] & 0x0f), buf[2], buf[3]),
                    deferred: rc == 0x73,
                    key_specific: None,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_sense_layout_follows_spc4_table_48() {
        // INVALID FIELD IN CDB: key 5, ASC 24h, ASCQ 00h (SPC-4 Annex D).
        let b = SenseCode::INVALID_FIELD_IN_CDB.to_fixed();
        let mut expect = [0u8; 96];
        expect[..14].copy_from_slice(&[0x70, 0, 0x05, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x24, 0x00]);
        assert_eq!(b, expect);
    }

    #[test]
    fn field_pointer_sets_sksv_cd_bpv() {
        let b = SenseCode::INVALID_FIELD_IN_CDB.to_fixed_with_field_pointer(true, 2, Some(4));
        assert_eq!(&b[15..18], &[0xcc, 0x00, 0x02]);
        let b =
            SenseCode::INVALID_FIELD_IN_PARAMETER_LIST.to_fixed_with_field_pointer(false, 20, None);
        assert_eq!(&b[15..18], &[0x80, 0x00, 0x14]);
    }

    #[test]
    fn standard_values_of_the_codes_we_send() {
        // Literal values from SPC-4 Annex D, not from our constants.
        let cases: &[(SenseCode, [u8; 3])] = &[
            (SenseCode::INVALID_COMMAND_OPERATION_CODE, [0x5, 0x20, 0x00]),
            (
                SenseCode::INVALID_FIELD_IN_PARAMETER_LIST,
                [0x5, 0x26, 0x00],
            ),
            (SenseCode::PARAMETER_LIST_LENGTH_ERROR, [0x5, 0x1a, 0x00]),
            (SenseCode::LOGICAL_UNIT_NOT_SUPPORTED, [0x5, 0x25, 0x00]),
            (
                SenseCode::INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
                [0x5, 0x26, 0x04],
            ),
            (
                SenseCode::INSUFFICIENT_REGISTRATION_RESOURCES,
                [0x5, 0x55, 0x04],
            ),
            (SenseCode::IO_PROCESS_TERMINATED, [0xb, 0x00, 0x06]),
            (
                SenseCode::LOGICAL_UNIT_COMMUNICATION_FAILURE,
                [0xb, 0x08, 0x00],
            ),
            (SenseCode::TARGET_FAILURE, [0x4, 0x44, 0x00]),
            (SenseCode::RESERVATIONS_PREEMPTED, [0x6, 0x2a, 0x03]),
            (SenseCode::RESERVATIONS_RELEASED, [0x6, 0x2a, 0x04]),
            (SenseCode::REGISTRATIONS_PREEMPTED, [0x6, 0x2a, 0x05]),
            (SenseCode::SCSI_BUS_RESET, [0x6, 0x29, 0x02]),
        ];
        for (c, [k, asc, ascq]) in cases {
            assert_eq!((c.key.0, c.asc, c.ascq), (*k, *asc, *ascq), "{c:?}");
        }
    }

    #[test]
    fn parse_fixed_and_descriptor() {
        let s = Sense::parse(&SenseCode::RESERVATIONS_PREEMPTED.to_fixed()).unwrap();
        assert_eq!(s.code, SenseCode::RESERVATIONS_PREEMPTED);
        assert!(!s.deferred);
        let s = Sense::parse(&[0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0]).unwrap();
        assert_eq!(s.code, SenseCode::INVALID_FIELD_IN_CDB);
        assert_eq!(Sense::parse(&[0u8; 96]), None);
        assert_eq!(Sense::parse(&[]), None);
    }

    #[test]
    fn display_is_readable() {
        assert_eq!(
            SenseCode::INVALID_FIELD_IN_CDB.to_string(),
            "ILLEGAL REQUEST, invalid field in CDB (ASC 24h, ASCQ 00h)"
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
            let _ = Sense::parse(&buf);
        }
    }
}
