//! SCSI status codes (SAM-5 table 32).

use std::fmt;

/// A SCSI status byte. Devices may return any value, so this is a newtype with named constants
/// rather than a closed enum.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Status(pub u8);

impl Status {
    pub const GOOD: Status = Status(0x00);
    pub const CHECK_CONDITION: Status = Status(0x02);
    pub const CONDITION_MET: Status = Status(0x04);
    pub const BUSY: Status = Status(0x08);
    pub const RESERVATION_CONFLICT: Status = Status(0x18);
    pub const TASK_SET_FULL: Status = Status(0x28);
    pub const ACA_ACTIVE: Status = Status(0x30);
    pub const TASK_ABORTED: Status = Status(0x40);

    /// The standard's name for this status, or `None` for a reserved value.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Status::GOOD => "GOOD",
            Status::CHECK_CONDITION => "CHECK CONDITION",
            Status::CONDITION_MET => "CONDITION MET",
            Status::BUSY => "BUSY",
            Status::RESERVATION_CONFLICT => "RESERVATION CONFLICT",
            Status::TASK_SET_FULL => "TASK SET FULL",
            Status::ACA_ACTIVE => "ACA ACTIVE",
            Status::TASK_ABORTED => "TASK ABORTED",
            _ => return None,
        })
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({:#04x})", self.0),
            None => write!(f, "status {:#04x}", self.0),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_those_of_sam5_table_32() {
        assert_eq!(Status::GOOD.0, 0x00);
        assert_eq!(Status::CHECK_CONDITION.0, 0x02);
        assert_eq!(Status::BUSY.0, 0x08);
        assert_eq!(Status::RESERVATION_CONFLICT.0, 0x18);
        assert_eq!(Status::TASK_SET_FULL.0, 0x28);
        assert_eq!(format!("{}", Status(0x18)), "RESERVATION CONFLICT (0x18)");
        assert_eq!(format!("{}", Status(0x7e)), "status 0x7e");
    }
}
