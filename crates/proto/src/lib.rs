//! The wire protocol QEMU's `pr-manager-helper` speaks to a persistent-reservation helper
//! (see `docs/protocol.md`): a 4-byte feature handshake, then requests made of a 16-byte CDB
//! (with one file descriptor alongside) and, for PR OUT, the parameter data; replies made of a
//! 104-byte header and, for PR IN, the data.
//!
//! Only codecs over byte slices live here: no sockets, no file descriptors, no async, so that
//! everything can be property-tested and fuzzed alone.
#![forbid(unsafe_code)]

use pr_scsi::sense::SENSE_BUFFER_SIZE;
use pr_scsi::{Status, PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT};

/// Size of the CDB field of a request.
pub const CDB_SIZE: usize = 16;
/// Size of the sense field of a reply.
pub const SENSE_SIZE: usize = SENSE_BUFFER_SIZE;
/// Largest PR IN allocation length or PR OUT parameter list length the protocol carries.
pub const MAX_TRANSFER: usize = 8192;
/// Size of the reply header: status (4), data length (4), sense (96).
pub const REPLY_HEADER_SIZE: usize = 8 + SENSE_SIZE;
/// Size of the feature word each side sends once.
pub const FEATURES_SIZE: usize = 4;
/// The feature word: no features are defined.
pub const FEATURES_NONE: u32 = 0;

/// What is wrong with a message; every variant closes the connection, as QEMU's C helper does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("client asked for features {0:#010x}; none are defined, 0 was expected")]
    UnsupportedFeatures(u32),
    #[error("CDB operation code {0:#04x} is neither PERSISTENT RESERVE IN (0x5e) nor OUT (0x5f)")]
    InvalidOpcode(u8),
    #[error(
        "transfer length {length} in the CDB exceeds the protocol's limit of {MAX_TRANSFER} bytes"
    )]
    TransferTooLong { length: u32 },
    #[error("reply data length {length} exceeds {limit} (the request's transfer length or the protocol limit)")]
    ReplyTooLong { length: u32, limit: u32 },
    #[error("reply carries {length} data bytes for {why}; it must carry none")]
    UnexpectedReplyData { length: u32, why: &'static str },
}

/// Encodes a feature word (big-endian).
pub fn encode_features(features: u32) -> [u8; FEATURES_SIZE] {
    features.to_be_bytes()
}

/// Checks the feature word a client sent: only 0 is accepted.
pub fn check_client_features(word: [u8; FEATURES_SIZE]) -> Result<(), ProtocolError> {
    match u32::from_be_bytes(word) {
        FEATURES_NONE => Ok(()),
        other => Err(ProtocolError::UnsupportedFeatures(other)),
    }
}

/// Direction of the data of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// PERSISTENT RESERVE IN: data flows from the device to the client.
    In,
    /// PERSISTENT RESERVE OUT: parameter data flows from the client to the device.
    Out,
}

/// A validated request header: the CDB, its direction and transfer length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub cdb: [u8; CDB_SIZE],
    pub direction: Direction,
    /// PR IN allocation length or PR OUT parameter list length; never above [`MAX_TRANSFER`].
    pub transfer_length: usize,
}

impl RequestHeader {
    /// Validates a received CDB: the opcode must be PR IN or PR OUT and the transfer length
    /// (PR IN bytes 7–8, PR OUT bytes 5–8, big-endian) at most 8192.
    pub fn parse(cdb: [u8; CDB_SIZE]) -> Result<RequestHeader, ProtocolError> {
        let (direction, length) = match cdb[0] {
            PERSISTENT_RESERVE_IN => (
                Direction::In,
                u32::from(u16::from_be_bytes([cdb[7], cdb[8]])),
            ),
            PERSISTENT_RESERVE_OUT => (
                Direction::Out,
                u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]),
            ),
            op => return Err(ProtocolError::InvalidOpcode(op)),
        };
        if length as usize > MAX_TRANSFER {
            return Err(ProtocolError::TransferTooLong { length });
        }
        Ok(RequestHeader {
            cdb,
            direction,
            transfer_length: length as usize,
        })
    }

    /// How many parameter-data bytes follow the CDB on the wire.
    pub fn parameter_bytes(&self) -> usize {
        match self.direction {
            Direction::In => 0,
            Direction::Out => self.transfer_length,
        }
    }
}

