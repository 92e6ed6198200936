//! Multipath support: prepared at start-up as root (device-mapper control, libmpathpersist
//! loaded and initialised), started after the privilege drop (the library's own thread, with its
//! own seccomp filter). Unavailable support is said once at start-up with its reason, and per
//! request for device-mapper devices (see the dispatcher).

use std::sync::Arc;

use pr_backend::mpath::MpathBackend;
use pr_backend::sgio::SgIoBackend;
use pr_backend::{Multipath, MultipathSupport};
use pr_sys::dm::{device_mapper_major, DmControl};
use pr_sys::mpath::MpathLibrary;

use crate::cli::SeccompMode;
use crate::devices::MultipathMode;

/// The outcome of preparing multipath support.
#[derive(Debug)]
pub enum Prepared {
    /// `multipath = "off"` in the device configuration.
    Off,
    Unavailable {
        dm_major: Option<u32>,
        reason: String,
    },
    Ready {
        dm_major: u32,
        control: DmControl,
        library: MpathLibrary,
    },
}

/// Prepares multipath support; must run before the privilege drop and the sandbox.
pub fn prepare(mode: MultipathMode) -> Prepared {
    if mode == MultipathMode::Off {
        return Prepared::Off;
    }
    let dm_major = device_mapper_major();
    let unavailable = |reason: String| Prepared::Unavailable { dm_major, reason };
    let Some(major) = dm_major else {
        return unavailable("the kernel has no device-mapper".into());
    };
    let control = match DmControl::open() {
        Ok(c) => c,
        Err(e) => return unavailable(format!("/dev/mapper/control: {e}")),
    };
    // Only with device-mapper present: libmultipath ends the process when it is missing.
    let library = match MpathLibrary::load() {
        Ok(l) => l,
        Err(e) => return unavailable(format!("{e} (install multipath-tools)")),
    };
    if let Err(e) = library.init() {
        return unavailable(e);
    }
    Prepared::Ready {
        dm_major: major,
        control,
        library,
    }
}

impl Prepared {
    /// Whether multipath maps will be served through libmpathpersist (then CAP_SYS_ADMIN is
    /// kept: device-mapper's control ioctls require it).
    pub fn is_active(&self) -> bool {
        matches!(self, Prepared::Ready { .. })
    }

    /// The start-up log line.
    pub fn describe(&self) -> String {
        match self {
            Prepared::Off => "multipath support: off (device configuration)".into(),
            Prepared::Unavailable { reason, .. } => format!(
                "multipath support unavailable: {reason}; dm-multipath maps get SG_IO \
                 passthrough, which reaches one path only"
            ),
            Prepared::Ready { .. } => {
                "multipath support: active (libmpathpersist; dm-multipath maps recognised by their table)".into()
            }
        }
    }

    /// Starts the library's thread (after the privilege drop, before the server's sandbox);
    /// the thread installs its own seccomp filter before taking requests.
    pub fn start(
        self,
        sgio: SgIoBackend,
        seccomp: SeccompMode,
    ) -> std::io::Result<Option<Multipath>> {
        Ok(match self {
            Prepared::Off => None,
            Prepared::Unavailable { dm_major, reason } => dm_major.map(|dm_major| Multipath {
                dm_major,
                support: MultipathSupport::Unavailable(reason),
            }),
            Prepared::Ready {
                dm_major,
                control,
                library,
            } => {
                let sandbox = Box::new(move || {
                    crate::seccomp::install_multipath_thread(seccomp).map_err(|e| e.to_string())
                });
                let backend = MpathBackend::start(library, sgio, sandbox)?;
                Some(Multipath {
                    dm_major,
                    support: MultipathSupport::Active {
                        control,
                        backend: Arc::new(backend),
                    },
                })
            }
        })
    }
}
