//! The request mix: which PR IN/OUT service actions a run sends, with weights, and the CDB and
//! parameter list each one becomes.

use pr_scsi::param::{BasicParameters, RegisterAndMoveParameters};
use pr_scsi::transport_id::TransportId;
use pr_scsi::{
    PrInCdb, PrOutCdb, RelativeTargetPort, ReservationKey, ReservationType, ServiceActionIn,
    ServiceActionOut,
};
use serde::Serialize;

/// Allocation length of every PR IN request (room for ~1000 keys, as a guest would ask).
pub const PR_IN_ALLOCATION_LENGTH: u16 = 8192;

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    In(ServiceActionIn),
    Out(ServiceActionOut),
}

impl Op {
    /// Parses a short name such as `read-keys` or `register` (pr-scsi's command-line names).
    pub fn from_name(name: &str) -> Option<Op> {
        ServiceActionIn::ALL
            .iter()
            .find(|s| s.short_name() == name)
            .map(|&s| Op::In(s))
            .or_else(|| {
                ServiceActionOut::ALL
                    .iter()
                    .find(|s| s.short_name() == name)
                    .map(|&s| Op::Out(s))
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::In(s) => s.short_name(),
            Op::Out(s) => s.short_name(),
        }
    }

    /// The 16-byte CDB and the PR OUT parameter data for this request from client `client`.
    /// Keys are distinct per client so a real device would see distinct registrants.
    pub fn request(self, client: u32) -> ([u8; 16], Vec<u8>) {
        let key = ReservationKey(0x5052_0000_0000_0000 | (u64::from(client) + 1));
        match self {
            Op::In(sa) => (
                PrInCdb::new(sa, PR_IN_ALLOCATION_LENGTH).to_bytes(),
                Vec::new(),
            ),
            Op::Out(sa) => {
                let params = match sa {
                    ServiceActionOut::RegisterAndMove => RegisterAndMoveParameters {
                        reservation_key: key,
                        service_action_reservation_key: key,
                        unreg: false,
                        aptpl: false,
                        relative_target_port: RelativeTargetPort(1),
                        transport_id: TransportId::Sas {
                            sas_address: [0x50, 0, 0, 0, 0, 0, 0, 1],
                        },
                    }
                    .to_bytes(),
                    ServiceActionOut::Register | ServiceActionOut::RegisterAndIgnoreExistingKey => {
                        BasicParameters {
                            service_action_reservation_key: key,
                            ..BasicParameters::default()
                        }
                        .to_bytes()
                    }
                    _ => BasicParameters {
                        reservation_key: key,
                        ..BasicParameters::default()
                    }
                    .to_bytes(),
                };
                let rtype = match sa {
                    ServiceActionOut::Reserve
                    | ServiceActionOut::Release
                    | ServiceActionOut::Preempt
                    | ServiceActionOut::PreemptAndAbort
                    | ServiceActionOut::RegisterAndMove
                    | ServiceActionOut::ReplaceLostReservation => {
                        Some(ReservationType::WriteExclusive)
                    }
                    _ => None,
                };
                let cdb = PrOutCdb::new(sa, rtype, params.len() as u32).to_bytes();
                (cdb, params)
            }
        }
    }
}

/// A weighted list of operations, e.g. `read-keys:3,register:1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mix {
    #[serde(serialize_with = "serialize_entries")]
    pub entries: Vec<(Op, u32)>,
}

fn serialize_entries<S: serde::Serializer>(e: &[(Op, u32)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(e.len()))?;
    for (op, w) in e {
        m.serialize_entry(op.name(), w)?;
    }
    m.end()
}

/// Why a mix could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    #[error("empty request mix")]
    Empty,
    #[error("unknown service action {0:?} (PR IN: {1}; PR OUT: {2})")]
    UnknownAction(String, String, String),
    #[error("weight {0:?} of {1} is not a whole number from 1 to 1000")]
    Weight(String, String),
}

