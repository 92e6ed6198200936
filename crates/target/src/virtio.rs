//! virtio-scsi request and response headers (virtio 1.2 §5.6.6) as bytes: parsing what the
//! driver put in guest memory, encoding what the device writes back. Pure and bounded, so it
//! is fuzzed alone (fuzz/fuzz_targets/target_request.rs).

use virtio_bindings::virtio_scsi::{
    VIRTIO_SCSI_CDB_DEFAULT_SIZE, VIRTIO_SCSI_SENSE_DEFAULT_SIZE, VIRTIO_SCSI_T_AN_QUERY,
    VIRTIO_SCSI_T_AN_SUBSCRIBE, VIRTIO_SCSI_T_TMF,
};

/// Size of a command request header: LUN (8), tag (8), task attribute, priority, CRN (1 each)
/// and the CDB (`cdb_size`, 32 by default; the target never changes it).
pub const REQUEST_HEADER_SIZE: usize = 19 + VIRTIO_SCSI_CDB_DEFAULT_SIZE as usize;
/// Size of a command response header: sense length (4), residual (4), status qualifier (2),
/// status (1), response (1) and the sense buffer (96).
pub const RESPONSE_HEADER_SIZE: usize = 12 + VIRTIO_SCSI_SENSE_DEFAULT_SIZE as usize;
/// Size of a task-management request (type, subtype, LUN, tag).
pub const TMF_REQUEST_SIZE: usize = 24;
/// Size of an asynchronous-notification request (type, LUN, event_requested).
pub const AN_REQUEST_SIZE: usize = 16;

/// A virtio-scsi command request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The 8-byte virtio LUN field.
    pub lun: [u8; 8],
    /// The driver's tag.
    pub tag: u64,
    /// The CDB (32 bytes; the command's own length comes from its opcode).
    pub cdb: [u8; VIRTIO_SCSI_CDB_DEFAULT_SIZE as usize],
}

impl Request {
    /// Parses the header from the first [`REQUEST_HEADER_SIZE`] bytes; `None` when shorter.
    pub fn parse(b: &[u8]) -> Option<Request> {
        let b = b.get(..REQUEST_HEADER_SIZE)?;
        Some(Request {
            lun: b[0..8].try_into().ok()?,
            tag: u64::from_le_bytes(b[8..16].try_into().ok()?),
            cdb: b[19..].try_into().ok()?,
        })
    }
}

/// Where a virtio LUN field points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// Target 0, this LUN.
    Lun(u16),
    /// Another target, or a LUN format we do not serve: answered VIRTIO_SCSI_S_BAD_TARGET.
    BadTarget,
}

/// Decodes the virtio LUN field: byte 0 is 1, byte 1 the target, bytes 2–3 a single-level
/// LUN in peripheral (00b) or flat space (01b) addressing (SAM-5), bytes 4–7 zero.
pub fn address(lun: &[u8; 8]) -> Address {
    if lun[0] != 1 || lun[1] != 0 || lun[4..].iter().any(|&b| b != 0) {
        return Address::BadTarget;
    }
    match lun[2] >> 6 {
        0 if lun[2] == 0 => Address::Lun(u16::from(lun[3])),
        1 => Address::Lun(u16::from_be_bytes([lun[2] & 0x3f, lun[3]])),
        _ => Address::BadTarget,
    }
}

/// A virtio-scsi command response header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Valid bytes of `sense`.
    pub sense_len: u32,
    /// Bytes of data the command did not transfer.
    pub residual: u32,
    /// SCSI status.
    pub status: u8,
    /// virtio-scsi response code (VIRTIO_SCSI_S_*).
    pub response: u8,
    /// Sense data.
    pub sense: [u8; VIRTIO_SCSI_SENSE_DEFAULT_SIZE as usize],
}

impl Response {
    /// A response with only a virtio response code (no SCSI status).
    pub fn transport(response: u32) -> Response {
        Response {
            sense_len: 0,
            residual: 0,
            status: 0,
            response: response as u8,
            sense: [0; VIRTIO_SCSI_SENSE_DEFAULT_SIZE as usize],
        }
    }

