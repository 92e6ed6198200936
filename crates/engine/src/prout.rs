//! PERSISTENT RESERVE OUT (SPC-4 §5.13.11, §6.16). Every service action reads the current state
//! and either refuses ([`Refusal`], which carries no state, so a refused command cannot change
//! anything) or builds the next state on a copy ([`Change`]).

use pr_scsi::param::{BasicParameters, RegisterAndMoveParameters, BASIC_PARAMETER_LIST_LEN};
use pr_scsi::transport_id::TransportId;
use pr_scsi::{PrOutCdb, ReservationKey, ReservationType, SenseCode, ServiceActionOut};

use crate::config::EngineConfig;
use crate::reply::{Reply, SenseData};
use crate::state::{LogicalUnit, Nexus, Registrant, Reservation, ReservationHolder, UnitAttention};

/// Why a PR OUT was not performed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// RESERVATION CONFLICT.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(SenseData),
}

impl Refusal {
    pub(crate) fn reply(&self) -> Reply {
        match self {
            Refusal::Conflict => Reply::conflict(),
            Refusal::Check(s) => Reply::check(*s),
        }
    }
}

/// A performed PR OUT: the next state and what the target must do about other nexuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) state: LogicalUnit,
    pub(crate) tasks_to_abort: Vec<Nexus>,
    pub(crate) access_lost: Vec<Nexus>,
}

impl Change {
    fn of(state: LogicalUnit) -> Change {
        Change {
            state,
            tasks_to_abort: Vec::new(),
            access_lost: Vec::new(),
        }
    }
}

/// GOOD with no change (`None`), GOOD with a change, or a refusal.
pub(crate) type Step = Result<Option<Change>, Refusal>;

fn parameter_field(byte: u16, bit: Option<u8>) -> Refusal {
    Refusal::Check(SenseData::invalid_parameter_field(byte, bit))
}

fn check(code: SenseCode) -> Refusal {
    Refusal::Check(SenseData::new(code))
}

fn cdb_error(e: pr_scsi::cdb::CdbError) -> Refusal {
    Refusal::Check(match e {
        pr_scsi::cdb::CdbError::InvalidField { byte, bit, .. } => {
            SenseData::invalid_cdb_field(byte, bit)
        }
        other => SenseData::new(other.sense_code()),
    })
}

fn param_error(e: pr_scsi::param::ParamError) -> Refusal {
    Refusal::Check(match e {
        pr_scsi::param::ParamError::InvalidField { byte, .. } => {
            SenseData::invalid_parameter_field(byte, None)
        }
        other => SenseData::new(other.sense_code()),
    })
}

/// Runs one PR OUT whose CDB has been parsed and whose unit attentions have been reported.
pub(crate) fn execute(
    lu: &LogicalUnit,
    nexus: &Nexus,
    cdb: &PrOutCdb,
    parameters: &[u8],
    config: &EngineConfig,
) -> Step {
    let sa = cdb.service_action().map_err(cdb_error)?;
    let length = cdb.parameter_list_length as usize;
    let Some(list) = parameters.get(..length) else {
        return Err(check(SenseCode::PARAMETER_LIST_LENGTH_ERROR));
    };
    let basic = || basic_parameters(sa, list, config);
    match sa {
        ServiceActionOut::Register => register(lu, nexus, &basic()?, list, false, config),
        ServiceActionOut::RegisterAndIgnoreExistingKey => {
            register(lu, nexus, &basic()?, list, true, config)
        }
        ServiceActionOut::Reserve => {
            let p = basic()?;
            reserve(lu, nexus, &p, reserve_type(cdb)?)
        }
        ServiceActionOut::Release => release(lu, nexus, &basic()?, cdb, config),
        ServiceActionOut::Clear => clear(lu, nexus, &basic()?, config),
        ServiceActionOut::Preempt | ServiceActionOut::PreemptAndAbort => {
            let p = basic()?;
            let t = reserve_type(cdb)?;
            let abort = sa == ServiceActionOut::PreemptAndAbort;
            preempt(lu, nexus, &p, t, abort, config)
        }
        ServiceActionOut::RegisterAndMove => {
            let p = RegisterAndMoveParameters::parse(list).map_err(param_error)?;
            if p.aptpl && !config.ptpl_capable {
                return Err(parameter_field(17, Some(0)));
            }
            register_and_move(lu, nexus, &p, config)
        }
        // Optional (SPC-5); not implemented, and REPORT CAPABILITIES says RLR_C=0.
        ServiceActionOut::ReplaceLostReservation => {
            Err(Refusal::Check(SenseData::invalid_cdb_field(1, Some(4))))
        }
    }
}

