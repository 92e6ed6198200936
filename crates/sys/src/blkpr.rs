//! The Linux block-layer persistent-reservation ioctls (`<linux/pr.h>`): IOC_PR_REGISTER …
//! IOC_PR_CLEAR (Linux ≥ 4.5) and IOC_PR_READ_KEYS / IOC_PR_READ_RESERVATION (Linux ≥ 6.19).
//!
//! Every call returns the ioctl's non-negative result: 0 is success, a positive value is the
//! device's status as the driver reports it (a SCSI result on older kernels, a `PR_STS_*` code
//! from Linux 6.5 on); a negative result is an `io::Error`.

use std::io;
use std::os::fd::BorrowedFd;

use crate::ioctl;

/// Linux `enum pr_type` values (not the SCSI type codes).
pub mod pr_type {
    pub const WRITE_EXCLUSIVE: u32 = 1;
    pub const EXCLUSIVE_ACCESS: u32 = 2;
    pub const WRITE_EXCLUSIVE_REG_ONLY: u32 = 3;
    pub const EXCLUSIVE_ACCESS_REG_ONLY: u32 = 4;
    pub const WRITE_EXCLUSIVE_ALL_REGS: u32 = 5;
    pub const EXCLUSIVE_ACCESS_ALL_REGS: u32 = 6;
}

/// `PR_FL_IGNORE_KEY`: register without checking the existing key.
pub const PR_FL_IGNORE_KEY: u32 = 1;

/// Most keys IOC_PR_READ_KEYS accepts a buffer for (`PR_KEYS_MAX`).
pub const PR_KEYS_MAX: usize = 1 << 16;

/// `struct pr_registration`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PrRegistration {
    pub old_key: u64,
    pub new_key: u64,
    pub flags: u32,
    pub pad: u32,
}

/// `struct pr_reservation`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PrReservation {
    pub key: u64,
    pub rtype: u32,
    pub flags: u32,
}

/// `struct pr_preempt`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PrPreempt {
    pub old_key: u64,
    pub new_key: u64,
    pub rtype: u32,
    pub flags: u32,
}

/// `struct pr_clear`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PrClear {
    pub key: u64,
    pub flags: u32,
    pub pad: u32,
}

/// `struct pr_read_keys`: `keys_ptr` points at `num_keys` u64s; on return `num_keys` is the
/// number of keys the device holds, which may exceed the buffer.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PrReadKeys {
    pub generation: u32,
    pub num_keys: u32,
    pub keys_ptr: u64,
}

/// `struct pr_read_reservation`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PrReadReservation {
    pub key: u64,
    pub generation: u32,
    pub rtype: u32,
}

const _: () = assert!(std::mem::size_of::<PrRegistration>() == 24);
const _: () = assert!(std::mem::size_of::<PrReservation>() == 16);
const _: () = assert!(std::mem::size_of::<PrPreempt>() == 24);
const _: () = assert!(std::mem::size_of::<PrClear>() == 16);
const _: () = assert!(std::mem::size_of::<PrReadKeys>() == 16);
const _: () = assert!(std::mem::size_of::<PrReadReservation>() == 16);

/// `_IOC(dir, 'p', nr, size)` as the kernel's asm-generic encoding builds it.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((b'p' as u64) << 8) | nr
}
const WRITE: u64 = 1;
const READ: u64 = 2;

pub const IOC_PR_REGISTER: u64 = ioc(WRITE, 200, std::mem::size_of::<PrRegistration>());
pub const IOC_PR_RESERVE: u64 = ioc(WRITE, 201, std::mem::size_of::<PrReservation>());
pub const IOC_PR_RELEASE: u64 = ioc(WRITE, 202, std::mem::size_of::<PrReservation>());
pub const IOC_PR_PREEMPT: u64 = ioc(WRITE, 203, std::mem::size_of::<PrPreempt>());
pub const IOC_PR_PREEMPT_ABORT: u64 = ioc(WRITE, 204, std::mem::size_of::<PrPreempt>());
pub const IOC_PR_CLEAR: u64 = ioc(WRITE, 205, std::mem::size_of::<PrClear>());
pub const IOC_PR_READ_KEYS: u64 = ioc(READ | WRITE, 206, std::mem::size_of::<PrReadKeys>());
pub const IOC_PR_READ_RESERVATION: u64 = ioc(READ, 207, std::mem::size_of::<PrReadReservation>());

/// Every block-layer PR request number, for the seccomp allow-list.
pub const ALL_REQUESTS: [u64; 8] = [
    IOC_PR_REGISTER,
    IOC_PR_RESERVE,
    IOC_PR_RELEASE,
    IOC_PR_PREEMPT,
    IOC_PR_PREEMPT_ABORT,
    IOC_PR_CLEAR,
    IOC_PR_READ_KEYS,
    IOC_PR_READ_RESERVATION,
];

/// IOC_PR_REGISTER: replace `old_key` by `new_key` (0 unregisters), always with APTPL on SCSI.
pub fn register(
    fd: BorrowedFd<'_>,
    old_key: u64,
    new_key: u64,
    ignore_key: bool,
) -> io::Result<i32> {
    let mut arg = PrRegistration {
        old_key,
        new_key,
        flags: if ignore_key { PR_FL_IGNORE_KEY } else { 0 },
        pad: 0,
    };
    ioctl::pr_ioctl(fd, IOC_PR_REGISTER, &mut arg)
}

