//! Device-mapper: which target drives a device (`DM_TABLE_STATUS` on /dev/mapper/control), to
//! recognise dm-multipath maps from a client's descriptor.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::device::DevNum;
use crate::ioctl;

/// `DM_VERSION_MAJOR` of the ioctl interface we speak.
const DM_VERSION_MAJOR: u32 = 4;
/// `DM_NOFLUSH_FLAG`: do not flush queued I/O to answer.
const DM_NOFLUSH_FLAG: u32 = 1 << 11;
/// Room for the target specs and status strings after the header.
const DATA_LEN: usize = 1024;

/// `struct dm_ioctl` (`<linux/dm-ioctl.h>`).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct DmIoctl {
    pub version: [u32; 3],
    pub data_size: u32,
    pub data_start: u32,
    pub target_count: u32,
    pub open_count: i32,
    pub flags: u32,
    pub event_nr: u32,
    pub padding: u32,
    pub dev: u64,
    pub name: [u8; 128],
    pub uuid: [u8; 129],
    pub data: [u8; 7],
}

/// `struct dm_target_spec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<DmIoctl>() == 312);
const _: () = assert!(std::mem::size_of::<DmTargetSpec>() == 40);

/// A `dm_ioctl` header followed by its data area, as the kernel expects them in one buffer.
#[repr(C)]
pub(crate) struct DmBuffer {
    pub header: DmIoctl,
    pub data: [u8; DATA_LEN],
}

const fn dm_iowr(nr: u64) -> u64 {
    (3 << 30) | ((std::mem::size_of::<DmIoctl>() as u64) << 16) | (0xfd << 8) | nr
}
/// `DM_VERSION` and `DM_TABLE_STATUS`.
pub const DM_VERSION: u64 = dm_iowr(0);
pub const DM_TABLE_STATUS: u64 = dm_iowr(12);

impl DmBuffer {
    fn new(dev: u64) -> Box<DmBuffer> {
        Box::new(DmBuffer {
            header: DmIoctl {
                version: [DM_VERSION_MAJOR, 0, 0],
                data_size: std::mem::size_of::<DmBuffer>() as u32,
                data_start: std::mem::size_of::<DmIoctl>() as u32,
                target_count: 0,
                open_count: 0,
                flags: DM_NOFLUSH_FLAG,
                event_nr: 0,
                padding: 0,
                dev,
                name: [0; 128],
                uuid: [0; 129],
                data: [0; 7],
            },
            data: [0; DATA_LEN],
        })
    }
}

/// An open /dev/mapper/control.
#[derive(Debug)]
pub struct DmControl {
    fd: OwnedFd,
}

impl DmControl {
    /// Opens /dev/mapper/control and checks the interface version. Must run before the sandbox
    /// forbids opening files.
    pub fn open() -> io::Result<DmControl> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/mapper/control")?;
        let c = DmControl { fd: file.into() };
        let mut b = DmBuffer::new(0);
        ioctl::dm(c.fd.as_fd(), DM_VERSION, &mut b)?;
        if b.header.version[0] != DM_VERSION_MAJOR {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "device-mapper interface version {} (pr-helper speaks {DM_VERSION_MAJOR})",
                    b.header.version[0]
                ),
            ));
        }
        Ok(c)
    }

    /// The target type of the first target of device `dev` (e.g. "multipath", "linear"), or
    /// None if `dev` is not a device-mapper device or has no table.
    pub fn target_type(&self, dev: DevNum) -> io::Result<Option<String>> {
        let encoded = rustix::fs::makedev(dev.major, dev.minor);
        let mut b = DmBuffer::new(encoded);
        match ioctl::dm(self.fd.as_fd(), DM_TABLE_STATUS, &mut b) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
            Err(e) => return Err(e),
        }
        if b.header.target_count == 0 {
            return Ok(None);
        }
        let start = (b.header.data_start as usize).checked_sub(std::mem::size_of::<DmIoctl>());
        let spec = start
            .and_then(|s| b.data.get(s..s + std::mem::size_of::<DmTargetSpec>()))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "DM_TABLE_STATUS: bad data_start",
                )
            })?;
        let name = &spec[24..40];
        let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        Ok(Some(String::from_utf8_lossy(&name[..len]).into_owned()))
    }
}

/// The block major of device-mapper devices, from /proc/devices (dynamic, often 253 or 254).
pub fn device_mapper_major() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/devices").ok()?;
    parse_major(&text, "device-mapper")
}

fn parse_major(proc_devices: &str, name: &str) -> Option<u32> {
    let block = proc_devices.split("Block devices:").nth(1)?;
    block.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        let major = w.next()?.parse().ok()?;
        (w.next()? == name).then_some(major)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_dm_ioctl_h() {
        // _IOWR(DM_IOCTL=0xfd, nr, struct dm_ioctl) with sizeof(struct dm_ioctl) = 312.
        assert_eq!(DM_VERSION, 0xc138_fd00);
        assert_eq!(DM_TABLE_STATUS, 0xc138_fd0c);
    }

    #[test]
    fn finds_the_device_mapper_major() {
        let text = "Character devices:\n  1 mem\n253 device-mapper\nBlock devices:\n  7 loop\n  8 sd\n254 device-mapper\n259 blkext\n";
        assert_eq!(parse_major(text, "device-mapper"), Some(254));
        assert_eq!(parse_major(text, "md"), None);
    }
}
