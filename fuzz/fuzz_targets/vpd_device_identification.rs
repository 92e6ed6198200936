//! The Device Identification VPD page parser (pr-scsi's `vpd::lu_designator`) on arbitrary
//! bytes, as a hostile device could return them: it must never panic, and an identifier it
//! returns must be one the store accepts as a logical-unit identifier, found in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pr_scsi::vpd::{lu_designator, DesignatorKind};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(d)) = lu_designator(data) {
        assert!(!d.name.is_empty() && d.name.len() <= 256);
        assert!(d.name.chars().all(|c| c.is_ascii_graphic()));
        match d.kind {
            DesignatorKind::Naa => assert!(d.name.starts_with("naa.")),
            DesignatorKind::Eui64 => assert!(d.name.starts_with("eui.")),
            DesignatorKind::ScsiName => {
                assert!(data.windows(d.name.len()).any(|w| w == d.name.as_bytes()))
            }
        }
    }
});
