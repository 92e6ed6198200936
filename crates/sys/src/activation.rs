//! systemd socket activation (sd_listen_fds(3)): taking ownership of descriptor 3.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the first socket systemd passed (descriptor 3), once per process.
/// The caller has checked LISTEN_PID/LISTEN_FDS; this checks that descriptor 3 is open and a
/// socket, and sets close-on-exec on it.
pub fn take_first_listen_fd() -> io::Result<OwnedFd> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "descriptor 3 was already taken",
        ));
    }
    crate::ioctl::take_fd3()
}
