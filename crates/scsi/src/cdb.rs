//! PERSISTENT RESERVE IN/OUT CDBs (SPC-4 §6.15.1 table 163 and §6.16.1 table 178), with the one
//! table of service actions and reservation types the rest of the project matches on.

use crate::sense::SenseCode;
use crate::{PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT};

/// Why a CDB could not be accepted, with the sense the device server would return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CdbError {
    #[error("operation code {0:#04x} is not PERSISTENT RESERVE IN (5Eh) or OUT (5Fh)")]
    InvalidOpcode(u8),
    #[error("CDB is {0} bytes; a PR CDB needs 10")]
    TooShort(usize),
    #[error("invalid field in CDB byte {byte}{}: {what}", bit.map(|b| format!(" bit {b}")).unwrap_or_default())]
    InvalidField {
        byte: u16,
        bit: Option<u8>,
        what: &'static str,
    },
}

impl CdbError {
    /// The sense code this error answers with.
    pub fn sense_code(&self) -> SenseCode {
        match self {
            CdbError::InvalidOpcode(_) => SenseCode::INVALID_COMMAND_OPERATION_CODE,
            CdbError::TooShort(_) | CdbError::InvalidField { .. } => {
                SenseCode::INVALID_FIELD_IN_CDB
            }
        }
    }

    /// The full 96-byte sense buffer, with a field pointer when one is known.
    pub fn sense(&self) -> [u8; crate::sense::SENSE_BUFFER_SIZE] {
        match self {
            CdbError::InvalidField { byte, bit, .. } => self
                .sense_code()
                .to_fixed_with_field_pointer(true, *byte, *bit),
            _ => self.sense_code().to_fixed(),
        }
    }
}

macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $val:expr, $long:expr, $short:expr;)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[repr(u8)]
        pub enum $name { $($(#[$vm])* $var = $val,)* }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$var,)*];

            /// The value for a code, or `None` if the code is reserved.
            pub fn from_code(code: u8) -> Option<$name> {
                match code { $($val => Some($name::$var),)* _ => None }
            }

            /// The numeric code.
            pub fn code(self) -> u8 { self as u8 }

            /// The standard's name, in capitals.
            pub fn name(self) -> &'static str {
                match self { $($name::$var => $long,)* }
            }

            /// A short lower-case name for command lines.
            pub fn short_name(self) -> &'static str {
                match self { $($name::$var => $short,)* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

code_enum! {
    /// PERSISTENT RESERVE IN service actions (SPC-4 table 164).
    ServiceActionIn {
        ReadKeys = 0x00, "READ KEYS", "read-keys";
        ReadReservation = 0x01, "READ RESERVATION", "read-reservation";
        ReportCapabilities = 0x02, "REPORT CAPABILITIES", "report-capabilities";
        ReadFullStatus = 0x03, "READ FULL STATUS", "read-full-status";
    }
}

code_enum! {
    /// PERSISTENT RESERVE OUT service actions (SPC-4 table 179; 08h from SPC-5).
    ServiceActionOut {
        Register = 0x00, "REGISTER", "register";
        Reserve = 0x01, "RESERVE", "reserve";
        Release = 0x02, "RELEASE", "release";
        Clear = 0x03, "CLEAR", "clear";
        Preempt = 0x04, "PREEMPT", "preempt";
        PreemptAndAbort = 0x05, "PREEMPT AND ABORT", "preempt-abort";
        RegisterAndIgnoreExistingKey = 0x06, "REGISTER AND IGNORE EXISTING KEY", "register-ignore";
        RegisterAndMove = 0x07, "REGISTER AND MOVE", "register-move";
        ReplaceLostReservation = 0x08, "REPLACE LOST RESERVATION", "replace-lost";
    }
}

code_enum! {
    /// Persistent reservation types (SPC-4 table 180).
    ReservationType {
        WriteExclusive = 0x1, "WRITE EXCLUSIVE", "we";
        ExclusiveAccess = 0x3, "EXCLUSIVE ACCESS", "ea";
        WriteExclusiveRegistrantsOnly = 0x5, "WRITE EXCLUSIVE - REGISTRANTS ONLY", "we-ro";
        ExclusiveAccessRegistrantsOnly = 0x6, "EXCLUSIVE ACCESS - REGISTRANTS ONLY", "ea-ro";
        WriteExclusiveAllRegistrants = 0x7, "WRITE EXCLUSIVE - ALL REGISTRANTS", "we-ar";
        ExclusiveAccessAllRegistrants = 0x8, "EXCLUSIVE ACCESS - ALL REGISTRANTS", "ea-ar";
    }
}

impl ReservationType {
    /// Whether every registrant is a reservation holder (the "all registrants" types).
    pub fn is_all_registrants(self) -> bool {
        matches!(
            self,
            ReservationType::WriteExclusiveAllRegistrants
                | ReservationType::ExclusiveAccessAllRegistrants
        )
    }

    /// Whether the type grants access to registrants (types 5–8), not only the holder.
    pub fn is_registrants_type(self) -> bool {
        !matches!(
            self,
            ReservationType::WriteExclusive | ReservationType::ExclusiveAccess
        )
    }

    /// The long lower-case name used on command lines (`write-exclusive-registrants-only`).
    pub fn long_cli_name(self) -> &'static str {
        match self {
            ReservationType::WriteExclusive => "write-exclusive",
            ReservationType::ExclusiveAccess => "exclusive-access",
            ReservationType::WriteExclusiveRegistrantsOnly => "write-exclusive-registrants-only",
            ReservationType::ExclusiveAccessRegistrantsOnly => "exclusive-access-registrants-only",
            ReservationType::WriteExclusiveAllRegistrants => "write-exclusive-all-registrants",
            ReservationType::ExclusiveAccessAllRegistrants => "exclusive-access-all-registrants",
        }
    }
}

/// The SCOPE field of PR OUT and READ RESERVATION. Only LU_SCOPE (0h) is defined by SPC-4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Scope {
    LogicalUnit,
}

impl Scope {
    pub fn from_code(code: u8) -> Option<Scope> {
        (code == 0).then_some(Scope::LogicalUnit)
    }

    pub fn code(self) -> u8 {
        0
    }
}

/// A PERSISTENT RESERVE IN CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrInCdb {
    /// The raw 5-bit service action code (kept raw: a passthrough backend forwards unknown ones).
    pub service_action_code: u8,
    pub allocation_length: u16,
    pub control: u8,
}

