//! The persistent-reservation state of one logical unit (SPC-4 §5.13): registrations, the
//! reservation, the PR generation and the pending unit attentions. Serializable, so a store can
//! persist it and pr-ctl can export it as JSON.

use std::collections::VecDeque;

use pr_scsi::transport_id::TransportId;
use pr_scsi::{Generation, RelativeTargetPort, ReservationKey, ReservationType, Scope, SenseCode};
use serde::{Deserialize, Serialize};

use crate::config::EngineConfig;

/// An I_T nexus (SAM-5 §4.7): an initiator port, named by its TransportID, talking to the
/// logical unit through the target port with this relative target port identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Nexus {
    /// The initiator port.
    pub initiator: TransportId,
    /// The target port.
    pub relative_target_port: RelativeTargetPort,
}

/// One registration (SPC-4 §5.13.7): a registered I_T nexus and its reservation key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registrant {
    /// The I_T nexus the registration was made for (with ALL_TG_PT, the one it was received on).
    pub nexus: Nexus,
    /// The reservation key; never zero.
    pub key: ReservationKey,
    /// Registered with ALL_TG_PT=1: the initiator port is registered on every target port.
    pub all_tg_pt: bool,
}

impl Registrant {
    /// Whether this registration is the one of `nexus`: the same I_T nexus, or the same
    /// initiator port on any target port when registered with ALL_TG_PT.
    pub fn covers(&self, nexus: &Nexus) -> bool {
        self.nexus == *nexus || (self.all_tg_pt && self.nexus.initiator == nexus.initiator)
    }
}

/// Who holds a persistent reservation (SPC-4 §5.13.10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationHolder {
    /// The registration whose [`Registrant::nexus`] this is (types 1, 3, 5 and 6).
    Registrant(Nexus),
    /// Every registrant (the all-registrants types 7 and 8).
    AllRegistrants,
}

/// The persistent reservation of the logical unit (at most one, SPC-4 §5.13.9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The reservation holder.
    pub holder: ReservationHolder,
    /// The reservation type.
    pub reservation_type: ReservationType,
    /// The scope (always LU_SCOPE).
    pub scope: Scope,
}

impl Reservation {
    /// A reservation of type `t` established through the registration of `holder`; for the
    /// all-registrants types every registrant is a holder.
    pub fn new(t: ReservationType, holder: Nexus) -> Reservation {
        Reservation {
            holder: if t.is_all_registrants() {
                ReservationHolder::AllRegistrants
            } else {
                ReservationHolder::Registrant(holder)
            },
            reservation_type: t,
            scope: Scope::LogicalUnit,
        }
    }
}

/// A unit attention condition the engine establishes (SPC-4 §5.13, additional sense codes of
/// SPC-4 Annex D).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UnitAttention {
    /// RESERVATIONS PREEMPTED (2Ah/03h): after CLEAR.
    ReservationsPreempted,
    /// RESERVATIONS RELEASED (2Ah/04h): after RELEASE of types 5–8, unregistration of the
    /// holder of types 5–6, or PREEMPT that changed the type.
    ReservationsReleased,
    /// REGISTRATIONS PREEMPTED (2Ah/05h): after PREEMPT removed the registration.
    RegistrationsPreempted,
}

impl UnitAttention {
    /// The sense code reported for the condition.
    pub fn sense_code(self) -> SenseCode {
        match self {
            UnitAttention::ReservationsPreempted => SenseCode::RESERVATIONS_PREEMPTED,
            UnitAttention::ReservationsReleased => SenseCode::RESERVATIONS_RELEASED,
            UnitAttention::RegistrationsPreempted => SenseCode::REGISTRATIONS_PREEMPTED,
        }
    }
}

/// The unit attention conditions pending for one I_T nexus, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUnitAttentions {
    /// The I_T nexus the conditions are for.
    pub nexus: Nexus,
    /// Established for an ALL_TG_PT registration: reported to the initiator port on whichever
    /// target port it next uses.
    pub all_target_ports: bool,
    /// The conditions, at most [`EngineConfig::unit_attention_depth`].
    pub conditions: VecDeque<UnitAttention>,
}