/// The basic parameter list of `sa` (SPC-4 table 183), with the flags `config` does not support
/// and SPEC_I_PT outside REGISTER refused.
fn basic_parameters(
    sa: ServiceActionOut,
    list: &[u8],
    config: &EngineConfig,
) -> Result<BasicParameters, Refusal> {
    if list.len() < BASIC_PARAMETER_LIST_LEN {
        return Err(check(SenseCode::PARAMETER_LIST_LENGTH_ERROR));
    }
    let spec_i_pt = list[20] & 0x08 != 0;
    if spec_i_pt && (sa != ServiceActionOut::Register || !config.spec_i_pt_capable) {
        return Err(parameter_field(20, Some(3)));
    }
    let p = BasicParameters::parse(list).map_err(param_error)?;
    let registering = matches!(
        sa,
        ServiceActionOut::Register | ServiceActionOut::RegisterAndIgnoreExistingKey
    );
    if registering && p.all_tg_pt && !config.all_tg_pt_capable {
        return Err(parameter_field(20, Some(2)));
    }
    if registering && p.aptpl && !config.ptpl_capable {
        return Err(parameter_field(20, Some(0)));
    }
    Ok(p)
}

/// The TYPE and SCOPE of RESERVE and PREEMPT, checked before the reservation state.
fn reserve_type(cdb: &PrOutCdb) -> Result<ReservationType, Refusal> {
    cdb.scope().map_err(cdb_error)?;
    cdb.reservation_type().map_err(cdb_error)
}

/// The registration index of `nexus` when `key` is its reservation key, else RESERVATION
/// CONFLICT (unregistered, or key mismatch).
fn registered_with(lu: &LogicalUnit, nexus: &Nexus, key: ReservationKey) -> Result<usize, Refusal> {
    match lu.registration_index(nexus) {
        Some(i) if lu.registrants[i].key == key => Ok(i),
        _ => Err(Refusal::Conflict),
    }
}

/// The TransportIDs of a SPEC_I_PT list with the offset of each in the parameter list.
fn spec_i_pt_list(list: &[u8]) -> Result<Vec<(u16, TransportId)>, Refusal> {
    let mut ids = Vec::new();
    let mut at = BASIC_PARAMETER_LIST_LEN + 4;
    while at < list.len() {
        let offset = u16::try_from(at).unwrap_or(u16::MAX);
        let (id, used) =
            TransportId::parse(&list[at..], false).map_err(|_| parameter_field(offset, None))?;
        ids.push((offset, id));
        at += used;
    }
    Ok(ids)
}

fn check_capacity(next: &LogicalUnit, config: &EngineConfig) -> Result<(), Refusal> {
    if next.registrants.len() > config.max_registrations {
        return Err(check(SenseCode::INSUFFICIENT_REGISTRATION_RESOURCES));
    }
    Ok(())
}

