//! What the SG_IO backend makes of anything the kernel and a device can report: status, host
//! and driver status, residual, sense length and sense bytes. Always a defined reply: never a
//! panic, never more data than the length the device was given, a status SAM-5 defines, and no
//! sense byte past what the kernel says it wrote unless the daemon built the sense itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pr_backend::sgio::{reply_from_sg_io, DataIn};
use pr_sys::sgio::{DataInBuffer, SgIoOutcome};

fuzz_target!(|data: &[u8]| {
    if data.len() < 14 {
        return;
    }
    let outcome = SgIoOutcome {
        status: data[0],
        host_status: u16::from_le_bytes([data[1], data[2]]),
        driver_status: u16::from_le_bytes([data[3], data[4]]),
        resid: i32::from_le_bytes([data[5], data[6], data[7], data[8]]),
        sense_len_written: data[9],
        duration_ms: 0,
    };
    let len = usize::from(u16::from_le_bytes([data[10], data[11]])) % 8193;
    let errno = (data[12] & 0x80 != 0).then(|| i32::from(data[13]));
    let mut sense = [0u8; 96];
    let n = (data.len() - 14).min(96);
    sense[..n].copy_from_slice(&data[14..14 + n]);
    let buffer = DataInBuffer::new(len);
    let result = match errno {
        Some(e) => Err(std::io::Error::from_raw_os_error(e)),
        None => Ok(outcome),
    };
    let reply = reply_from_sg_io(result, sense, DataIn::Buffer(&buffer, len));
    assert!(reply.data.len() <= len);
    assert!(reply.status.name().is_some(), "{:?}", reply.status);
    if !reply.data.is_empty() {
        assert_eq!(reply.status.0, 0);
    }
});
