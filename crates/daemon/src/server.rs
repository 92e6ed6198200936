//! The accept loop and the per-connection protocol.
//!
//! Each connection is a task: handshake, then requests one at a time. The device descriptor
//! travels with the CDB; the command runs under `block_in_place`, which first hands the worker's
//! other tasks to another thread, so one hung device never stalls other clients or the accept
//! loop. On SIGTERM/SIGINT/SIGHUP the listener closes, idle connections end, and requests
//! already under way finish and are answered.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use pr_backend::{Device, Dispatcher, PrRequest, Route};
use pr_proto::{
    check_client_features, encode_features, Direction, Reply, RequestHeader, CDB_SIZE,
    FEATURES_NONE, FEATURES_SIZE,
};
use pr_scsi::{PrOutCdb, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use crate::Config;

/// Why a connection was closed before its client closed it.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("client sent feature word {0:#x}; only 0 is accepted")]
    Features(u32),
    #[error("request without a file descriptor")]
    NoDescriptor,
    #[error("more than one file descriptor in a request")]
    TooManyDescriptors,
    #[error("file descriptor sent with parameter data")]
    DescriptorWithData,
    #[error("{0}")]
    Protocol(#[from] pr_proto::ProtocolError),
    #[error("client disconnected in the middle of a request")]
    Truncated,
    #[error("client stalled for {0:?} in the middle of a message")]
    Stalled(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Serves until a termination signal, then waits for connections to finish their requests.
/// The listener must already be non-blocking (set before the seccomp filter forbids FIONBIO).
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    dispatcher: Arc<Dispatcher>,
    config: &Config,
) -> io::Result<()> {
    let listener = UnixListener::from_std(listener)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Every connection task holds a clone; when all are dropped, recv() returns None.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let io_timeout = config.io_timeout;

    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE/ENFILE and friends: log, back off briefly, keep serving.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => break,
        };
        let conn = Connection {
            stream,
            dispatcher: dispatcher.clone(),
            shutdown: shutdown_rx.clone(),
            io_timeout,
        };
        let done = done_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.run().await {
                debug!("connection closed: {e}");
            }
            drop(permit);
            drop(done);
        });
    }
    info!("terminating: no new connections; finishing requests in flight");
    drop(listener);
    let _ = shutdown_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
    Ok(())
}

struct Connection {
    stream: UnixStream,
    dispatcher: Arc<Dispatcher>,
    shutdown: watch::Receiver<bool>,
    io_timeout: Duration,
}

impl Connection {
    async fn run(mut self) -> Result<(), ConnectionError> {
        self.handshake().await?;
        loop {
            let mut fd = None;
            let mut cdb = [0u8; CDB_SIZE];
            match self
                .read_exact_with_fd(&mut cdb, &mut fd, true, true)
                .await?
            {
                Read::Eof => return Ok(()),
                Read::Full => {}
            }
            let Some(fd) = fd else {
                return Err(ConnectionError::NoDescriptor);
            };
            let header = RequestHeader::parse(cdb)?;
            let mut parameters = vec![0u8; header.parameter_bytes()];
            if !parameters.is_empty() {
                let mut none = None;
                if let Read::Eof = self
                    .read_exact_with_fd(&mut parameters, &mut none, false, false)
                    .await?
                {
                    return Err(ConnectionError::Truncated);
                }
            }
            let mut reply = self.execute(fd, header, parameters).await;
            reply.clamp_to(&header);
            self.stream.write_all(&reply.encode()).await?;
        }
    }

    async fn handshake(&mut self) -> Result<(), ConnectionError> {
        self.stream
            .write_all(&encode_features(FEATURES_NONE))
            .await?;
        let mut word = [0u8; FEATURES_SIZE];
        match tokio::time::timeout(self.io_timeout, self.stream.read_exact(&mut word)).await {
            Err(_) => return Err(ConnectionError::Stalled(self.io_timeout)),
            Ok(r) => r?,
        };
        check_client_features(word).map_err(|_| ConnectionError::Features(u32::from_be_bytes(word)))
    }

