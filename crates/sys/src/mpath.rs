//! libmpathpersist (multipath-tools ≥ 0.8.6), loaded at run time so one binary works with or
//! without multipath-tools installed. The structs mirror `<mpath_persist.h>` with size and
//! offset assertions. The library is not thread-safe: [`MpathLibrary`] is `Send` but not `Sync`,
//! and its owner calls it from one thread.

use std::io;
use std::os::fd::BorrowedFd;

use crate::ioctl;

/// `MPATH_MAX_PARAM_LEN`.
pub const MAX_PARAM_LEN: usize = 8192;
/// `MPATH_MX_TIDS`: the most TransportIDs a PR OUT can carry through the library.
pub const MAX_TRANSPORT_IDS: usize = 32;

/// The library's return codes (`MPATH_PR_*`).
pub mod status {
    pub const SUCCESS: i32 = 0;
    pub const SYNTAX_ERROR: i32 = 1;
    pub const SENSE_NOT_READY: i32 = 2;
    pub const SENSE_MEDIUM_ERROR: i32 = 3;
    pub const SENSE_HARDWARE_ERROR: i32 = 4;
    pub const ILLEGAL_REQ: i32 = 5;
    pub const SENSE_UNIT_ATTENTION: i32 = 6;
    pub const SENSE_INVALID_OP: i32 = 7;
    pub const SENSE_ABORTED_COMMAND: i32 = 8;
    pub const NO_SENSE: i32 = 9;
    pub const SENSE_MALFORMED: i32 = 10;
    pub const RESERV_CONFLICT: i32 = 11;
    pub const FILE_ERROR: i32 = 12;
    pub const DMMP_ERROR: i32 = 13;
    pub const THREAD_ERROR: i32 = 14;
    pub const OTHER: i32 = 15;
}

/// `struct transportid`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TransportIdC {
    pub format_code: u8,
    pub protocol_id: u8,
    /// `n_port_name[8]`, `sas_address[8]` or `iscsi_name[256]` (2-byte length, then the name).
    pub name: [u8; 256],
}

/// `struct prin_resp`: a union whose members all start with two u32 fields in host order
/// (generation and additional length; for REPORT CAPABILITIES a u16 length and flags) followed
/// by the device's bytes.
///
/// The library issues SG_IO straight into this struct (allocation length 8192), so it is
/// page-aligned and padded to whole pages (12 KiB for the C struct's 8200 bytes): a device that
/// writes past the length it was given writes into our padding, never into the heap beyond
/// (docs/protocol.md).
#[repr(C, align(4096))]
pub struct PrinResp {
    pub raw: [u8; 8 + MAX_PARAM_LEN],
}

/// `struct prout_param_descriptor` with room for [`MAX_TRANSPORT_IDS`] list entries.
#[repr(C, align(8))]
pub(crate) struct ProutParam {
    pub key: [u8; 8],
    pub sa_key: [u8; 8],
    pub obsolete: u32,
    pub sa_flags: u8,
    pub reserved: u8,
    pub obsolete1: u16,
    pub private_buffer: [u8; MAX_PARAM_LEN],
    pub num_transportid: u32,
    pub pad: u32,
    pub trnptid_list: [*mut TransportIdC; MAX_TRANSPORT_IDS],
}

const _: () = assert!(std::mem::size_of::<TransportIdC>() == 258);
const _: () = assert!(std::mem::size_of::<[u8; 8 + MAX_PARAM_LEN]>() == 8200);
const _: () = assert!(std::mem::size_of::<PrinResp>() == 3 * crate::sgio::PAGE_SIZE);
const _: () = assert!(std::mem::align_of::<PrinResp>() == crate::sgio::PAGE_SIZE);
const _: () = assert!(std::mem::offset_of!(ProutParam, sa_flags) == 20);
const _: () = assert!(std::mem::offset_of!(ProutParam, private_buffer) == 24);
const _: () = assert!(std::mem::offset_of!(ProutParam, num_transportid) == 8216);
const _: () = assert!(std::mem::offset_of!(ProutParam, trnptid_list) == 8224);

/// A PR OUT as the library takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProutRequest {
    pub service_action: u8,
    pub scope: u8,
    pub rtype: u8,
    pub key: [u8; 8],
    pub sa_key: [u8; 8],
    /// Byte 20 of the parameter list: SPEC_I_PT, ALL_TG_PT, APTPL.
    pub sa_flags: u8,
    /// At most [`MAX_TRANSPORT_IDS`].
    pub transport_ids: Vec<TransportIdC>,
}

impl std::fmt::Debug for PrinResp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrinResp({:02x?}…)", &self.raw[..8])
    }
}

impl std::fmt::Debug for TransportIdC {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TransportId({:#x}, {:#x})",
            self.format_code, self.protocol_id
        )
    }
}

