//! Newtypes for the identifiers of persistent reservations, so a key cannot be passed as a
//! generation or a port.

use std::fmt;

/// An 8-byte reservation key (SPC-4 §5.13.2). Zero means "no key".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ReservationKey(pub u64);

impl ReservationKey {
    pub const NONE: ReservationKey = ReservationKey(0);

    pub fn from_be_bytes(b: [u8; 8]) -> Self {
        ReservationKey(u64::from_be_bytes(b))
    }

    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for ReservationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for ReservationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// The 32-bit PR generation counter returned by PR IN.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Generation(pub u32);

impl Generation {
    /// The next generation; the counter wraps as the standard requires.
    pub fn next(self) -> Generation {
        Generation(self.0.wrapping_add(1))
    }
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A relative target port identifier (SPC-4 §7.8.5.5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RelativeTargetPort(pub u16);

impl fmt::Display for RelativeTargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