    /// Fills `buf` from the socket, collecting at most one descriptor into `fd` when
    /// `fd_allowed`. Returns `Eof` only when the peer closed before the first byte and
    /// `eof_ok`. Once the first byte is in, the rest must arrive within the I/O timeout.
    async fn read_exact_with_fd(
        &mut self,
        buf: &mut [u8],
        fd: &mut Option<OwnedFd>,
        fd_allowed: bool,
        eof_ok: bool,
    ) -> Result<Read, ConnectionError> {
        let mut filled = 0;
        while filled < buf.len() {
            let received = if filled == 0 && eof_ok {
                // Between requests the connection may stay idle for as long as the VM runs, but
                // a shutdown ends it. (Waiting in recv itself matters: the socket's readiness
                // can be stale right after a request, so a separate readiness wait would return
                // at once and leave us blind to the shutdown.)
                let mut shutdown = self.shutdown.clone();
                tokio::select! {
                    r = self.recv(&mut buf[filled..]) => r?,
                    _ = shutdown.wait_for(|s| *s) => return Ok(Read::Eof),
                }
            } else {
                match tokio::time::timeout(self.io_timeout, self.recv(&mut buf[filled..])).await {
                    Err(_) => return Err(ConnectionError::Stalled(self.io_timeout)),
                    Ok(r) => r?,
                }
            };
            let mut fds = received.fds;
            if received.control_truncated || fds.len() > 1 || (!fds.is_empty() && fd.is_some()) {
                return Err(ConnectionError::TooManyDescriptors);
            }
            if let Some(f) = fds.pop() {
                if !fd_allowed {
                    return Err(ConnectionError::DescriptorWithData);
                }
                *fd = Some(f);
            }
            if received.bytes == 0 {
                return if filled == 0 && eof_ok {
                    Ok(Read::Eof)
                } else {
                    Err(ConnectionError::Truncated)
                };
            }
            filled += received.bytes;
        }
        Ok(Read::Full)
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<pr_sys::scm::Received> {
        loop {
            self.stream.readable().await?;
            match self.stream.try_io(Interest::READABLE, || {
                pr_sys::scm::recv_with_fds(self.stream.as_fd(), buf, true)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    async fn execute(&self, fd: OwnedFd, header: RequestHeader, parameters: Vec<u8>) -> Reply {
        let (backend, kind) = match self.dispatcher.route(fd.as_fd(), &header) {
            Route::Immediate { reply, reason } => {
                // Info, not warn: a client can send these as fast as it likes.
                info!("refused {}: {reason}", describe(&header));
                return reply;
            }
            Route::Execute { backend, device } => (backend, device.kind),
        };
        // The command may block (a hung device, a slow library). block_in_place first hands
        // this worker's other tasks to another thread, so no other client waits on it, and
        // avoids a queue hop to the blocking pool. (Running fast commands inline on the worker
        // instead was tried: under load the tasks queued on a worker stuck in a hung command
        // are not stolen by the busy others, and lab/hang.sh caught a client waiting 5 s.)
        let (backend_name, result) = tokio::task::block_in_place(|| {
            let device = Device {
                fd: fd.as_fd(),
                kind,
            };
            let request = PrRequest {
                header: &header,
                parameters: &parameters,
            };
            let result = backend.execute(&device, &request);
            // The device descriptor is closed here, once the command has run (the last close
            // of a block device flushes it, which a hung device would block too).
            drop(fd);
            (backend.name(), result)
        });
        let dev = kind
            .dev()
            .map(|d| d.to_string())
            .unwrap_or_else(|| "?".into());
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                warn!("{} on {dev}: {e}", describe(&header));
                e.to_reply()
            }
        };
        let outcome = outcome(&reply);
        if header.direction == Direction::Out {
            info!(device = %dev, backend = backend_name, "{}: {outcome}", describe(&header));
        } else {
            debug!(device = %dev, backend = backend_name, "{}: {outcome}, {} bytes", describe(&header), reply.data.len());
        }
        reply
    }
}

enum Read {
    Full,
    Eof,
}

/// "PR OUT REGISTER type WRITE EXCLUSIVE" style description of a request.
fn describe(header: &RequestHeader) -> String {
    match header.direction {
        Direction::In => {
            let sa = header.cdb[1] & 0x1f;
            match pr_scsi::ServiceActionIn::from_code(sa) {
                Some(s) => format!("PR IN {s}"),
                None => format!("PR IN service action {sa:#x}"),
            }
        }
        Direction::Out => match PrOutCdb::parse(&header.cdb) {
            Ok(c) => {
                let sa = c
                    .service_action()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| format!("service action {:#x}", c.service_action_code));
                let ty = c
                    .reservation_type()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|_| format!("{:#x}", c.type_code));
                format!("PR OUT {sa} type {ty}")
            }
            Err(_) => "PR OUT".into(),
        },
    }
}

fn outcome(reply: &Reply) -> String {
    if reply.status == Status::CHECK_CONDITION {
        match pr_scsi::Sense::parse(&reply.sense) {
            Some(s) => format!("{} [{}]", reply.status, s.code),
            None => reply.status.to_string(),
        }
    } else {
        reply.status.to_string()
    }
}
