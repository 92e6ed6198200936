//! The medium of a logical unit: a regular file or a block device on the host.
//!
//! A logical unit on a local store ([`Backing::open`]) is served by this process alone (the
//! exclusive `flock`), so the host's page cache is coherent with the medium and is used as is:
//! buffered reads are answered from memory, and SYNCHRONIZE CACHE (fdatasync) makes writes
//! durable.
//!
//! A logical unit shared across hosts ([`Backing::open_shared`]) is opened with `O_DIRECT`:
//! another host writes the same blocks, and its writes never reach this host's page cache, so a
//! buffered READ could be answered with blocks the other host has since overwritten (a cluster
//! file system in the VMs would read stale metadata). Direct I/O needs the file offset, the
//! length and the memory address aligned (statx `STATX_DIOALIGN`; a block device's logical
//! block size otherwise): every transfer goes through a page-aligned bounce buffer of at most
//! [`DIRECT_CHUNK`] bytes, and the logical unit's block size must be a multiple of the offset
//! alignment, checked at open.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::{fallocate, flock, AtFlags, FallocateFlags, FlockOperation, StatxFlags};

use crate::scsi::BlockDevice;

/// The largest bounce buffer of a direct backing: a longer transfer is split into preads or
/// pwrites of at most this many bytes (a multiple of every alignment accepted at open).
pub const DIRECT_CHUNK: usize = 1 << 20;

/// The memory alignment of every bounce buffer: a page, which satisfies every memory alignment
/// up to it (the alignment a device or file system asks for is checked against it at open).
const BOUNCE_ALIGN: usize = 4096;

/// An open backing file or block device, locked against other pr-target processes.
#[derive(Debug)]
pub struct Backing {
    file: File,
    len: u64,
    discard: bool,
    /// The offset and length alignment of direct I/O, for a backing opened with `O_DIRECT`.
    direct: Option<DirectAlign>,
}

/// The alignment a backing opened with `O_DIRECT` needs (bytes, powers of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectAlign {
    /// File offsets and lengths: multiples of this.
    pub offset: u32,
    /// Buffer addresses: multiples of this.
    pub memory: u32,
    /// Where the values come from (`statx STATX_DIOALIGN`, `BLKSSZGET`, or the logical unit's
    /// block size, checked by a read, when the file system reports nothing).
    pub source: &'static str,
}

/// Why a backing could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is locked by another process (another pr-target serving it?): two targets \
         on one medium could not fence each other's writes, so pr-target refuses to share it"
    )]
    Locked { path: String },
    #[error(
        "{path} is locked exclusively by another process (a pr-target serving it with a \
         local store?): a shared logical unit can be served by several pr-targets only when \
         every one of them fences through etcd"
    )]
    LockedExclusive { path: String },
    #[error("{path} is neither a regular file nor a block device")]
    Kind { path: String },
    #[error(
        "{path}: its file system refuses direct I/O (O_DIRECT: {source}). A logical unit \
         shared across hosts is read and written with O_DIRECT, so that no host answers a READ \
         from its own page cache with blocks another host has overwritten: put the backing on \
         a block device or on a file system with direct I/O (ext4, XFS, Btrfs, NFS, GFS2, \
         OCFS2), or serve it from a local store if only one host uses it"
    )]
    DirectUnsupported {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: direct I/O on it must be aligned to {needed} bytes ({from}), but the \
         logical unit's block_size is {block_size}: a logical unit shared across hosts is \
         read and written with O_DIRECT in whole blocks, so block_size must be a multiple of \
         {needed}{hint}"
    )]
    Misaligned {
        path: String,
        block_size: u32,
        needed: u32,
        /// Where `needed` comes from.
        from: &'static str,
        /// What to do.
        hint: &'static str,
    },
}

impl Backing {
    /// Opens `path` (read-only when `read_only`) and takes an exclusive `flock` on it for as
    /// long as it is open. Buffered (through the host's page cache): no other host writes the
    /// medium behind this process's back, so the cache cannot go stale, and reads it answers
    /// cost no device I/O.
    pub fn open(path: &Path, read_only: bool) -> Result<Backing, BackingError> {
        Backing::open_locked(path, read_only, None)
    }