impl PendingUnitAttentions {
    fn is_for(&self, nexus: &Nexus) -> bool {
        self.nexus == *nexus || (self.all_target_ports && self.nexus.initiator == nexus.initiator)
    }
}

/// The persistent-reservation state of one logical unit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogicalUnit {
    /// The PR generation (SPC-4 §6.15.2).
    pub generation: Generation,
    /// Registrations, in the order they were made (the order of READ KEYS).
    pub registrants: Vec<Registrant>,
    /// The persistent reservation, if any.
    pub reservation: Option<Reservation>,
    /// PTPL_A: the APTPL bit of the last successful REGISTER, REGISTER AND IGNORE EXISTING KEY
    /// or REGISTER AND MOVE, which governs every registration at power loss (SPC-4 §5.13.5).
    pub ptpl_active: bool,
    /// Pending unit attention conditions; a nexus without any has no entry.
    pub unit_attentions: Vec<PendingUnitAttentions>,
}

impl LogicalUnit {
    /// The index of the registration of `nexus` in [`LogicalUnit::registrants`]: its own, else
    /// an ALL_TG_PT registration of its initiator port.
    pub fn registration_index(&self, nexus: &Nexus) -> Option<usize> {
        self.registrants
            .iter()
            .position(|r| r.nexus == *nexus)
            .or_else(|| self.registrants.iter().position(|r| r.covers(nexus)))
    }

    /// The registration of `nexus`, if it is registered.
    pub fn registration(&self, nexus: &Nexus) -> Option<&Registrant> {
        self.registration_index(nexus).map(|i| &self.registrants[i])
    }

    /// Whether `nexus` is a reservation holder (SPC-4 §5.13.10).
    pub fn is_holder(&self, nexus: &Nexus) -> bool {
        let (Some(res), Some(reg)) = (&self.reservation, self.registration(nexus)) else {
            return false;
        };
        match &res.holder {
            ReservationHolder::AllRegistrants => true,
            ReservationHolder::Registrant(h) => reg.nexus == *h,
        }
    }

    /// The registration holding a reservation of types 1, 3, 5 or 6.
    pub fn holder_registration(&self) -> Option<&Registrant> {
        match &self.reservation.as_ref()?.holder {
            ReservationHolder::AllRegistrants => None,
            ReservationHolder::Registrant(h) => self.registrants.iter().find(|r| r.nexus == *h),
        }
    }

    /// The unit attention conditions pending for `nexus`, oldest first.
    pub fn pending_unit_attentions(&self, nexus: &Nexus) -> Vec<UnitAttention> {
        self.unit_attentions
            .iter()
            .filter(|q| q.is_for(nexus))
            .flat_map(|q| q.conditions.iter().copied())
            .collect()
    }

    /// The oldest pending unit attention for `nexus` (without allocating: the I/O path asks on
    /// every command).
    pub(crate) fn first_unit_attention(&self, nexus: &Nexus) -> Option<UnitAttention> {
        self.unit_attentions
            .iter()
            .filter(|q| q.is_for(nexus))
            .find_map(|q| q.conditions.front().copied())
    }

    /// The oldest pending unit attention for `nexus`, and the state once it has been reported.
    pub(crate) fn take_unit_attention(
        &self,
        nexus: &Nexus,
    ) -> Option<(UnitAttention, LogicalUnit)> {
        let qi = self
            .unit_attentions
            .iter()
            .position(|q| q.is_for(nexus) && !q.conditions.is_empty())?;
        let mut next = self.clone();
        let ua = next.unit_attentions[qi].conditions.pop_front()?;
        if next.unit_attentions[qi].conditions.is_empty() {
            next.unit_attentions.remove(qi);
        }
        Some((ua, next))
    }