/// IOC_PR_RESERVE.
pub fn reserve(fd: BorrowedFd<'_>, key: u64, rtype: u32) -> io::Result<i32> {
    let mut arg = PrReservation {
        key,
        rtype,
        flags: 0,
    };
    ioctl::pr_ioctl(fd, IOC_PR_RESERVE, &mut arg)
}

/// IOC_PR_RELEASE.
pub fn release(fd: BorrowedFd<'_>, key: u64, rtype: u32) -> io::Result<i32> {
    let mut arg = PrReservation {
        key,
        rtype,
        flags: 0,
    };
    ioctl::pr_ioctl(fd, IOC_PR_RELEASE, &mut arg)
}

/// IOC_PR_PREEMPT or IOC_PR_PREEMPT_ABORT: `key` is the caller's, `victim` the preempted one.
pub fn preempt(
    fd: BorrowedFd<'_>,
    key: u64,
    victim: u64,
    rtype: u32,
    abort: bool,
) -> io::Result<i32> {
    let mut arg = PrPreempt {
        old_key: key,
        new_key: victim,
        rtype,
        flags: 0,
    };
    let request = if abort {
        IOC_PR_PREEMPT_ABORT
    } else {
        IOC_PR_PREEMPT
    };
    ioctl::pr_ioctl(fd, request, &mut arg)
}

/// IOC_PR_CLEAR.
pub fn clear(fd: BorrowedFd<'_>, key: u64) -> io::Result<i32> {
    let mut arg = PrClear {
        key,
        flags: 0,
        pad: 0,
    };
    ioctl::pr_ioctl(fd, IOC_PR_CLEAR, &mut arg)
}

/// What IOC_PR_READ_KEYS returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The ioctl's non-negative result (0, or the device status); the rest is valid only if 0.
    pub result: i32,
    pub generation: u32,
    /// The number of keys the device holds (may exceed `keys.len()`).
    pub total: u32,
    /// As many keys as fitted in the buffer.
    pub keys: Vec<u64>,
}

/// IOC_PR_READ_KEYS with room for `capacity` keys (at most [`PR_KEYS_MAX`]).
pub fn read_keys(fd: BorrowedFd<'_>, capacity: usize) -> io::Result<Keys> {
    let mut keys = vec![0u64; capacity.min(PR_KEYS_MAX)];
    let mut arg = PrReadKeys {
        generation: 0,
        num_keys: keys.len() as u32,
        keys_ptr: 0,
    };
    let result = ioctl::pr_read_keys(fd, &mut arg, &mut keys)?;
    keys.truncate((arg.num_keys as usize).min(keys.len()));
    Ok(Keys {
        result,
        generation: arg.generation,
        total: arg.num_keys,
        keys,
    })
}

/// What IOC_PR_READ_RESERVATION returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldReservation {
    pub result: i32,
    pub key: u64,
    pub generation: u32,
    /// A Linux `pr_type`, 0 when there is no reservation.
    pub rtype: u32,
}

/// IOC_PR_READ_RESERVATION.
pub fn read_reservation(fd: BorrowedFd<'_>) -> io::Result<HeldReservation> {
    let mut arg = PrReadReservation::default();
    let result = ioctl::pr_ioctl(fd, IOC_PR_READ_RESERVATION, &mut arg)?;
    Ok(HeldReservation {
        result,
        key: arg.key,
        generation: arg.generation,
        rtype: arg.rtype,
    })
}

/// `NVME_IOCTL_ID` (`_IO('N', 0x40)`): answered only by NVMe namespaces, with their namespace id.
pub const NVME_IOCTL_ID: u64 = 0x4e40;

/// Whether the block device is an NVMe namespace: it answers NVME_IOCTL_ID, which does no I/O.
pub fn is_nvme_namespace(fd: BorrowedFd<'_>) -> bool {
    ioctl::no_argument(fd, NVME_IOCTL_ID).is_ok_and(|ns| ns > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_linux_pr_h() {
        // Values of the macros in <linux/pr.h> on x86-64 and every asm-generic architecture.
        assert_eq!(IOC_PR_REGISTER, 0x4018_70c8);
        assert_eq!(IOC_PR_RESERVE, 0x4010_70c9);
        assert_eq!(IOC_PR_RELEASE, 0x4010_70ca);
        assert_eq!(IOC_PR_PREEMPT, 0x4018_70cb);
        assert_eq!(IOC_PR_PREEMPT_ABORT, 0x4018_70cc);
        assert_eq!(IOC_PR_CLEAR, 0x4010_70cd);
        assert_eq!(IOC_PR_READ_KEYS, 0xc010_70ce);
        assert_eq!(IOC_PR_READ_RESERVATION, 0x8010_70cf);
    }

    #[test]
    fn ioctls_on_a_regular_file_fail_cleanly() {
        use std::os::fd::AsFd;
        let f = tempfile_like();
        let e = register(f.as_fd(), 0, 1, false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY));
        let e = read_keys(f.as_fd(), 4).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY));
        assert!(!is_nvme_namespace(f.as_fd()));
    }

    fn tempfile_like() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("pr-sys-blkpr-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