    /// Opens `path` for a logical unit shared across hosts through etcd, of blocks of
    /// `block_size` bytes: a *shared* `flock`, so that several pr-targets fencing each other
    /// through etcd may serve it while a pr-target with a local store (which takes it
    /// exclusively) may not; and `O_DIRECT`, so that every READ reaches the medium (the module
    /// documentation says why). Refused when the file system has no direct I/O
    /// ([`BackingError::DirectUnsupported`]) or `block_size` is not a multiple of its offset
    /// alignment ([`BackingError::Misaligned`]).
    pub fn open_shared(
        path: &Path,
        read_only: bool,
        block_size: u32,
    ) -> Result<Backing, BackingError> {
        Backing::open_locked(path, read_only, Some(block_size))
    }

    /// The alignment of direct I/O, when the backing was opened with `O_DIRECT`.
    pub fn direct(&self) -> Option<DirectAlign> {
        self.direct
    }

    fn open_locked(
        path: &Path,
        read_only: bool,
        shared_block_size: Option<u32>,
    ) -> Result<Backing, BackingError> {
        let name = path.display().to_string();
        let open_err = |source| BackingError::Open {
            path: name.clone(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(!read_only);
        if shared_block_size.is_some() {
            options.custom_flags(libc::O_DIRECT);
        }
        let mut file = options.open(path).map_err(|source| {
            if shared_block_size.is_some() && source.raw_os_error() == Some(libc::EINVAL) {
                // open(2): EINVAL, "the file system does not support the O_DIRECT flag".
                BackingError::DirectUnsupported {
                    path: name.clone(),
                    source,
                }
            } else {
                open_err(source)
            }
        })?;
        let ft = file.metadata().map_err(open_err)?.file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(BackingError::Kind { path: name });
        }
        if shared_block_size.is_some() {
            flock(&file, FlockOperation::NonBlockingLockShared)
                .map_err(|_| BackingError::LockedExclusive { path: name.clone() })?;
        } else {
            flock(&file, FlockOperation::NonBlockingLockExclusive)
                .map_err(|_| BackingError::Locked { path: name.clone() })?;
        }
        let len = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        let direct = match shared_block_size {
            None => None,
            Some(bs) => Some(direct_align(&file, ft.is_block_device(), bs, &name)?),
        };
        let backing = Backing {
            file,
            len,
            // Hole punching reads back zeros on a regular file; block devices' discard
            // does not promise that, so they are served fully provisioned.
            discard: ft.is_file(),
            direct,
        };
        if let Some(bs) = shared_block_size {
            backing.probe(bs, &name)?;
        }
        Ok(backing)
    }

    /// One direct read of a whole block at offset `block_size` (or 0 on a one-block medium):
    /// a file system that accepted the `O_DIRECT` open but refuses its I/O, or one that reported
    /// no alignment and needs more than the block size, is refused at start rather than failing
    /// every READ later.
    fn probe(&self, block_size: u32, name: &str) -> Result<(), BackingError> {
        let bs = u64::from(block_size);
        let at = if self.len >= 2 * bs { bs } else { 0 };
        if self.len < at + bs {
            // Too small to serve a block: the caller says so (StartError::Empty).
            return Ok(());
        }
        let mut buf = vec![0u8; block_size as usize];
        self.read_at(&mut buf, at)
            .map_err(|e| BackingError::DirectUnsupported {
                path: name.to_owned(),
                source: io::Error::new(
                    e.kind(),
                    format!(
                        "a direct read of one {block_size}-byte block at offset {at} failed: \
                         {e}; EINVAL means the file system needs a larger alignment than the \
                         block size, or no direct I/O on this file"
                    ),
                ),
            })
    }

    /// A page-aligned buffer for `len` bytes of a direct transfer (at most [`DIRECT_CHUNK`]).
    fn bounce(len: usize) -> Bounce {
        Bounce::new(len.min(DIRECT_CHUNK))
    }

    /// Refuses a direct transfer whose offset or length is not aligned (the device server only
    /// moves whole blocks; this guards other callers).
    fn check_aligned(&self, offset: u64, len: usize) -> io::Result<()> {
        match self.direct {
            Some(d)
                if !offset.is_multiple_of(u64::from(d.offset))
                    || !(len as u64).is_multiple_of(u64::from(d.offset)) =>
            {
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "direct I/O of {len} bytes at {offset}: not aligned to {} bytes",
                        d.offset
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The direct-I/O alignment of `file` (opened with `O_DIRECT`), checked against the logical
/// unit's `block_size`.
fn direct_align(
    file: &File,
    block_device: bool,
    block_size: u32,
    name: &str,
) -> Result<DirectAlign, BackingError> {
    let unsupported = |what: &str| BackingError::DirectUnsupported {
        path: name.to_owned(),
        source: io::Error::new(io::ErrorKind::Unsupported, what.to_owned()),
    };
    let reported = rustix::fs::statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN)
        .ok()
        .filter(|st| StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::DIOALIGN));
    let align = match reported {
        // statx(2): both 0 when direct I/O is not supported on the file.
        Some(st) if st.stx_dio_offset_align == 0 || st.stx_dio_mem_align == 0 => {
            return Err(unsupported("statx reports no direct-I/O alignment"));
        }
        Some(st) => DirectAlign {
            offset: st.stx_dio_offset_align,
            memory: st.stx_dio_mem_align,
            source: "statx STATX_DIOALIGN",
        },
        None if block_device => {
            let lbs = rustix::fs::ioctl_blksszget(file).map_err(|e| BackingError::Open {
                path: name.to_owned(),
                source: e.into(),
            })?;
            // Memory: the DMA alignment is at most the logical block size; a page (the bounce
            // buffers' alignment) is enough for any.
            DirectAlign {
                offset: lbs,
                memory: lbs.min(BOUNCE_ALIGN as u32),
                source: "the device's logical block size (BLKSSZGET)",
            }
        }
        // The file system does not say: the block size itself, checked by a read at open.
        None => DirectAlign {
            offset: block_size,
            memory: BOUNCE_ALIGN as u32,
            source: "the block size (the file system reports no alignment)",
        },
    };
    if block_size == 0 || !block_size.is_multiple_of(align.offset) {
        return Err(BackingError::Misaligned {
            path: name.to_owned(),
            block_size,
            needed: align.offset,
            from: align.source,
            hint: if 4096u32.is_multiple_of(align.offset) {
                ": set block_size = 4096 in its [[lu]] table"
            } else {
                "; pr-target serves blocks of 512 or 4096 bytes only, so it cannot share this \
                 medium"
            },
        });
    }
    let pow2 = |v: u32| v.is_power_of_two();
    if !pow2(align.offset) || !pow2(align.memory) || align.memory as usize > BOUNCE_ALIGN {
        return Err(unsupported(&format!(
            "unusable direct-I/O alignment (offset {}, memory {}, from {})",
            align.offset, align.memory, align.source
        )));
    }
    Ok(align)
}

/// A zeroed buffer of `len` bytes whose start is [`BOUNCE_ALIGN`]-aligned: a vector one
/// alignment longer than needed, used from its first aligned byte (safe code only: no
/// allocator with an alignment of its own is needed).
struct Bounce {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Bounce {
    fn new(len: usize) -> Bounce {
        let raw = vec![0u8; len + BOUNCE_ALIGN];
        let addr = raw.as_ptr() as usize;
        let start = (BOUNCE_ALIGN - addr % BOUNCE_ALIGN) % BOUNCE_ALIGN;
        Bounce { raw, start, len }
    }

    fn get(&mut self, n: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + n.min(self.len)]
    }
}

impl AsFd for Backing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The offset of chunk `i` of a direct transfer starting at `offset`; past `u64::MAX` is an
/// error.
fn chunk_at(offset: u64, i: usize) -> io::Result<u64> {
    (i as u64)
        .checked_mul(DIRECT_CHUNK as u64)
        .and_then(|d| offset.checked_add(d))
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

impl BlockDevice for Backing {
    fn size_bytes(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.direct.is_none() {
            return self.file.read_exact_at(buf, offset);
        }
        self.check_aligned(offset, buf.len())?;
        let mut bounce = Backing::bounce(buf.len());
        for (i, out) in buf.chunks_mut(DIRECT_CHUNK).enumerate() {
            let at = chunk_at(offset, i)?;
            let b = bounce.get(out.len());
            self.file.read_exact_at(b, at)?;
            out.copy_from_slice(b);
        }
        Ok(())
    }

    /// pread into the vector's uninitialised capacity (no zero-filling first), until `len`
    /// bytes are there; the end of the medium before that is an error. A direct backing reads
    /// through its bounce buffer ([`BlockDevice::read_at`]).
    fn read_vec(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if self.direct.is_some() {
            let mut buf = vec![0u8; len];
            self.read_at(&mut buf, offset)?;
            return Ok(buf);
        }
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = offset
                .checked_add(buf.len() as u64)
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            match rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(buf)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.direct.is_none() {
            return self.file.write_all_at(buf, offset);
        }
        self.check_aligned(offset, buf.len())?;
        let mut bounce = Backing::bounce(buf.len());
        for (i, data) in buf.chunks(DIRECT_CHUNK).enumerate() {
            let at = chunk_at(offset, i)?;
            let b = bounce.get(data.len());
            b.copy_from_slice(data);
            self.file.write_all_at(b, at)?;
        }
        Ok(())
    }

    /// fdatasync, direct or not: O_DIRECT bypasses the page cache, not the device's volatile
    /// write cache, which only a flush empties.
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn can_discard(&self) -> bool {
        self.discard
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        )
        .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn read_vec_reads_what_the_file_holds_and_fails_past_its_end() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..3u32 * 4096).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        let b = Backing::open(f.path(), true).unwrap();
        assert_eq!(b.read_vec(0, data.len()).unwrap(), data);
        assert_eq!(b.read_vec(4096 + 3, 5000).unwrap(), data[4099..9099]);
        // The same bytes as read_at, which zero-fills first.
        let mut buf = vec![0u8; 4096];
        b.read_at(&mut buf, 8192).unwrap();
        assert_eq!(b.read_vec(8192, 4096).unwrap(), buf);
        let e = b.read_vec(8192, 4097).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(b.read_vec(u64::MAX - 2, 16).is_err());
    }

    /// The file status flags of the backing's open file description, from the kernel.
    fn flags(b: &Backing) -> rustix::fs::OFlags {
        rustix::fs::fcntl_getfl(b).unwrap()
    }

    #[test]
    fn a_shared_backing_is_opened_with_o_direct_and_a_local_one_is_not() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(64 * 1024).unwrap();
        let local = Backing::open(f.path(), false).unwrap();
        assert!(!flags(&local).contains(rustix::fs::OFlags::DIRECT));
        assert_eq!(local.direct(), None);
        drop(local);
        let shared = Backing::open_shared(f.path(), false, 512).unwrap();
        assert!(flags(&shared).contains(rustix::fs::OFlags::DIRECT));
        let d = shared.direct().expect("a direct backing");
        assert!(
            d.offset.is_power_of_two() && 512u32.is_multiple_of(d.offset),
            "{d:?}"
        );
        let ro = Backing::open_shared(f.path(), true, 4096).unwrap();
        assert!(flags(&ro).contains(rustix::fs::OFlags::DIRECT));
    }

    #[test]
    fn a_direct_backing_moves_transfers_longer_than_its_bounce_buffer_byte_for_byte() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let len = 3 * DIRECT_CHUNK + 3 * 4096;
        let data: Vec<u8> = (0..len as u32).map(|i| (i * 13 % 253) as u8).collect();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        let b = Backing::open_shared(f.path(), false, 4096).unwrap();
        // Reads crossing chunk boundaries, from an offset that is not a chunk's.
        let at = 4096usize;
        let n = 2 * DIRECT_CHUNK + 8192;
        assert_eq!(b.read_vec(at as u64, n).unwrap(), data[at..at + n]);
        let mut buf = vec![0u8; n];
        b.read_at(&mut buf, at as u64).unwrap();
        assert_eq!(buf, data[at..at + n]);
        // A write from a vector at an odd address, longer than a chunk: the file holds it,
        // read back through a separate buffered descriptor.
        let new: Vec<u8> = (0..DIRECT_CHUNK as u32 + 4096 + 1)
            .map(|i| (i * 7 + 1) as u8)
            .collect();
        let src = &new[1..];
        b.write_at(src, 2 * 4096).unwrap();
        b.flush().unwrap();
        let mut back = vec![0u8; src.len()];
        std::fs::File::open(f.path())
            .unwrap()
            .read_exact_at(&mut back, 2 * 4096)
            .unwrap();
        assert_eq!(back, src);
        assert_eq!(b.read_vec(2 * 4096, src.len()).unwrap(), src);
        // Unaligned offsets and lengths are refused, not half done.
        let d = u64::from(b.direct().unwrap().offset);
        let e = b.write_at(&[1u8; 4096], d / 2 + 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            b.read_vec(0, 1).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(b.read_vec(0, 4096).unwrap(), data[..4096]);
        // Past the end: an error, not a short answer.
        let end = len as u64;
        assert!(b.read_vec(end - 4096, 8192).is_err());
    }

    #[test]
    fn a_file_system_without_direct_io_is_refused_for_a_shared_backing() {
        // procfs has no direct I/O (open(2) with O_DIRECT: EINVAL); a real file system that
        // refuses it, without mounting one.
        let path = Path::new("/proc/self/status");
        let e = Backing::open_shared(path, true, 512).unwrap_err();
        assert!(
            matches!(&e, BackingError::DirectUnsupported { path: p, .. } if p == "/proc/self/status"),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("/proc/self/status") && msg.contains("O_DIRECT"),
            "{msg}"
        );
        assert!(msg.contains("block device"), "says what to do: {msg}");
    }
}