/// REGISTER and REGISTER AND IGNORE EXISTING KEY (SPC-4 §5.13.7, Registering).
fn register(
    lu: &LogicalUnit,
    nexus: &Nexus,
    p: &BasicParameters,
    list: &[u8],
    ignore_existing_key: bool,
    config: &EngineConfig,
) -> Step {
    let new_key = p.service_action_reservation_key;
    let mut next = lu.clone();
    match lu.registration_index(nexus) {
        None => {
            if !ignore_existing_key && !p.reservation_key.is_zero() {
                return Err(Refusal::Conflict);
            }
            if new_key.is_zero() {
                return Ok(None);
            }
            next.registrants.push(Registrant {
                nexus: nexus.clone(),
                key: new_key,
                all_tg_pt: p.all_tg_pt,
            });
            if p.spec_i_pt {
                // All or nothing: any bad entry refuses the whole command.
                for (offset, initiator) in spec_i_pt_list(list)? {
                    let target = Nexus {
                        initiator,
                        relative_target_port: nexus.relative_target_port,
                    };
                    if next.registration_index(&target).is_some() {
                        return Err(parameter_field(offset, None));
                    }
                    next.registrants.push(Registrant {
                        nexus: target,
                        key: new_key,
                        all_tg_pt: p.all_tg_pt,
                    });
                }
            }
            check_capacity(&next, config)?;
        }
        Some(i) => {
            if !ignore_existing_key && p.reservation_key != lu.registrants[i].key {
                return Err(Refusal::Conflict);
            }
            if p.spec_i_pt {
                return Err(parameter_field(20, Some(3)));
            }
            if new_key.is_zero() {
                next.unregister(i, config);
            } else {
                next.registrants[i].key = new_key;
            }
        }
    }
    next.ptpl_active = p.aptpl;
    next.generation = next.generation.next();
    Ok(Some(Change::of(next)))
}

/// RESERVE (SPC-4 §5.13.9).
fn reserve(lu: &LogicalUnit, nexus: &Nexus, p: &BasicParameters, t: ReservationType) -> Step {
    let i = registered_with(lu, nexus, p.reservation_key)?;
    match &lu.reservation {
        Some(res) if lu.is_holder(nexus) && res.reservation_type == t => Ok(None),
        Some(_) => Err(Refusal::Conflict),
        None => {
            let mut next = lu.clone();
            next.reservation = Some(Reservation::new(t, lu.registrants[i].nexus.clone()));
            Ok(Some(Change::of(next)))
        }
    }
}

/// RELEASE (SPC-4 §5.13.11.2.2).
fn release(
    lu: &LogicalUnit,
    nexus: &Nexus,
    p: &BasicParameters,
    cdb: &PrOutCdb,
    config: &EngineConfig,
) -> Step {
    let i = registered_with(lu, nexus, p.reservation_key)?;
    let Some(res) = &lu.reservation else {
        return Ok(None);
    };
    if !lu.is_holder(nexus) {
        return Ok(None);
    }
    if cdb.scope_code != 0 || cdb.type_code != res.reservation_type.code() {
        return Err(check(SenseCode::INVALID_RELEASE_OF_PERSISTENT_RESERVATION));
    }
    let mut next = lu.clone();
    next.reservation = None;
    if res.reservation_type.is_registrants_type() {
        let me = &lu.registrants[i].nexus;
        for r in lu.registrants.iter().filter(|r| r.nexus != *me) {
            next.establish(r, UnitAttention::ReservationsReleased, config);
        }
    }
    Ok(Some(Change::of(next)))
}

/// CLEAR (SPC-4 §5.13.11.2.3).
fn clear(lu: &LogicalUnit, nexus: &Nexus, p: &BasicParameters, config: &EngineConfig) -> Step {
    let i = registered_with(lu, nexus, p.reservation_key)?;
    let me = &lu.registrants[i].nexus;
    let mut next = lu.clone();
    next.registrants.clear();
    next.reservation = None;
    let mut lost = Vec::new();
    for r in lu.registrants.iter().filter(|r| r.nexus != *me) {
        next.establish(r, UnitAttention::ReservationsPreempted, config);
        lost.push(r.nexus.clone());
    }
    next.generation = next.generation.next();
    Ok(Some(Change {
        state: next,
        tasks_to_abort: Vec::new(),
        access_lost: lost,
    }))
}

/// Removes the registrations `remove` selects, returning them.
fn take_registrants(
    lu: &mut LogicalUnit,
    mut remove: impl FnMut(&Registrant) -> bool,
) -> Vec<Registrant> {
    let (gone, kept) = std::mem::take(&mut lu.registrants)
        .into_iter()
        .partition(|r| remove(r));
    lu.registrants = kept;
    gone
}

