//! Persistent-reservation backends ("pr-manager implementations", after QEMU's
//! `PRManagerClass::run`): given the device a client proved it holds and a parsed request,
//! produce the reply.
//!
//! A backend may run the command on the device (`sgio`), through a library, or answer from its
//! own state without device I/O; the [`Dispatcher`] checks the descriptor first and picks the
//! backend. A SCSI outcome — GOOD, RESERVATION CONFLICT, CHECK CONDITION with sense — is an
//! `Ok(Reply)`; `Err` means the command could not be executed at all.
#![forbid(unsafe_code)]

pub mod blkpr;
pub mod dispatch;
pub mod emulate;
pub mod mpath;
pub mod sgio;

use std::os::fd::BorrowedFd;

pub use dispatch::{Dispatcher, Multipath, MultipathSupport, Route};
use pr_proto::{Reply, RequestHeader};
use pr_scsi::SenseCode;
use pr_sys::device::FileKind;

/// The device a request is for: the client's descriptor, and what we learned about it.
#[derive(Debug, Clone, Copy)]
pub struct Device<'a> {
    pub fd: BorrowedFd<'a>,
    pub kind: FileKind,
}

/// A request as a backend sees it.
#[derive(Debug, Clone, Copy)]
pub struct PrRequest<'a> {
    pub header: &'a RequestHeader,
    /// PR OUT parameter data (exactly the parameter list length); empty for PR IN.
    pub parameters: &'a [u8],
    /// The listening socket the request came through: 0 is the main one (`-k` or systemd's),
    /// 1, 2, … the configured extra sockets in order. The `emulate` backend makes it the
    /// initiator; other backends ignore it.
    pub socket: usize,
}

/// Why a backend could not execute a command at all.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{backend} backend is not available: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    #[error("{backend} backend failed on {device}: {source}")]
    Io {
        backend: &'static str,
        device: String,
        #[source]
        source: std::io::Error,
    },
    /// The emulated logical unit's store could not execute the command (nothing was written).
    #[error("emulate backend: the store failed for logical unit {lu}: {source}")]
    Store {
        lu: String,
        #[source]
        source: Box<pr_store::StoreError>,
    },
}

impl BackendError {
    /// The sense the daemon answers with when a command could not be executed.
    pub fn sense_code(&self) -> SenseCode {
        match self {
            BackendError::Unavailable { .. } => SenseCode::LOGICAL_UNIT_COMMUNICATION_FAILURE,
            BackendError::Io { .. } => SenseCode::LOGICAL_UNIT_COMMUNICATION_FAILURE,
            BackendError::Store { .. } => SenseCode::LOGICAL_UNIT_COMMUNICATION_FAILURE,
        }
    }

    /// The reply for this error: CHECK CONDITION with [`BackendError::sense_code`].
    pub fn to_reply(&self) -> Reply {
        Reply::check_condition(self.sense_code().to_fixed())
    }
}

/// A command a backend answers itself without running it: the reply, and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reply: Reply,
    pub reason: String,
}

/// CHECK CONDITION with `sense`, and the reason for the log.
pub(crate) fn refused(sense: [u8; pr_proto::SENSE_SIZE], reason: String) -> Box<Refusal> {
    Box::new(Refusal {
        reply: Reply::check_condition(sense),
        reason,
    })
}

/// ILLEGAL REQUEST, INVALID FIELD IN CDB, pointing at `byte`/`bit`.
pub(crate) fn refuse_cdb(byte: u16, bit: u8, reason: impl Into<String>) -> Box<Refusal> {
    refused(
        SenseCode::INVALID_FIELD_IN_CDB.to_fixed_with_field_pointer(true, byte, Some(bit)),
        reason.into(),
    )
}

/// The CDB and service action of a PR OUT for a backend that cannot carry REGISTER AND MOVE or
/// REPLACE LOST RESERVATION: those, and reserved codes, are refused (INVALID FIELD IN CDB at byte
/// 1 bit 4); `why` completes the log line ("has no block-layer ioctl").
pub(crate) fn pr_out_without_move(
    header: &pr_proto::RequestHeader,
    why: &str,
) -> Result<(pr_scsi::PrOutCdb, pr_scsi::ServiceActionOut), Box<Refusal>> {
    use pr_scsi::ServiceActionOut;
    let cdb =
        pr_scsi::PrOutCdb::parse(&header.cdb).map_err(|e| refused(e.sense(), e.to_string()))?;
    let sa = cdb
        .service_action()
        .map_err(|e| refused(e.sense(), e.to_string()))?;
    if matches!(
        sa,
        ServiceActionOut::RegisterAndMove | ServiceActionOut::ReplaceLostReservation
    ) {
        return Err(refuse_cdb(1, 4, format!("{} {why}", sa.name())));
    }
    Ok((cdb, sa))
}

/// One pr-manager implementation.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Short name for logs and configuration (`sgio`, `mpath`, `blkpr`, `emulate`).
    fn name(&self) -> &'static str;

    /// Executes one command. May block (device I/O, a library, a store): the daemon runs it
    /// under `block_in_place`, so the worker's other connections move to another thread. The
    /// reply need not be clamped to the allocation length; the server does that for every
    /// backend.
    fn execute(&self, device: &Device<'_>, request: &PrRequest<'_>) -> Result<Reply, BackendError>;

    /// Whether executing `request` may wait for other requests to be executed with it (the
    /// store's group commit): the server then makes sure another thread is free to take the
    /// next request meanwhile, so that concurrent commands can meet in one commit. False by
    /// default.
    fn waits_for_company(&self, request: &PrRequest<'_>) -> bool {
        let _ = request;
        false
    }

    /// Whether [`Backend::execute_later`] returns before `request` is answered (the store
    /// commits it in the background). The server then sends the reply from the completion and
    /// the thread that read the request goes on to the next one. False by default.
    fn answers_later(&self, request: &PrRequest<'_>) -> bool {
        let _ = request;
        false
    }

    /// [`Backend::execute`], answered through `done` rather than returned: when
    /// [`Backend::answers_later`] says so, `done` is called exactly once, later, on a thread
    /// of the backend, and must neither block nor panic. The device's descriptor is not used
    /// after this returns. The default executes here and calls `done` before returning.
    fn execute_later(&self, device: &Device<'_>, request: &PrRequest<'_>, done: Completion) {
        done(self.execute(device, request));
    }
}

/// Where [`Backend::execute_later`] sends the reply.
pub type Completion = Box<dyn FnOnce(Result<Reply, BackendError>) + Send>;
