//! SG_IO passthrough: the command goes to the device as the client sent it.

pub(crate) mod mapping;

use std::time::Duration;

use pr_proto::{Direction, Reply, SENSE_SIZE};
use pr_sys::sgio::{sg_io, DataInBuffer, DataTransfer};

pub use mapping::{reply_from_sg_io, DataIn};

use crate::{Backend, BackendError, Device, PrRequest};

/// SG_IO timeout used unless configured: the sd driver's default command timeout (30 s).
/// QEMU's C helper passes 1 ms, which the kernel silently raises to its minimum; a PR command
/// on a multipath or remote target can legitimately take seconds, and a hung device only ever
/// occupies one thread for at most this long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The SG_IO passthrough backend.
#[derive(Debug, Clone)]
pub struct SgIoBackend {
    timeout: Duration,
}

impl SgIoBackend {
    pub fn new(timeout: Duration) -> SgIoBackend {
        SgIoBackend { timeout }
    }

    /// The SG_IO timeout per command.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Default for SgIoBackend {
    fn default() -> Self {
        SgIoBackend::new(DEFAULT_TIMEOUT)
    }
}

impl Backend for SgIoBackend {
    fn name(&self) -> &'static str {
        "sgio"
    }

    fn execute(&self, device: &Device<'_>, request: &PrRequest<'_>) -> Result<Reply, BackendError> {
        let mut sense = [0u8; SENSE_SIZE];
        let header = request.header;
        match header.direction {
            Direction::In => {
                // Whole pages of our own, never a heap chunk of exactly the allocation length:
                // a device may write past the length it is given (docs/protocol.md).
                let mut buffer = DataInBuffer::new(header.transfer_length);
                let result = sg_io(
                    device.fd,
                    &header.cdb,
                    DataTransfer::FromDevice {
                        buffer: &mut buffer,
                        len: header.transfer_length,
                    },
                    &mut sense,
                    self.timeout,
                );
                Ok(reply_from_sg_io(
                    result,
                    sense,
                    DataIn::Buffer(&buffer, header.transfer_length),
                ))
            }
            Direction::Out => {
                let result = sg_io(
                    device.fd,
                    &header.cdb,
                    DataTransfer::ToDevice(request.parameters),
                    &mut sense,
                    self.timeout,
                );
                Ok(reply_from_sg_io(result, sense, DataIn::None))
            }
        }
    }
}
