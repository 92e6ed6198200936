//! A busy connection, served on a thread of its own with blocking system calls: read a request,
//! run it, write the reply, wait for the next. The kernel wakes the thread that owns the socket,
//! so nothing passes between threads per request, and a hung device holds only the thread of
//! the connection that sent the command. When no request comes for `LINGER`, the socket goes
//! back to the event loop (server.rs), which holds idle connections for a few hundred bytes each.

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pr_backend::{Device, Dispatcher, PrRequest, Route};
use pr_proto::{Direction, Reply, RequestHeader, CDB_SIZE};
use pr_scsi::{PrOutCdb, Status};
use rustix::fs::OFlags;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How long a connection keeps its thread waiting for the next request. Also how long a
/// shutdown waits for a connection that is between requests on its thread.
pub(crate) const LINGER: Duration = Duration::from_millis(200);

/// Why a connection was closed before its client closed it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
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
    #[error("no thread for the connection: {0}")]
    Thread(#[source] io::Error),
    #[error("the connection's thread ended without an answer")]
    ThreadLost,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// How a turn on a thread ended.
pub(crate) enum Turn {
    /// No request for `LINGER`: the socket, non-blocking again, for the event loop to hold.
    Quiet(UnixStream),
    /// The connection is over (client closed, shutdown, or an error).
    Closed(Result<(), ConnectionError>),
}

/// A connection handed to a thread for one turn.
pub(crate) struct Active {
    pub(crate) stream: UnixStream,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) io_timeout: Duration,
    /// First turn of this connection: the socket's timeouts are set once, here.
    pub(crate) first: bool,
}

enum Read {
    Full,
    /// The peer closed between requests.
    Eof,
    /// Nothing arrived for `LINGER` between requests.
    Quiet,
}

impl Active {
    /// Serves requests until the connection is quiet for `LINGER` or ends.
    pub(crate) fn serve(self) -> Turn {
        match self.serve_requests() {
            Ok(true) => match set_nonblocking(&self.stream, true) {
                Ok(()) => Turn::Quiet(self.stream),
                Err(e) => Turn::Closed(Err(e.into())),
            },
            Ok(false) => Turn::Closed(Ok(())),
            Err(e) => Turn::Closed(Err(e)),
        }
    }

    /// Ok(true) when the connection went quiet, Ok(false) when it is over.
    fn serve_requests(&self) -> Result<bool, ConnectionError> {
        if self.first {
            // The receive timeout marks the end of a turn; the send timeout drops a client
            // that stops reading its replies.
            self.stream.set_read_timeout(Some(LINGER))?;
            self.stream.set_write_timeout(Some(self.io_timeout))?;
        }
        set_nonblocking(&self.stream, false)?;
        loop {
            let mut fd = None;
            let mut cdb = [0u8; CDB_SIZE];
            match self.read_exact_with_fd(&mut cdb, &mut fd, true, true)? {
                Read::Eof => return Ok(false),
                Read::Quiet => return Ok(true),
                Read::Full => {}
            }
            let Some(fd) = fd else {
                return Err(ConnectionError::NoDescriptor);
            };
            let header = RequestHeader::parse(cdb)?;
            let mut parameters = vec![0u8; header.parameter_bytes()];
            if !parameters.is_empty() {
                let mut none = None;
                if !matches!(
                    self.read_exact_with_fd(&mut parameters, &mut none, false, false)?,
                    Read::Full
                ) {
                    return Err(ConnectionError::Truncated);
                }
            }
            let mut reply = execute(&self.dispatcher, fd, header, parameters);
            reply.clamp_to(&header);
            (&self.stream)
                .write_all(&reply.encode())
                .map_err(|e| match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        ConnectionError::Stalled(self.io_timeout)
                    }
                    _ => ConnectionError::Io(e),
                })?;
            // A shutdown ends the connection once its request in flight is answered.
            if *self.shutdown.borrow() {
                return Ok(false);
            }
        }
    }

    /// Fills `buf` from the socket, collecting at most one descriptor into `fd` when
    /// `fd_allowed`. Between requests (`between`), returns `Eof` when the peer closed before
    /// the first byte and `Quiet` when nothing came for `LINGER`. Once the first byte is in, the
    /// rest must arrive within the I/O timeout (measured from the first wait that found
    /// nothing, so at most `LINGER` longer).
    fn read_exact_with_fd(
        &self,
        buf: &mut [u8],
        fd: &mut Option<OwnedFd>,
        fd_allowed: bool,
        between: bool,
    ) -> Result<Read, ConnectionError> {
        let mut filled = 0;
        let mut stalled_since: Option<Instant> = None;
        while filled < buf.len() {
            let received =
                match pr_sys::scm::recv_with_fds(self.stream.as_fd(), &mut buf[filled..], false) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if filled == 0 && between {
                            return Ok(Read::Quiet);
                        }
                        let since = *stalled_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.io_timeout.saturating_sub(LINGER) {
                            return Err(ConnectionError::Stalled(self.io_timeout));
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
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
                return if filled == 0 && between {
                    Ok(Read::Eof)
                } else {
                    Err(ConnectionError::Truncated)
                };
            }
            filled += received.bytes;
        }
        Ok(Read::Full)
    }
}

/// Sets or clears O_NONBLOCK with fcntl (std's set_nonblocking uses the FIONBIO ioctl, which
/// the seccomp filter forbids).
fn set_nonblocking(stream: &UnixStream, nonblocking: bool) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(stream)?;
    let wanted = if nonblocking {
        flags | OFlags::NONBLOCK
    } else {
        flags - OFlags::NONBLOCK
    };
    if wanted != flags {
        rustix::fs::fcntl_setfl(stream, wanted)?;
    }
    Ok(())
}

/// Checks the descriptor, then runs the command on this thread (it may block on a hung device:
/// only this connection waits).
fn execute(
    dispatcher: &Dispatcher,
    fd: OwnedFd,
    header: RequestHeader,
    parameters: Vec<u8>,
) -> Reply {
    let (backend, kind) = match dispatcher.route(fd.as_fd(), &header) {
        Route::Immediate { reply, reason } => {
            // Info, not warn: a client can send these as fast as it likes.
            info!("refused {}: {reason}", describe(&header));
            return reply;
        }
        Route::Execute { backend, device } => (backend, device.kind),
    };
    let device = Device {
        fd: fd.as_fd(),
        kind,
    };
    let request = PrRequest {
        header: &header,
        parameters: &parameters,
    };
    let result = backend.execute(&device, &request);
    // The device descriptor is closed here, once the command has run (the last close of a block
    // device flushes it, which a hung device would block too).
    drop(fd);
    // Formatted only when a line is written.
    let dev = DeviceName(kind.dev());
    let reply = match result {
        Ok(r) => r,
        Err(e) => {
            warn!("{} on {dev}: {e}", describe(&header));
            e.to_reply()
        }
    };
    let outcome = outcome(&reply);
    if header.direction == Direction::Out {
        info!(device = %dev, backend = backend.name(), "{}: {outcome}", describe(&header));
    } else {
        debug!(device = %dev, backend = backend.name(), "{}: {outcome}, {} bytes", describe(&header), reply.data.len());
    }
    reply
}

/// A device number for log lines: "8:16", or "?" for a descriptor that has none.
struct DeviceName(Option<pr_sys::device::DevNum>);

impl std::fmt::Display for DeviceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => d.fmt(f),
            None => f.write_str("?"),
        }
    }
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
