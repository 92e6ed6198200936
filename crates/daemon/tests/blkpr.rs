//! The block-layer PR backend, chosen per device by `--config`, against the real daemon and
//! real loop devices. Loop devices have no `pr_ops`, so an ioctl that reaches the kernel answers
//! EOPNOTSUPP (INVALID COMMAND OPERATION CODE), which tells it apart from SG_IO on the same
//! device (EINVAL: INVALID FIELD IN CDB). Real reservations through this backend run in the
//! lab (lab/scenarios/blkpr-parity.scn). Tests run as root (CI does).

mod common;

use std::os::fd::AsFd;
use std::process::Command;

use common::*;

const CHECK_CONDITION: u32 = 0x02;
const GOOD: u32 = 0x00;

fn config(dir: &std::path::Path, text: &str) -> String {
    let p = dir.join("pr-helper.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn register(key: u64, sa_key: u64, aptpl: bool) -> Vec<u8> {
    let mut p = params(key, sa_key);
    p[20] = u8::from(aptpl);
    p
}

/// Sense-key specific bytes 15–17 (field pointer).
fn field_pointer(a: &Answer) -> [u8; 3] {
    match a {
        Answer::Reply { sense, .. } => sense[15..18].try_into().unwrap(),
        Answer::Closed => panic!("the helper closed the connection"),
    }
}

fn data(a: &Answer) -> &[u8] {
    match a {
        Answer::Reply { data, .. } => data,
        Answer::Closed => panic!("the helper closed the connection"),
    }
}

#[test]
fn configured_device_goes_through_the_block_layer_and_others_keep_sg_io() {
    let dir = tempfile::tempdir().unwrap();
    let blk = LoopDevice::new();
    let other = LoopDevice::new();
    let cfg = config(
        dir.path(),
        &format!(
            "[[device]]\npath = \"{}\"\nbackend = \"blkpr\"\n",
            blk.path.display()
        ),
    );
    let h = Helper::ours(&["--config", &cfg, "-u", "nobody", "-g", "nogroup"]);
    let rw = blk.open(true);
    let mut c = h.connect();

    // REGISTER with APTPL=1 reaches IOC_PR_REGISTER, which the loop driver does not support:
    // ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (05h/20h/00h).
    let a = c.request(&pr_out(0x00, 0, 24), rw.as_fd(), &register(0, 0x1234, true));
    assert_eq!(
        (a.status(), a.sense_code()),
        (CHECK_CONDITION, (0x05, 0x20, 0x00))
    );
    for (sa, ty) in [
        (0x01u8, 0x05u8),
        (0x02, 0x05),
        (0x03, 0),
        (0x04, 0x01),
        (0x05, 0x01),
        (0x06, 0),
    ] {
        let a = c.request(
            &pr_out(sa, ty, 24),
            rw.as_fd(),
            &register(0x1234, 0x99, true),
        );
        assert_eq!(
            (a.status(), a.sense_code()),
            (CHECK_CONDITION, (0x05, 0x20, 0x00)),
            "service action {sa:#x}"
        );
    }

    // What the ioctls cannot express is refused before any ioctl, with a field pointer.
    // APTPL=0 on REGISTER: INVALID FIELD IN PARAMETER LIST, byte 20 bit 0.
    let a = c.request(
        &pr_out(0x00, 0, 24),
        rw.as_fd(),
        &register(0, 0x1234, false),
    );
    assert_eq!(
        (a.status(), a.sense_code()),
        (CHECK_CONDITION, (0x05, 0x26, 0x00))
    );
    assert_eq!(field_pointer(&a), [0x88, 0x00, 0x14]);
    // REGISTER AND MOVE: INVALID FIELD IN CDB, byte 1 bit 4.
    let a = c.request(
        &pr_out(0x07, 0x01, 24),
        rw.as_fd(),
        &register(0x1, 0x2, false),
    );
    assert_eq!(
        (a.status(), a.sense_code()),
        (CHECK_CONDITION, (0x05, 0x24, 0x00))
    );
    assert_eq!(field_pointer(&a), [0xcc, 0x00, 0x01]);
    // RESERVE with scope 1: INVALID FIELD IN CDB, byte 2 bit 7.
    let a = c.request(
        &pr_out(0x01, 0x15, 24),
        rw.as_fd(),
        &register(0x1, 0, false),
    );
    assert_eq!(
        (a.status(), a.sense_code()),
        (CHECK_CONDITION, (0x05, 0x24, 0x00))
    );
    assert_eq!(field_pointer(&a), [0xcf, 0x00, 0x02]);

    // REPORT CAPABILITIES is synthesised (SPC-4 table 169): PTPL_C, TMV, the six types.
    let a = c.request(&pr_in(0x02, 8), rw.as_fd(), &[]);
    assert_eq!(a.status(), GOOD);
    assert_eq!(data(&a), [0x00, 0x08, 0x01, 0x80, 0xea, 0x01, 0x00, 0x00]);
    // READ KEYS: no IOC_PR_READ_KEYS for loop devices (or before Linux 6.19) and no SG_IO to
    // fall back on: INVALID FIELD IN CDB at the service action.
    let a = c.request(&pr_in(0x00, 64), rw.as_fd(), &[]);
    assert_eq!(
        (a.status(), a.sense_code()),
        (CHECK_CONDITION, (0x05, 0x24, 0x00))
    );
    assert_eq!(field_pointer(&a), [0xcc, 0x00, 0x01]);

    // The other loop device is not configured: SG_IO, as before (EINVAL: 05h/24h/00h, no
    // field pointer).
    let orw = other.open(true);
    let a = c.request(
        &pr_out(0x00, 0, 24),
        orw.as_fd(),
        &register(0, 0x1234, true),
    );
    assert_eq!(
        (a.status(), a.sense_code()),
        (CHECK_CONDITION, (0x05, 0x24, 0x00))
    );
    assert_eq!(field_pointer(&a), [0, 0, 0]);

    // With a blkpr device configured the daemon keeps CAP_SYS_ADMIN (21) beside CAP_SYS_RAWIO
    // (17): Linux before 6.5 requires it for IOC_PR_*.
    let st = std::fs::read_to_string(format!("/proc/{}/status", h.pid())).unwrap();
    let cap_eff = st
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(cap_eff, "0000000000220000");
}

#[test]
fn default_blkpr_takes_every_block_device_and_still_refuses_non_devices() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "default = \"blkpr\"\n");
    let h = Helper::ours(&["--config", &cfg]);
    let lo = LoopDevice::new();
    let rw = lo.open(true);
    let mut c = h.connect();
    let a = c.request(&pr_out(0x03, 0, 24), rw.as_fd(), &register(0x1, 0, false));
    assert_eq!(
        (a.status(), a.sense_code()),
        (CHECK_CONDITION, (0x05, 0x20, 0x00))
    );
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let a = c.request(&pr_out(0x03, 0, 24), null.as_fd(), &register(0x1, 0, false));
    assert_eq!(
        (a.status(), a.sense_code()),
        (CHECK_CONDITION, (0x05, 0x25, 0x00))
    );
}

#[test]
fn a_bad_configuration_stops_the_start_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let run = |cfg: &str| {
        let out = Command::new(our_helper())
            .arg("-k")
            .arg(dir.path().join("s.sock"))
            .args(["--config", cfg])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(!dir.path().join("s.sock").exists());
        String::from_utf8(out.stderr).unwrap()
    };
    assert_eq!(
        run("/nonexistent/pr-helper.toml"),
        "pr-helper: --config: cannot read /nonexistent/pr-helper.toml: No such file or directory (os error 2)\n"
    );
    let cfg = config(
        dir.path(),
        "[[device]]\npath = \"/dev/null\"\nbackend = \"blkpr\"\n",
    );
    assert_eq!(
        run(&cfg),
        format!(
            "pr-helper: --config: {cfg}: [[device]] entry 1: path /dev/null is neither a block \
             device nor an sg device\n"
        )
    );
}
