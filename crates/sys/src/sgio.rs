//! The Linux SG_IO interface (`<scsi/sg.h>`, version 3 header).

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

/// `struct sg_io_hdr` from `<scsi/sg.h>`, field for field.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct SgIoHdr {
    pub interface_id: libc::c_int,
    pub dxfer_direction: libc::c_int,
    pub cmd_len: libc::c_uchar,
    pub mx_sb_len: libc::c_uchar,
    pub iovec_count: libc::c_ushort,
    pub dxfer_len: libc::c_uint,
    pub dxferp: *mut libc::c_void,
    pub cmdp: *const libc::c_uchar,
    pub sbp: *mut libc::c_uchar,
    pub timeout: libc::c_uint,
    pub flags: libc::c_uint,
    pub pack_id: libc::c_int,
    pub usr_ptr: *mut libc::c_void,
    pub status: libc::c_uchar,
    pub masked_status: libc::c_uchar,
    pub msg_status: libc::c_uchar,
    pub sb_len_wr: libc::c_uchar,
    pub host_status: libc::c_ushort,
    pub driver_status: libc::c_ushort,
    pub resid: libc::c_int,
    pub duration: libc::c_uint,
    pub info: libc::c_uint,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<SgIoHdr>() == 88);
#[cfg(target_pointer_width = "32")]
const _: () = assert!(std::mem::size_of::<SgIoHdr>() == 64);

const SG_DXFER_NONE: libc::c_int = -1;
const SG_DXFER_TO_DEV: libc::c_int = -2;
const SG_DXFER_FROM_DEV: libc::c_int = -3;

/// Driver status bits (`SG_ERR_DRIVER_*`).
pub const DRIVER_TIMEOUT: u16 = 0x06;
pub const DRIVER_SENSE: u16 = 0x08;

/// Where the data buffer of an SG_IO command goes.
#[derive(Debug)]
pub enum DataTransfer<'a> {
    None,
    /// Data written to the device (PR OUT parameter list).
    ToDevice(&'a [u8]),
    /// Data read from the device (PR IN reply).
    FromDevice(&'a mut [u8]),
}

/// What the kernel reported for a completed SG_IO call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SgIoOutcome {
    pub status: u8,
    pub host_status: u16,
    pub driver_status: u16,
    pub resid: i32,
    pub sense_len_written: u8,
    pub duration_ms: u32,
}

/// Runs one SCSI command through SG_IO. `Err` carries the ioctl's errno; an `Ok` outcome may
/// still describe a failed command (status, host or driver status).
pub fn sg_io(
    fd: BorrowedFd<'_>,
    cdb: &[u8],
    data: DataTransfer<'_>,
    sense: &mut [u8],
    timeout: Duration,
) -> io::Result<SgIoOutcome> {
    let cmd_len =
        u8::try_from(cdb.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mx_sb_len = u8::try_from(sense.len()).unwrap_or(u8::MAX);
    let (dir, ptr, len) = match data {
        DataTransfer::None => (SG_DXFER_NONE, std::ptr::null_mut(), 0usize),
        DataTransfer::ToDevice(b) => (SG_DXFER_TO_DEV, b.as_ptr() as *mut libc::c_void, b.len()),
        DataTransfer::FromDevice(b) => (SG_DXFER_FROM_DEV, b.as_mut_ptr().cast(), b.len()),
    };
    let dxfer_len = u32::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut hdr = SgIoHdr {
        interface_id: b'S' as libc::c_int,
        dxfer_direction: dir,
        cmd_len,
        mx_sb_len,
        iovec_count: 0,
        dxfer_len,
        dxferp: ptr,
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    crate::ioctl::sg_io(fd, &mut hdr)?;
    Ok(SgIoOutcome {
        status: hdr.status,
        host_status: hdr.host_status,
        driver_status: hdr.driver_status,
        resid: hdr.resid,
        sense_len_written: hdr.sb_len_wr,
        duration_ms: hdr.duration,
    })
}

/// The sg driver version, if `fd` is an sg character device that answers SG_GET_VERSION_NUM.
pub fn sg_version(fd: BorrowedFd<'_>) -> io::Result<i32> {
    crate::ioctl::sg_get_version_num(fd)
}
