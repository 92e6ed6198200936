//! The client library against the real daemon: requests, validation, and QEMU's reconnect
//! behaviour when the helper restarts between requests.

mod common;

use std::os::fd::AsFd;

use common::*;
use pr_client::{Client, ClientError};

#[test]
fn executes_and_checks_requests() {
    let h = Helper::ours(&[]);
    let lo = LoopDevice::new();
    let rw = lo.open(true);
    let mut c = Client::connect(&h.socket).unwrap();
    let r = c.execute(rw.as_fd(), &pr_in(0, 64), &[]).unwrap();
    assert_eq!((r.status.0, r.sense[2], r.sense[12]), (2, 0x05, 0x24));
    let r = c
        .execute(rw.as_fd(), &pr_out(0, 0, 24), &params(0, 7))
        .unwrap();
    assert_eq!(r.status.0, 2);
    assert!(r.data.is_empty());
    // Parameter data must match the CDB's length; bad opcodes are refused before sending.
    assert!(matches!(
        c.execute(rw.as_fd(), &pr_out(0, 0, 24), &[0; 10]),
        Err(ClientError::ParameterLength {
            actual: 10,
            expected: 24
        })
    ));
    let mut bad = pr_in(0, 8);
    bad[0] = 0x28;
    assert!(matches!(
        c.execute(rw.as_fd(), &bad, &[]),
        Err(ClientError::Request(_))
    ));
    // The connection is still usable.
    assert_eq!(
        c.execute(rw.as_fd(), &pr_in(1, 8), &[]).unwrap().status.0,
        2
    );
}

#[test]
fn reconnects_after_a_helper_restart() {
    let mut h = Helper::ours(&[]);
    let f = std::fs::File::open("/dev/null").unwrap();
    let mut c = Client::connect(&h.socket).unwrap();
    assert_eq!(c.execute(f.as_fd(), &pr_in(0, 8), &[]).unwrap().status.0, 2);
    // Restart the helper on the same socket path, as libvirt or systemd would.
    let socket = h.socket.clone();
    assert_eq!(h.signal_and_wait(libc::SIGTERM).code(), Some(0));
    let mut child = std::process::Command::new(our_helper())
        .arg("-k")
        .arg(&socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The old connection is dead; the next request reconnects once and succeeds.
    let r = c.execute(f.as_fd(), &pr_in(0, 8), &[]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r.unwrap().status.0, 2);
}

#[test]
fn connect_errors_name_the_socket() {
    let e = Client::connect("/nonexistent/pr.sock").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/pr.sock"), "{e}");
}
