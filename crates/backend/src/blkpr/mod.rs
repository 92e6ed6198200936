//! The Linux block-layer PR ioctls (IOC_PR_*): for NVMe namespaces, device-mapper devices and
//! any block device whose driver has `pr_ops`, without SG_IO.
//!
//! PR OUT goes through IOC_PR_REGISTER … IOC_PR_CLEAR; READ KEYS and READ RESERVATION through
//! IOC_PR_READ_KEYS / IOC_PR_READ_RESERVATION (Linux ≥ 6.19). On older kernels those two, and
//! READ FULL STATUS always, fall back to SG_IO when the device answers SG_GET_VERSION_NUM (a
//! SCSI disk); otherwise they are refused. REPORT CAPABILITIES is synthesised. The translation
//! rules and the status/errno table are in [`translate`] and docs/backends.md.

pub mod translate;

use std::io;

use pr_proto::Reply;
use pr_sys::blkpr;
use tracing::{debug, info};

use crate::sgio::SgIoBackend;
use crate::{refuse_cdb, Backend, BackendError, Device, PrRequest};
use translate::BlockCommand;

/// The block-layer PR backend.
#[derive(Debug, Clone, Default)]
pub struct BlkPrBackend {
    /// For the PR IN service actions the running kernel has no ioctl for.
    sgio: SgIoBackend,
}

impl BlkPrBackend {
    pub fn new(sgio: SgIoBackend) -> BlkPrBackend {
        BlkPrBackend { sgio }
    }

    /// The reply for an ioctl's outcome; EPERM/EACCES become an error (we lack a privilege).
    fn finish(
        &self,
        device: &Device<'_>,
        what: &str,
        r: io::Result<i32>,
    ) -> Result<Reply, BackendError> {
        match r {
            Ok(0) => Ok(Reply::good(Vec::new())),
            Ok(status) => Ok(translate::reply_from_status(status)),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                translate::reply_from_errno(errno).ok_or_else(|| BackendError::Io {
                    backend: "blkpr",
                    device: device.kind.describe(),
                    source: io::Error::new(
                        e.kind(),
                        format!(
                            "{what}: {e} (kernels before 6.5 allow IOC_PR_* only with \
                             CAP_SYS_ADMIN, which pr-helper keeps when a device is configured \
                             with backend = \"blkpr\")"
                        ),
                    ),
                })
            }
        }
    }

    /// A PR IN service action the block layer cannot answer here: SG_IO if the device takes it.
    fn fallback(
        &self,
        device: &Device<'_>,
        request: &PrRequest<'_>,
        why: &str,
    ) -> Result<Reply, BackendError> {
        if pr_sys::sgio::sg_version(device.fd).is_ok() {
            debug!(
                "blkpr: {why}; {} answers SG_IO, using it",
                device.kind.describe()
            );
            return self.sgio.execute(device, request);
        }
        let refusal = refuse_cdb(
            1,
            4,
            format!("{why}, and {} has no SG_IO", device.kind.describe()),
        );
        info!("blkpr: {}: refused", refusal.reason);
        Ok(refusal.reply)
    }
}

/// How often READ RESERVATION without a reservation reads the generation again when it
/// changed under it.
const GENERATION_TRIES: usize = 4;

/// IOC_PR_READ_RESERVATION, with the PR generation also when no reservation is held: the sd
/// driver fills in the generation only with a reservation (sd_pr_read_reservation returns
/// early when the ADDITIONAL LENGTH is 0), so there it comes from IOC_PR_READ_KEYS, read before
/// and after. Equal generations around the READ RESERVATION mean no registration changed in
/// between, so "no reservation, generation g" was the state when the reservation was read
/// (RESERVE and RELEASE do not change the generation; the reservation read itself says there
/// was none). If the generation keeps changing, the last one read is reported.
fn read_reservation_with_generation(
    fd: std::os::fd::BorrowedFd<'_>,
) -> io::Result<blkpr::HeldReservation> {
    let mut r = blkpr::read_reservation(fd)?;
    if r.result != 0 || r.rtype != 0 || r.generation != 0 {
        return Ok(r);
    }
    let mut before = blkpr::read_keys(fd, 0)?;
    for _ in 0..GENERATION_TRIES {
        if before.result != 0 {
            return Ok(r);
        }
        r = blkpr::read_reservation(fd)?;
        if r.result != 0 || r.rtype != 0 {
            return Ok(r);
        }
        let after = blkpr::read_keys(fd, 0)?;
        if after.result != 0 {
            return Ok(r);
        }
        r.generation = after.generation;
        if after.generation == before.generation {
            return Ok(r);
        }
        before = after;
    }
    Ok(r)
}

