//! PR OUT parameter lists and TransportIDs, as a device server (the emulation engine) parses
//! them: never panic, and what parses re-encodes to something that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pr_scsi::param::{BasicParameters, RegisterAndMoveParameters};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = BasicParameters::parse(data) {
        assert_eq!(BasicParameters::parse(&p.to_bytes()).unwrap(), p);
    }
    if let Ok(p) = RegisterAndMoveParameters::parse(data) {
        assert_eq!(RegisterAndMoveParameters::parse(&p.to_bytes()).unwrap(), p);
    }
    let _ = pr_scsi::transport_id::TransportId::parse(data, false);
    let _ = pr_scsi::transport_id::TransportId::parse(data, true);
});
