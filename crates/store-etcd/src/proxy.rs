//! A TCP proxy that a test can cut, as a network partition between one client and etcd: while
//! cut it forwards nothing in either direction and closes nothing (packets are lost, as when a
//! link or a switch fails, so the client learns of it only by its own timeouts); new
//! connections are accepted and stalled too. When healed, the connections that lived through
//! the cut are closed (their streams lost bytes) and new ones forward again.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Default)]
struct Shared {
    cut: AtomicBool,
    /// Only the answers are lost: requests still reach the server.
    cut_answers: AtomicBool,
    /// Incremented by each cut: a connection that saw a cut dies at the heal.
    epoch: AtomicU64,
    stop: AtomicBool,
}

/// A running proxy (its threads end when it is dropped).
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (an ephemeral port) and forwards to `target`.
    pub fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("pr-test-proxy".into())
            .spawn(move || accept_loop(listener, target, s))?;
        Ok(Proxy { addr, shared })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The client URL through the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops forwarding (a partition).
    pub fn cut(&self) {
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Loses only what the server sends: requests still arrive (and are applied), their
    /// answers never come back.
    pub fn cut_answers(&self) {
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.cut_answers.store(true, Ordering::SeqCst);
    }

    /// Forwards again; connections that lived through the cut are closed.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
        self.shared.cut_answers.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

const TICK: Duration = Duration::from_millis(10);

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let s = Arc::clone(&shared);
                let _ = std::thread::Builder::new()
                    .name("pr-test-proxy-conn".into())
                    .spawn(move || connection(client, target, s));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(_) => std::thread::sleep(TICK),
        }
    }
}

fn connection(client: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    // Accepted during a cut: stall until the heal, then drop it.
    if shared.cut.load(Ordering::SeqCst) {
        while shared.cut.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
        }
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let born = shared.epoch.load(Ordering::SeqCst);
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let sh = Arc::clone(&shared);
    let up = std::thread::Builder::new()
        .name("pr-test-proxy-up".into())
        .spawn(move || pump(c2, s2, born, false, sh));
    pump(server, client, born, true, shared);
    if let Ok(t) = up {
        let _ = t.join();
    }
}

/// Copies `from` to `to` while not cut; ends both when either side closes, when the proxy
/// stops, or at the heal after a cut.
fn pump(mut from: TcpStream, mut to: TcpStream, born: u64, answers: bool, shared: Arc<Shared>) {
    let stalled = |s: &Shared| {
        s.cut.load(Ordering::SeqCst) || (answers && s.cut_answers.load(Ordering::SeqCst))
    };
    let _ = from.set_read_timeout(Some(TICK));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if stalled(&shared) {
            std::thread::sleep(TICK);
            continue;
        }
        // Lived through a cut: the stream lost bytes, close it.
        let any_cut =
            shared.cut.load(Ordering::SeqCst) || shared.cut_answers.load(Ordering::SeqCst);
        if shared.epoch.load(Ordering::SeqCst) != born && !any_cut {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Bytes read just as a cut began are dropped, like packets on a dead link.
                if stalled(&shared) {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
