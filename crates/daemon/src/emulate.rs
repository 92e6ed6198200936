//! The `emulate` backend's start-up: the store's directory prepared as root, the store opened
//! after the privilege drop on its own thread with its own seccomp filter (see seccomp.rs), the
//! initiator named, and the warning about fencing said.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use pr_backend::emulate::{identity, EmulateBackend};
use pr_backend::Backend;
use pr_engine::{EngineConfig, Nexus};
use pr_store::{SqliteOptions, Store, StoreError};
use pr_store_config::StoreSelection;

use crate::cli::SeccompMode;
use crate::devices::DeviceConfig;

/// Said at start-up (info) whenever a device is emulated.
pub const FENCING_WARNING: &str =
    "reservations emulated behind QEMU's pr-manager-helper are honoured by the cluster \
     software but do not stop a fenced VM's writes (QEMU writes to the device itself); the \
     fenced I/O path is pr-target (a later issue)";

/// Why emulation could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulateError {
    #[error("cannot create the store directory {}", path.display())]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the socket has no path to derive the initiator from; set initiator = \"iqn.…\" in \
         the [emulate] table of --config"
    )]
    NoSocketPath,
    #[error(
        "--config: [[socket]] entry {index} (line {line}): initiator {initiator} on relative \
         target port {port} is already the -k socket's; expected another initiator or \
         relative_target_port"
    )]
    SameInitiator {
        index: usize,
        line: usize,
        initiator: String,
        port: u16,
    },
    #[error("cannot start the store thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot install the store thread's seccomp filter: {0}")]
    Seccomp(String),
    /// The store's error with its causes, and a hint where one helps.
    #[error("{0}")]
    Store(String),
}

impl From<StoreError> for EmulateError {
    fn from(e: StoreError) -> EmulateError {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        if e.kind() == pr_store::ErrorKind::Open {
            msg.push_str(
                " (the directory must be writable by the user pr-helper runs as: SQLite creates \
                 the -wal and -shm files beside the database)",
            );
        }
        EmulateError::Store(msg)
    }
}

