//! The medium of a logical unit: a regular file or a block device on the host.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

use rustix::fs::{fallocate, flock, FallocateFlags, FlockOperation};

use crate::scsi::BlockDevice;

/// An open backing file or block device, locked against other pr-target processes.
#[derive(Debug)]
pub struct Backing {
    file: File,
    len: u64,
    discard: bool,
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
}

impl Backing {
    /// Opens `path` (read-only when `read_only`) and takes an exclusive `flock` on it for as
    /// long as it is open.
    pub fn open(path: &Path, read_only: bool) -> Result<Backing, BackingError> {
        Backing::open_locked(path, read_only, false)
    }

    /// Opens `path` for a logical unit shared across hosts through etcd: a *shared* `flock`,
    /// so that several pr-targets fencing each other through etcd may serve it while a
    /// pr-target with a local store (which takes it exclusively) may not.
    pub fn open_shared(path: &Path, read_only: bool) -> Result<Backing, BackingError> {
        Backing::open_locked(path, read_only, true)
    }

    fn open_locked(path: &Path, read_only: bool, shared: bool) -> Result<Backing, BackingError> {
        let name = path.display().to_string();
        let open_err = |source| BackingError::Open {
            path: name.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let ft = file.metadata().map_err(open_err)?.file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(BackingError::Kind { path: name });
        }
        if shared {
            flock(&file, FlockOperation::NonBlockingLockShared)
                .map_err(|_| BackingError::LockedExclusive { path: name.clone() })?;
        } else {
            flock(&file, FlockOperation::NonBlockingLockExclusive)
                .map_err(|_| BackingError::Locked { path: name.clone() })?;
        }
        let len = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        Ok(Backing {
            file,
            len,
            // Hole punching reads back zeros on a regular file; block devices' discard
            // does not promise that, so they are served fully provisioned.
            discard: ft.is_file(),
        })
    }
}

impl BlockDevice for Backing {
    fn size_bytes(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// pread into the vector's uninitialised capacity (no zero-filling first), until `len`
    /// bytes are there; the end of the medium before that is an error.
    fn read_vec(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
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
        self.file.write_all_at(buf, offset)
    }

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
}
