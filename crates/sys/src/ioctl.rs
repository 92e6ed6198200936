//! Raw ioctl calls. The only module with `unsafe` in the project.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::sgio::SgIoHdr;

/// `SG_IO` from `<scsi/sg.h>`.
const SG_IO: libc::c_ulong = 0x2285;
/// `SG_GET_VERSION_NUM` from `<scsi/sg.h>`.
const SG_GET_VERSION_NUM: libc::c_ulong = 0x2282;

/// Issues `SG_IO` with a header whose pointers the caller derived from live buffers.
///
/// The header's `cmdp`, `sbp` and `dxferp` must point to buffers of at least `cmd_len`,
/// `mx_sb_len` and `dxfer_len` bytes that stay borrowed for the duration of this call; the only
/// caller, [`crate::sgio::sg_io`], builds the header from `&`/`&mut` slices it holds across the
/// call, which is why this function can be safe.
pub(crate) fn sg_io(fd: BorrowedFd<'_>, hdr: &mut SgIoHdr) -> io::Result<()> {
    // SAFETY: `hdr` is an exclusively borrowed, properly sized (`SgIoHdr` has a size assertion
    // against the kernel's 88-byte `struct sg_io_hdr`) and aligned header; the buffers it points
    // to are borrowed by our caller for longer than this call and their lengths are the ones
    // written in the header, so the kernel reads and writes only memory we own. The fd is
    // borrowed, hence open, for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), SG_IO, hdr as *mut SgIoHdr) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `SG_GET_VERSION_NUM`: the sg driver's version, which only sg devices answer.
pub(crate) fn sg_get_version_num(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut version: libc::c_int = 0;
    // SAFETY: SG_GET_VERSION_NUM writes one `int` through the pointer, which points to a live,
    // aligned local `c_int`. The fd is borrowed, hence open. Callers only pass fds of the sg
    // character major, so no other driver interprets this request number.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            SG_GET_VERSION_NUM,
            &mut version as *mut libc::c_int,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(version)
    }
}

/// Wraps descriptor 3 (SD_LISTEN_FDS_START) in an `OwnedFd` after checking it is an open socket.
pub(crate) fn take_fd3() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    const LISTEN_FDS_START: libc::c_int = 3;
    // SAFETY: fcntl(F_GETFD) and fstat only read the descriptor table and the file's metadata;
    // `st` is a live, aligned, writable `libc::stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above; fstat writes at most size_of::<libc::stat>() bytes into `st`.
    if unsafe { libc::fstat(LISTEN_FDS_START, &mut st) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("descriptor 3 is not open: {}", io::Error::last_os_error()),
        ));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptor 3 is not a socket",
        ));
    }
    // SAFETY: descriptor 3 is open (fstat succeeded) and was passed to this process by systemd
    // (the caller checked LISTEN_PID); nothing else in the process owns it, and `activation`
    // makes sure it is taken only once, so the OwnedFd is its sole owner.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(fd)
}

/// Caps the number of glibc malloc arenas. With a cap, glibc never needs to count CPUs (by
/// opening /sys/devices/system/cpu/online) when a new thread first allocates, which the seccomp
/// filter would forbid; fewer arenas also keep the resident set small.
pub(crate) fn set_malloc_arena_max(arenas: i32) -> bool {
    // SAFETY: mallopt only changes allocator tunables; M_ARENA_MAX takes any positive int. It
    // is called at start-up, before the runtime's threads exist.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
}
