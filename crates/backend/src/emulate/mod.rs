//! The `emulate` backend: persistent reservations answered by the SPC-4 engine (pr-engine) on
//! a durable store (pr-store), with no device I/O at all. The device the client sent only
//! tells which emulated logical unit the command is for (by its device number, from the
//! configuration); the initiator is the one of the helper socket the request came through
//! ([`identity`]), since QEMU's protocol names none.
//!
//! Reservations emulated here are honoured by cluster software that asks for them, but they
//! do not stop a fenced VM's writes: QEMU writes to the device itself. Fencing I/O needs the
//! engine on the I/O path (pr-target).

pub mod identity;
pub mod vpd;

use std::collections::HashMap;
use std::sync::Arc;

use pr_engine::{EngineConfig, Nexus};
use pr_proto::Reply;
use pr_scsi::SenseCode;
use pr_store::{LuId, Store};
use pr_sys::device::DevNum;
use tracing::warn;

use crate::{Backend, BackendError, Completion, Device, PrRequest};

/// Answers PR IN/OUT from the store's state of the logical unit configured for the device.
pub struct EmulateBackend {
    store: Arc<dyn Store>,
    /// The I_T nexus of each listening socket, by [`PrRequest::socket`].
    nexuses: Vec<Nexus>,
    config: EngineConfig,
    units: HashMap<DevNum, LuId>,
}

impl std::fmt::Debug for EmulateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulateBackend")
            .field("nexuses", &self.nexuses)
            .field("config", &self.config)
            .field("units", &self.units)
            .finish_non_exhaustive()
    }
}

impl EmulateBackend {
    /// A backend on `store` for the devices of `units`, as the initiator `nexus` (on the main
    /// socket, 0).
    pub fn new(
        store: Arc<dyn Store>,
        nexus: Nexus,
        config: EngineConfig,
        units: HashMap<DevNum, LuId>,
    ) -> EmulateBackend {
        EmulateBackend {
            store,
            nexuses: vec![nexus],
            config,
            units,
        }
    }

    /// The initiators of sockets 1, 2, …: a request through socket `i` is `nexuses[i - 1]`.
    pub fn with_sockets(mut self, nexuses: impl IntoIterator<Item = Nexus>) -> EmulateBackend {
        self.nexuses.truncate(1);
        self.nexuses.extend(nexuses);
        self
    }

    /// The initiator of the main socket.
    pub fn nexus(&self) -> &Nexus {
        &self.nexuses[0]
    }

    /// The initiator of each socket, the main one first.
    pub fn nexuses(&self) -> &[Nexus] {
        &self.nexuses
    }
}

/// The engine's reply as the helper sends it.
fn to_wire(reply: pr_engine::Reply) -> Reply {
    Reply {
        status: reply.status,
        sense: reply
            .sense
            .map_or([0; pr_proto::SENSE_SIZE], |s| s.to_fixed()),
        data: reply.data,
    }
}

impl Backend for EmulateBackend {
    fn name(&self) -> &'static str {
        "emulate"
    }

    /// PR OUT goes to the store's writer, which commits every command queued with it in one
    /// transaction: the more arrive together, the fewer fsyncs.
    fn waits_for_company(&self, request: &PrRequest<'_>) -> bool {
        request.header.cdb[0] == pr_scsi::PERSISTENT_RESERVE_OUT
    }

    fn execute(&self, device: &Device<'_>, request: &PrRequest<'_>) -> Result<Reply, BackendError> {
        let (lu, nexus) = match self.target(device, request) {
            Ok(t) => t,
            Err(answer) => return *answer,
        };
        let outcome = self
            .store
            .execute(
                lu,
                nexus,
                &request.header.cdb,
                request.parameters,
                &self.config,
            )
            .map_err(|source| store_error(lu, source))?;
        Ok(to_wire(outcome.reply))
    }

    /// A PR OUT, when the store commits in the background: the reply is sent from the store's
    /// writer once the batch is durable.
    fn answers_later(&self, request: &PrRequest<'_>) -> bool {
        self.waits_for_company(request) && self.store.answers_later()
    }

    fn execute_later(&self, device: &Device<'_>, request: &PrRequest<'_>, done: Completion) {
        let (lu, nexus) = match self.target(device, request) {
            Ok(t) => t,
            Err(answer) => return done(*answer),
        };
        let owned = lu.clone();
        self.store.execute_later(
            lu,
            nexus,
            &request.header.cdb,
            request.parameters,
            &self.config,
            Box::new(move |result| {
                done(
                    result
                        .map(|outcome| to_wire(outcome.reply))
                        .map_err(|source| store_error(&owned, source)),
                )
            }),
        );
    }
}

