//! PR IN data from a device, as pr-ctl decodes it (a hostile or broken device must not crash it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pr_scsi::prin::{Capabilities, FullStatus, ReadKeys, ReadReservation};

fuzz_target!(|data: &[u8]| {
    let _ = ReadKeys::decode(data);
    let _ = ReadReservation::decode(data);
    let _ = Capabilities::decode(data);
    let _ = FullStatus::decode(data);
    let _ = pr_scsi::Sense::parse(data);
});