impl PrInCdb {
    /// Reads the fields of a PR IN CDB. Checks only the opcode and the length of the buffer:
    /// the device server decides what the service action means.
    pub fn parse(cdb: &[u8]) -> Result<PrInCdb, CdbError> {
        if cdb.len() < 10 {
            return Err(CdbError::TooShort(cdb.len()));
        }
        if cdb[0] != PERSISTENT_RESERVE_IN {
            return Err(CdbError::InvalidOpcode(cdb[0]));
        }
        Ok(PrInCdb {
            service_action_code: cdb[1] & 0x1f,
            allocation_length: u16::from_be_bytes([cdb[7], cdb[8]]),
            control: cdb[9],
        })
    }

    /// The service action, or INVALID FIELD IN CDB (byte 1) for a reserved one.
    pub fn service_action(&self) -> Result<ServiceActionIn, CdbError> {
        ServiceActionIn::from_code(self.service_action_code).ok_or(CdbError::InvalidField {
            byte: 1,
            bit: Some(4),
            what: "reserved PR IN service action",
        })
    }

    /// Encodes a 16-byte CDB as the helper protocol carries it (10 bytes of CDB, zero padding).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = PERSISTENT_RESERVE_IN;
        b[1] = self.service_action_code & 0x1f;
        b[7..9].copy_from_slice(&self.allocation_length.to_be_bytes());
        b[9] = self.control;
        b
    }

    pub fn new(sa: ServiceActionIn, allocation_length: u16) -> PrInCdb {
        PrInCdb {
            service_action_code: sa.code(),
            allocation_length,
            control: 0,
        }
    }
}

/// A PERSISTENT RESERVE OUT CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrOutCdb {
    pub service_action_code: u8,
    /// SCOPE, byte 2 bits 7–4.
    pub scope_code: u8,
    /// TYPE, byte 2 bits 3–0.
    pub type_code: u8,
    pub parameter_list_length: u32,
    pub control: u8,
}

