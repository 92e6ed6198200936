//! PERSISTENT RESERVE IN parameter data (SPC-4 §6.15.2–§6.15.5): decoders for what a device
//! returns (possibly truncated to the allocation length) and encoders for a device server that
//! answers from its own state.

use crate::cdb::ReservationType;
use crate::ids::{Generation, RelativeTargetPort, ReservationKey};
use crate::transport_id::TransportId;

/// Why PR IN data could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrInDecodeError {
    #[error("PR IN data is {actual} bytes; the header alone needs {needed}")]
    Short { actual: usize, needed: usize },
    #[error("READ FULL STATUS descriptor at offset {offset} is malformed: {what}")]
    BadDescriptor { offset: usize, what: String },
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn header(data: &[u8]) -> Result<(Generation, usize, &[u8]), PrInDecodeError> {
    if data.len() < 8 {
        return Err(PrInDecodeError::Short {
            actual: data.len(),
            needed: 8,
        });
    }
    let additional = be32(data, 4) as usize;
    let end = data.len().min(8usize.saturating_add(additional));
    Ok((Generation(be32(data, 0)), additional, &data[8..end]))
}

/// READ KEYS data (SPC-4 table 166).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadKeys {
    pub generation: Generation,
    pub keys: Vec<ReservationKey>,
    /// The ADDITIONAL LENGTH field: the full size of the key list, even when truncated.
    pub additional_length: u32,
}

impl ReadKeys {
    pub fn decode(data: &[u8]) -> Result<ReadKeys, PrInDecodeError> {
        let (generation, additional, body) = header(data)?;
        let keys = body
            .chunks_exact(8)
            .map(|c| ReservationKey::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(ReadKeys {
            generation,
            keys,
            additional_length: additional as u32,
        })
    }

    /// Whether the device had more keys than the allocation length let through.
    pub fn is_truncated(&self) -> bool {
        self.keys.len() * 8 < self.additional_length as usize
    }

    pub fn encode(generation: Generation, keys: &[ReservationKey]) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + keys.len() * 8);
        b.extend_from_slice(&generation.0.to_be_bytes());
        b.extend_from_slice(&((keys.len() * 8) as u32).to_be_bytes());
        keys.iter()
            .for_each(|k| b.extend_from_slice(&k.to_be_bytes()));
        b
    }
}

/// The reservation described by READ RESERVATION (SPC-4 table 168).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationDescriptor {
    /// The holder's key (zero for the all-registrants types).
    pub key: ReservationKey,
    pub scope_code: u8,
    pub type_code: u8,
}

impl ReservationDescriptor {
    pub fn reservation_type(&self) -> Option<ReservationType> {
        ReservationType::from_code(self.type_code)
    }
}

/// READ RESERVATION data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReservation {
    pub generation: Generation,
    pub reservation: Option<ReservationDescriptor>,
}

impl ReadReservation {
    pub fn decode(data: &[u8]) -> Result<ReadReservation, PrInDecodeError> {
        let (generation, additional, body) = header(data)?;
        let reservation = if additional >= 16 && body.len() >= 14 {
            Some(ReservationDescriptor {
                key: ReservationKey::from_be_bytes(body[0..8].try_into().expect("8 bytes")),
                scope_code: body[13] >> 4,
                type_code: body[13] & 0x0f,
            })
        } else {
            None
        };
        Ok(ReadReservation {
            generation,
            reservation,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&self.generation.0.to_be_bytes());
        match self.reservation {
            None => b.extend_from_slice(&0u32.to_be_bytes()),
            Some(r) => {
                b.extend_from_slice(&16u32.to_be_bytes());
                b.extend_from_slice(&r.key.to_be_bytes());
                b.extend_from_slice(&[0; 5]);
                b.push((r.scope_code << 4) | (r.type_code & 0x0f));
                b.extend_from_slice(&[0; 2]);
            }
        }
        b
    }
}

/// REPORT CAPABILITIES data (SPC-4 table 169).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Replace Lost Reservation capable (SPC-5).
    pub rlr_c: bool,
    /// Compatible Reservation Handling.
    pub crh: bool,
    /// Specify Initiator Ports capable.
    pub sip_c: bool,
    /// All Target Ports capable.
    pub atp_c: bool,
    /// Persist Through Power Loss capable.
    pub ptpl_c: bool,
    /// Type Mask Valid.
    pub tmv: bool,
    pub allow_commands: u8,
    /// Persist Through Power Loss activated.
    pub ptpl_a: bool,
    /// The PERSISTENT RESERVATION TYPE MASK field, bytes 4–5.
    pub type_mask: u16,
}

