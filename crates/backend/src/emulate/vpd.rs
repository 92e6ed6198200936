//! Reading a device's logical-unit identifier: INQUIRY for the Device Identification VPD page
//! (83h) through SG_IO, the data-in into a [`DataInBuffer`] of its own, parsed by pr-scsi's
//! [`lu_designator`](pr_scsi::vpd::lu_designator). Used at start-up, as root, for the devices
//! an `emulate` configuration chooses.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use pr_scsi::vpd::{inquiry_vpd_cdb, lu_designator, LuDesignator, DEVICE_IDENTIFICATION};
use pr_sys::sgio::{sg_io, DataInBuffer, DataTransfer};

/// Bytes asked for: the page header and room for many designators (SPC-4 allows up to 65535;
/// devices give a few hundred).
const ALLOCATION_LENGTH: u16 = 4096;

/// The logical unit's designator of the device behind `fd`: `Ok(None)` when the page names it
/// by no NAA, EUI-64 or SCSI name string; `Err` (in words) when the device answered no page
/// (not a SCSI device, the command failed).
pub fn read_lu_identifier(
    fd: BorrowedFd<'_>,
    timeout: Duration,
) -> Result<Option<LuDesignator>, String> {
    let cdb = inquiry_vpd_cdb(DEVICE_IDENTIFICATION, ALLOCATION_LENGTH);
    let len = usize::from(ALLOCATION_LENGTH);
    let mut buffer = DataInBuffer::new(len);
    let mut sense = [0u8; 32];
    let out = sg_io(
        fd,
        &cdb,
        DataTransfer::FromDevice {
            buffer: &mut buffer,
            len,
        },
        &mut sense,
        timeout,
    )
    .map_err(|e| format!("INQUIRY through SG_IO failed: {e}"))?;
    if out.status != 0 || out.host_status != 0 || (out.driver_status & !0x08) != 0 {
        return Err(format!(
            "INQUIRY (VPD page 83h) failed: status {:#04x}, host status {:#x}, driver status \
             {:#x}",
            out.status, out.host_status, out.driver_status
        ));
    }
    // Only what the device says it transferred (the residual is the device's word too, so
    // it is bounded to the length asked for).
    let resid = usize::try_from(out.resid).unwrap_or(0).min(len);
    let data = buffer.data(len - resid);
    lu_designator(&data).map_err(|e| e.to_string())
}
