//! TransportIDs (SPC-4 §7.6.4): how PR OUT and READ FULL STATUS name an initiator port.

use std::fmt;

/// Protocol identifiers (SPC-4 table 362) that have a TransportID format we decode.
pub const PROTOCOL_FC: u8 = 0x0;
pub const PROTOCOL_ISCSI: u8 = 0x5;
pub const PROTOCOL_SAS: u8 = 0x6;

/// Longest iSCSI TransportID we accept: 4 header bytes plus a name of at most 252 bytes (the same
/// bound libmpathpersist works with); SPC-4 allows 223 + NUL for format 00b.
pub const MAX_ISCSI_ID_LEN: usize = 256;

/// A decoded TransportID.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum TransportId {
    /// Fibre Channel: the N_Port name (8 bytes at offset 8 of a 24-byte ID).
    Fc { n_port_name: [u8; 8] },
    /// SAS: the SAS address (8 bytes at offset 4 of a 24-byte ID).
    Sas { sas_address: [u8; 8] },
    /// iSCSI: the name, and with format 01b the initiator session ID (`name,i,0x<ISID>`).
    Iscsi { name: String, isid: Option<String> },
    /// Any other protocol: raw bytes as received (only produced when decoding PR IN data).
    Other { protocol_id: u8, bytes: Vec<u8> },
}

/// Why a TransportID could not be decoded (answered as INVALID FIELD IN PARAMETER LIST).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportIdError {
    #[error("TransportID is truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("TransportID protocol identifier {protocol:#x} with format code {format:#x} is not supported")]
    Unsupported { protocol: u8, format: u8 },
    #[error("iSCSI TransportID additional length {0} is not a multiple of 4 or is too long")]
    BadIscsiLength(usize),
    #[error("iSCSI name is not NUL-terminated UTF-8")]
    BadIscsiName,
}

impl TransportId {
    /// The protocol identifier (byte 0 bits 3–0).
    pub fn protocol_id(&self) -> u8 {
        match self {
            TransportId::Fc { .. } => PROTOCOL_FC,
            TransportId::Sas { .. } => PROTOCOL_SAS,
            TransportId::Iscsi { .. } => PROTOCOL_ISCSI,
            TransportId::Other { protocol_id, .. } => *protocol_id,
        }
    }

    /// Decodes one TransportID from the start of `buf`; returns it and the bytes it used.
    /// With `lenient`, protocols without a decoder come back as [`TransportId::Other`] spanning
    /// the whole buffer (for READ FULL STATUS, whose descriptor gives the length).
    pub fn parse(buf: &[u8], lenient: bool) -> Result<(TransportId, usize), TransportIdError> {
        let b0 = *buf.first().ok_or(TransportIdError::Truncated {
            needed: 1,
            available: 0,
        })?;
        let (format, protocol) = (b0 >> 6, b0 & 0x0f);
        let need = |n: usize| {
            if buf.len() < n {
                Err(TransportIdError::Truncated {
                    needed: n,
                    available: buf.len(),
                })
            } else {
                Ok(())
            }
        };
        match (protocol, format) {
            (PROTOCOL_FC, 0) => {
                need(24)?;
                Ok((
                    TransportId::Fc {
                        n_port_name: buf[8..16].try_into().expect("8 bytes"),
                    },
                    24,
                ))
            }
            (PROTOCOL_SAS, 0) => {
                need(24)?;
                Ok((
                    TransportId::Sas {
                        sas_address: buf[4..12].try_into().expect("8 bytes"),
                    },
                    24,
                ))
            }
            (PROTOCOL_ISCSI, 0 | 1) => {
                need(4)?;
                let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
                if !len.is_multiple_of(4) || len + 4 > MAX_ISCSI_ID_LEN || len == 0 {
                    return Err(TransportIdError::BadIscsiLength(len));
                }
                need(4 + len)?;
                let field = &buf[4..4 + len];
                let nul = field
                    .iter()
                    .position(|&c| c == 0)
                    .ok_or(TransportIdError::BadIscsiName)?;
                let text = std::str::from_utf8(&field[..nul])
                    .map_err(|_| TransportIdError::BadIscsiName)?;
                let (name, isid) = if format == 1 {
                    match text
                        .split_once(",i,0x")
                        .or_else(|| text.split_once(",I,0X"))
                    {
                        Some((n, i)) => (n.to_string(), Some(i.to_string())),
                        None => return Err(TransportIdError::BadIscsiName),
                    }
                } else {
                    (text.to_string(), None)
                };
                if name.is_empty() {
                    return Err(TransportIdError::BadIscsiName);
                }
                Ok((TransportId::Iscsi { name, isid }, 4 + len))
            }
            _ if lenient => Ok((
                TransportId::Other {
                    protocol_id: protocol,
                    bytes: buf.to_vec(),
                },
                buf.len(),
            )),
            _ => Err(TransportIdError::Unsupported { protocol, format }),
        }
    }

