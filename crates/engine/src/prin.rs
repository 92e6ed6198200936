//! PERSISTENT RESERVE IN (SPC-4 §6.15): the parameter data, built with pr-scsi's encoders from
//! the state and truncated to the allocation length (the length fields keep the full size).

use pr_scsi::prin::{
    type_mask_bit, Capabilities, FullStatus, FullStatusDescriptor, ReadKeys, ReadReservation,
    ReservationDescriptor,
};
use pr_scsi::{ReservationKey, ReservationType, ServiceActionIn};

use crate::config::EngineConfig;
use crate::state::{LogicalUnit, ReservationHolder};

/// The parameter data of `sa`, truncated to `allocation_length`.
pub(crate) fn data(
    lu: &LogicalUnit,
    sa: ServiceActionIn,
    allocation_length: u16,
    config: &EngineConfig,
) -> Vec<u8> {
    let mut d = match sa {
        ServiceActionIn::ReadKeys => read_keys(lu),
        ServiceActionIn::ReadReservation => read_reservation(lu),
        ServiceActionIn::ReportCapabilities => report_capabilities(lu, config),
        ServiceActionIn::ReadFullStatus => read_full_status(lu),
    };
    d.truncate(usize::from(allocation_length));
    d
}

fn read_keys(lu: &LogicalUnit) -> Vec<u8> {
    let keys: Vec<ReservationKey> = lu.registrants.iter().map(|r| r.key).collect();
    ReadKeys::encode(lu.generation, &keys)
}

fn read_reservation(lu: &LogicalUnit) -> Vec<u8> {
    let reservation = lu.reservation.as_ref().map(|res| ReservationDescriptor {
        // §6.15.3: the key is zero for the all-registrants types.
        key: lu
            .holder_registration()
            .map_or(ReservationKey::NONE, |r| r.key),
        scope_code: res.scope.code(),
        type_code: res.reservation_type.code(),
    });
    ReadReservation {
        generation: lu.generation,
        reservation,
    }
    .encode()
}

fn report_capabilities(lu: &LogicalUnit, config: &EngineConfig) -> Vec<u8> {
    Capabilities {
        rlr_c: false,
        crh: false,
        sip_c: config.spec_i_pt_capable,
        atp_c: config.all_tg_pt_capable,
        ptpl_c: config.ptpl_capable,
        tmv: true,
        // 001b: TEST UNIT READY is allowed through WE and EA (it is CommandClass::Allowed).
        allow_commands: 1,
        ptpl_a: lu.ptpl_active,
        type_mask: ReservationType::ALL
            .iter()
            .fold(0, |m, t| m | type_mask_bit(*t)),
    }
    .encode()
}

fn read_full_status(lu: &LogicalUnit) -> Vec<u8> {
    let descriptors: Vec<FullStatusDescriptor> = lu
        .registrants
        .iter()
        .map(|r| {
            let holder = match lu.reservation.as_ref().map(|res| &res.holder) {
                Some(ReservationHolder::AllRegistrants) => true,
                Some(ReservationHolder::Registrant(h)) => *h == r.nexus,
                None => false,
            };
            let (scope_code, type_code) = match (&lu.reservation, holder) {
                (Some(res), true) => (res.scope.code(), res.reservation_type.code()),
                _ => (0, 0),
            };
            FullStatusDescriptor {
                key: r.key,
                all_tg_pt: r.all_tg_pt,
                reservation_holder: holder,
                scope_code,
                type_code,
                relative_target_port: r.nexus.relative_target_port,
                transport_id: r.nexus.initiator.clone(),
            }
        })
        .collect();
    FullStatus::encode(lu.generation, &descriptors)
}
