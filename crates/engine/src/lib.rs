//! The SPC-4 persistent-reservation engine of an emulated logical unit: a pure state machine.
//!
//! [`LogicalUnit`] is the whole state of one logical unit (registrations, the reservation, the
//! PR generation, pending unit attentions); it is `serde`-serializable so a store can persist
//! it. [`LogicalUnit::execute`] takes `&self`, an I_T nexus, the CDB and the parameter list and
//! returns an [`Outcome`]: the [`Reply`] (status, sense, data) and, only when the command
//! changed something, the new state, which the caller stores before replying. A refused
//! command (RESERVATION CONFLICT, CHECK CONDITION) never carries a state, so it cannot change
//! anything. [`LogicalUnit::admit`] is the check an I/O path makes before each command.
//!
//! No I/O, no clock, no threads: the store (SQLite, etcd) and the target around the engine
//! decide where the state lives and serialise the commands of one logical unit.
//!
//! # Unit attentions
//! A pending unit attention is reported, one per command and oldest first, on the nexus's next
//! command before that command runs (PR IN and PR OUT included); the report clears it, so the
//! outcome of that command carries a new state. INQUIRY, REPORT LUNS and REQUEST SENSE
//! ([`CommandClass::Exempt`]) never see one.
//!
//! # Power loss
//! An emulated logical unit has no power; [`LogicalUnit::power_loss`] is what the operator
//! invokes to act as if it lost power (a daemon or store restart is *not* a power loss: the
//! state survives it unchanged). SPC-4 §5.13.5 makes APTPL a property of the logical unit: the
//! APTPL bit of the last successful REGISTER, REGISTER AND IGNORE EXISTING KEY or REGISTER AND
//! MOVE ([`LogicalUnit::ptpl_active`], PTPL_A) decides for every registration. So at a power
//! loss with PTPL_A=1 every registration and the reservation persist; with PTPL_A=0 all
//! registrations (all made, in effect, with APTPL=0) and with them the reservation are dropped.
//! Either way pending unit attentions are lost and the PR generation restarts at zero; the
//! POWER ON OCCURRED unit attention is the target's to report (it knows every nexus).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod access;
mod config;
mod prin;
mod prout;
mod reply;
mod state;

pub use access::{Access, Admission, CommandClass};
pub use config::EngineConfig;
pub use reply::{FieldPointer, Outcome, Reply, SenseData};
pub use state::{
    LogicalUnit, Nexus, PendingUnitAttentions, Registrant, Reservation, ReservationHolder,
    UnitAttention,
};

use pr_scsi::cdb::CdbError;
use pr_scsi::{PrInCdb, PrOutCdb, SenseCode, PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT};

fn cdb_refusal(e: CdbError) -> Outcome {
    let sense = match e {
        CdbError::InvalidField { byte, bit, .. } => SenseData::invalid_cdb_field(byte, bit),
        other => SenseData::new(other.sense_code()),
    };
    Outcome::unchanged(Reply::check(sense))
}

impl LogicalUnit {
    /// Executes one PERSISTENT RESERVE IN or OUT from `nexus`. `parameters` holds the PR OUT
    /// parameter list (at least the CDB's PARAMETER LIST LENGTH bytes; any more are ignored;
    /// fewer is a PARAMETER LIST LENGTH ERROR) and is empty for PR IN. Other opcodes are
    /// INVALID COMMAND OPERATION CODE.
    ///
    /// Checks, in order: the CDB's opcode and length, a pending unit attention, the service
    /// action, the parameter list (length, SPEC_I_PT/ALL_TG_PT/APTPL against `config`, the
    /// TransportIDs), TYPE and SCOPE (RESERVE, PREEMPT), then the reservation state.
    pub fn execute(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        parameters: &[u8],
        config: &EngineConfig,
    ) -> Outcome {
        match cdb.first() {
            Some(&PERSISTENT_RESERVE_IN) => {
                let c = match PrInCdb::parse(cdb) {
                    Ok(c) => c,
                    Err(e) => return cdb_refusal(e),
                };
                if let Some(o) = self.report_unit_attention(nexus) {
                    return o;
                }
                match c.service_action() {
                    Ok(sa) => Outcome::unchanged(Reply::good(prin::data(
                        self,
                        sa,
                        c.allocation_length,
                        config,
                    ))),
                    Err(e) => cdb_refusal(e),
                }
            }
            Some(&PERSISTENT_RESERVE_OUT) => {
                let c = match PrOutCdb::parse(cdb) {
                    Ok(c) => c,
                    Err(e) => return cdb_refusal(e),
                };
                if let Some(o) = self.report_unit_attention(nexus) {
                    return o;
                }
                match prout::execute(self, nexus, &c, parameters, config) {
                    Ok(None) => Outcome::unchanged(Reply::good(Vec::new())),
                    Ok(Some(change)) => Outcome {
                        reply: Reply::good(Vec::new()),
                        state: Some(change.state),
                        tasks_to_abort: change.tasks_to_abort,
                        access_lost: change.access_lost,
                    },
                    Err(refusal) => Outcome::unchanged(refusal.reply()),
                }
            }
            _ => Outcome::unchanged(Reply::check(SenseData::new(
                SenseCode::INVALID_COMMAND_OPERATION_CODE,
            ))),
        }
    }

    /// CHECK CONDITION, UNIT ATTENTION for the oldest condition pending for `nexus`, with the
    /// state that no longer holds it.
    fn report_unit_attention(&self, nexus: &Nexus) -> Option<Outcome> {
        let (ua, next) = self.take_unit_attention(nexus)?;
        Some(Outcome {
            reply: Reply::check(SenseData::new(ua.sense_code())),
            state: Some(next),
            tasks_to_abort: Vec::new(),
            access_lost: Vec::new(),
        })
    }
}