impl PartialEq for TransportIdC {
    fn eq(&self, o: &Self) -> bool {
        self.format_code == o.format_code
            && self.protocol_id == o.protocol_id
            && self.name == o.name
    }
}
impl Eq for TransportIdC {}

/// The resolved entry points of libmpathpersist.
#[derive(Debug)]
pub struct MpathLibrary {
    fns: ioctl::MpathFns,
    /// Not `Sync`: the library must be called from one thread at a time.
    _one_thread: std::marker::PhantomData<std::cell::Cell<()>>,
}

/// The shared object we load (multipath-tools' soname).
pub const SONAME: &str = "libmpathpersist.so.0";

impl MpathLibrary {
    /// Loads libmpathpersist, resolves its entry points and sets its PR IN allocation length
    /// to 8192 bytes. Call [`MpathLibrary::init`] before anything else.
    pub fn load() -> Result<MpathLibrary, String> {
        Ok(MpathLibrary {
            fns: ioctl::mpath_load(SONAME)?,
            _one_thread: std::marker::PhantomData,
        })
    }

    /// `libmpathpersist_init()`: reads /etc/multipath.conf and sets up udev and device-mapper
    /// state. Must run before the sandbox forbids opening files, and only where device-mapper
    /// is available: libmultipath ends the process when it cannot reach the kernel driver.
    pub fn init(&self) -> Result<(), String> {
        match ioctl::mpath_init(&self.fns) {
            0 => Ok(()),
            r => Err(format!("libmpathpersist_init() failed ({r})")),
        }
    }

    /// `mpath_persistent_reserve_in`: the library's status and its response.
    pub fn reserve_in(&self, fd: BorrowedFd<'_>, service_action: u8) -> (i32, Box<PrinResp>) {
        let mut resp = Box::new(PrinResp {
            raw: [0; 8 + MAX_PARAM_LEN],
        });
        let r = ioctl::mpath_prin(&self.fns, fd, service_action, &mut resp);
        (r, resp)
    }

    /// `mpath_persistent_reserve_out`: the library's status.
    pub fn reserve_out(&self, fd: BorrowedFd<'_>, req: &ProutRequest) -> io::Result<i32> {
        if req.transport_ids.len() > MAX_TRANSPORT_IDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} TransportIDs; libmpathpersist takes at most {MAX_TRANSPORT_IDS}",
                    req.transport_ids.len()
                ),
            ));
        }
        let mut ids = req.transport_ids.clone();
        let mut p = Box::new(ProutParam {
            key: req.key,
            sa_key: req.sa_key,
            obsolete: 0,
            sa_flags: req.sa_flags,
            reserved: 0,
            obsolete1: 0,
            private_buffer: [0; MAX_PARAM_LEN],
            num_transportid: ids.len() as u32,
            pad: 0,
            trnptid_list: [std::ptr::null_mut(); MAX_TRANSPORT_IDS],
        });
        for (slot, id) in p.trnptid_list.iter_mut().zip(ids.iter_mut()) {
            *slot = id as *mut TransportIdC;
        }
        let r = ioctl::mpath_prout(
            &self.fns,
            fd,
            req.service_action,
            req.scope,
            req.rtype,
            &mut p,
        );
        drop(ids);
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With multipath-tools installed (scripts/setup installs it), the library loads and has the
    /// 0.8.6+ entry points. Calling it needs device-mapper in the kernel (libmultipath exits the
    /// process without it), so the calls themselves run in the VM lab.
    #[test]
    fn loads_the_installed_library_and_bounds_transport_ids() {
        let lib = MpathLibrary::load()
            .unwrap_or_else(|e| panic!("{e}: install multipath-tools (scripts/setup does)"));
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let too_many = ProutRequest {
            service_action: 0,
            scope: 0,
            rtype: 0,
            key: [0; 8],
            sa_key: [0; 8],
            sa_flags: 0x08,
            transport_ids: vec![
                TransportIdC {
                    format_code: 0,
                    protocol_id: 6,
                    name: [0; 256]
                };
                MAX_TRANSPORT_IDS + 1
            ],
        };
        let e = lib.reserve_out(f.as_fd(), &too_many).unwrap_err();
        assert_eq!(
            e.to_string(),
            "33 TransportIDs; libmpathpersist takes at most 32"
        );
    }
}

#[cfg(test)]
mod missing {
    /// Without multipath-tools the load fails with the library's name and the loader's reason.
    #[test]
    fn a_missing_library_is_named() {
        let e = crate::ioctl::mpath_load("libmpathpersist-not-installed.so.0").unwrap_err();
        assert!(
            e.starts_with("cannot load libmpathpersist-not-installed.so.0: "),
            "{e}"
        );
    }
}
