//! One request on a busy connection, with blocking system calls on the thread that serves it
//! (busy.rs): read the request, check and run it, write the reply. A hung device holds only
//! that thread and that connection.

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use std::sync::Arc;

use pr_backend::{Backend, BackendError, Device, Dispatcher, PrRequest, Route};
use pr_proto::{Direction, Reply, RequestHeader, CDB_SIZE};
use pr_scsi::{PrOutCdb, Status};
use pr_sys::device::FileKind;
use rustix::fs::OFlags;
use tracing::{debug, info, warn};

/// How long a busy connection stays busy (its own thread, or the pollers) without a request
/// before it goes back to its task. Also how long a shutdown may wait for a connection between requests.
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
    #[error("the thread serving the connection ended without an answer")]
    ThreadLost,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// How a busy turn (on a thread of its own or with the pollers) ended.
pub(crate) enum Turn {
    /// No request for `LINGER`: the socket, non-blocking again, for its task to hold.
    Quiet(UnixStream),
    /// The connection is over (client closed, shutdown, or an error).
    Closed(Result<(), ConnectionError>),
}

/// What serving one readiness event came to.
pub(crate) enum Served {
    /// A request was answered.
    Reply,
    /// No request (within `LINGER` when waiting).
    Nothing,
    /// The client closed the connection between requests.
    Closed,
}

enum Read {
    Full,
    /// The peer closed between requests.
    Eof,
    /// Nothing to read between requests.
    Nothing,
}

/// Prepares a connection for blocking calls: on its first turn the receive timeout (the tick of
/// the stall check below) and the send timeout (a client that stops reading its replies is
/// dropped); then O_NONBLOCK off.
pub(crate) fn begin_turn(
    stream: &UnixStream,
    first: bool,
    io_timeout: Duration,
) -> Result<(), ConnectionError> {
    if first {
        stream.set_read_timeout(Some(LINGER))?;
        stream.set_write_timeout(Some(io_timeout))?;
    }
    set_nonblocking(stream, false)?;
    Ok(())
}

/// The connection, non-blocking again, for its task to hold while it is idle.
pub(crate) fn end_turn(stream: UnixStream) -> Turn {
    match set_nonblocking(&stream, true) {
        Ok(()) => Turn::Quiet(stream),
        Err(e) => Turn::Closed(Err(e.into())),
    }
}

/// A request read whole from a connection.
pub(crate) struct Request {
    fd: OwnedFd,
    header: RequestHeader,
    parameters: Vec<u8>,
}

/// What reading a connection between requests found.
pub(crate) enum Incoming {
    Request(Request),
    /// No request (within `LINGER` when waiting).
    Nothing,
    /// The client closed the connection between requests.
    Closed,
}

/// Reads one request, runs it and writes the reply. With `wait`, waits at most `LINGER` for the
/// request; without, returns `Nothing` at once when none is there.
pub(crate) fn serve_one(
    stream: &UnixStream,
    dispatcher: &Dispatcher,
    io_timeout: Duration,
    wait: bool,
    socket: usize,
    before_waiting: &dyn Fn(),
) -> Result<Served, ConnectionError> {
    let request = match read_request(stream, io_timeout, wait)? {
        Incoming::Request(r) => r,
        Incoming::Nothing => return Ok(Served::Nothing),
        Incoming::Closed => return Ok(Served::Closed),
    };
    let header = request.header;
    let reply = match route(dispatcher, &request) {
        Routing::Run(routed) => run(routed, request, socket, before_waiting),
        Routing::Refused(reply) => reply,
    };
    write_reply(stream, &header, reply, io_timeout)?;
    Ok(Served::Reply)
}

/// Reads one request: the header with its descriptor, then the parameter list. With `wait`,
/// waits at most `LINGER` for it; without, returns `Nothing` at once when none is there.
pub(crate) fn read_request(
    stream: &UnixStream,
    io_timeout: Duration,
    wait: bool,
) -> Result<Incoming, ConnectionError> {
    let mut fd = None;
    let mut cdb = [0u8; CDB_SIZE];
    match read_exact_with_fd(stream, io_timeout, &mut cdb, &mut fd, true, true, wait)? {
        Read::Eof => return Ok(Incoming::Closed),
        Read::Nothing => return Ok(Incoming::Nothing),
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
            read_exact_with_fd(
                stream,
                io_timeout,
                &mut parameters,
                &mut none,
                false,
                false,
                true
            )?,
            Read::Full
        ) {
            return Err(ConnectionError::Truncated);
        }
    }
    Ok(Incoming::Request(Request {
        fd,
        header,
        parameters,
    }))
}

/// The reply to `header`, clamped to its allocation length, as it goes on the wire.
pub(crate) fn encode_reply(header: &RequestHeader, mut reply: Reply) -> Vec<u8> {
    reply.clamp_to(header);
    reply.encode()
}

/// Writes the reply to `header` (the socket's send timeout bounds a client that stops reading).
fn write_reply(
    stream: &UnixStream,
    header: &RequestHeader,
    reply: Reply,
    io_timeout: Duration,
) -> Result<(), ConnectionError> {
    write_all(stream, &encode_reply(header, reply), io_timeout)
}

/// Writes `bytes` with blocking calls; the socket's send timeout bounds each.
pub(crate) fn write_all(
    stream: &UnixStream,
    bytes: &[u8],
    io_timeout: Duration,
) -> Result<(), ConnectionError> {
    let mut out = stream;
    out.write_all(bytes).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ConnectionError::Stalled(io_timeout),
        _ => ConnectionError::Io(e),
    })
}

