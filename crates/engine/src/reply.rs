//! What the engine answers: a SCSI reply (status, sense, data) as data, and the outcome a store
//! or a target acts on (the new state, tasks to abort, nexuses that lost access).

use pr_scsi::sense::SENSE_BUFFER_SIZE;
use pr_scsi::{SenseCode, Status};

use crate::state::{LogicalUnit, Nexus};

/// A sense-key specific field pointer (SPC-4 §4.5.2.4.2): which byte (and bit) was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// C/D: the field is in the CDB (else in the parameter list).
    pub in_cdb: bool,
    /// The byte of the field.
    pub byte: u16,
    /// The most significant bit of the field, when it is not a whole byte.
    pub bit: Option<u8>,
}

/// Sense data of a CHECK CONDITION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenseData {
    /// Sense key, ASC and ASCQ.
    pub code: SenseCode,
    /// The field pointer, for ILLEGAL REQUEST naming a field.
    pub field: Option<FieldPointer>,
}

impl SenseData {
    /// Sense without a field pointer.
    pub fn new(code: SenseCode) -> SenseData {
        SenseData { code, field: None }
    }

    /// INVALID FIELD IN CDB pointing at `byte`/`bit`.
    pub fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> SenseData {
        SenseData {
            code: SenseCode::INVALID_FIELD_IN_CDB,
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
        }
    }

    /// INVALID FIELD IN PARAMETER LIST pointing at `byte`/`bit`.
    pub fn invalid_parameter_field(byte: u16, bit: Option<u8>) -> SenseData {
        SenseData {
            code: SenseCode::INVALID_FIELD_IN_PARAMETER_LIST,
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
        }
    }

    /// Fixed-format sense data, 96 bytes as a helper reply carries it.
    pub fn to_fixed(&self) -> [u8; SENSE_BUFFER_SIZE] {
        match self.field {
            None => self.code.to_fixed(),
            Some(f) => self
                .code
                .to_fixed_with_field_pointer(f.in_cdb, f.byte, f.bit),
        }
    }
}

/// A SCSI reply. A reservation conflict or a CHECK CONDITION is a reply, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status.
    pub status: Status,
    /// Sense data, with CHECK CONDITION only.
    pub sense: Option<SenseData>,
    /// Data-in (PR IN parameter data, already truncated to the allocation length).
    pub data: Vec<u8>,
}

impl Reply {
    /// GOOD with `data`.
    pub fn good(data: Vec<u8>) -> Reply {
        Reply {
            status: Status::GOOD,
            sense: None,
            data,
        }
    }

    /// RESERVATION CONFLICT.
    pub fn conflict() -> Reply {
        Reply {
            status: Status::RESERVATION_CONFLICT,
            sense: None,
            data: Vec::new(),
        }
    }

    /// CHECK CONDITION with `sense`.
    pub fn check(sense: SenseData) -> Reply {
        Reply {
            status: Status::CHECK_CONDITION,
            sense: Some(sense),
            data: Vec::new(),
        }
    }
}

/// The result of [`LogicalUnit::execute`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The reply for the initiator.
    pub reply: Reply,
    /// The new state, when the command changed it (a store writes exactly then). `None` for
    /// every refused command (RESERVATION CONFLICT, ILLEGAL REQUEST) and for a PR IN or PR OUT
    /// that changed nothing. A reported unit attention is the one CHECK CONDITION with a state:
    /// the command did not run, and the state is the old one without that condition.
    pub state: Option<LogicalUnit>,
    /// PREEMPT AND ABORT: the I_T nexuses whose tasks the target must abort (SPC-4
    /// §5.13.11.4.5); the issuer is never among them.
    pub tasks_to_abort: Vec<Nexus>,
    /// PREEMPT, PREEMPT AND ABORT, CLEAR: the I_T nexuses whose registration was removed, so
    /// commands they have in flight may no longer be allowed (re-check with
    /// [`LogicalUnit::access`]).
    pub access_lost: Vec<Nexus>,
}

impl Outcome {
    /// An outcome that changes nothing.
    pub fn unchanged(reply: Reply) -> Outcome {
        Outcome {
            reply,
            state: None,
            tasks_to_abort: Vec::new(),
            access_lost: Vec::new(),
        }
    }

    /// Whether the state changed, so a store must write [`Outcome::state`] before replying.
    pub fn changed(&self) -> bool {
        self.state.is_some()
    }

    /// Replaces `lu` by the new state, if any, and returns the reply.
    pub fn commit(self, lu: &mut LogicalUnit) -> Reply {
        if let Some(s) = self.state {
            *lu = s;
        }
        self.reply
    }
}
