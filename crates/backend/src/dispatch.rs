//! Checks a client's descriptor and chooses the backend for a request.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use pr_proto::{Direction, Reply, RequestHeader};
use pr_scsi::SenseCode;
use pr_sys::device::{classify, is_read_only, DevNum, FileKind};
use pr_sys::dm::DmControl;
use tracing::{info, warn};

use crate::{Backend, Device};

/// Where a request goes.
#[derive(Debug)]
pub enum Route<'a> {
    /// Answered without running a backend (the descriptor was refused).
    Immediate { reply: Reply, reason: String },
    /// To be executed by this backend.
    Execute {
        backend: Arc<dyn Backend>,
        device: Device<'a>,
    },
}

/// The block major every NVMe namespace has (BLOCK_EXT_MAJOR: dynamically numbered disks).
const BLOCK_EXT_MAJOR: u32 = 259;

/// How dm-multipath maps are recognised, and who serves them.
#[derive(Debug)]
pub struct Multipath {
    /// The block major of device-mapper devices.
    pub dm_major: u32,
    pub support: MultipathSupport,
}

/// Whether device-mapper devices can be asked for their target and served by multipath.
#[derive(Debug)]
pub enum MultipathSupport {
    /// /dev/mapper/control (whose table queries need CAP_SYS_ADMIN) and the multipath backend.
    Active {
        control: DmControl,
        backend: Arc<dyn Backend>,
    },
    /// Why not; said for each request on a device-mapper device.
    Unavailable(String),
}

/// Chooses a backend per device: a backend configured for the device's number; else, for a
/// dm-multipath map, the multipath backend; else, for a block device, the block-device default;
/// else, for an NVMe namespace (which has no SG_IO), the NVMe backend when one is set; else the
/// default (SG_IO passthrough).
#[derive(Debug, Clone)]
pub struct Dispatcher {
    default: Arc<dyn Backend>,
    block_default: Option<Arc<dyn Backend>>,
    nvme: Option<Arc<dyn Backend>>,
    multipath: Option<Arc<Multipath>>,
    devices: HashMap<DevNum, Arc<dyn Backend>>,
}

impl Dispatcher {
    /// Every device to `default`.
    pub fn new(default: Arc<dyn Backend>) -> Dispatcher {
        Dispatcher {
            default,
            block_default: None,
            nvme: None,
            multipath: None,
            devices: HashMap::new(),
        }
    }

    /// Block devices no device rule names go to `backend` (sg character devices still go to
    /// the default: they only take SG_IO).
    pub fn with_block_default(mut self, backend: Arc<dyn Backend>) -> Dispatcher {
        self.block_default = Some(backend);
        self
    }

    /// NVMe namespaces no device rule names go to `backend`.
    pub fn with_nvme(mut self, backend: Arc<dyn Backend>) -> Dispatcher {
        self.nvme = Some(backend);
        self
    }

    /// Device-mapper devices are checked for a multipath target.
    pub fn with_multipath(mut self, multipath: Multipath) -> Dispatcher {
        self.multipath = Some(Arc::new(multipath));
        self
    }

    /// The device with this number goes to `backend`.
    pub fn with_device(mut self, dev: DevNum, backend: Arc<dyn Backend>) -> Dispatcher {
        self.devices.insert(dev, backend);
        self
    }

    /// The multipath backend if `dev` is a dm-multipath map and multipath support is active.
    fn multipath_for(&self, dev: DevNum) -> Option<&Arc<dyn Backend>> {
        let m = self
            .multipath
            .as_ref()
            .filter(|m| m.dm_major == dev.major)?;
        match &m.support {
            MultipathSupport::Unavailable(reason) => {
                info!(
                    "device {dev} is a device-mapper device, and multipath support is \
                     unavailable ({reason}): if it is a multipath map, SG_IO reaches one path only"
                );
                None
            }
            MultipathSupport::Active { control, backend } => match control.target_type(dev) {
                Ok(Some(t)) if t == "multipath" => Some(backend),
                Ok(_) => None,
                Err(e) => {
                    warn!("device {dev}: cannot read its device-mapper table ({e}); using SG_IO");
                    None
                }
            },
        }
    }

    /// The backend for an accepted descriptor.
    fn choose(&self, fd: BorrowedFd<'_>, kind: FileKind) -> &Arc<dyn Backend> {
        if let Some(b) = kind.dev().and_then(|d| self.devices.get(&d)) {
            return b;
        }
        if let FileKind::Block(dev) = kind {
            if let Some(b) = self.multipath_for(dev) {
                return b;
            }
            if let Some(b) = &self.block_default {
                return b;
            }
            if let Some(b) = &self.nvme {
                if dev.major == BLOCK_EXT_MAJOR && pr_sys::blkpr::is_nvme_namespace(fd) {
                    return b;
                }
            }
        }
        &self.default
    }

    /// Checks the descriptor before any ioctl touches it:
    /// - PR OUT on a descriptor opened read-only answers CHECK CONDITION, ILLEGAL REQUEST,
    ///   INVALID COMMAND OPERATION CODE, as QEMU's C helper does;
    /// - a descriptor that is neither a block device nor an sg character device (a regular file,
    ///   pipe, socket, /dev/null, a tty) answers CHECK CONDITION, ILLEGAL REQUEST, LOGICAL UNIT
    ///   NOT SUPPORTED. QEMU's C helper issues SG_IO on anything and answers ABORTED COMMAND,
    ///   I/O PROCESS TERMINATED when the ioctl fails; we refuse without touching the file.
    pub fn route<'a>(&self, fd: BorrowedFd<'a>, header: &RequestHeader) -> Route<'a> {
        let refuse = |code: SenseCode, reason: String| Route::Immediate {
            reply: Reply::check_condition(code.to_fixed()),
            reason,
        };
        // Only PR OUT cares, so PR IN (most of the traffic) is spared the fcntl.
        if header.direction == Direction::Out {
            match is_read_only(fd) {
                Ok(false) => {}
                Ok(true) => {
                    return refuse(
                        SenseCode::INVALID_COMMAND_OPERATION_CODE,
                        "PR OUT on a descriptor opened read-only".into(),
                    )
                }
                Err(e) => {
                    return refuse(
                        SenseCode::LOGICAL_UNIT_COMMUNICATION_FAILURE,
                        format!("cannot read the descriptor's flags: {e}"),
                    )
                }
            }
        }
        let kind = match classify(fd) {
            Ok(k) => k,
            Err(e) => {
                return refuse(
                    SenseCode::LOGICAL_UNIT_COMMUNICATION_FAILURE,
                    format!("cannot fstat the descriptor: {e}"),
                )
            }
        };
        if !kind.accepts_sg_io() {
            return refuse(
                SenseCode::LOGICAL_UNIT_NOT_SUPPORTED,
                format!(
                    "the descriptor is a {}, neither a block device nor an sg device",
                    kind.describe()
                ),
            );
        }
        Route::Execute {
            backend: self.choose(fd, kind).clone(),
            device: Device { fd, kind },
        }
    }
}
