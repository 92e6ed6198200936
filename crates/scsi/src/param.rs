//! PERSISTENT RESERVE OUT parameter lists (SPC-4 §6.16.3 table 183 and §6.16.4 table 186).

use crate::ids::{RelativeTargetPort, ReservationKey};
use crate::sense::{SenseCode, SENSE_BUFFER_SIZE};
use crate::transport_id::{TransportId, TransportIdError};

/// Length of the basic parameter list without TransportIDs.
pub const BASIC_PARAMETER_LIST_LEN: usize = 24;

/// Why a parameter list was refused, with the sense it answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("parameter list length {actual} is wrong: {expected}")]
    Length {
        actual: usize,
        expected: &'static str,
    },
    #[error("invalid field in parameter list byte {byte}: {what}")]
    InvalidField { byte: u16, what: String },
}

impl ParamError {
    pub fn sense_code(&self) -> SenseCode {
        match self {
            ParamError::Length { .. } => SenseCode::PARAMETER_LIST_LENGTH_ERROR,
            ParamError::InvalidField { .. } => SenseCode::INVALID_FIELD_IN_PARAMETER_LIST,
        }
    }

    pub fn sense(&self) -> [u8; SENSE_BUFFER_SIZE] {
        match self {
            ParamError::Length { .. } => self.sense_code().to_fixed(),
            ParamError::InvalidField { byte, .. } => self
                .sense_code()
                .to_fixed_with_field_pointer(false, *byte, None),
        }
    }
}

fn tid_error(offset: usize, e: TransportIdError) -> ParamError {
    ParamError::InvalidField {
        byte: offset.min(u16::MAX as usize) as u16,
        what: e.to_string(),
    }
}

/// The basic PR OUT parameter list, used by every service action but REGISTER AND MOVE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BasicParameters {
    pub reservation_key: ReservationKey,
    pub service_action_reservation_key: ReservationKey,
    pub spec_i_pt: bool,
    pub all_tg_pt: bool,
    pub aptpl: bool,
    /// TransportIDs that follow when SPEC_I_PT is set.
    pub transport_ids: Vec<TransportId>,
}

impl BasicParameters {
    /// Decodes a basic parameter list. Its length must be 24 unless SPEC_I_PT is set, in which
    /// case a TransportID list follows (length at bytes 24–27).
    pub fn parse(data: &[u8]) -> Result<BasicParameters, ParamError> {
        if data.len() < BASIC_PARAMETER_LIST_LEN {
            return Err(ParamError::Length {
                actual: data.len(),
                expected: "at least 24 bytes",
            });
        }
        let flags = data[20];
        let mut p = BasicParameters {
            reservation_key: ReservationKey::from_be_bytes(data[0..8].try_into().expect("8")),
            service_action_reservation_key: ReservationKey::from_be_bytes(
                data[8..16].try_into().expect("8"),
            ),
            spec_i_pt: flags & 0x08 != 0,
            all_tg_pt: flags & 0x04 != 0,
            aptpl: flags & 0x01 != 0,
            transport_ids: Vec::new(),
        };
        if !p.spec_i_pt {
            if data.len() != BASIC_PARAMETER_LIST_LEN {
                return Err(ParamError::Length {
                    actual: data.len(),
                    expected: "24 bytes when SPEC_I_PT is 0",
                });
            }
            return Ok(p);
        }
        if data.len() < BASIC_PARAMETER_LIST_LEN + 4 {
            return Err(ParamError::Length {
                actual: data.len(),
                expected: "at least 28 bytes when SPEC_I_PT is 1",
            });
        }
        let list_len = u32::from_be_bytes(data[24..28].try_into().expect("4")) as usize;
        let list = &data[28..];
        if list_len != list.len() {
            return Err(ParamError::Length {
                actual: data.len(),
                expected: "28 plus the TRANSPORTID PARAMETER DATA LENGTH",
            });
        }
        let mut at = 0;
        while at < list.len() {
            let (id, used) =
                TransportId::parse(&list[at..], false).map_err(|e| tid_error(28 + at, e))?;
            p.transport_ids.push(id);
            at += used;
        }
        Ok(p)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; BASIC_PARAMETER_LIST_LEN];
        b[0..8].copy_from_slice(&self.reservation_key.to_be_bytes());
        b[8..16].copy_from_slice(&self.service_action_reservation_key.to_be_bytes());
        b[20] = (u8::from(self.spec_i_pt) << 3)
            | (u8::from(self.all_tg_pt) << 2)
            | u8::from(self.aptpl);
        if self.spec_i_pt {
            let ids: Vec<u8> = self
                .transport_ids
                .iter()
                .flat_map(|t| t.to_bytes())
                .collect();
            b.extend_from_slice(&(ids.len() as u32).to_be_bytes());
            b.extend_from_slice(&ids);
        }
        b
    }
}

/// The REGISTER AND MOVE parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterAndMoveParameters {
    pub reservation_key: ReservationKey,
    pub service_action_reservation_key: ReservationKey,
    pub unreg: bool,
    pub aptpl: bool,
    pub relative_target_port: RelativeTargetPort,
    pub transport_id: TransportId,
}

