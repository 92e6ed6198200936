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

/// The size of a page: the unit in which the kernel maps a caller's buffer for a transfer.
pub const PAGE_SIZE: usize = 4096;

/// The smallest data-in buffer: the protocol's largest transfer (8 KiB), as QEMU's C helper
/// always reads into one 8 KiB buffer.
pub const MIN_DATA_IN: usize = 8192;

/// One page, aligned to a page boundary.
#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; PAGE_SIZE]);

const _: () = assert!(std::mem::size_of::<Page>() == PAGE_SIZE);
const _: () = assert!(std::mem::align_of::<Page>() == PAGE_SIZE);

/// The buffer a device writes PR IN data into: page-aligned, a whole number of pages, at least
/// [`MIN_DATA_IN`] bytes, and used for nothing else.
///
/// Devices have been seen writing past the length they were given (LIO's READ FULL STATUS
/// writes up to 20 bytes beyond a small allocation length). The kernel maps the caller's pages
/// for the transfer, so such bytes land in whatever follows the buffer in those pages. With
/// whole pages of our own, everything the kernel maps for a transfer of at most
/// [`capacity`](Self::capacity) bytes belongs to this buffer, and only the bytes the reply may
/// carry are ever read back ([`data`](Self::data)). It starts zeroed, so a device that claims
/// more data than it wrote returns zeros, never an earlier request's bytes.
pub struct DataInBuffer {
    pages: Box<[Page]>,
}

thread_local! {
    /// The last smallest-size buffer this thread dropped, kept for its next request: an aligned
    /// allocation per request goes past the allocator's per-thread cache to a shared arena,
    /// whose lock the threads serving connections then contend for.
    static SPARE: std::cell::Cell<Option<Box<[Page]>>> = const { std::cell::Cell::new(None) };
}

const MIN_PAGES: usize = MIN_DATA_IN / PAGE_SIZE;

impl DataInBuffer {
    /// A zeroed buffer of at least `min_len` bytes (and at least [`MIN_DATA_IN`]).
    pub fn new(min_len: usize) -> DataInBuffer {
        let pages = min_len.max(MIN_DATA_IN).div_ceil(PAGE_SIZE);
        if pages == MIN_PAGES {
            if let Some(mut spare) = SPARE.try_with(|s| s.take()).ok().flatten() {
                // Zeroed again: nothing of an earlier request can come back in a reply.
                spare.fill(Page([0; PAGE_SIZE]));
                return DataInBuffer { pages: spare };
            }
        }
        DataInBuffer {
            pages: vec![Page([0; PAGE_SIZE]); pages].into_boxed_slice(),
        }
    }

    /// How many bytes the buffer holds: the largest transfer it can be given.
    pub fn capacity(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }

    /// The first `len` bytes (at most [`capacity`](Self::capacity); more is cut to it).
    pub fn data(&self, len: usize) -> Vec<u8> {
        let len = len.min(self.capacity());
        let mut out = Vec::with_capacity(len);
        for page in self.pages.iter() {
            let rest = len - out.len();
            if rest == 0 {
                break;
            }
            out.extend_from_slice(&page.0[..rest.min(PAGE_SIZE)]);
        }
        out
    }

    fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.pages.as_mut_ptr().cast()
    }
}

impl Drop for DataInBuffer {
    fn drop(&mut self) {
        if self.pages.len() == MIN_PAGES {
            let pages = std::mem::take(&mut self.pages);
            // During the thread's exit the cache may be gone already: then it is freed.
            let _ = SPARE.try_with(|s| s.set(Some(pages)));
        }
    }
}

impl std::fmt::Debug for DataInBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataInBuffer({} bytes)", self.capacity())
    }
}

/// Where the data buffer of an SG_IO command goes.
#[derive(Debug)]
pub enum DataTransfer<'a> {
    None,
    /// Data written to the device (PR OUT parameter list).
    ToDevice(&'a [u8]),
    /// Data read from the device (PR IN reply): the device is told `len` bytes, which must fit
    /// in the buffer.
    FromDevice {
        buffer: &'a mut DataInBuffer,
        len: usize,
    },
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
        DataTransfer::FromDevice { buffer, len } => {
            if len > buffer.capacity() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "data-in length {len} exceeds the {}-byte buffer",
                        buffer.capacity()
                    ),
                ));
            }
            (SG_DXFER_FROM_DEV, buffer.as_mut_ptr(), len)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread reuses its last smallest buffer, zeroed again: what a device wrote for one
    /// request never comes back in the next one's reply.
    #[test]
    fn a_reused_data_in_buffer_starts_zeroed() {
        let mut b = DataInBuffer::new(0);
        let first = b.as_mut_ptr() as usize;
        b.pages[0].0.fill(0xa5);
        b.pages[1].0[4095] = 0x5a;
        drop(b);
        let mut again = DataInBuffer::new(64);
        assert_eq!(again.as_mut_ptr() as usize, first, "the same pages, reused");
        assert!(again.data(8192).iter().all(|&x| x == 0));
        // Larger buffers are neither taken from nor given to the cache.
        let mut big = DataInBuffer::new(8193);
        assert_ne!(big.as_mut_ptr() as usize, first);
        assert_eq!(big.capacity(), 3 * 4096);
        drop(big);
        drop(again);
        // Another thread has its own.
        let elsewhere = std::thread::spawn(|| DataInBuffer::new(0).as_mut_ptr() as usize)
            .join()
            .unwrap();
        assert_ne!(elsewhere, first);
    }

    #[test]
    fn data_in_buffer_is_whole_aligned_pages_of_at_least_8_kib() {
        for (asked, pages) in [(0, 2), (1, 2), (8192, 2), (8193, 3), (12288, 3), (12289, 4)] {
            let mut b = DataInBuffer::new(asked);
            assert_eq!(b.capacity(), pages * 4096, "asked {asked}");
            assert_eq!(b.as_mut_ptr() as usize % 4096, 0, "asked {asked}");
        }
    }

    #[test]
    fn data_in_buffer_reads_back_only_what_is_asked_across_pages() {
        let mut b = DataInBuffer::new(0);
        b.pages[0].0[4095] = 1;
        b.pages[1].0[0] = 2;
        b.pages[1].0[1] = 3;
        assert_eq!(b.data(0), Vec::<u8>::new());
        assert_eq!(&b.data(4097)[4094..], &[0, 1, 2]);
        assert_eq!(b.data(4098).len(), 4098);
        // More than the buffer holds is cut to the buffer, never read beyond it.
        assert_eq!(b.data(usize::MAX).len(), 8192);
    }
}
