//! Differential test: the same request sequences sent to QEMU's C helper (Debian's
//! /usr/bin/qemu-pr-helper) and to ours must give byte-identical answers — the same reply
//! bytes, or both closing the connection — except where we differ on purpose, listed here.
//!
//! Deliberate differences (each asserted below, so a change on either side is noticed):
//! 1. A descriptor that is not a block device or sg device (regular file, pipe, /dev/null):
//!    C issues SG_IO anyway and answers ABORTED COMMAND / I/O PROCESS TERMINATED (0Bh/00h/06h)
//!    from the failed ioctl; we refuse before any ioctl with ILLEGAL REQUEST / LOGICAL UNIT
//!    NOT SUPPORTED (05h/25h/00h). Reason: never run an ioctl on a file that cannot be a SCSI
//!    logical unit, and tell the client why.
//! 2. PR OUT parameter list length: SPC-4 puts it in CDB bytes 5–8. C reads only bytes 7–8
//!    (QEMU's generic `scsi_cdb_xfer` rule for 10-byte CDBs), so a length of 65536 (00 01 00 00)
//!    is taken as 0: C reads no parameter data and passes the CDB, still announcing 65536, to
//!    the device. We read all four bytes and close the connection when the length exceeds the
//!    protocol's 8192, as for PR IN.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};

use common::*;

/// One step of a sequence: raw bytes to send (CDB with the fd, then parameter data).
#[derive(Clone)]
struct Step {
    name: &'static str,
    cdb: [u8; 16],
    params: Vec<u8>,
    /// Which descriptor to attach: index into the fds given to `run`, or None.
    fd: Option<usize>,
}

fn step(name: &'static str, cdb: [u8; 16], params: Vec<u8>, fd: Option<usize>) -> Step {
    Step {
        name,
        cdb,
        params,
        fd,
    }
}

/// Runs the steps on one connection and records every answer; after a close, reconnects
/// (as QEMU does) and goes on.
/// The answers to a sequence, named by step.
type Answers = Vec<(String, Answer)>;

