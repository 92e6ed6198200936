//! The accept loop and idle connections.
//!
//! Each connection is a task on the runtime: the handshake, then waiting, for as long as the
//! VM runs, for a request. When one arrives, the socket goes to busy.rs: a thread of its own
//! while few connections are busy, else the pollers' epoll set; either serves requests where
//! they arrive until the connection is quiet for a moment, then hands the socket back. So an idle connection costs a task, and a request never passes
//! between threads. On SIGTERM/SIGINT/SIGHUP the listener closes, idle connections end, and
//! requests already under way finish and are answered.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use pr_backend::Dispatcher;
use pr_proto::{check_client_features, encode_features, FEATURES_NONE, FEATURES_SIZE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use crate::active::{ConnectionError, Turn};
use crate::busy::Busy;
use crate::Config;

/// Serves until a termination signal, then waits for connections to finish their requests.
/// `listeners[0]` is the main socket, the others the configured extra ones (a connection
/// carries its listener's index to the backend). They must already be non-blocking (set
/// before the seccomp filter forbids FIONBIO).
pub async fn serve(
    listeners: Vec<std::os::unix::net::UnixListener>,
    dispatcher: Arc<Dispatcher>,
    config: &Config,
) -> io::Result<()> {
    let listeners = listeners
        .into_iter()
        .map(UnixListener::from_std)
        .collect::<io::Result<Vec<_>>>()?;
    let mut next_first = 0usize;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Every connection task holds a clone; when all are dropped, recv() returns None.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let io_timeout = config.io_timeout;
    let busy = Busy::new(dispatcher, io_timeout, config.connection_threads)?;
    tokio::spawn(busy.clone().monitor());

    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => break,
        };
        let stream = tokio::select! {
            (r, socket) = accept_any(&listeners, &mut next_first) => match r {
                Ok(s) => (s, socket),
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
        let (stream, socket) = stream;
        let conn = Connection {
            stream,
            socket,
            shutdown: shutdown_rx.clone(),
            io_timeout,
            busy: busy.clone(),
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
    drop(listeners);
    let _ = shutdown_tx.send(true);
    busy.begin_shutdown();
    drop(done_tx);
    let _ = done_rx.recv().await;
    Ok(())
}

/// The next connection on any of `listeners`, with its listener's index. The listener asked
/// first rotates, so a busy socket cannot starve the others.
async fn accept_any(
    listeners: &[UnixListener],
    first: &mut usize,
) -> (io::Result<UnixStream>, usize) {
    let n = listeners.len();
    let start = *first % n.max(1);
    *first = start + 1;
    std::future::poll_fn(|cx| {
        for i in (0..n).map(|k| (start + k) % n) {
            if let std::task::Poll::Ready(r) = listeners[i].poll_accept(cx) {
                return std::task::Poll::Ready((r.map(|(s, _)| s), i));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

struct Connection {
    stream: UnixStream,
    socket: usize,
    shutdown: watch::Receiver<bool>,
    io_timeout: Duration,
    busy: Arc<Busy>,
}

impl Connection {
    async fn run(self) -> Result<(), ConnectionError> {
        let mut stream = self.stream;
        handshake(&mut stream, self.io_timeout).await?;
        let mut first = true;
        loop {
            // Idle: the connection may stay so for as long as the VM runs, but a shutdown ends
            // it. The registration is new after every turn, so readiness is never stale here.
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                r = stream.readable() => r?,
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            }
            let turn = self.busy.join(stream.into_std()?, first, self.socket)?;
            first = false;
            match turn.await {
                Ok(Turn::Quiet(s)) => stream = UnixStream::from_std(s)?,
                Ok(Turn::Closed(r)) => return r,
                Err(_) => return Err(ConnectionError::ThreadLost),
            }
        }
    }
}

async fn handshake(stream: &mut UnixStream, io_timeout: Duration) -> Result<(), ConnectionError> {
    stream.write_all(&encode_features(FEATURES_NONE)).await?;
    let mut word = [0u8; FEATURES_SIZE];
    match tokio::time::timeout(io_timeout, stream.read_exact(&mut word)).await {
        Err(_) => return Err(ConnectionError::Stalled(io_timeout)),
        Ok(r) => r?,
    };
    check_client_features(word).map_err(|_| ConnectionError::Features(u32::from_be_bytes(word)))
}
