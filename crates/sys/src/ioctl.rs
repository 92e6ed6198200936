//! Raw ioctl and FFI calls (SG_IO, the block-layer PR ioctls, device-mapper, libmpathpersist).
//! The only module with `unsafe` in the project.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::blkpr::{
    PrClear, PrPreempt, PrReadKeys, PrReadReservation, PrRegistration, PrReservation,
};
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
/// call, and takes data-in only into a [`crate::sgio::DataInBuffer`] (whole pages of its own,
/// `dxfer_len` at most its capacity), which is why this function can be safe.
pub(crate) fn sg_io(fd: BorrowedFd<'_>, hdr: &mut SgIoHdr) -> io::Result<()> {
    // SAFETY: `hdr` is an exclusively borrowed, properly sized (`SgIoHdr` has a size assertion
    // against the kernel's 88-byte `struct sg_io_hdr`) and aligned header; the buffers it points
    // to are borrowed by our caller for longer than this call and their lengths are the ones
    // written in the header, so the kernel reads and writes only memory we own. A device that
    // writes past `dxfer_len` reaches at most the rest of the pages the kernel mapped, which
    // for data-in are the DataInBuffer's own. The fd is
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
    // aligned local `c_int`. The fd is borrowed, hence open. It is issued on sg character
    // devices and on block devices, where the SCSI block ioctl layer answers it the same way
    // and other drivers return ENOTTY (QEMU probes block devices with it as well).
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

/// The argument structs of the fixed-size block-layer PR ioctls: plain `#[repr(C)]` integers
/// with a size assertion against `<linux/pr.h>`, and no pointers.
pub(crate) trait PrArg: Copy {}
impl PrArg for PrRegistration {}
impl PrArg for PrReservation {}
impl PrArg for PrPreempt {}
impl PrArg for PrClear {}
impl PrArg for PrReadReservation {}

/// Issues a block-layer PR ioctl whose argument is a fixed-size struct the kernel reads or
/// writes.
pub(crate) fn pr_ioctl<T: PrArg>(fd: BorrowedFd<'_>, request: u64, arg: &mut T) -> io::Result<i32> {
    // SAFETY: `arg` is an exclusively borrowed, aligned struct whose size equals the size
    // encoded in `request` (the callers pair each IOC_PR_* number with its own struct, and the
    // structs have size assertions), so the kernel's copy_from_user/copy_to_user stay inside it.
    // It holds no pointers. The fd is borrowed, hence open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::c_ulong, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// IOC_PR_READ_KEYS: the kernel writes up to `arg.num_keys` keys to `keys` and updates `arg`.
pub(crate) fn pr_read_keys(
    fd: BorrowedFd<'_>,
    arg: &mut PrReadKeys,
    keys: &mut [u64],
) -> io::Result<i32> {
    arg.num_keys = u32::try_from(keys.len())
        .unwrap_or(u32::MAX)
        .min(arg.num_keys);
    arg.keys_ptr = keys.as_mut_ptr() as u64;
    // SAFETY: `arg` is an exclusively borrowed 16-byte `struct pr_read_keys` (size assertion);
    // its `keys_ptr` points at `keys`, which is exclusively borrowed for this call and has room
    // for at least `num_keys` u64s (set just above), the most the kernel copies back.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            crate::blkpr::IOC_PR_READ_KEYS as libc::c_ulong,
            arg as *mut PrReadKeys,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Issues an ioctl that takes no argument and returns an int (NVME_IOCTL_ID).
pub(crate) fn no_argument(fd: BorrowedFd<'_>, request: u64) -> io::Result<i32> {
    // SAFETY: the only caller passes NVME_IOCTL_ID, an `_IO` request with no argument: the
    // kernel reads and writes no user memory. The fd is borrowed, hence open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::c_ulong, 0usize) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
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

/// Issues a device-mapper ioctl on /dev/mapper/control with a header-plus-data buffer.
pub(crate) fn dm(
    control: BorrowedFd<'_>,
    request: u64,
    buf: &mut crate::dm::DmBuffer,
) -> io::Result<()> {
    // SAFETY: `buf` is an exclusively borrowed `struct dm_ioctl` (312 bytes, size assertion)
    // followed by its data area in one allocation; `data_size` in the header is the size of the
    // whole buffer, which bounds what the kernel reads and writes. The request numbers passed
    // (DM_VERSION, DM_TABLE_STATUS) take exactly this layout. The fd is borrowed, hence open.
    let r = unsafe {
        libc::ioctl(
            control.as_raw_fd(),
            request as libc::c_ulong,
            buf as *mut crate::dm::DmBuffer,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

type MpathInitFn = unsafe extern "C" fn() -> libc::c_int;
type MpathPrinFn = unsafe extern "C" fn(
    libc::c_int,
    libc::c_int,
    *mut crate::mpath::PrinResp,
    libc::c_int,
    libc::c_int,
) -> libc::c_int;
type MpathProutFn = unsafe extern "C" fn(
    libc::c_int,
    libc::c_int,
    libc::c_int,
    libc::c_uint,
    *mut crate::mpath::ProutParam,
    libc::c_int,
    libc::c_int,
) -> libc::c_int;

/// libmpathpersist's entry points, valid while `_lib` stays loaded.
pub(crate) struct MpathFns {
    _lib: libloading::Library,
    init: MpathInitFn,
    prin: MpathPrinFn,
    prout: MpathProutFn,
}

impl std::fmt::Debug for MpathFns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("libmpathpersist")
    }
}

/// Loads libmpathpersist and resolves the functions of its ≥ 0.8.6 API.
pub(crate) fn mpath_load(soname: &str) -> Result<MpathFns, String> {
    // SAFETY: loading runs the library's initialisers; libmpathpersist's and its dependencies'
    // (libmultipath, libdevmapper) only set up their own state. It happens at start-up, on one
    // thread, before the sandbox.
    let lib = unsafe { libloading::Library::new(soname) }
        .map_err(|e| format!("cannot load {soname}: {e}"))?;
    let missing = |name: &str, e: libloading::Error| {
        format!("{soname} lacks {name} (multipath-tools 0.8.6 or later is required): {e}")
    };
    // SAFETY: the symbols are resolved with the C signatures of <mpath_persist.h> for the
    // 0.8.6+ API (libmpathpersist_init, mpath_persistent_reserve_in/out); the fn pointers are
    // kept only together with the Library that owns the code they point to.
    let (init, prin, prout) = unsafe {
        let init: MpathInitFn = *lib
            .get::<MpathInitFn>(b"libmpathpersist_init\0")
            .map_err(|e| missing("libmpathpersist_init", e))?;
        let prin: MpathPrinFn = *lib
            .get::<MpathPrinFn>(b"mpath_persistent_reserve_in\0")
            .map_err(|e| missing("mpath_persistent_reserve_in", e))?;
        let prout: MpathProutFn = *lib
            .get::<MpathProutFn>(b"mpath_persistent_reserve_out\0")
            .map_err(|e| missing("mpath_persistent_reserve_out", e))?;
        (init, prin, prout)
    };
    // SAFETY: `mpath_mx_alloc_len` is an `unsigned int` the library exports; writing it before
    // any other thread uses the library sets the PR IN allocation length it asks devices for.
    unsafe {
        if let Ok(len) = lib.get::<*mut libc::c_uint>(b"mpath_mx_alloc_len\0") {
            **len = crate::mpath::MAX_PARAM_LEN as libc::c_uint;
        }
    }
    Ok(MpathFns {
        _lib: lib,
        init,
        prin,
        prout,
    })
}

/// `libmpathpersist_init()`.
pub(crate) fn mpath_init(fns: &MpathFns) -> i32 {
    // SAFETY: takes no arguments; called once, from the thread that owns the library.
    unsafe { (fns.init)() }
}

/// `mpath_persistent_reserve_in(fd, sa, resp, noisy = 0, verbose = 0)`.
pub(crate) fn mpath_prin(
    fns: &MpathFns,
    fd: BorrowedFd<'_>,
    service_action: u8,
    resp: &mut crate::mpath::PrinResp,
) -> i32 {
    // SAFETY: `resp` is an exclusively borrowed `struct prin_resp` (8200 bytes, padded to three
    // whole pages; size assertions) that outlives the call; the library asks the device for at
    // most mpath_mx_alloc_len (8192) bytes into it, and what a device writes beyond that stays
    // in the struct's own pages. The fd is borrowed, hence open. Only the owning thread calls this.
    unsafe {
        (fns.prin)(
            fd.as_raw_fd(),
            libc::c_int::from(service_action),
            resp,
            0,
            0,
        )
    }
}

/// `mpath_persistent_reserve_out(fd, sa, scope, type, param, noisy = 0, verbose = 0)`.
pub(crate) fn mpath_prout(
    fns: &MpathFns,
    fd: BorrowedFd<'_>,
    service_action: u8,
    scope: u8,
    rtype: u8,
    param: &mut crate::mpath::ProutParam,
) -> i32 {
    // SAFETY: `param` is an exclusively borrowed `struct prout_param_descriptor` (layout asserted
    // field by field) whose `trnptid_list` holds `num_transportid` (≤ 32, the array's length)
    // pointers to TransportIDs the caller keeps alive across the call; the library reads them
    // and writes only into `private_buffer`. The fd is borrowed, hence open. Only the owning
    // thread calls this.
    unsafe {
        (fns.prout)(
            fd.as_raw_fd(),
            libc::c_int::from(service_action),
            libc::c_int::from(scope),
            libc::c_uint::from(rtype),
            param,
            0,
            0,
        )
    }
}