    /// Encodes the TransportID (FC and SAS: 24 bytes; iSCSI: padded to a multiple of 4).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            TransportId::Fc { n_port_name } => {
                let mut b = vec![0u8; 24];
                b[0] = PROTOCOL_FC;
                b[8..16].copy_from_slice(n_port_name);
                b
            }
            TransportId::Sas { sas_address } => {
                let mut b = vec![0u8; 24];
                b[0] = PROTOCOL_SAS;
                b[4..12].copy_from_slice(sas_address);
                b
            }
            TransportId::Iscsi { name, isid } => {
                let text = match isid {
                    Some(i) => format!("{name},i,0x{i}"),
                    None => name.clone(),
                };
                // NUL terminator, then pad to a multiple of 4 (at least 20 bytes, SPC-4 §7.6.4.6).
                let len = (text.len() + 1).div_ceil(4).max(5) * 4;
                let mut b = vec![0u8; 4 + len];
                b[0] = PROTOCOL_ISCSI | if isid.is_some() { 0x40 } else { 0 };
                b[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                b[4..4 + text.len()].copy_from_slice(text.as_bytes());
                b
            }
            TransportId::Other { bytes, .. } => bytes.clone(),
        }
    }
}

fn hex8(f: &mut fmt::Formatter<'_>, b: &[u8; 8]) -> fmt::Result {
    f.write_str("0x")?;
    b.iter().try_for_each(|x| write!(f, "{x:02x}"))
}

impl fmt::Display for TransportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportId::Fc { n_port_name } => {
                f.write_str("FC N_Port name ")?;
                hex8(f, n_port_name)
            }
            TransportId::Sas { sas_address } => {
                f.write_str("SAS address ")?;
                hex8(f, sas_address)
            }
            TransportId::Iscsi { name, isid: None } => write!(f, "iSCSI name {name}"),
            TransportId::Iscsi {
                name,
                isid: Some(i),
            } => write!(f, "iSCSI name {name}, ISID 0x{i}"),
            TransportId::Other { protocol_id, bytes } => {
                write!(f, "protocol {protocol_id:#x}, ")?;
                bytes.iter().try_for_each(|x| write!(f, "{x:02x}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sas_layout_spc4_table_376() {
        // SAS TransportID: protocol 6 in byte 0, SAS address in bytes 4..12, 24 bytes long.
        let mut raw = [0u8; 24];
        raw[0] = 0x06;
        raw[4..12].copy_from_slice(&[0x50, 0x01, 0x40, 0x5a, 0x1b, 0x2c, 0x3d, 0x4e]);
        let (id, used) = TransportId::parse(&raw, false).unwrap();
        assert_eq!(used, 24);
        assert_eq!(
            id,
            TransportId::Sas {
                sas_address: [0x50, 0x01, 0x40, 0x5a, 0x1b, 0x2c, 0x3d, 0x4e]
            }
        );
        assert_eq!(id.to_bytes(), raw);
        assert_eq!(id.to_string(), "SAS address 0x5001405a1b2c3d4e");
    }

    #[test]
    fn iscsi_formats() {
        let id = TransportId::Iscsi {
            name: "iqn.2026-11.test:node1".into(),
            isid: Some("23d000000001".into()),
        };
        let b = id.to_bytes();
        assert_eq!(b[0], 0x45);
        assert_eq!(b.len() % 4, 0);
        assert_eq!(TransportId::parse(&b, false).unwrap(), (id, b.len()));
        // Length not a multiple of 4.
        assert!(TransportId::parse(&[0x05, 0, 0, 5, b'a', 0, 0, 0, 0], false).is_err());
        // No NUL terminator.
        assert!(TransportId::parse(&[0x05, 0, 0, 4, b'a', b'b', b'c', b'd'], false).is_err());
    }

    #[test]
    fn unknown_protocols() {
        assert!(matches!(
            TransportId::parse(&[0x04; 40], false),
            Err(TransportIdError::Unsupported {
                protocol: 4,
                format: 0
            })
        ));
        let (id, used) = TransportId::parse(&[0x04; 40], true).unwrap();
        assert_eq!((id.protocol_id(), used), (4, 40));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_stays_in_bounds(buf in proptest::collection::vec(any::<u8>(), 0..300), lenient: bool) {
            if let Ok((_, used)) = TransportId::parse(&buf, lenient) {
                prop_assert!(used <= buf.len());
            }
        }

        #[test]
        fn iscsi_roundtrip(name in "[a-z0-9.:-]{1,200}", isid in proptest::option::of("[0-9a-f]{12}")) {
            let id = TransportId::Iscsi { name, isid };
            let b = id.to_bytes();
            prop_assume!(b.len() <= MAX_ISCSI_ID_LEN);
            prop_assert_eq!(TransportId::parse(&b, false).unwrap(), (id, b.len()));
        }
    }
}
