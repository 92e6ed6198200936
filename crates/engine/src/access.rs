//! The access check of an I/O path: may this I_T nexus run a command of this class now, and
//! which unit attention must it see first (SPC-4 §5.13.1, table "SPC commands that are
//! allowed in the presence of various reservations", and SBC-3's table of the block commands
//! allowed in their presence for reads and writes; SAM-5 §5.14 for unit attentions).

use pr_scsi::ReservationType;

use crate::reply::{Reply, SenseData};
use crate::state::{LogicalUnit, Nexus, UnitAttention};

/// How a command is treated by persistent reservations. The target classifies each opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandClass {
    /// Reads the medium (SBC-3: READ, VERIFY, PRE-FETCH …): blocked by EA types for those
    /// without access, allowed through WE types.
    Read,
    /// Changes the medium (SBC-3: WRITE, WRITE SAME, UNMAP, SYNCHRONIZE CACHE …).
    Write,
    /// Other commands the SPC-4 table answers "Conflict" for a non-holder of WE/EA and for an
    /// unregistered nexus under the registrants types (MODE SELECT, MODE SENSE, LOG SELECT,
    /// READ BUFFER, WRITE BUFFER, RECEIVE DIAGNOSTIC RESULTS, SEND DIAGNOSTIC …): as a write.
    Other,
    /// Allowed through every reservation, but a pending unit attention is reported first:
    /// PERSISTENT RESERVE IN/OUT, TEST UNIT READY (ALLOW COMMANDS 001b), LOG SENSE, READ
    /// CAPACITY, REPORT TARGET PORT GROUPS, REPORT SUPPORTED OPERATION CODES.
    Allowed,
    /// INQUIRY, REPORT LUNS, REQUEST SENSE: never blocked and never answered with a unit
    /// attention (SAM-5 §5.14).
    Exempt,
}

/// The answer of the access check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Run the command.
    Allowed,
    /// Do not run it: answer CHECK CONDITION, UNIT ATTENTION with this condition.
    UnitAttention(UnitAttention),
    /// Do not run it: answer RESERVATION CONFLICT.
    ReservationConflict,
}

impl Access {
    /// The reply that ends the command, or `None` when it may run.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Access::Allowed => None,
            Access::UnitAttention(ua) => Some(Reply::check(SenseData::new(ua.sense_code()))),
            Access::ReservationConflict => Some(Reply::conflict()),
        }
    }
}

/// [`Access`] and, when a unit attention was reported, the state without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The decision.
    pub access: Access,
    /// The state once the reported unit attention is cleared; `None` when nothing changed.
    pub state: Option<LogicalUnit>,
}

impl LogicalUnit {
    /// Whether the reservation lets `nexus` run a command of `class`, unit attentions aside.
    pub fn reservation_allows(&self, nexus: &Nexus, class: CommandClass) -> bool {
        let Some(res) = &self.reservation else {
            return true;
        };
        let holder = self.is_holder(nexus);
        let registered = self.registration(nexus).is_some();
        use ReservationType::*;
        match (class, res.reservation_type) {
            (CommandClass::Allowed | CommandClass::Exempt, _) => true,
            (CommandClass::Read, WriteExclusive) => true,
            (CommandClass::Read, ExclusiveAccess) => holder,
            (CommandClass::Read, WriteExclusiveRegistrantsOnly | WriteExclusiveAllRegistrants) => {
                true
            }
            (
                CommandClass::Read,
                ExclusiveAccessRegistrantsOnly | ExclusiveAccessAllRegistrants,
            ) => registered,
            (CommandClass::Write | CommandClass::Other, WriteExclusive | ExclusiveAccess) => holder,
            (CommandClass::Write | CommandClass::Other, _) => registered,
        }
    }

    /// The decision for a command of `class` from `nexus`: a pending unit attention first
    /// (except for [`CommandClass::Exempt`]), then the reservation.
    pub fn access(&self, nexus: &Nexus, class: CommandClass) -> Access {
        if class != CommandClass::Exempt {
            if let Some(ua) = self.first_unit_attention(nexus) {
                return Access::UnitAttention(ua);
            }
        }
        if self.reservation_allows(nexus, class) {
            Access::Allowed
        } else {
            Access::ReservationConflict
        }
    }

    /// Like [`LogicalUnit::access`], and also the state with the reported unit attention
    /// cleared, for a target that then saves it.
    pub fn admit(&self, nexus: &Nexus, class: CommandClass) -> Admission {
        match self.access(nexus, class) {
            Access::UnitAttention(_) => {
                let (ua, next) = self
                    .take_unit_attention(nexus)
                    .expect("access() found a pending unit attention");
                Admission {
                    access: Access::UnitAttention(ua),
                    state: Some(next),
                }
            }
            access => Admission {
                access,
                state: None,
            },
        }
    }
}
