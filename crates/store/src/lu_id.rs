//! The identity of a logical unit in a store.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Longest [`LuId`], in bytes: room for NAA and EUI-64 designators of VPD page 0x83 written
/// in hex with their `naa.`/`eui.` prefix, and for SCSI name strings such as iSCSI names (at
/// most 223 bytes), while a row stays small.
pub const MAX_LU_ID_LEN: usize = 256;

/// The identity of a logical unit: its VPD page 0x83 identifier (`naa.6001405…`) where it has
/// one, else a configured name. Non-empty, at most [`MAX_LU_ID_LEN`] bytes, no control
/// characters and no leading or trailing white space, so that it prints unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LuId(String);

impl LuId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<LuId, StoreError> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("is empty")
        } else if id.len() > MAX_LU_ID_LEN {
            Some("is longer than 256 bytes")
        } else if id.chars().any(char::is_control) {
            Some("contains a control character")
        } else if id.trim() != id {
            Some("begins or ends with white space")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(StoreError::InvalidLuId {
                id: id.escape_debug().take(MAX_LU_ID_LEN + 8).collect(),
                reason,
            }),
            None => Ok(LuId(id)),
        }
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for LuId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<LuId, StoreError> {
        LuId::new(s)
    }
}

impl TryFrom<String> for LuId {
    type Error = StoreError;
    fn try_from(s: String) -> Result<LuId, StoreError> {
        LuId::new(s)
    }
}

impl From<LuId> for String {
    fn from(id: LuId) -> String {
        id.0
    }
}

impl AsRef<str> for LuId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn accepts_vpd_identifiers_and_names() {
        for ok in [
            "naa.6001405a1b2c3d4e5f60718293a4b5c6",
            "t10.LIO-ORG disk0",
            "vm-disk-1",
            "é",
        ] {
            assert_eq!(LuId::new(ok).unwrap().as_str(), ok);
        }
        let max = "x".repeat(MAX_LU_ID_LEN);
        assert!(LuId::new(max).is_ok());
    }

    #[test]
    fn refuses_empty_long_control_and_padded() {
        for (bad, why) in [
            ("", "is empty"),
            ("a\nb", "contains a control character"),
            ("a\u{0}", "contains a control character"),
            (" naa.1", "begins or ends with white space"),
            ("naa.1 ", "begins or ends with white space"),
        ] {
            let e = LuId::new(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidLuId);
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
        }
        let e = LuId::new("x".repeat(MAX_LU_ID_LEN + 1)).unwrap_err();
        assert!(e.to_string().contains("longer than 256"), "{e}");
    }

    #[test]
    fn serde_validates() {
        let id: LuId = serde_json::from_str("\"naa.1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"naa.1\"");
        assert!(serde_json::from_str::<LuId>("\"\"").is_err());
    }
}