impl RegisterAndMoveParameters {
    pub fn parse(data: &[u8]) -> Result<RegisterAndMoveParameters, ParamError> {
        if data.len() < BASIC_PARAMETER_LIST_LEN {
            return Err(ParamError::Length {
                actual: data.len(),
                expected: "at least 24 bytes",
            });
        }
        let tid_len = u32::from_be_bytes(data[20..24].try_into().expect("4")) as usize;
        let rest = &data[24..];
        if tid_len != rest.len() {
            return Err(ParamError::Length {
                actual: data.len(),
                expected: "24 plus the TRANSPORTID PARAMETER DATA LENGTH",
            });
        }
        let (transport_id, used) = TransportId::parse(rest, false).map_err(|e| tid_error(24, e))?;
        if used != rest.len() {
            return Err(ParamError::InvalidField {
                byte: 20,
                what: "REGISTER AND MOVE carries exactly one TransportID".into(),
            });
        }
        Ok(RegisterAndMoveParameters {
            reservation_key: ReservationKey::from_be_bytes(data[0..8].try_into().expect("8")),
            service_action_reservation_key: ReservationKey::from_be_bytes(
                data[8..16].try_into().expect("8"),
            ),
            unreg: data[17] & 0x02 != 0,
            aptpl: data[17] & 0x01 != 0,
            relative_target_port: RelativeTargetPort(u16::from_be_bytes([data[18], data[19]])),
            transport_id,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let id = self.transport_id.to_bytes();
        let mut b = vec![0u8; BASIC_PARAMETER_LIST_LEN];
        b[0..8].copy_from_slice(&self.reservation_key.to_be_bytes());
        b[8..16].copy_from_slice(&self.service_action_reservation_key.to_be_bytes());
        b[17] = (u8::from(self.unreg) << 1) | u8::from(self.aptpl);
        b[18..20].copy_from_slice(&self.relative_target_port.0.to_be_bytes());
        b[20..24].copy_from_slice(&(id.len() as u32).to_be_bytes());
        b.extend_from_slice(&id);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basic_layout_spc4_table_183() {
        let mut raw = [0u8; 24];
        raw[0..8].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0x12, 0x34]);
        raw[8..16].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0xab, 0xcd]);
        raw[20] = 0x05; // ALL_TG_PT | APTPL
        let p = BasicParameters::parse(&raw).unwrap();
        assert_eq!(p.reservation_key, ReservationKey(0x1234));
        assert_eq!(p.service_action_reservation_key, ReservationKey(0xabcd));
        assert!(p.all_tg_pt && p.aptpl && !p.spec_i_pt);
        assert_eq!(p.to_bytes(), raw);
    }

    #[test]
    fn wrong_lengths_are_parameter_list_length_errors() {
        for len in [0, 23, 25, 32] {
            let e = BasicParameters::parse(&vec![0u8; len]).unwrap_err();
            assert_eq!(
                e.sense_code(),
                SenseCode::PARAMETER_LIST_LENGTH_ERROR,
                "len {len}"
            );
            // SPC-4: ILLEGAL REQUEST 05h, ASC 1Ah.
            assert_eq!((e.sense()[2], e.sense()[12]), (0x05, 0x1a));
        }
    }

    #[test]
    fn spec_i_pt_list() {
        let p = BasicParameters {
            reservation_key: ReservationKey(0),
            service_action_reservation_key: ReservationKey(7),
            spec_i_pt: true,
            transport_ids: vec![
                TransportId::Sas {
                    sas_address: [1; 8],
                },
                TransportId::Fc {
                    n_port_name: [2; 8],
                },
            ],
            ..Default::default()
        };
        let b = p.to_bytes();
        assert_eq!(b.len(), 28 + 48);
        assert_eq!(BasicParameters::parse(&b).unwrap(), p);
        // Bad TransportID inside the list → invalid field in parameter list, pointing into it.
        let mut bad = b.clone();
        bad[28] = 0x09;
        let e = BasicParameters::parse(&bad).unwrap_err();
        assert_eq!(e.sense_code(), SenseCode::INVALID_FIELD_IN_PARAMETER_LIST);
        assert_eq!(&e.sense()[15..18], &[0x80, 0, 28]);
    }

    #[test]
    fn register_and_move_roundtrip() {
        let p = RegisterAndMoveParameters {
            reservation_key: ReservationKey(1),
            service_action_reservation_key: ReservationKey(2),
            unreg: true,
            aptpl: false,
            relative_target_port: RelativeTargetPort(1),
            transport_id: TransportId::Sas {
                sas_address: [0x50; 8],
            },
        };
        let b = p.to_bytes();
        assert_eq!(b[17], 0x02);
        assert_eq!(&b[20..24], &[0, 0, 0, 24]);
        assert_eq!(RegisterAndMoveParameters::parse(&b).unwrap(), p);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = BasicParameters::parse(&buf);
            let _ = RegisterAndMoveParameters::parse(&buf);
        }

        #[test]
        fn basic_roundtrip(k: u64, sk: u64, all_tg_pt: bool, aptpl: bool) {
            let p = BasicParameters {
                reservation_key: ReservationKey(k),
                service_action_reservation_key: ReservationKey(sk),
                all_tg_pt, aptpl, ..Default::default()
            };
            prop_assert_eq!(BasicParameters::parse(&p.to_bytes()).unwrap(), p);
        }
    }
}