    /// Establishes `ua` for the initiator port of `registrant`. A condition already pending is
    /// not queued twice; when the queue is full the new condition is dropped (the older ones
    /// already tell the initiator to re-read the reservation state). The number of queues is
    /// bounded too (see below), so the state stays bounded however many nexuses come and go.
    pub(crate) fn establish(
        &mut self,
        registrant: &Registrant,
        ua: UnitAttention,
        config: &EngineConfig,
    ) {
        let qi = match self
            .unit_attentions
            .iter()
            .position(|q| q.nexus == registrant.nexus)
        {
            Some(i) => i,
            None => {
                // Queues of nexuses that were preempted and never came back would otherwise
                // accumulate: beyond 2 × max_registrations the oldest such queue goes.
                if self.unit_attentions.len() >= 2 * config.max_registrations.max(1) {
                    let stale = self
                        .unit_attentions
                        .iter()
                        .position(|q| !self.registrants.iter().any(|r| r.nexus == q.nexus));
                    if let Some(i) = stale {
                        self.unit_attentions.remove(i);
                    }
                }
                self.unit_attentions.push(PendingUnitAttentions {
                    nexus: registrant.nexus.clone(),
                    all_target_ports: registrant.all_tg_pt,
                    conditions: VecDeque::new(),
                });
                self.unit_attentions.len() - 1
            }
        };
        let q = &mut self.unit_attentions[qi].conditions;
        if !q.contains(&ua) && q.len() < config.unit_attention_depth {
            q.push_back(ua);
        }
        if q.is_empty() {
            self.unit_attentions.remove(qi);
        }
    }

    /// Removes the registration at `index` as REGISTER with a zero service action key does
    /// (SPC-4 §5.13.7, Registering): the holder of a type 1, 3, 5 or 6 reservation releases it (types 5
    /// and 6 with RESERVATIONS RELEASED to the other registrants); an all-registrants
    /// reservation ends with its last registrant.
    pub(crate) fn unregister(&mut self, index: usize, config: &EngineConfig) {
        let gone = self.registrants.remove(index);
        let Some(res) = &self.reservation else {
            return;
        };
        match &res.holder {
            ReservationHolder::Registrant(h) if *h == gone.nexus => {
                let t = res.reservation_type;
                self.reservation = None;
                if matches!(
                    t,
                    ReservationType::WriteExclusiveRegistrantsOnly
                        | ReservationType::ExclusiveAccessRegistrantsOnly
                ) {
                    for r in self.registrants.clone() {
                        self.establish(&r, UnitAttention::ReservationsReleased, config);
                    }
                }
            }
            ReservationHolder::AllRegistrants if self.registrants.is_empty() => {
                self.reservation = None;
            }
            _ => {}
        }
    }

    /// The state after a power loss of an emulated logical unit (see the crate documentation):
    /// with PTPL_A set, registrations and the reservation persist; without it both are lost.
    /// Pending unit attentions are volatile and lost either way, and the PR generation starts
    /// again at zero (SPC-4 §6.15.2: "set to zero by a power on").
    pub fn power_loss(&self) -> LogicalUnit {
        if self.ptpl_active {
            LogicalUnit {
                generation: Generation(0),
                registrants: self.registrants.clone(),
                reservation: self.reservation.clone(),
                ptpl_active: true,
                unit_attentions: Vec::new(),
            }
        } else {
            LogicalUnit::default()
        }
    }

    /// Checks the invariants every reachable state keeps, naming the first one broken: keys are
    /// non-zero, each I_T nexus registered once, the holder of a type 1, 3, 5 or 6 reservation
    /// is registered, the holder kind matches the type, an all-registrants reservation has a
    /// registrant, no unit attention queue is empty.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (i, r) in self.registrants.iter().enumerate() {
            if r.key.is_zero() {
                return Err(format!("registration {i} has key 0"));
            }
            if self.registrants[..i].iter().any(|o| o.nexus == r.nexus) {
                return Err(format!("I_T nexus of registration {i} registered twice"));
            }
        }
        if let Some(res) = &self.reservation {
            match &res.holder {
                ReservationHolder::AllRegistrants => {
                    if !res.reservation_type.is_all_registrants() {
                        return Err("all-registrants holder with another type".into());
                    }
                    if self.registrants.is_empty() {
                        return Err("all-registrants reservation without registrants".into());
                    }
                }
                ReservationHolder::Registrant(h) => {
                    if res.reservation_type.is_all_registrants() {
                        return Err("single holder of an all-registrants type".into());
                    }
                    if !self.registrants.iter().any(|r| r.nexus == *h) {
                        return Err("reservation holder is not registered".into());
                    }
                }
            }
        }
        if self.unit_attentions.iter().any(|q| q.conditions.is_empty()) {
            return Err("empty unit attention queue".into());
        }
        Ok(())
    }
}