/// Errnos with which a kernel or driver says it has no such PR ioctl.
fn no_such_ioctl(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP)
    )
}

impl Backend for BlkPrBackend {
    fn name(&self) -> &'static str {
        "blkpr"
    }

    fn execute(&self, device: &Device<'_>, request: &PrRequest<'_>) -> Result<Reply, BackendError> {
        let command = match translate::translate(request.header, request.parameters) {
            Ok(c) => c,
            Err(r) => {
                info!("blkpr: refused on {}: {}", device.kind.describe(), r.reason);
                return Ok(r.reply);
            }
        };
        debug!("blkpr: {command:?} on {}", device.kind.describe());
        let fd = device.fd;
        if let BlockCommand::Register { new_key: 0, .. } = command {
            if blkpr::is_nvme_namespace(fd) {
                let r = translate::nvme_unregister_refusal();
                info!("blkpr: refused on {}: {}", device.kind.describe(), r.reason);
                return Ok(r.reply);
            }
        }
        match command {
            BlockCommand::Register {
                old_key,
                new_key,
                ignore_existing,
            } => self.finish(
                device,
                "IOC_PR_REGISTER",
                blkpr::register(fd, old_key, new_key, ignore_existing),
            ),
            BlockCommand::Reserve { key, pr_type } => {
                self.finish(device, "IOC_PR_RESERVE", blkpr::reserve(fd, key, pr_type))
            }
            BlockCommand::Release { key, pr_type } => {
                self.finish(device, "IOC_PR_RELEASE", blkpr::release(fd, key, pr_type))
            }
            BlockCommand::Preempt {
                key,
                victim,
                pr_type,
                abort,
            } => self.finish(
                device,
                "IOC_PR_PREEMPT",
                blkpr::preempt(fd, key, victim, pr_type, abort),
            ),
            BlockCommand::Clear { key } => {
                self.finish(device, "IOC_PR_CLEAR", blkpr::clear(fd, key))
            }
            BlockCommand::ReadKeys { capacity } => match blkpr::read_keys(fd, capacity) {
                Ok(k) if k.result == 0 => Ok(Reply::good(translate::read_keys_data(
                    k.generation,
                    k.total,
                    &k.keys,
                ))),
                Ok(k) => Ok(translate::reply_from_status(k.result)),
                Err(e) if no_such_ioctl(&e) => {
                    self.fallback(device, request, &format!("IOC_PR_READ_KEYS: {e}"))
                }
                Err(e) => self.finish(device, "IOC_PR_READ_KEYS", Err(e)),
            },
            BlockCommand::ReadReservation => match read_reservation_with_generation(fd) {
                Ok(r) if r.result == 0 => {
                    match translate::read_reservation_data(r.generation, r.key, r.rtype) {
                        Ok(d) => Ok(Reply::good(d)),
                        Err(r) => {
                            info!("blkpr: {} on {}", r.reason, device.kind.describe());
                            Ok(r.reply)
                        }
                    }
                }
                Ok(r) => Ok(translate::reply_from_status(r.result)),
                Err(e) if no_such_ioctl(&e) => {
                    self.fallback(device, request, &format!("IOC_PR_READ_RESERVATION: {e}"))
                }
                Err(e) => self.finish(device, "IOC_PR_READ_RESERVATION", Err(e)),
            },
            BlockCommand::ReportCapabilities => Ok(Reply::good(translate::capabilities())),
            BlockCommand::ReadFullStatus => {
                self.fallback(device, request, "READ FULL STATUS has no block-layer ioctl")
            }
        }
    }
}