/// Creates the store's directory when it is missing (as root, before the privilege drop),
/// owned by the user and group pr-helper will run as, mode 0750. An existing directory is left
/// as it is.
pub fn prepare_directory(
    devices: &DeviceConfig,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), EmulateError> {
    if !devices.configures_emulate() {
        return Ok(());
    }
    let Some(dir) = devices
        .emulate
        .store
        .sqlite_path()
        .and_then(std::path::Path::parent)
    else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    let err = |source| EmulateError::Directory {
        path: dir.to_path_buf(),
        source,
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::DirBuilder::new()
        .mode(0o750)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(err)?;
    std::os::unix::fs::chown(dir, uid, gid).map_err(err)?;
    tracing::info!("created the store directory {}", dir.display());
    Ok(())
}

/// The running emulation: the backend for the dispatcher, and the thread that owns the store.
#[derive(Debug)]
pub struct Emulation {
    backend: Arc<EmulateBackend>,
    store_thread: StoreThread,
}

#[derive(Debug)]
struct StoreThread {
    done: mpsc::Sender<()>,
    handle: JoinHandle<()>,
}

impl Emulation {
    /// Opens the store and builds the backend, when a device is emulated. Runs after the
    /// privilege drop and before the server's seccomp filter: the store is opened on a thread
    /// that installs its own filter first, so the store's writer thread inherits it.
    pub fn start(
        devices: &DeviceConfig,
        socket: Option<&Path>,
        seccomp: SeccompMode,
    ) -> Result<Option<Emulation>, EmulateError> {
        if !devices.configures_emulate() {
            return Ok(None);
        }
        let settings = &devices.emulate;
        let mut nexus: Nexus = match (&settings.initiator, socket) {
            (Some(initiator), _) => Nexus {
                initiator: initiator.clone(),
                relative_target_port: identity::DEFAULT_RELATIVE_TARGET_PORT,
            },
            (None, Some(path)) => identity::derived_nexus(path),
            (None, None) => return Err(EmulateError::NoSocketPath),
        };
        if let Some(port) = settings.relative_target_port {
            nexus.relative_target_port = port;
        }
        let extra: Vec<Nexus> = devices.sockets.iter().map(|s| s.nexus()).collect();
        if let Some((i, n)) = extra.iter().enumerate().find(|(_, n)| **n == nexus) {
            return Err(EmulateError::SameInitiator {
                index: i + 1,
                line: devices.sockets[i].line,
                initiator: n.initiator.to_string(),
                port: n.relative_target_port.0,
            });
        }
        let options = SqliteOptions {
            max_batch: settings.max_batch,
            ..SqliteOptions::default()
        };
        let (store, store_thread) = open_on_store_thread(settings.store.clone(), options, seccomp)?;
        let config = EngineConfig {
            max_registrations: settings.max_registrations,
            ..EngineConfig::default()
        };
        let backend =
            EmulateBackend::new(store, nexus, config, devices.emulated_units()).with_sockets(extra);
        tracing::info!(
            "emulate: {} logical unit(s) on the store {}, as initiator {} on relative target \
             port {}; {FENCING_WARNING}",
            devices.emulated_units().len(),
            settings.store,
            backend.nexus().initiator,
            backend.nexus().relative_target_port.0,
        );
        for (s, n) in devices.sockets.iter().zip(&backend.nexuses()[1..]) {
            tracing::info!(
                "emulate: connections on {} are initiator {} on relative target port {}",
                s.path.display(),
                n.initiator,
                n.relative_target_port.0
            );
        }
        Ok(Some(Emulation {
            backend: Arc::new(backend),
            store_thread,
        }))
    }

    /// The backend, for the dispatcher.
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// Closes the store on its own thread, once the caller has dropped the dispatcher (every
    /// other reference to the backend).
    pub fn close(self) {
        let Emulation {
            backend,
            store_thread,
        } = self;
        drop(backend);
        drop(store_thread.done);
        let _ = store_thread.handle.join();
    }
}

/// How long closing waits for commands still holding the store.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts the `pr-store` thread: it installs the store filter, opens the store, hands it over
/// and keeps a reference until [`Emulation::close`], so that the store is closed there.
fn open_on_store_thread(
    selection: StoreSelection,
    options: SqliteOptions,
    seccomp: SeccompMode,
) -> Result<(Arc<dyn Store>, StoreThread), EmulateError> {
    let (opened, store) = mpsc::sync_channel::<Result<Arc<dyn Store>, EmulateError>>(1);
    let (done, wait_done) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("pr-store".into())
        .spawn(move || {
            if let Err(e) = crate::seccomp::install_store_thread(seccomp, selection.is_networked())
            {
                let _ = opened.send(Err(EmulateError::Seccomp(e.to_string())));
                return;
            }
            let store = match selection.open(options) {
                Ok(s) => s.store(),
                Err(e) => {
                    let _ = opened.send(Err(e.into()));
                    return;
                }
            };
            if opened.send(Ok(store.clone())).is_err() {
                return;
            }
            // Until close (or the end of the daemon): then this should be the last reference,
            // so that SQLite closes (checkpoints the WAL, removes it) under this thread's
            // filter. A command still running elsewhere is given a moment to finish; if it
            // holds on, the store is left to the process exit (every acknowledged command is
            // durable already) rather than closed under the server's filter.
            let _ = wait_done.recv();
            let deadline = std::time::Instant::now() + CLOSE_WAIT;
            while Arc::strong_count(&store) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if Arc::strong_count(&store) == 1 {
                drop(store);
            } else {
                tracing::warn!("a command still holds the store at exit; not closing it");
                std::mem::forget(store);
            }
        })
        .map_err(EmulateError::Thread)?;
    match store.recv() {
        Ok(Ok(s)) => Ok((s, StoreThread { done, handle })),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err(EmulateError::Thread(std::io::Error::other(
                "the store thread ended without an answer",
            )))
        }
    }
}