/// A reply as the helper sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: Status,
    pub sense: [u8; SENSE_SIZE],
    /// PR IN data; empty unless the request was PR IN and the status GOOD.
    pub data: Vec<u8>,
}

impl Reply {
    /// A reply with a status and no sense or data.
    pub fn status(status: Status) -> Reply {
        Reply {
            status,
            sense: [0; SENSE_SIZE],
            data: Vec::new(),
        }
    }

    /// GOOD with PR IN data.
    pub fn good(data: Vec<u8>) -> Reply {
        Reply {
            status: Status::GOOD,
            sense: [0; SENSE_SIZE],
            data,
        }
    }

    /// CHECK CONDITION with the given sense buffer.
    pub fn check_condition(sense: [u8; SENSE_SIZE]) -> Reply {
        Reply {
            status: Status::CHECK_CONDITION,
            sense,
            data: Vec::new(),
        }
    }

    /// Makes the reply safe to send for `request`: data only for a GOOD PR IN, and never more
    /// than the allocation length (QEMU asserts on either). Called by the server on every reply.
    pub fn clamp_to(&mut self, request: &RequestHeader) {
        if request.direction == Direction::Out || self.status != Status::GOOD {
            self.data.clear();
        } else {
            self.data.truncate(request.transfer_length);
        }
    }

    /// The 104-byte header: status (BE32), data length (BE32), sense.
    pub fn encode_header(&self) -> [u8; REPLY_HEADER_SIZE] {
        let mut h = [0u8; REPLY_HEADER_SIZE];
        h[0..4].copy_from_slice(&u32::from(self.status.0).to_be_bytes());
        h[4..8].copy_from_slice(&(self.data.len() as u32).to_be_bytes());
        h[8..].copy_from_slice(&self.sense);
        h
    }

    /// Header and data in one buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(REPLY_HEADER_SIZE + self.data.len());
        v.extend_from_slice(&self.encode_header());
        v.extend_from_slice(&self.data);
        v
    }
}

/// A decoded reply header, as a client reads it before the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHeader {
    /// The status word. QEMU's helper puts a SCSI status byte here; a larger value is kept as is.
    pub status_word: u32,
    pub data_length: usize,
    pub sense: [u8; SENSE_SIZE],
}

impl ReplyHeader {
    /// Decodes and checks a reply header against the request it answers, with the same checks
    /// QEMU's client makes (it aborts on a violation; a client library reports an error).
    pub fn decode(
        h: &[u8; REPLY_HEADER_SIZE],
        request: &RequestHeader,
    ) -> Result<ReplyHeader, ProtocolError> {
        let status_word = u32::from_be_bytes(h[0..4].try_into().expect("4 bytes"));
        let length = u32::from_be_bytes(h[4..8].try_into().expect("4 bytes"));
        match request.direction {
            Direction::Out if length != 0 => {
                return Err(ProtocolError::UnexpectedReplyData {
                    length,
                    why: "a PR OUT request",
                })
            }
            Direction::In if length as usize > request.transfer_length => {
                return Err(ProtocolError::ReplyTooLong {
                    length,
                    limit: request.transfer_length as u32,
                })
            }
            _ => {}
        }
        Ok(ReplyHeader {
            status_word,
            data_length: length as usize,
            sense: h[8..].try_into().expect("96 bytes"),
        })
    }

