//! Checks a client's descriptor and chooses the backend for a request.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use pr_proto::{Direction, Reply, RequestHeader};
use pr_scsi::SenseCode;
use pr_sys::device::{classify, is_read_only};

use crate::{Backend, Device};

/// Where a request goes.
#[derive(Debug)]
pub enum Route<'a> {
    /// Answered without running a backend (the descriptor was refused).
    Immediate { reply: Reply, reason: String },
    /// To be executed by this backend, on a blocking pool.
    Execute {
        backend: Arc<dyn Backend>,
        device: Device<'a>,
    },
}

/// Chooses a backend per device. Today every accepted device goes to the default backend
/// (SG_IO passthrough); multipath, block-layer and emulated devices plug in here.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    default: Arc<dyn Backend>,
}

impl Dispatcher {
    pub fn new(default: Arc<dyn Backend>) -> Dispatcher {
        Dispatcher { default }
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
        let read_only = match is_read_only(fd) {
            Ok(r) => r,
            Err(e) => {
                return refuse(
                    SenseCode::LOGICAL_UNIT_COMMUNICATION_FAILURE,
                    format!("cannot read the descriptor's flags: {e}"),
                )
            }
        };
        if header.direction == Direction::Out && read_only {
            return refuse(
                SenseCode::INVALID_COMMAND_OPERATION_CODE,
                "PR OUT on a descriptor opened read-only".into(),
            );
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
            backend: self.default.clone(),
            device: Device {
                fd,
                kind,
                read_only,
            },
        }
    }
}