fn run(helper: &Helper, steps: &[Step], fds: &[BorrowedFd<'_>]) -> Answers {
    let mut out = Vec::new();
    let mut conn = helper.connect();
    for s in steps {
        let fd: Vec<BorrowedFd<'_>> = s.fd.map(|i| fds[i]).into_iter().collect();
        let answer = if conn.send(&s.cdb, &fd).is_err() {
            Answer::Closed
        } else {
            if !s.params.is_empty() {
                let _ = conn.stream.write_all(&s.params);
            }
            conn.answer()
        };
        if answer == Answer::Closed {
            conn = helper.connect();
        }
        out.push((s.name.to_string(), answer));
    }
    out
}

fn compare(steps: &[Step], fds: &[BorrowedFd<'_>]) -> (Answers, Answers) {
    let c = Helper::c_helper();
    let ours = Helper::ours(&[]);
    (run(&c, steps, fds), run(&ours, steps, fds))
}

#[test]
fn block_device_sequences_are_byte_identical() {
    let lo = LoopDevice::new();
    let ro = lo.open(false);
    let rw = lo.open(true);
    let mut steps = Vec::new();
    for sa in 0..4u8 {
        for len in [0u16, 8, 24, 100, 8192] {
            steps.push(step("PR IN", pr_in(sa, len), vec![], Some(0)));
        }
    }
    steps.push(step("PR IN reserved SA", pr_in(0x1f, 64), vec![], Some(0)));
    for sa in 0..9u8 {
        steps.push(step(
            "PR OUT rw",
            pr_out(sa, 0x05, 24),
            params(0x1111, 0x2222),
            Some(1),
        ));
        steps.push(step(
            "PR OUT ro",
            pr_out(sa, 0x05, 24),
            params(0x1111, 0x2222),
            Some(0),
        ));
    }
    steps.push(step("PR OUT empty list", pr_out(0, 0, 0), vec![], Some(1)));
    steps.push(step(
        "PR OUT 8192",
        pr_out(0, 0, 8192),
        vec![0xaa; 8192],
        Some(1),
    ));
    steps.push(step(
        "PR OUT bad scope/type",
        pr_out(1, 0xf2, 24),
        params(1, 0),
        Some(1),
    ));
    // Protocol violations, each closing the connection on both sides.
    let mut op = pr_in(0, 8);
    op[0] = 0x12;
    steps.push(step("INQUIRY opcode", op, vec![], Some(0)));
    steps.push(step("no fd", pr_in(0, 8), vec![], None));
    steps.push(step("PR IN 8193", pr_in(0, 8193), vec![], Some(0)));
    steps.push(step("after errors", pr_in(1, 24), vec![], Some(0)));

    let (c, ours) = compare(&steps, &[ro.as_fd(), rw.as_fd()]);
    assert_eq!(c.len(), ours.len());
    let mut closes = 0;
    for ((name, a), (_, b)) in c.iter().zip(&ours) {
        assert_eq!(a, b, "step {name}: C helper and pr-helper differ");
        closes += usize::from(*a == Answer::Closed);
    }
    assert_eq!(
        closes, 3,
        "the three protocol violations close the connection"
    );
    // Sanity: the comparison is not vacuous — SG_IO really ran (loop: EINVAL → 05h/24h/00h)
    // and the read-only PR OUT rule fired (05h/20h/00h).
    assert_eq!(c[0].1.sense_code(), (0x05, 0x24, 0x00));
    assert!(c
        .iter()
        .any(|(n, a)| n == "PR OUT ro" && a.sense_code() == (0x05, 0x20, 0x00)));
}

#[test]
fn handshake_and_garbage_behave_alike() {
    let c = Helper::c_helper();
    let ours = Helper::ours(&[]);
    for h in [&c, &ours] {
        let mut conn = Conn::connect_raw(&h.socket);
        let mut w = [0u8; 4];
        std::io::Read::read_exact(&mut conn.stream, &mut w).unwrap();
        assert_eq!(w, [0; 4]);
        conn.stream.write_all(&[0, 0, 0, 7]).unwrap();
        let f = File::open("/dev/null").unwrap();
        let _ = conn.send(&pr_in(0, 8), &[f.as_fd()]);
        assert_eq!(
            conn.answer(),
            Answer::Closed,
            "non-zero feature word closes ({})",
            h.socket.display()
        );
    }
}

#[test]
fn deliberate_difference_non_device_descriptors() {
    let regular = File::open("/proc/self/status").unwrap();
    let devnull = File::open("/dev/null").unwrap();
    let (pipe_r, _w) = std::io::pipe().unwrap();
    let steps = vec![
        step("regular file", pr_in(0, 64), vec![], Some(0)),
        step("/dev/null", pr_in(1, 64), vec![], Some(1)),
        step("pipe", pr_in(2, 64), vec![], Some(2)),
    ];
    let (c, ours) = compare(&steps, &[regular.as_fd(), devnull.as_fd(), pipe_r.as_fd()]);
    for ((name, a), (_, b)) in c.iter().zip(&ours) {
        assert_eq!(a.status(), 2, "{name}");
        assert_eq!(a.sense_code(), (0x0b, 0x00, 0x06), "C helper on {name}");
        assert_eq!(b.sense_code(), (0x05, 0x25, 0x00), "pr-helper on {name}");
    }
    // PR OUT on a read-only regular file: both refuse it the same way (checked before SG_IO).
    let steps = vec![step(
        "ro regular PR OUT",
        pr_out(0, 0, 24),
        params(0, 1),
        Some(0),
    )];
    let (c, ours) = compare(&steps, &[regular.as_fd()]);
    assert_eq!(c, ours);
    assert_eq!(c[0].1.sense_code(), (0x05, 0x20, 0x00));
}

#[test]
fn deliberate_difference_pr_out_length_uses_all_four_bytes() {
    let lo = LoopDevice::new();
    let rw = lo.open(true);
    let steps = vec![
        step("PR OUT 65536", pr_out(0, 0, 65536), vec![], Some(0)),
        step("next request", pr_in(0, 8), vec![], Some(0)),
    ];
    let (c, ours) = compare(&steps, &[rw.as_fd()]);
    // C: length taken as 0 from bytes 7–8, SG_IO runs (loop device: 05h/24h/00h).
    assert_eq!(c[0].1.sense_code(), (0x05, 0x24, 0x00));
    // Ours: 65536 > 8192, connection closed; the client reconnects and goes on.
    assert_eq!(ours[0].1, Answer::Closed);
    assert_eq!(c[1].1, ours[1].1);
}