    /// The status as a SCSI status byte (the low byte of the status word).
    pub fn status(&self) -> Status {
        Status(self.status_word as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cdb(bytes: &[u8]) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    #[test]
    fn transfer_length_from_the_cdb() {
        // PR IN READ KEYS, allocation length 0x1000 at bytes 7–8.
        let r = RequestHeader::parse(cdb(&[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0x00])).unwrap();
        assert_eq!(
            (r.direction, r.transfer_length, r.parameter_bytes()),
            (Direction::In, 4096, 0)
        );
        // PR OUT REGISTER, parameter list length 24 at bytes 5–8.
        let r = RequestHeader::parse(cdb(&[0x5f, 0, 0, 0, 0, 0, 0, 0, 24])).unwrap();
        assert_eq!(
            (r.direction, r.transfer_length, r.parameter_bytes()),
            (Direction::Out, 24, 24)
        );
    }

    #[test]
    fn limits() {
        assert!(RequestHeader::parse(cdb(&[0x5e, 0, 0, 0, 0, 0, 0, 0x20, 0x00])).is_ok());
        assert_eq!(
            RequestHeader::parse(cdb(&[0x5e, 0, 0, 0, 0, 0, 0, 0x20, 0x01])),
            Err(ProtocolError::TransferTooLong { length: 8193 })
        );
        // PR OUT length uses all four bytes: 0x01000018 is far above the limit.
        assert_eq!(
            RequestHeader::parse(cdb(&[0x5f, 0, 0, 0, 0, 0x01, 0, 0, 0x18])),
            Err(ProtocolError::TransferTooLong {
                length: 0x0100_0018
            })
        );
        assert_eq!(
            RequestHeader::parse(cdb(&[0x28])),
            Err(ProtocolError::InvalidOpcode(0x28))
        );
    }

    #[test]
    fn handshake() {
        assert_eq!(encode_features(0), [0, 0, 0, 0]);
        assert!(check_client_features([0, 0, 0, 0]).is_ok());
        assert_eq!(
            check_client_features([0, 0, 0, 1]),
            Err(ProtocolError::UnsupportedFeatures(1))
        );
    }

    #[test]
    fn reply_layout() {
        let mut r = Reply::check_condition(pr_scsi::SenseCode::INVALID_FIELD_IN_CDB.to_fixed());
        r.data = vec![1, 2, 3];
        let req = RequestHeader::parse(cdb(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 2])).unwrap();
        r.clamp_to(&req);
        let h = r.encode_header();
        assert_eq!(&h[0..8], &[0, 0, 0, 2, 0, 0, 0, 0]);
        assert_eq!(&h[8..10], &[0x70, 0]);
        assert_eq!(h[10], 0x05);
        assert_eq!(h[20], 0x24);
        let mut g = Reply::good(vec![9; 100]);
        g.clamp_to(&req);
        assert_eq!(g.data, vec![9, 9]);
        assert_eq!(&g.encode()[..8], &[0, 0, 0, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn client_side_checks() {
        let out = RequestHeader::parse(cdb(&[0x5f, 0, 0, 0, 0, 0, 0, 0, 24])).unwrap();
        let mut h = [0u8; REPLY_HEADER_SIZE];
        h[7] = 1;
        assert!(matches!(
            ReplyHeader::decode(&h, &out),
            Err(ProtocolError::UnexpectedReplyData { .. })
        ));
        let inn = RequestHeader::parse(cdb(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 8])).unwrap();
        h[7] = 9;
        assert!(matches!(
            ReplyHeader::decode(&h, &inn),
            Err(ProtocolError::ReplyTooLong { .. })
        ));
        h[7] = 8;
        h[3] = 0x18;
        let d = ReplyHeader::decode(&h, &inn).unwrap();
        assert_eq!(
            (d.status(), d.data_length),
            (Status::RESERVATION_CONFLICT, 8)
        );
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_the_valid_requests(bytes in proptest::array::uniform16(any::<u8>())) {
            match RequestHeader::parse(bytes) {
                Ok(r) => {
                    prop_assert!(bytes[0] == 0x5e || bytes[0] == 0x5f);
                    prop_assert!(r.transfer_length <= MAX_TRANSFER);
                }
                Err(ProtocolError::InvalidOpcode(op)) => prop_assert!(op != 0x5e && op != 0x5f),
                Err(ProtocolError::TransferTooLong { length }) => prop_assert!(length as usize > MAX_TRANSFER),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }

        #[test]
        fn clamped_replies_pass_the_client_checks(bytes in proptest::array::uniform16(any::<u8>()),
                                                 status in prop_oneof![Just(0u8), Just(2u8), Just(0x18u8)],
                                                 len in 0usize..9000) {
            if let Ok(req) = RequestHeader::parse(bytes) {
                let mut r = Reply { status: Status(status), sense: [0; SENSE_SIZE], data: vec![0; len] };
                r.clamp_to(&req);
                let d = ReplyHeader::decode(&r.encode_header(), &req).unwrap();
                prop_assert_eq!(d.data_length, r.data.len());
            }
        }
    }
}
