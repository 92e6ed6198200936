//! The listening socket: bound to a path, or handed over by systemd (fd 3).

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::cli::SocketSource;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("Failed to use socket activation: {0}")]
    Activation(String),
    #[error(
        "--config: [[socket]] entry {index} (line {line}): path = \"{}\" is the -k socket; \
         expected another path", path.display()
    )]
    SameAsMain {
        path: PathBuf,
        index: usize,
        line: usize,
    },
}

/// A listener, and the path to remove on exit when we created it.
#[derive(Debug)]
pub struct Bound {
    pub listener: UnixListener,
    created: Option<PathBuf>,
}

impl Bound {
    /// Splits into the listener and the socket file to remove at exit.
    pub fn into_parts(self) -> (UnixListener, SocketFile) {
        (self.listener, SocketFile(self.created))
    }
}

/// The socket file we created, if any.
#[derive(Debug)]
pub struct SocketFile(Option<PathBuf>);

impl SocketFile {
    /// Removes the socket file we created. After a privilege drop this may be refused (the
    /// directory belongs to root); the next start replaces a stale socket anyway.
    pub fn cleanup(&self) {
        if let Some(p) = &self.0 {
            if let Err(e) = fs::remove_file(p) {
                tracing::debug!("socket {} left behind: {e}", p.display());
            }
        }
    }
}

pub fn listen(source: &SocketSource) -> Result<Bound, ListenError> {
    match source {
        SocketSource::Path(path) => bind(path),
        SocketSource::Activated => activated(),
    }
}

/// Listens on `path`, replacing a stale socket there (never another kind of file).
pub fn bind(path: &Path) -> Result<Bound, ListenError> {
    let err = |source| ListenError::Bind {
        path: path.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(path) {
        // A stale socket from an earlier run is replaced, as qemu-pr-helper does.
        Ok(m) if m.file_type().is_socket() => fs::remove_file(path).map_err(err)?,
        Ok(_) => return Err(ListenError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    tracing::info!("listening on {}", path.display());
    Ok(Bound {
        listener,
        created: Some(path.to_path_buf()),
    })
}

fn activated() -> Result<Bound, ListenError> {
    let fd = pr_sys::activation::take_first_listen_fd()
        .map_err(|e| ListenError::Activation(e.to_string()))?;
    let listener = UnixListener::from(fd);
    listener
        .local_addr()
        .map_err(|e| ListenError::Activation(format!("descriptor 3 is not a Unix socket: {e}")))?;
    tracing::info!("using the socket passed by systemd");
    Ok(Bound {
        listener,
        created: None,
    })
}