impl PrOutCdb {
    /// Reads the fields of a PR OUT CDB; like [`PrInCdb::parse`] it checks only the opcode.
    pub fn parse(cdb: &[u8]) -> Result<PrOutCdb, CdbError> {
        if cdb.len() < 10 {
            return Err(CdbError::TooShort(cdb.len()));
        }
        if cdb[0] != PERSISTENT_RESERVE_OUT {
            return Err(CdbError::InvalidOpcode(cdb[0]));
        }
        Ok(PrOutCdb {
            service_action_code: cdb[1] & 0x1f,
            scope_code: cdb[2] >> 4,
            type_code: cdb[2] & 0x0f,
            parameter_list_length: u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]),
            control: cdb[9],
        })
    }

    pub fn service_action(&self) -> Result<ServiceActionOut, CdbError> {
        ServiceActionOut::from_code(self.service_action_code).ok_or(CdbError::InvalidField {
            byte: 1,
            bit: Some(4),
            what: "reserved PR OUT service action",
        })
    }

    /// The reservation type, checked (INVALID FIELD IN CDB, byte 2 bit 3, when reserved).
    pub fn reservation_type(&self) -> Result<ReservationType, CdbError> {
        ReservationType::from_code(self.type_code).ok_or(CdbError::InvalidField {
            byte: 2,
            bit: Some(3),
            what: "reserved reservation type",
        })
    }

    /// The scope, checked (INVALID FIELD IN CDB, byte 2 bit 7, when not LU_SCOPE).
    pub fn scope(&self) -> Result<Scope, CdbError> {
        Scope::from_code(self.scope_code).ok_or(CdbError::InvalidField {
            byte: 2,
            bit: Some(7),
            what: "scope other than LU_SCOPE",
        })
    }

    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = PERSISTENT_RESERVE_OUT;
        b[1] = self.service_action_code & 0x1f;
        b[2] = (self.scope_code << 4) | (self.type_code & 0x0f);
        b[5..9].copy_from_slice(&self.parameter_list_length.to_be_bytes());
        b[9] = self.control;
        b
    }

    /// A CDB for `sa` with the given type (0 where the service action ignores it) and length.
    pub fn new(
        sa: ServiceActionOut,
        rtype: Option<ReservationType>,
        parameter_list_length: u32,
    ) -> PrOutCdb {
        PrOutCdb {
            service_action_code: sa.code(),
            scope_code: 0,
            type_code: rtype.map_or(0, |t| t.code()),
            parameter_list_length,
            control: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_match_spc4_tables() {
        // SPC-4 table 164 / 179 / 180, written out literally.
        assert_eq!(ServiceActionIn::ReadFullStatus.code(), 0x03);
        assert_eq!(ServiceActionOut::RegisterAndIgnoreExistingKey.code(), 0x06);
        assert_eq!(ServiceActionOut::RegisterAndMove.code(), 0x07);
        assert_eq!(ServiceActionOut::PreemptAndAbort.code(), 0x05);
        assert_eq!(ReservationType::WriteExclusiveRegistrantsOnly.code(), 0x5);
        assert_eq!(ReservationType::ExclusiveAccessAllRegistrants.code(), 0x8);
        assert_eq!(ReservationType::from_code(2), None);
        assert_eq!(ReservationType::from_code(4), None);
        assert_eq!(ReservationType::ALL.len(), 6);
    }

    #[test]
    fn parse_pr_out_fields() {
        // PREEMPT AND ABORT, scope 0, type 5, parameter list length 24.
        let cdb = [0x5f, 0x05, 0x05, 0, 0, 0, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0];
        let c = PrOutCdb::parse(&cdb).unwrap();
        assert_eq!(
            c.service_action().unwrap(),
            ServiceActionOut::PreemptAndAbort
        );
        assert_eq!(
            c.reservation_type().unwrap(),
            ReservationType::WriteExclusiveRegistrantsOnly
        );
        assert_eq!(c.parameter_list_length, 24);
        assert_eq!(c.to_bytes(), cdb);
    }

    #[test]
    fn parse_pr_in_fields() {
        let cdb = [0x5e, 0x03, 0, 0, 0, 0, 0, 0x20, 0x00, 0, 0, 0, 0, 0, 0, 0];
        let c = PrInCdb::parse(&cdb).unwrap();
        assert_eq!(c.service_action().unwrap(), ServiceActionIn::ReadFullStatus);
        assert_eq!(c.allocation_length, 0x2000);
        assert_eq!(c.to_bytes(), cdb);
    }

    #[test]
    fn errors_name_their_sense() {
        assert_eq!(
            PrInCdb::parse(&[0x12; 16]).unwrap_err().sense_code(),
            SenseCode::INVALID_COMMAND_OPERATION_CODE
        );
        let c = PrOutCdb::parse(&[0x5f, 0x01, 0x12, 0, 0, 0, 0, 0, 24, 0]).unwrap();
        let e = c.scope().unwrap_err();
        assert_eq!(&e.sense()[12..18], &[0x24, 0x00, 0, 0xcf, 0x00, 0x02]);
        let e = c.reservation_type().unwrap_err();
        assert_eq!(&e.sense()[15..18], &[0xcb, 0x00, 0x02]);
    }

    proptest! {
        #[test]
        fn pr_out_roundtrip(sa in 0u8..32, scope in 0u8..16, ty in 0u8..16, len: u32, control: u8) {
            let c = PrOutCdb { service_action_code: sa, scope_code: scope, type_code: ty, parameter_list_length: len, control };
            prop_assert_eq!(PrOutCdb::parse(&c.to_bytes()).unwrap(), c);
        }

        #[test]
        fn pr_in_roundtrip(sa in 0u8..32, len: u16, control: u8) {
            let c = PrInCdb { service_action_code: sa, allocation_length: len, control };
            prop_assert_eq!(PrInCdb::parse(&c.to_bytes()).unwrap(), c);
        }

        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = PrInCdb::parse(&buf);
            let _ = PrOutCdb::parse(&buf);
        }
    }
}