impl std::str::FromStr for Mix {
    type Err = MixError;

    fn from_str(s: &str) -> Result<Mix, MixError> {
        let mut entries = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once(':').unwrap_or((part, "1"));
            let op = Op::from_name(name.trim()).ok_or_else(|| {
                let names = |v: Vec<&str>| v.join(", ");
                MixError::UnknownAction(
                    name.to_string(),
                    names(
                        ServiceActionIn::ALL
                            .iter()
                            .map(|s| s.short_name())
                            .collect(),
                    ),
                    names(
                        ServiceActionOut::ALL
                            .iter()
                            .map(|s| s.short_name())
                            .collect(),
                    ),
                )
            })?;
            let w: u32 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w| (1..=1000).contains(w))
                .ok_or_else(|| MixError::Weight(weight.to_string(), name.to_string()))?;
            entries.push((op, w));
        }
        if entries.is_empty() {
            return Err(MixError::Empty);
        }
        Ok(Mix { entries })
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|(op, w)| format!("{}:{w}", op.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Mix {
    /// The mix laid out as a cycle with each operation repeated by its weight, interleaved so
    /// that a short run still sees every kind (`a:3,b:1` → a b a a).
    pub fn schedule(&self) -> Vec<Op> {
        let max = self.entries.iter().map(|e| e.1).max().unwrap_or(0);
        let mut out = Vec::new();
        for round in 0..max {
            for &(op, w) in &self.entries {
                if round < w {
                    out.push(op);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weights_and_defaults() {
        let m: Mix = "read-keys:3, register:1,read-reservation".parse().unwrap();
        assert_eq!(
            m.entries,
            vec![
                (Op::In(ServiceActionIn::ReadKeys), 3),
                (Op::Out(ServiceActionOut::Register), 1),
                (Op::In(ServiceActionIn::ReadReservation), 1),
            ]
        );
        assert_eq!(m.to_string(), "read-keys:3,register:1,read-reservation:1");
        assert_eq!(m.schedule().len(), 5);
    }

    #[test]
    fn rejects_bad_mixes() {
        assert_eq!("".parse::<Mix>(), Err(MixError::Empty));
        assert!(matches!(
            "read-key:1".parse::<Mix>(),
            Err(MixError::UnknownAction(..))
        ));
        assert!(matches!(
            "register:0".parse::<Mix>(),
            Err(MixError::Weight(..))
        ));
        assert!(matches!(
            "register:x".parse::<Mix>(),
            Err(MixError::Weight(..))
        ));
    }

    #[test]
    fn schedule_interleaves() {
        let m: Mix = "read-keys:3,register:1".parse().unwrap();
        let names: Vec<_> = m.schedule().iter().map(|o| o.name()).collect();
        assert_eq!(names, ["read-keys", "register", "read-keys", "read-keys"]);
    }

    #[test]
    fn requests_have_the_wire_layout() {
        // SPC-4 6.15/6.16: PR IN 5Eh, SA in byte 1, allocation length in bytes 7-8;
        // PR OUT 5Fh, type in byte 2 low nibble, parameter list length in bytes 5-8.
        let (cdb, p) = Op::In(ServiceActionIn::ReadKeys).request(0);
        assert_eq!(&cdb[..10], &[0x5e, 0x00, 0, 0, 0, 0, 0, 0x20, 0x00, 0]);
        assert!(p.is_empty());
        let (cdb, p) = Op::Out(ServiceActionOut::Reserve).request(0);
        assert_eq!(&cdb[..10], &[0x5f, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0]);
        assert_eq!(p.len(), 24);
        assert_eq!(&p[..8], &[0x50, 0x52, 0, 0, 0, 0, 0, 1]);
        let (cdb, p) = Op::Out(ServiceActionOut::Register).request(1);
        assert_eq!(cdb[1], 0x00);
        assert_eq!(&p[8..16], &[0x50, 0x52, 0, 0, 0, 0, 0, 2]);
    }
}
