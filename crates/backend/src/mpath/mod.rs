//! dm-multipath maps through libmpathpersist (multipath-tools ≥ 0.8.6): a registration reaches
//! every path of the map, and multipathd, told the key, registers it again on paths that come
//! back. The library is not thread-safe, so one dedicated thread owns it and runs every call;
//! requests hand it a duplicate of the client's descriptor and wait for the answer.

pub mod translate;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Mutex;

use pr_proto::{Reply, SENSE_SIZE};
use pr_sys::mpath::{MpathLibrary, PrinResp, ProutRequest};
use pr_sys::sgio::{sg_io, DataTransfer};
use tracing::{debug, info, warn};

use crate::sgio::{reply_from_sg_io, DataIn, SgIoBackend};
use crate::{Backend, BackendError, Device, PrRequest};
use translate::{MpathCommand, Outcome};

/// Longest wait for one library call, queueing included: it runs SG_IO on every path (the
/// library's own timeout is 2 s per command, with retries) and talks to multipathd.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

enum Work {
    In(u8),
    Out(ProutRequest),
}

struct Job {
    fd: OwnedFd,
    work: Work,
    done: mpsc::SyncSender<(i32, Option<Box<PrinResp>>)>,
}

/// The multipath backend: a handle to the thread that owns libmpathpersist.
#[derive(Debug)]
pub struct MpathBackend {
    jobs: Mutex<mpsc::Sender<Job>>,
    sgio: SgIoBackend,
}

impl MpathBackend {
    /// Starts the library's thread. `lib` must already be initialised. The thread first runs
    /// `sandbox` (its seccomp filter); if that fails, so does `start`.
    pub fn start(
        lib: MpathLibrary,
        sgio: SgIoBackend,
        sandbox: Box<dyn FnOnce() -> Result<(), String> + Send>,
    ) -> std::io::Result<MpathBackend> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
        std::thread::Builder::new()
            .name("pr-mpath".into())
            .spawn(move || {
                let sandboxed = sandbox();
                let ok = sandboxed.is_ok();
                let _ = ready_tx.send(sandboxed);
                if !ok {
                    return;
                }
                for job in rx {
                    let answer = match job.work {
                        Work::In(sa) => {
                            let (r, resp) = lib.reserve_in(job.fd.as_fd(), sa);
                            (r, Some(resp))
                        }
                        Work::Out(req) => match lib.reserve_out(job.fd.as_fd(), &req) {
                            Ok(r) => (r, None),
                            Err(e) => {
                                warn!("mpath: {e}");
                                (pr_sys::mpath::status::SYNTAX_ERROR, None)
                            }
                        },
                    };
                    drop(job.fd);
                    let _ = job.done.send(answer);
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(MpathBackend {
                jobs: Mutex::new(tx),
                sgio,
            }),
            Ok(Err(e)) => Err(std::io::Error::other(format!(
                "the multipath thread's seccomp filter: {e}"
            ))),
            Err(_) => Err(std::io::Error::other("the multipath thread did not start")),
        }
    }

    /// Runs one library call on the library's thread and waits for it.
    fn call(
        &self,
        device: &Device<'_>,
        work: Work,
    ) -> Result<(i32, Option<Box<PrinResp>>), BackendError> {
        let unavailable = |reason: String| BackendError::Unavailable {
            backend: "mpath",
            reason,
        };
        let fd = device
            .fd
            .try_clone_to_owned()
            .map_err(|e| BackendError::Io {
                backend: "mpath",
                device: device.kind.describe(),
                source: e,
            })?;
        let (done, answer) = mpsc::sync_channel(1);
        self.jobs
            .lock()
            .map_err(|_| unavailable("the multipath thread's queue is poisoned".into()))?
            .send(Job { fd, work, done })
            .map_err(|_| unavailable("the multipath thread has stopped".into()))?;
        answer.recv_timeout(CALL_TIMEOUT).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => unavailable(format!(
                "libmpathpersist has not answered within {} s (a path or multipathd hangs?)",
                CALL_TIMEOUT.as_secs()
            )),
            mpsc::RecvTimeoutError::Disconnected => {
                unavailable("the multipath thread has stopped".into())
            }
        })
    }

    /// The reply for a library return code; for a CHECK CONDITION whose sense the library kept,
    /// the sense of a TEST UNIT READY on the map (as QEMU recovers it).
    fn reply(&self, device: &Device<'_>, what: &str, r: i32) -> Reply {
        if r != pr_sys::mpath::status::SUCCESS {
            info!(
                "mpath: {what} on {}: {}",
                device.kind.describe(),
                translate::status_name(r)
            );
        }
        match translate::outcome(r) {
            Outcome::Reply(reply) => reply,
            Outcome::SenseFromTestUnitReady(fallback) => {
                let mut sense = [0u8; SENSE_SIZE];
                let tur = sg_io(
                    device.fd,
                    &[0u8; 6],
                    DataTransfer::None,
                    &mut sense,
                    self.sgio.timeout(),
                );
                let reply = reply_from_sg_io(tur, sense, DataIn::None);
                if reply.status != pr_scsi::Status::GOOD {
                    reply
                } else {
                    Reply::check_condition(fallback.to_fixed())
                }
            }
        }
    }
}

impl Backend for MpathBackend {
    fn name(&self) -> &'static str {
        "mpath"
    }

    fn execute(&self, device: &Device<'_>, request: &PrRequest<'_>) -> Result<Reply, BackendError> {
        let command = match translate::translate(request.header, request.parameters) {
            Ok(c) => c,
            Err(r) => {
                info!("mpath: refused on {}: {}", device.kind.describe(), r.reason);
                return Ok(r.reply);
            }
        };
        match command {
            MpathCommand::FullStatusViaSgIo => {
                debug!("mpath: READ FULL STATUS through SG_IO on one active path");
                self.sgio.execute(device, request)
            }
            MpathCommand::In { service_action } => {
                let (r, resp) = self.call(device, Work::In(service_action.code()))?;
                let mut reply = self.reply(device, service_action.name(), r);
                if let (true, Some(resp)) = (r == pr_sys::mpath::status::SUCCESS, resp) {
                    reply.data = translate::prin_data(service_action, &resp);
                }
                Ok(reply)
            }
            MpathCommand::Out(req) => {
                let what = pr_scsi::ServiceActionOut::from_code(req.service_action)
                    .map_or("PR OUT", |s| s.name());
                let (r, _) = self.call(device, Work::Out(req))?;
                Ok(self.reply(device, what, r))
            }
        }
    }
}
