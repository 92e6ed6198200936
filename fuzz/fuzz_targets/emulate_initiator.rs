//! The `[emulate] initiator = "…"` syntax (iSCSI name with optional ,i,0x<ISID>, sas:0x…,
//! fc:0x…): never panics, and what it accepts encodes to a TransportID that decodes back to
//! itself (SPC-4 §7.6.4).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pr_backend::emulate::identity::parse_initiator;
use pr_scsi::transport_id::TransportId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = parse_initiator(text) {
        let bytes = id.to_bytes();
        let (back, used) = TransportId::parse(&bytes, false).expect("our own encoding decodes");
        assert_eq!(used, bytes.len());
        assert_eq!(back, id);
    }
});