/// Bit of each reservation type in the type mask (SPC-4 table 170), as a 16-bit value whose high
/// byte is byte 4 of the data.
pub fn type_mask_bit(t: ReservationType) -> u16 {
    match t {
        ReservationType::WriteExclusiveAllRegistrants => 0x8000,
        ReservationType::ExclusiveAccessRegistrantsOnly => 0x4000,
        ReservationType::WriteExclusiveRegistrantsOnly => 0x2000,
        ReservationType::ExclusiveAccess => 0x0800,
        ReservationType::WriteExclusive => 0x0200,
        ReservationType::ExclusiveAccessAllRegistrants => 0x0001,
    }
}

impl Capabilities {
    pub fn decode(data: &[u8]) -> Result<Capabilities, PrInDecodeError> {
        if data.len() < 4 {
            return Err(PrInDecodeError::Short {
                actual: data.len(),
                needed: 4,
            });
        }
        let type_mask = if data.len() >= 6 {
            u16::from_be_bytes([data[4], data[5]])
        } else {
            0
        };
        Ok(Capabilities {
            rlr_c: data[2] & 0x80 != 0,
            crh: data[2] & 0x10 != 0,
            sip_c: data[2] & 0x08 != 0,
            atp_c: data[2] & 0x04 != 0,
            ptpl_c: data[2] & 0x01 != 0,
            tmv: data[3] & 0x80 != 0,
            allow_commands: (data[3] >> 4) & 0x07,
            ptpl_a: data[3] & 0x01 != 0,
            type_mask,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let b2 = (u8::from(self.rlr_c) << 7)
            | (u8::from(self.crh) << 4)
            | (u8::from(self.sip_c) << 3)
            | (u8::from(self.atp_c) << 2)
            | u8::from(self.ptpl_c);
        let b3 =
            (u8::from(self.tmv) << 7) | ((self.allow_commands & 7) << 4) | u8::from(self.ptpl_a);
        let m = self.type_mask.to_be_bytes();
        vec![0, 8, b2, b3, m[0], m[1], 0, 0]
    }

    /// The reservation types the type mask says are supported (empty unless TMV is set).
    pub fn supported_types(&self) -> Vec<ReservationType> {
        if !self.tmv {
            return Vec::new();
        }
        ReservationType::ALL
            .iter()
            .copied()
            .filter(|t| self.type_mask & type_mask_bit(*t) != 0)
            .collect()
    }
}

/// One registration in READ FULL STATUS data (SPC-4 table 171).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullStatusDescriptor {
    pub key: ReservationKey,
    pub all_tg_pt: bool,
    pub reservation_holder: bool,
    pub scope_code: u8,
    pub type_code: u8,
    pub relative_target_port: RelativeTargetPort,
    pub transport_id: TransportId,
}

/// READ FULL STATUS data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullStatus {
    pub generation: Generation,
    pub descriptors: Vec<FullStatusDescriptor>,
    pub additional_length: u32,
}

impl FullStatus {
    /// Decodes the complete descriptors present; a truncated trailing descriptor is dropped.
    pub fn decode(data: &[u8]) -> Result<FullStatus, PrInDecodeError> {
        let (generation, additional, body) = header(data)?;
        let mut descriptors = Vec::new();
        let mut at = 0;
        while at + 24 <= body.len() {
            let d = &body[at..];
            let tid_len = be32(d, 20) as usize;
            let Some(tid) = d.get(24..24usize.saturating_add(tid_len)) else {
                break;
            };
            let (transport_id, _) =
                TransportId::parse(tid, true).map_err(|e| PrInDecodeError::BadDescriptor {
                    offset: 8 + at,
                    what: e.to_string(),
                })?;
            descriptors.push(FullStatusDescriptor {
                key: ReservationKey::from_be_bytes(d[0..8].try_into().expect("8 bytes")),
                all_tg_pt: d[12] & 0x02 != 0,
                reservation_holder: d[12] & 0x01 != 0,
                scope_code: d[13] >> 4,
                type_code: d[13] & 0x0f,
                relative_target_port: RelativeTargetPort(u16::from_be_bytes([d[18], d[19]])),
                transport_id,
            });
            at += 24 + tid_len;
        }
        Ok(FullStatus {
            generation,
            descriptors,
            additional_length: additional as u32,
        })
    }

