//! Opens the configured logical units and stores, serves each socket on its own thread
//! (accepting the VM again after it disconnects), and shuts down cleanly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use pr_engine::EngineConfig;
use pr_store::{SqliteOptions, StoreError};
use pr_store_config::{OpenedStore, StoreSelection};
use pr_store_etcd::fence::HostFence;
use tracing::{error, info};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backing::{Backing, BackingError};
use crate::config::Config;
use crate::lu::FencedLu;
use crate::scsi::{DiskIdentity, DiskServer};
use crate::target::Target;
use crate::vhost::ScsiBackend;

/// Why the target could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("logical unit {lu}: {source}")]
    Backing {
        lu: String,
        #[source]
        source: BackingError,
    },
    #[error("logical unit {lu}: {path} holds {bytes} bytes, not one block of {block_size}")]
    Empty {
        lu: String,
        path: PathBuf,
        bytes: u64,
        block_size: u32,
    },
    #[error("store {store}: {source}")]
    Store {
        store: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: vhost::vhost_user::Error,
    },
    #[error("socket {path}: cannot start its thread: {source}")]
    Thread {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running target.
#[derive(Debug)]
pub struct Server {
    units: Vec<Arc<FencedLu<Backing>>>,
    threads: Vec<JoinHandle<()>>,
    /// This host's lease on each etcd store; dropped after the LUs are closed (the fence
    /// revokes the lease only once media I/O has stopped).
    _fences: Vec<HostFence>,
}

impl Server {
    /// Opens every store and LU (each backing locked) and starts listening on every socket.
    /// An LU on an etcd store is shared with the pr-targets of other hosts: its backing is
    /// locked shared (each of those processes may serve it), and its media I/O runs under this
    /// host's lease fence (docs/etcd.md), one per etcd store, started here.
    pub fn start(config: &Config) -> Result<Server, StartError> {
        // Each distinct store opened once, shared by its logical units.
        let mut stores: Vec<(&StoreSelection, OpenedStore)> = Vec::new();
        let mut fences: Vec<(&StoreSelection, HostFence)> = Vec::new();
        let mut units = Vec::new();
        for l in &config.lus {
            let store_error = |source| StartError::Store {
                store: l.store.to_string(),
                source: Box::new(source),
            };
            let opened = match stores.iter().find(|(s, _)| *s == &l.store) {
                Some((_, s)) => s.clone(),
                None => {
                    let s = l
                        .store
                        .open(SqliteOptions::default())
                        .map_err(store_error)?;
                    info!("store {} open", l.store);
                    if let OpenedStore::Etcd(etcd) = &s {
                        // The configured lease timings (validated with the configuration),
                        // else the defaults.
                        let timing = match &l.store {
                            StoreSelection::Etcd { config, .. } => config.lease,
                            StoreSelection::Sqlite { .. } => None,
                        }
                        .unwrap_or_default();
                        let fence = HostFence::start(etcd.clone(), timing).map_err(store_error)?;
                        info!(
                            "store {}: this host's lease fence started (TTL {} s granted for \
                             {} s asked, renewal every {} ms, margin {} ms, clock drift bound \
                             {} ppm)",
                            l.store,
                            fence.granted_ttl().as_secs(),
                            timing.ttl.as_secs(),
                            timing.renew_every.as_millis(),
                            timing.margin.as_millis(),
                            timing.drift_ppm
                        );
                        fences.push((&l.store, fence));
                    }
                    stores.push((&l.store, s.clone()));
                    s
                }
            };
            let shared = matches!(opened, OpenedStore::Etcd(_));
            // Shared across hosts: O_DIRECT, so that no READ is answered from this host's page
            // cache with blocks another host has overwritten (crate::backing).
            let backing = if shared {
                Backing::open_shared(&l.path, l.read_only, l.block_size)
            } else {
                Backing::open(&l.path, l.read_only)
            }
            .map_err(|source| StartError::Backing {
                lu: l.name.to_string(),
                source,
            })?;
            if let Some(d) = backing.direct() {
                info!(
                    "logical unit {}: {} opened with O_DIRECT (alignment: offset {} bytes, \
                     memory {} bytes, from {})",
                    l.name,
                    l.path.display(),
                    d.offset,
                    d.memory,
                    d.source
                );
            }
            let identity = DiskIdentity {
                vendor: l.vendor,
                product: l.product,
                revision: *b"0001",
                serial: l.serial.clone(),
                naa: l.naa.clone(),
            };
            let disk = DiskServer::new(backing, identity, l.block_size, l.read_only);
            if disk.blocks() == 0 {
                return Err(StartError::Empty {
                    lu: l.name.to_string(),
                    path: l.path.clone(),
                    bytes: crate::scsi::BlockDevice::size_bytes(disk.device()),
                    block_size: l.block_size,
                });
            }
            let engine = EngineConfig::default();
            let lu = match &opened {
                OpenedStore::Etcd(etcd) => {
                    FencedLu::new_shared(l.name.clone(), disk, etcd.clone(), engine)
                }
                OpenedStore::Sqlite(_) => {
                    FencedLu::new(l.name.clone(), disk, opened.store(), engine)
                }
            }
            .map_err(store_error)?;
            units.push((lu, shared.then_some(&l.store)));
        }
        // Attach every socket's nexus before the LUs are shared.
        let mut slots = Vec::new();
        for s in &config.sockets {
            let m: BTreeMap<u16, (usize, _)> = s
                .luns
                .iter()
                .map(|(&lun, &i)| (lun, (i, units[i].0.attach(s.nexus.clone()))))
                .collect();
            slots.push(m);
        }
        let mut shared = Vec::new();
        for (lu, store) in units {
            let lu = Arc::new(lu);
            if let Some(store) = store {
                let (_, fence) = fences
                    .iter()
                    .find(|(s, _)| *s == store)
                    .expect("every etcd store has its fence");
                lu.share(fence).map_err(|source| StartError::Store {
                    store: store.to_string(),
                    source: Box::new(source),
                })?;
                info!(
                    "{}: shared with other hosts under the lease fence",
                    lu.name()
                );
            }
            shared.push(lu);
        }
        let units = shared;
        let mut threads = Vec::new();
        for (s, m) in config.sockets.iter().zip(slots) {
            let luns = m
                .into_iter()
                .map(|(lun, (i, slot))| (lun, (units[i].clone(), slot)))
                .collect();
            let target = Arc::new(Target::new(s.nexus.clone(), luns));
            let backend = Arc::new(ScsiBackend::new(target, s.request_queues));
            let listener = Listener::new(&s.path, true).map_err(|source| StartError::Socket {
                path: s.path.clone(),
                source,
            })?;
            let path = s.path.clone();
            let t = std::thread::Builder::new()
                .name(format!("socket {}", s.path.display()))
                .spawn(move || serve_socket(path, listener, backend))
                .map_err(|source| StartError::Thread {
                    path: s.path.clone(),
                    source,
                })?;
            threads.push(t);
            info!(
                "serving {} as {:?} on relative target port {}",
                s.path.display(),
                s.nexus.initiator,
                s.nexus.relative_target_port.0
            );
        }
        Ok(Server {
            units,
            threads,
            _fences: fences.into_iter().map(|(_, f)| f).collect(),
        })
    }

    /// Stops admitting commands, waits for those in flight and flushes every medium. The
    /// gates stay closed until the process exits; returns whether every flush succeeded.
    pub fn shutdown(&self) -> bool {
        let mut ok = true;
        let mut closed = Vec::new();
        for lu in &self.units {
            let (gate, flushed) = lu.close();
            if let Err(e) = flushed {
                error!("{}: flush failed: {e}", lu.name());
                ok = false;
            }
            closed.push(gate);
        }
        info!("{} logical units drained and flushed", closed.len());
        // Exiting with the gates closed: nothing is admitted between here and exit.
        std::mem::forget(closed);
        ok
    }

    /// The socket threads (they run until the process exits).
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

/// Serves one socket: a VM connects, is served until it disconnects, and the socket listens
/// again for it to come back.
fn serve_socket(path: PathBuf, first: Listener, backend: Arc<ScsiBackend<Backing>>) {
    let mut listener = Some(first);
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => match Listener::new(&path, true) {
                Ok(l) => l,
                Err(e) => {
                    error!("{}: cannot listen again: {e}", path.display());
                    return;
                }
            },
        };
        let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = match VhostUserDaemon::new("pr-target".into(), backend.clone(), memory) {
            Ok(d) => d,
            Err(e) => {
                error!(
                    "{}: cannot start the vhost-user device: {e}",
                    path.display()
                );
                return;
            }
        };
        match daemon.start(l).and_then(|()| daemon.wait()) {
            Ok(()) => info!("{}: the VM disconnected; listening again", path.display()),
            Err(e) => error!("{}: connection ended: {e}; listening again", path.display()),
        }
        backend.stop_workers();
    }
}