impl EmulateBackend {
    /// The emulated logical unit of `device` and the initiator of the request's socket, or the
    /// answer for a device or socket without one.
    fn target(
        &self,
        device: &Device<'_>,
        request: &PrRequest<'_>,
    ) -> Result<(&LuId, &Nexus), Box<Result<Reply, BackendError>>> {
        let Some(lu) = device.kind.dev().and_then(|d| self.units.get(&d)) else {
            warn!(
                "emulate: the {} is no emulated logical unit; name it in --config \
                 ([[device]] with backend = \"emulate\" and lu = \"NAME\")",
                device.kind.describe()
            );
            return Err(Box::new(Ok(Reply::check_condition(
                SenseCode::LOGICAL_UNIT_NOT_SUPPORTED.to_fixed(),
            ))));
        };
        let Some(nexus) = self.nexuses.get(request.socket) else {
            return Err(Box::new(Err(BackendError::Unavailable {
                backend: "emulate",
                reason: format!("no initiator is configured for socket {}", request.socket),
            })));
        };
        Ok((lu, nexus))
    }
}

fn store_error(lu: &LuId, source: pr_store::StoreError) -> BackendError {
    BackendError::Store {
        lu: lu.to_string(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pr_proto::RequestHeader;
    use pr_scsi::Status;
    use pr_store::SqliteStore;
    use pr_sys::device::FileKind;
    use std::os::fd::AsFd;

    fn cdb(bytes: &[u8]) -> RequestHeader {
        let mut c = [0u8; 16];
        c[..bytes.len()].copy_from_slice(bytes);
        RequestHeader::parse(c).unwrap()
    }

    #[test]
    fn answers_from_the_store_and_refuses_unknown_devices() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("r.db")).unwrap());
        let lu_dev = DevNum { major: 7, minor: 3 };
        let units = HashMap::from([(lu_dev, LuId::new("disk0").unwrap())]);
        let nexus = identity::derived_nexus(std::path::Path::new("/run/a.sock"));
        let b = EmulateBackend::new(store, nexus, EngineConfig::default(), units);
        // Any descriptor: the backend does no device I/O, only the device number counts.
        let file = std::fs::File::open("/dev/null").unwrap();
        let device = |dev| Device {
            fd: file.as_fd(),
            kind: FileKind::Block(dev),
        };
        // PR OUT REGISTER (SPC-4 §6.16), SA key 0x1111, 24-byte parameter list.
        let mut params = [0u8; 24];
        params[8..16].copy_from_slice(&0x1111u64.to_be_bytes());
        let register = cdb(&[0x5f, 0x00, 0x00, 0, 0, 0, 0, 0, 24, 0]);
        let r = b
            .execute(
                &device(lu_dev),
                &PrRequest {
                    header: &register,
                    parameters: &params,
                    socket: 0,
                },
            )
            .unwrap();
        assert_eq!(r.status, Status::GOOD);
        // PR IN READ KEYS: generation 1, one key.
        let read_keys = cdb(&[0x5e, 0x00, 0, 0, 0, 0, 0, 0, 64, 0]);
        let r = b
            .execute(
                &device(lu_dev),
                &PrRequest {
                    header: &read_keys,
                    parameters: &[],
                    socket: 0,
                },
            )
            .unwrap();
        assert_eq!(
            r.data,
            [0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x11, 0x11]
        );
        // Another device: CHECK CONDITION, ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25h/00h).
        let r = b
            .execute(
                &device(DevNum { major: 7, minor: 4 }),
                &PrRequest {
                    header: &read_keys,
                    parameters: &[],
                    socket: 0,
                },
            )
            .unwrap();
        assert_eq!(r.status, Status::CHECK_CONDITION);
        assert_eq!((r.sense[2], r.sense[12], r.sense[13]), (0x05, 0x25, 0x00));
    }
}
