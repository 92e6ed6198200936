//! Process plumbing: daemonizing, the pidfile, the file-descriptor limit, sd_notify.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("Failed to daemonize: {0}")]
    Daemonize(#[source] nix::Error),
    #[error("cannot write pidfile {path}: {source}")]
    Pidfile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pidfile {path} is locked: another pr-helper{} is running", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    PidfileLocked { path: PathBuf, pid: Option<u32> },
}

/// Detaches from the terminal (fork, setsid, fork is done by daemon(3); working directory `/`,
/// standard streams to /dev/null). Must run before any thread is started.
pub fn daemonize() -> Result<(), ProcessError> {
    nix::unistd::daemon(false, false).map_err(ProcessError::Daemonize)
}

/// A locked pidfile, removed (when permissions still allow) when dropped.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    _file: File,
}

impl Pidfile {
    /// Creates or reuses the pidfile, takes an exclusive lock on it and writes our pid. A file
    /// locked by a running pr-helper is an error; a stale one is overwritten.
    pub fn create(path: &Path) -> Result<Pidfile, ProcessError> {
        let err = |source| ProcessError::Pidfile {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(err)?;
        if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
            if e == rustix::io::Errno::WOULDBLOCK {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                return Err(ProcessError::PidfileLocked {
                    path: path.to_path_buf(),
                    pid: s.trim().parse().ok(),
                });
            }
            return Err(err(e.into()));
        }
        file.set_len(0).map_err(err)?;
        file.rewind().map_err(err)?;
        writeln!(file, "{}", std::process::id()).map_err(err)?;
        file.sync_all().map_err(err)?;
        Ok(Pidfile {
            path: path.to_path_buf(),
            _file: file,
        })
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            // After dropping privileges the directory may no longer be writable; the file is
            // unlocked when we exit, so the next start takes it over.
            tracing::debug!("pidfile {} left behind: {e}", self.path.display());
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: each client holds a socket and, during a
/// request, a device descriptor; thousands of idle QEMU connections are normal.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!("cannot raise the open-file limit: {e}");
        }
    }
}

/// Tells systemd we are ready (sd_notify READY=1) when NOTIFY_SOCKET is set.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(b"READY=1", &addr)?;
        } else {
            sock.send_to(b"READY=1", &path)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => tracing::debug!("notified systemd: READY=1"),
        Err(e) => tracing::warn!("cannot notify systemd at {}: {e}", path.to_string_lossy()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_is_locked_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pid");
        let pf = Pidfile::create(&p).unwrap();
        let content = std::fs::read_to_string(&p).unwrap();
        assert_eq!(content.trim(), std::process::id().to_string());
        // flock locks are per open file description: a second open conflicts even in-process.
        match Pidfile::create(&p) {
            Err(ProcessError::PidfileLocked { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id()))
            }
            other => panic!("expected a locked pidfile, got {other:?}"),
        }
        drop(pf);
        assert!(!p.exists());
    }

    #[test]
    fn stale_pidfile_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("y.pid");
        std::fs::write(&p, "999999999 junk that is longer than a pid\n").unwrap();
        let _pf = Pidfile::create(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n", std::process::id())
        );
    }
}