/// Fills `buf` from the socket, collecting at most one descriptor into `fd` when
/// `fd_allowed`. Between requests (`between`) the first read waits at most `LINGER` with
/// `wait`, not at all without: `Nothing` when nothing came, `Eof` when the peer closed. Once the first byte is in, the rest must
/// arrive within the I/O timeout (measured from the first wait that found nothing, so at most
/// `LINGER` longer).
fn read_exact_with_fd(
    stream: &UnixStream,
    io_timeout: Duration,
    buf: &mut [u8],
    fd: &mut Option<OwnedFd>,
    fd_allowed: bool,
    between: bool,
    wait: bool,
) -> Result<Read, ConnectionError> {
    let mut filled = 0;
    let mut stalled_since: Option<Instant> = None;
    while filled < buf.len() {
        let first = filled == 0 && between;
        // Waiting between requests (a connection with a thread of its own): the socket's
        // receive timeout (`LINGER`) bounds the wait, so the thread sleeps in recvmsg until the
        // next request arrives, or the turn ends. A poller does not wait there.
        let dont_wait = first && !wait;
        let received =
            match pr_sys::scm::recv_with_fds(stream.as_fd(), &mut buf[filled..], dont_wait) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if first {
                        return Ok(Read::Nothing);
                    }
                    let since = *stalled_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= io_timeout.saturating_sub(LINGER) {
                        return Err(ConnectionError::Stalled(io_timeout));
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
            return if first {
                Ok(Read::Eof)
            } else {
                Err(ConnectionError::Truncated)
            };
        }
        filled += received.bytes;
    }
    Ok(Read::Full)
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

/// A request's descriptor checked, and the backend that is to run it.
pub(crate) struct Routed {
    backend: Arc<dyn Backend>,
    kind: FileKind,
}

/// Where a request goes.
pub(crate) enum Routing {
    /// To its backend.
    Run(Routed),
    /// Nowhere: the descriptor was refused, and this is the reply.
    Refused(Reply),
}

/// Checks the request's descriptor and chooses its backend.
pub(crate) fn route(dispatcher: &Dispatcher, request: &Request) -> Routing {
    match dispatcher.route(request.fd.as_fd(), &request.header) {
        Route::Immediate { reply, reason } => {
            // Info, not warn: a client can send these as fast as it likes.
            info!("refused {}: {reason}", describe(&request.header));
            Routing::Refused(reply)
        }
        Route::Execute { backend, device } => Routing::Run(Routed {
            backend,
            kind: device.kind,
        }),
    }
}

impl Request {
    fn for_backend(&self, socket: usize) -> PrRequest<'_> {
        PrRequest {
            header: &self.header,
            parameters: &self.parameters,
            socket,
        }
    }

    pub(crate) fn header(&self) -> &RequestHeader {
        &self.header
    }
}

impl Routed {
    /// Whether the backend answers `request` later ([`Backend::answers_later`]).
    pub(crate) fn answers_later(&self, request: &Request, socket: usize) -> bool {
        self.backend.answers_later(&request.for_backend(socket))
    }
}

/// Runs the command on this thread (it may block on a hung device: only this connection
/// waits).
pub(crate) fn run(
    routed: Routed,
    request: Request,
    socket: usize,
    before_waiting: &dyn Fn(),
) -> Reply {
    let Routed { backend, kind } = routed;
    let device = Device {
        fd: request.fd.as_fd(),
        kind,
    };
    let pr = request.for_backend(socket);
    if backend.waits_for_company(&pr) {
        before_waiting();
    }
    let result = backend.execute(&device, &pr);
    // The device descriptor is closed here, once the command has run (the last close of a block
    // device flushes it, which a hung device would block too).
    drop(request.fd);
    finish(&request.header, kind, backend.name(), result)
}

/// Starts the command on a backend that answers later ([`Routed::answers_later`]):
/// `answered` gets the reply on the backend's thread.
pub(crate) fn run_later(
    routed: Routed,
    request: Request,
    socket: usize,
    answered: impl FnOnce(Reply) + Send + 'static,
) {
    let Routed { backend, kind } = routed;
    let device = Device {
        fd: request.fd.as_fd(),
        kind,
    };
    let header = request.header;
    let name = backend.name();
    backend.execute_later(
        &device,
        &request.for_backend(socket),
        Box::new(move |result| answered(finish(&header, kind, name, result))),
    );
    // Such a backend does no device I/O: the descriptor only named the device.
    drop(request.fd);
}

/// The reply to send for the backend's result, with its log line.
fn finish(
    header: &RequestHeader,
    kind: FileKind,
    backend: &'static str,
    result: Result<Reply, BackendError>,
) -> Reply {
    // Formatted only when a line is written.
    let dev = DeviceName(kind.dev());
    let reply = match result {
        Ok(r) => r,
        Err(e) => {
            warn!("{} on {dev}: {e}", describe(header));
            e.to_reply()
        }
    };
    // Formatted only when a line is written, like the device.
    let outcome = Outcome(&reply);
    if header.direction == Direction::Out {
        info!(device = %dev, backend, "{}: {outcome}", describe(header));
    } else {
        debug!(device = %dev, backend, "{}: {outcome}, {} bytes", describe(header), reply.data.len());
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

/// A reply's status for log lines, with the sense code of a CHECK CONDITION.
struct Outcome<'a>(&'a Reply);

impl std::fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reply = self.0;
        match pr_scsi::Sense::parse(&reply.sense) {
            Some(s) if reply.status == Status::CHECK_CONDITION => {
                write!(f, "{} [{}]", reply.status, s.code)
            }
            _ => reply.status.fmt(f),
        }
    }
}
