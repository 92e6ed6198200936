//! What kind of file a client handed us, checked before any ioctl touches it.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs::{fstat, FileType, OFlags};

/// Character major of the SCSI generic (sg) driver.
pub const SCSI_GENERIC_MAJOR: u32 = 21;

/// A device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// What an fd refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Block(DevNum),
    /// An sg character device, with the driver version it reported.
    ScsiGeneric(DevNum, i32),
    /// Any other character device (a tty, /dev/null, a non-sg char device).
    OtherChar(DevNum),
    Regular,
    Directory,
    Fifo,
    Socket,
    Other,
}

impl FileKind {
    /// The device number, for block and character devices.
    pub fn dev(&self) -> Option<DevNum> {
        match self {
            FileKind::Block(d) | FileKind::ScsiGeneric(d, _) | FileKind::OtherChar(d) => Some(*d),
            _ => None,
        }
    }

    /// Whether SG_IO may be issued on it: a block device or an sg character device.
    pub fn accepts_sg_io(&self) -> bool {
        matches!(self, FileKind::Block(_) | FileKind::ScsiGeneric(..))
    }

    /// A description for log lines and error messages.
    pub fn describe(&self) -> String {
        match self {
            FileKind::Block(d) => format!("block device {d}"),
            FileKind::ScsiGeneric(d, v) => format!("sg device {d} (driver {v})"),
            FileKind::OtherChar(d) => format!("character device {d}"),
            FileKind::Regular => "regular file".into(),
            FileKind::Directory => "directory".into(),
            FileKind::Fifo => "pipe".into(),
            FileKind::Socket => "socket".into(),
            FileKind::Other => "file of unknown type".into(),
        }
    }
}

/// Classifies an fd with fstat, and for sg-major character devices with SG_GET_VERSION_NUM.
pub fn classify(fd: BorrowedFd<'_>) -> io::Result<FileKind> {
    let st = fstat(fd)?;
    let dev = || DevNum {
        major: rustix::fs::major(st.st_rdev),
        minor: rustix::fs::minor(st.st_rdev),
    };
    Ok(match FileType::from_raw_mode(st.st_mode) {
        FileType::BlockDevice => FileKind::Block(dev()),
        FileType::CharacterDevice => {
            let d = dev();
            if d.major == SCSI_GENERIC_MAJOR {
                match crate::sgio::sg_version(fd) {
                    Ok(v) => FileKind::ScsiGeneric(d, v),
                    Err(_) => FileKind::OtherChar(d),
                }
            } else {
                FileKind::OtherChar(d)
            }
        }
        FileType::RegularFile => FileKind::Regular,
        FileType::Directory => FileKind::Directory,
        FileType::Fifo => FileKind::Fifo,
        FileType::Socket => FileKind::Socket,
        _ => FileKind::Other,
    })
}

/// Whether the fd was opened read-only (`O_ACCMODE == O_RDONLY`).
pub fn is_read_only(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    Ok(!flags.intersects(OFlags::WRONLY | OFlags::RDWR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn classifies_common_files() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(classify(f.as_fd()).unwrap(), FileKind::Regular);
        assert!(is_read_only(f.as_fd()).unwrap());
        let n = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        let k = classify(n.as_fd()).unwrap();
        assert_eq!(k, FileKind::OtherChar(DevNum { major: 1, minor: 3 }));
        assert!(!k.accepts_sg_io());
        assert!(!is_read_only(n.as_fd()).unwrap());
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(classify(a.as_fd()).unwrap(), FileKind::Socket);
        let d = std::fs::File::open("/").unwrap();
        assert_eq!(classify(d.as_fd()).unwrap(), FileKind::Directory);
    }
}