    /// The header as the device writes it (little-endian fields).
    pub fn encode(&self) -> [u8; RESPONSE_HEADER_SIZE] {
        let mut b = [0u8; RESPONSE_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.sense_len.to_le_bytes());
        b[4..8].copy_from_slice(&self.residual.to_le_bytes());
        b[10] = self.status;
        b[11] = self.response;
        b[12..].copy_from_slice(&self.sense);
        b
    }
}

/// A control-queue request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// A task management function: answered with a 1-byte response.
    Tmf { subtype: u32, lun: [u8; 8] },
    /// Asynchronous notification query or subscription: answered with 4-byte event_actual
    /// and a 1-byte response.
    AsyncNotification,
    /// Anything else or too short: answered VIRTIO_SCSI_S_FAILURE in whatever room there is.
    Unknown,
}

impl Control {
    /// Parses a control-queue request from its device-readable bytes.
    pub fn parse(b: &[u8]) -> Control {
        let Some(t) = b.get(..4) else {
            return Control::Unknown;
        };
        match u32::from_le_bytes([t[0], t[1], t[2], t[3]]) {
            VIRTIO_SCSI_T_TMF if b.len() >= TMF_REQUEST_SIZE => Control::Tmf {
                subtype: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                lun: b[8..16].try_into().unwrap_or([0; 8]),
            },
            VIRTIO_SCSI_T_AN_QUERY | VIRTIO_SCSI_T_AN_SUBSCRIBE if b.len() >= AN_REQUEST_SIZE => {
                Control::AsyncNotification
            }
            _ => Control::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_addressing_follows_sam5_and_linux_virtio_scsi() {
        // Linux's virtio_scsi: lun[0]=1, lun[1]=target, lun[2]=(lun>>8)|0x40, lun[3]=lun&0xff.
        assert_eq!(address(&[1, 0, 0x40, 0, 0, 0, 0, 0]), Address::Lun(0));
        assert_eq!(
            address(&[1, 0, 0x41, 0x02, 0, 0, 0, 0]),
            Address::Lun(0x102)
        );
        assert_eq!(address(&[1, 0, 0x00, 0x05, 0, 0, 0, 0]), Address::Lun(5));
        assert_eq!(address(&[1, 1, 0x40, 0, 0, 0, 0, 0]), Address::BadTarget);
        assert_eq!(address(&[0, 0, 0x40, 0, 0, 0, 0, 0]), Address::BadTarget);
        assert_eq!(address(&[1, 0, 0x80, 0, 0, 0, 0, 0]), Address::BadTarget);
        assert_eq!(address(&[1, 0, 0x40, 0, 1, 0, 0, 0]), Address::BadTarget);
    }

    #[test]
    fn request_header_layout_is_virtio_scsi_req_cmd() {
        let mut b = vec![0u8; 51];
        b[..4].copy_from_slice(&[1, 0, 0x40, 3]);
        b[8..16].copy_from_slice(&0x1122u64.to_le_bytes());
        b[19] = 0x28;
        let r = Request::parse(&b).unwrap();
        assert_eq!(address(&r.lun), Address::Lun(3));
        assert_eq!(r.tag, 0x1122);
        assert_eq!(r.cdb[0], 0x28);
        assert_eq!(Request::parse(&b[..50]), None);
    }

    #[test]
    fn response_header_layout_is_virtio_scsi_resp_cmd() {
        let mut r = Response::transport(3);
        r.sense_len = 18;
        r.residual = 512;
        r.status = 0x02;
        r.sense[0] = 0x70;
        let b = r.encode();
        assert_eq!(b.len(), 108);
        assert_eq!(&b[..12], &[18, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0x02, 3]);
        assert_eq!(b[12], 0x70);
    }

    #[test]
    fn control_requests() {
        let mut tmf = vec![0u8; 24];
        tmf[4] = 5;
        tmf[8] = 1;
        assert!(matches!(
            Control::parse(&tmf),
            Control::Tmf { subtype: 5, .. }
        ));
        assert_eq!(Control::parse(&tmf[..10]), Control::Unknown);
        let mut an = vec![0u8; 16];
        an[0] = 2;
        assert_eq!(Control::parse(&an), Control::AsyncNotification);
        assert_eq!(Control::parse(&[9, 0, 0, 0]), Control::Unknown);
    }
}
