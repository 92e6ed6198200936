//! The operations pr-ctl performs, as the CDB and parameter list they put on the wire.

use pr_scsi::param::{BasicParameters, RegisterAndMoveParameters};
use pr_scsi::transport_id::TransportId;
use pr_scsi::{
    PrInCdb, PrOutCdb, RelativeTargetPort, ReservationKey, ReservationType, ServiceActionIn,
    ServiceActionOut,
};

/// Largest PR IN allocation length a helper accepts (the protocol's data limit).
pub const MAX_ALLOCATION_LENGTH: u16 = 8192;

/// A PERSISTENT RESERVE IN read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    Keys,
    Reservation,
    Capabilities,
    Status,
}

impl Read {
    pub fn service_action(self) -> ServiceActionIn {
        match self {
            Read::Keys => ServiceActionIn::ReadKeys,
            Read::Reservation => ServiceActionIn::ReadReservation,
            Read::Capabilities => ServiceActionIn::ReportCapabilities,
            Read::Status => ServiceActionIn::ReadFullStatus,
        }
    }

    pub fn cdb(self, allocation_length: u16) -> [u8; 16] {
        PrInCdb::new(self.service_action(), allocation_length).to_bytes()
    }
}

/// A PERSISTENT RESERVE OUT change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// REGISTER (or REGISTER AND IGNORE EXISTING KEY): `key` is the current key (0 when not
    /// registered), `new_key` the key to register (0 unregisters).
    Register {
        key: ReservationKey,
        new_key: ReservationKey,
        ignore_existing: bool,
        aptpl: bool,
        all_target_ports: bool,
    },
    Reserve {
        key: ReservationKey,
        rtype: ReservationType,
    },
    Release {
        key: ReservationKey,
        rtype: ReservationType,
    },
    Clear {
        key: ReservationKey,
    },
    /// PREEMPT (or PREEMPT AND ABORT) the registrations holding `victim`.
    Preempt {
        key: ReservationKey,
        victim: ReservationKey,
        rtype: ReservationType,
        abort: bool,
    },
    RegisterAndMove {
        key: ReservationKey,
        new_key: ReservationKey,
        rtype: ReservationType,
        unregister: bool,
        aptpl: bool,
        relative_target_port: RelativeTargetPort,
        transport_id: TransportId,
    },
}

impl Write {
    pub fn service_action(&self) -> ServiceActionOut {
        match self {
            Write::Register {
                ignore_existing: false,
                ..
            } => ServiceActionOut::Register,
            Write::Register {
                ignore_existing: true,
                ..
            } => ServiceActionOut::RegisterAndIgnoreExistingKey,
            Write::Reserve { .. } => ServiceActionOut::Reserve,
            Write::Release { .. } => ServiceActionOut::Release,
            Write::Clear { .. } => ServiceActionOut::Clear,
            Write::Preempt { abort: false, .. } => ServiceActionOut::Preempt,
            Write::Preempt { abort: true, .. } => ServiceActionOut::PreemptAndAbort,
            Write::RegisterAndMove { .. } => ServiceActionOut::RegisterAndMove,
        }
    }

    fn reservation_type(&self) -> Option<ReservationType> {
        match self {
            Write::Reserve { rtype, .. }
            | Write::Release { rtype, .. }
            | Write::Preempt { rtype, .. }
            | Write::RegisterAndMove { rtype, .. } => Some(*rtype),
            Write::Register { .. } | Write::Clear { .. } => None,
        }
    }

    /// The parameter list this operation sends.
    pub fn parameters(&self) -> Vec<u8> {
        let basic = |key, sark, aptpl, all_tg_pt| {
            BasicParameters {
                reservation_key: key,
                service_action_reservation_key: sark,
                aptpl,
                all_tg_pt,
                ..BasicParameters::default()
            }
            .to_bytes()
        };
        match self {
            Write::Register {
                key,
                new_key,
                aptpl,
                all_target_ports,
                ..
            } => basic(*key, *new_key, *aptpl, *all_target_ports),
            Write::Reserve { key, .. } | Write::Release { key, .. } | Write::Clear { key } => {
                basic(*key, ReservationKey::NONE, false, false)
            }
            Write::Preempt { key, victim, .. } => basic(*key, *victim, false, false),
            Write::RegisterAndMove {
                key,
                new_key,
                unregister,
                aptpl,
                relative_target_port,
                transport_id,
                ..
            } => RegisterAndMoveParameters {
                reservation_key: *key,
                service_action_reservation_key: *new_key,
                unreg: *unregister,
                aptpl: *aptpl,
                relative_target_port: *relative_target_port,
                transport_id: transport_id.clone(),
            }
            .to_bytes(),
        }
    }

    /// The CDB and parameter list.
    pub fn request(&self) -> ([u8; 16], Vec<u8>) {
        let params = self.parameters();
        let cdb = PrOutCdb::new(
            self.service_action(),
            self.reservation_type(),
            u32::try_from(params.len()).expect("parameter lists are small"),
        )
        .to_bytes();
        (cdb, params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_we_ro_matches_spc4_layout() {
        let (cdb, p) = Write::Reserve {
            key: ReservationKey(0x1111),
            rtype: ReservationType::WriteExclusiveRegistrantsOnly,
        }
        .request();
        // SPC-4 table 178: opcode, SA 01h, scope 0 | type 5, length 24 in bytes 5-8.
        assert_eq!(&cdb[..10], &[0x5f, 0x01, 0x05, 0, 0, 0, 0, 0, 0x18, 0]);
        assert_eq!(p.len(), 24);
        assert_eq!(&p[..8], &0x1111u64.to_be_bytes());
        assert_eq!(&p[8..], &[0u8; 16]);
    }

    #[test]
    fn preempt_abort_puts_the_victim_in_the_sa_key() {
        let (cdb, p) = Write::Preempt {
            key: ReservationKey(2),
            victim: ReservationKey(1),
            rtype: ReservationType::WriteExclusiveRegistrantsOnly,
            abort: true,
        }
        .request();
        assert_eq!(&cdb[..3], &[0x5f, 0x05, 0x05]);
        assert_eq!(&p[8..16], &1u64.to_be_bytes());
    }

    #[test]
    fn register_move_carries_the_transport_id() {
        let (cdb, p) = Write::RegisterAndMove {
            key: ReservationKey(1),
            new_key: ReservationKey(2),
            rtype: ReservationType::ExclusiveAccess,
            unregister: true,
            aptpl: false,
            relative_target_port: RelativeTargetPort(1),
            transport_id: TransportId::Sas {
                sas_address: [0x50, 1, 2, 3, 4, 5, 6, 7],
            },
        }
        .request();
        assert_eq!(&cdb[..3], &[0x5f, 0x07, 0x03]);
        assert_eq!(u32::from_be_bytes(cdb[5..9].try_into().unwrap()), 48);
        // SPC-4 table 183: UNREG bit 1 of byte 17, port in 18-19, TransportID length 20-23.
        assert_eq!(p[17], 0x02);
        assert_eq!(&p[18..20], &[0, 1]);
        assert_eq!(&p[20..24], &[0, 0, 0, 24]);
        assert_eq!(p[24], 0x06);
    }

    #[test]
    fn reads_use_the_allocation_length() {
        assert_eq!(
            &Read::Status.cdb(8192)[..10],
            &[0x5e, 0x03, 0, 0, 0, 0, 0, 0x20, 0x00, 0]
        );
    }
}