    pub fn encode(generation: Generation, descriptors: &[FullStatusDescriptor]) -> Vec<u8> {
        let mut body = Vec::new();
        for d in descriptors {
            let tid = d.transport_id.to_bytes();
            body.extend_from_slice(&d.key.to_be_bytes());
            body.extend_from_slice(&[0; 4]);
            body.push((u8::from(d.all_tg_pt) << 1) | u8::from(d.reservation_holder));
            body.push(if d.reservation_holder {
                (d.scope_code << 4) | (d.type_code & 0x0f)
            } else {
                0
            });
            body.extend_from_slice(&[0; 4]);
            body.extend_from_slice(&d.relative_target_port.0.to_be_bytes());
            body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
            body.extend_from_slice(&tid);
        }
        let mut b = Vec::with_capacity(8 + body.len());
        b.extend_from_slice(&generation.0.to_be_bytes());
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend_from_slice(&body);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn read_keys_truncated_to_allocation_length() {
        // Generation 3, two keys (additional length 16) but only 12 bytes delivered.
        let full = [
            0, 0, 0, 3, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0xbb,
        ];
        let k = ReadKeys::decode(&full).unwrap();
        assert_eq!(k.keys, vec![ReservationKey(0xaa), ReservationKey(0xbb)]);
        assert!(!k.is_truncated());
        let k = ReadKeys::decode(&full[..20]).unwrap();
        assert_eq!(k.keys, vec![ReservationKey(0xaa)]);
        assert!(k.is_truncated());
        assert_eq!(
            ReadKeys::encode(Generation(3), &[ReservationKey(0xaa), ReservationKey(0xbb)]),
            full
        );
    }

    #[test]
    fn read_reservation_layout_spc4_table_168() {
        // Key 0x1234, scope 0, type 5 at byte 21.
        let mut raw = vec![0, 0, 0, 9, 0, 0, 0, 16];
        raw.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0, 0x05, 0, 0]);
        let r = ReadReservation::decode(&raw).unwrap();
        assert_eq!(r.generation, Generation(9));
        let d = r.reservation.unwrap();
        assert_eq!(d.key, ReservationKey(0x1234));
        assert_eq!(
            d.reservation_type(),
            Some(ReservationType::WriteExclusiveRegistrantsOnly)
        );
        assert_eq!(r.encode(), raw);
        let none = ReadReservation::decode(&[0, 0, 0, 1, 0, 0, 0, 0]).unwrap();
        assert_eq!(none.reservation, None);
    }

    #[test]
    fn capabilities_type_mask_spc4_table_170() {
        // LIO answers: length 8, CRH|SIP_C|ATP_C|PTPL_C, TMV, mask ea-ar .. we.
        let raw = [0x00, 0x08, 0x1d, 0x80, 0xea, 0x01, 0, 0];
        let c = Capabilities::decode(&raw).unwrap();
        assert!(c.crh && c.sip_c && c.atp_c && c.ptpl_c && c.tmv && !c.rlr_c);
        assert_eq!(c.supported_types().len(), 6);
        assert_eq!(c.encode(), raw);
    }

    #[test]
    fn full_status_roundtrip() {
        let d = FullStatusDescriptor {
            key: ReservationKey(0xabc),
            all_tg_pt: false,
            reservation_holder: true,
            scope_code: 0,
            type_code: 5,
            relative_target_port: RelativeTargetPort(1),
            transport_id: TransportId::Sas {
                sas_address: [0x50, 1, 2, 3, 4, 5, 6, 7],
            },
        };
        let b = FullStatus::encode(Generation(4), &[d.clone(), d.clone()]);
        assert_eq!(b.len(), 8 + 2 * 48);
        assert_eq!(b[8 + 12], 0x01);
        assert_eq!(b[8 + 13], 0x05);
        let f = FullStatus::decode(&b).unwrap();
        assert_eq!(f.descriptors, vec![d.clone(), d]);
        // Truncated: one whole descriptor only.
        assert_eq!(
            FullStatus::decode(&b[..8 + 60]).unwrap().descriptors.len(),
            1
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ReadKeys::decode(&buf);
            let _ = ReadReservation::decode(&buf);
            let _ = Capabilities::decode(&buf);
            let _ = FullStatus::decode(&buf);
        }

        #[test]
        fn read_keys_roundtrip(g: u32, keys in proptest::collection::vec(any::<u64>(), 0..50)) {
            let keys: Vec<_> = keys.into_iter().map(ReservationKey).collect();
            let d = ReadKeys::decode(&ReadKeys::encode(Generation(g), &keys)).unwrap();
            prop_assert_eq!(d.keys, keys);
            prop_assert_eq!(d.generation, Generation(g));
        }
    }
}
