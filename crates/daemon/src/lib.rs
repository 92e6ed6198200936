//! The pr-helper daemon, in the order of its life: listen, daemonize, write the pidfile, drop
//! privileges, open the emulation store (on its own sandboxed thread), install the seccomp
//! filter, serve until a signal, finish what is in flight, close the store.
#![forbid(unsafe_code)]

mod active;
mod busy;
mod choose;
pub mod cli;
pub mod devices;
mod emulate;
mod listener;
mod logging;
mod multipath;
mod privileges;
mod process;
mod seccomp;
mod server;

use std::sync::Arc;

pub use cli::Config;
use pr_backend::sgio::SgIoBackend;

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot set up logging: {0}")]
    Logging(String),
    #[error(transparent)]
    Listen(#[from] listener::ListenError),
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    #[error("Failed to drop privileges: {0}")]
    Privileges(#[from] privileges::PrivilegeError),
    #[error("cannot install the seccomp filter: {0}")]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("cannot start the emulate backend")]
    Emulate(#[from] emulate::EmulateError),
    #[error("cannot start multipath support: {0}")]
    Multipath(#[source] std::io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Runs the daemon to completion.
pub fn run(config: Config) -> Result<(), DaemonError> {
    logging::init(&config)?;
    process::raise_fd_limit();
    // Before any thread exists: new threads then never need to open files to size malloc
    // arenas, which the seccomp filter forbids.
    if !pr_sys::process::limit_malloc_arenas(2) {
        tracing::warn!("cannot limit malloc arenas; a new thread may trip the seccomp filter");
    }
    let (listener, socket_file) = listener::listen(&config.socket)?.into_parts();
    let mut socket_files = vec![socket_file];
    let mut listeners = vec![listener];
    for (i, s) in config.devices.sockets.iter().enumerate() {
        if matches!(&config.socket, cli::SocketSource::Path(p) if *p == s.path) {
            socket_files.iter().for_each(listener::SocketFile::cleanup);
            return Err(listener::ListenError::SameAsMain {
                path: s.path.clone(),
                index: i + 1,
                line: s.line,
            }
            .into());
        }
        match listener::bind(&s.path) {
            Ok(b) => {
                let (l, f) = b.into_parts();
                listeners.push(l);
                socket_files.push(f);
            }
            Err(e) => {
                socket_files.iter().for_each(listener::SocketFile::cleanup);
                return Err(e.into());
            }
        }
    }
    let cleanup =
        |files: &[listener::SocketFile]| files.iter().for_each(listener::SocketFile::cleanup);
    for l in &listeners {
        l.set_nonblocking(true).map_err(DaemonError::Runtime)?;
    }
    let listener = &listeners[0];
    if config.daemonize {
        process::daemonize()?;
    }
    let _pidfile = config
        .pidfile
        .as_deref()
        .map(process::Pidfile::create)
        .transpose()?;
    for line in config.devices.describe() {
        tracing::info!("{line}");
    }
    let multipath = multipath::prepare(config.devices.multipath);
    // Info, not a warning: most machines have no multipath maps; a request for a device-mapper
    // device then says it again.
    tracing::info!("{}", multipath.describe());
    emulate::prepare_directory(&config.devices, config.uid, config.gid)?;
    privileges::drop_privileges(
        config.uid,
        config.gid,
        config.devices.configures_blkpr() || multipath.is_active(),
    )?;
    let sgio = SgIoBackend::new(config.sgio_timeout);
    let multipath = multipath
        .start(sgio.clone(), config.seccomp)
        .map_err(DaemonError::Multipath)?;
    let socket_path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(std::path::Path::to_path_buf));
    let emulation =
        emulate::Emulation::start(&config.devices, socket_path.as_deref(), config.seccomp)
            .inspect_err(|_| cleanup(&socket_files))?;
    let dispatcher = Arc::new(config.devices.dispatcher(
        sgio,
        multipath,
        emulation.as_ref().map(emulate::Emulation::backend),
    ));
    // Before the runtime: its threads inherit the filter (the multipath and store threads have
    // their own).
    seccomp::install(config.seccomp, emulation.is_some())?;
    process::notify_ready();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
        .max_blocking_threads(64)
        .thread_stack_size(256 * 1024)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let result = runtime.block_on(async {
        server::serve(listeners, dispatcher.clone(), &config)
            .await
            .map_err(DaemonError::Runtime)
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    drop(dispatcher);
    if let Some(e) = emulation {
        e.close();
    }
    cleanup(&socket_files);
    result
}