/// PREEMPT and PREEMPT AND ABORT (SPC-4 §5.13.11.4, Preempting, and its flowchart).
fn preempt(
    lu: &LogicalUnit,
    nexus: &Nexus,
    p: &BasicParameters,
    t: ReservationType,
    abort: bool,
    config: &EngineConfig,
) -> Step {
    let i = registered_with(lu, nexus, p.reservation_key)?;
    let me = lu.registrants[i].nexus.clone();
    let victim_key = p.service_action_reservation_key;
    let mut next = lu.clone();
    let holder_key = lu.holder_registration().map(|r| r.key);
    let removed = match &lu.reservation {
        Some(res) if res.reservation_type.is_all_registrants() && victim_key.is_zero() => {
            // §5.13.11.4.3: an all-registrants reservation preempted with key 0: every other
            // registration goes, the issuer holds the new reservation.
            let gone = take_registrants(&mut next, |r| r.nexus != me);
            next.reservation = Some(Reservation::new(t, me.clone()));
            gone
        }
        Some(res) if holder_key == Some(victim_key) => {
            // §5.13.11.4.3: the service action key names the holder.
            let gone = take_registrants(&mut next, |r| r.key == victim_key && r.nexus != me);
            next.reservation = Some(Reservation::new(t, me.clone()));
            if res.reservation_type != t {
                for r in next.registrants.clone().iter().filter(|r| r.nexus != me) {
                    next.establish(r, UnitAttention::ReservationsReleased, config);
                }
            }
            gone
        }
        _ => {
            // §5.13.11.4.4: removing registrations only.
            if victim_key.is_zero() {
                return Err(parameter_field(8, None));
            }
            let gone = take_registrants(&mut next, |r| r.key == victim_key);
            if gone.is_empty() {
                return Err(Refusal::Conflict);
            }
            if next.registrants.is_empty()
                && matches!(
                    next.reservation.as_ref().map(|r| &r.holder),
                    Some(ReservationHolder::AllRegistrants)
                )
            {
                next.reservation = None;
            }
            gone
        }
    };
    let others: Vec<&Registrant> = removed.iter().filter(|r| r.nexus != me).collect();
    for r in &others {
        next.establish(r, UnitAttention::RegistrationsPreempted, config);
    }
    next.generation = next.generation.next();
    Ok(Some(Change {
        state: next,
        tasks_to_abort: if abort {
            others.iter().map(|r| r.nexus.clone()).collect()
        } else {
            Vec::new()
        },
        access_lost: removed.into_iter().map(|r| r.nexus).collect(),
    }))
}

/// REGISTER AND MOVE (SPC-4 §5.13.8, §6.16.4).
fn register_and_move(
    lu: &LogicalUnit,
    nexus: &Nexus,
    p: &RegisterAndMoveParameters,
    config: &EngineConfig,
) -> Step {
    let i = registered_with(lu, nexus, p.reservation_key)?;
    match &lu.reservation {
        Some(res) if !res.reservation_type.is_all_registrants() && lu.is_holder(nexus) => {}
        _ => return Err(Refusal::Conflict),
    }
    if p.service_action_reservation_key.is_zero() {
        return Err(parameter_field(8, None));
    }
    let destination = Nexus {
        initiator: p.transport_id.clone(),
        relative_target_port: p.relative_target_port,
    };
    let me = lu.registrants[i].clone();
    if me.covers(&destination) {
        return Err(parameter_field(24, None));
    }
    let mut next = lu.clone();
    let holder = match next.registration(&destination) {
        Some(r) => r.nexus.clone(),
        None => {
            next.registrants.push(Registrant {
                nexus: destination.clone(),
                key: p.service_action_reservation_key,
                all_tg_pt: false,
            });
            destination
        }
    };
    if let Some(res) = next.reservation.as_mut() {
        res.holder = ReservationHolder::Registrant(holder);
    }
    if p.unreg {
        next.registrants.retain(|r| r.nexus != me.nexus);
    }
    check_capacity(&next, config)?;
    next.ptpl_active = p.aptpl;
    next.generation = next.generation.next();
    Ok(Some(Change::of(next)))
}
