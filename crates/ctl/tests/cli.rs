//! pr-ctl, the real binary, against real helpers over real sockets.
//!
//! The host has no SCSI stack, so no device here answers GOOD to a PR command: runs against our
//! daemon and QEMU's C helper cover the failure paths (CHECK CONDITION decoding, exit codes,
//! device and socket errors). The success paths (decoding each read, RESERVATION CONFLICT, BUSY)
//! use a scripted helper in this file that speaks the protocol on a real socket, replies with
//! PR IN data built by pr-scsi's encoders, and records what pr-ctl sent, so the request bytes
//! of every subcommand are checked too. The lab (`lab/run`) runs pr-ctl against LIO devices
//! and compares it with sg_persist.

#[path = "../../daemon/tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use common::{Helper, LoopDevice};
use pr_proto::{encode_features, Reply, RequestHeader, FEATURES_NONE};
use pr_scsi::prin::{
    Capabilities, FullStatus, FullStatusDescriptor, ReadKeys, ReadReservation,
    ReservationDescriptor,
};
use pr_scsi::transport_id::TransportId;
use pr_scsi::{Generation, RelativeTargetPort, ReservationKey, Status};
use serde_json::Value;

const PR_CTL: &str = env!("CARGO_BIN_EXE_pr-ctl");

fn pr_ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(PR_CTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("PR_HELPER_SOCKET")
        .output()
        .expect("run pr-ctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A request as the scripted helper received it.
#[derive(Debug, Clone)]
struct Seen {
    cdb: [u8; 16],
    params: Vec<u8>,
    fd_was_writable: bool,
}

/// A helper that answers every request with the same reply and records the requests.
struct Scripted {
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    _dir: tempfile::TempDir,
}

impl Scripted {
    fn new(reply: Reply) -> Scripted {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("scripted.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { return };
                let reply = reply.clone();
                let log = log.clone();
                std::thread::spawn(move || {
                    s.write_all(&encode_features(FEATURES_NONE)).unwrap();
                    let mut w = [0u8; 4];
                    if s.read_exact(&mut w).is_err() {
                        return;
                    }
                    loop {
                        let mut cdb = [0u8; 16];
                        let Ok(r) = pr_sys::scm::recv_with_fds(s.as_fd(), &mut cdb, false) else {
                            return;
                        };
                        if r.bytes == 0 {
                            return;
                        }
                        s.read_exact(&mut cdb[r.bytes..]).unwrap();
                        let fd = r.fds.into_iter().next().expect("pr-ctl sends a descriptor");
                        let flags = rustix::fs::fcntl_getfl(&fd).unwrap();
                        let header = RequestHeader::parse(cdb).unwrap();
                        let mut params = vec![0u8; header.parameter_bytes()];
                        s.read_exact(&mut params).unwrap();
                        log.lock().unwrap().push(Seen {
                            cdb,
                            params,
                            fd_was_writable: flags.contains(rustix::fs::OFlags::RDWR),
                        });
                        let mut reply = reply.clone();
                        reply.clamp_to(&header);
                        s.write_all(&reply.encode()).unwrap();
                    }
                });
            }
        });
        Scripted {
            socket,
            seen,
            _dir: dir,
        }
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

/// A file that pr-ctl can open read-write (the scripted helper ignores what it is).
fn any_file() -> tempfile::NamedTempFile {
    tempfile::NamedTempFile::new().unwrap()
}

#[test]
fn keys_human_and_json_from_a_device_reply() {
    let data = ReadKeys::encode(
        Generation(7),
        &[ReservationKey(0x1111), ReservationKey(u64::MAX)],
    );
    let h = Scripted::new(Reply::good(data));
    let f = any_file();
    let dev = f.path().to_str().unwrap();

    let out = pr_ctl(&h.socket, &["keys", dev]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "PR generation 0x7, 2 registered keys:\n  0x1111\n  0xffffffffffffffff\n"
    );
    let seen = h.last();
    assert_eq!(&seen.cdb[..10], &[0x5e, 0, 0, 0, 0, 0, 0, 0x20, 0, 0]);
    assert!(!seen.fd_was_writable, "reads open the device read-only");

    let out = pr_ctl(&h.socket, &["--json", "keys", dev, "--maxlen", "512"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["generation"], 7);
    assert_eq!(v["keys"][1], "0xffffffffffffffff");
    assert_eq!(&h.last().cdb[7..9], &[0x02, 0x00]);
}

#[test]
fn reservation_capabilities_and_status_decode() {
    let f = any_file();
    let dev = f.path().to_str().unwrap();

    let res = ReadReservation {
        generation: Generation(3),
        reservation: Some(ReservationDescriptor {
            key: ReservationKey(0xabc1),
            scope_code: 0,
            type_code: 5,
        }),
    };
    let h = Scripted::new(Reply::good(res.encode()));
    let out = pr_ctl(&h.socket, &["reservation", dev]);
    assert_eq!(out.status.code(), Some(0));
    let t = text(&out.stdout);
    assert!(t.contains("key 0xabc1"), "{t}");
    assert!(t.contains("WRITE EXCLUSIVE - REGISTRANTS ONLY"), "{t}");
    assert!(t.contains("LU_SCOPE"), "{t}");

    let caps = Capabilities {
        crh: true,
        sip_c: true,
        atp_c: true,
        ptpl_c: true,
        tmv: true,
        allow_commands: 1,
        type_mask: 0xea01,
        ..Capabilities::default()
    };
    let h = Scripted::new(Reply::good(caps.encode()));
    let out = pr_ctl(&h.socket, &["--json", "capabilities", dev]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sip_c"], true);
    assert_eq!(v["rlr_c"], false);
    assert_eq!(v["types"].as_array().unwrap().len(), 6, "{v}");
    assert_eq!(h.last().cdb[1], 0x02);

    let status = FullStatus::encode(
        Generation(4),
        &[
            FullStatusDescriptor {
                key: ReservationKey(0x1111),
                all_tg_pt: false,
                reservation_holder: false,
                scope_code: 0,
                type_code: 0,
                relative_target_port: RelativeTargetPort(1),
                transport_id: TransportId::Sas {
                    sas_address: 0x5001405000000b1u64.to_be_bytes(),
                },
            },
            FullStatusDescriptor {
                key: ReservationKey(0x2222),
                all_tg_pt: false,
                reservation_holder: true,
                scope_code: 0,
                type_code: 3,
                relative_target_port: RelativeTargetPort(2),
                transport_id: TransportId::Iscsi {
                    name: "iqn.2003-01.org.example:b".into(),
                    isid: None,
                },
            },
        ],
    );
    let h = Scripted::new(Reply::good(status));
    let out = pr_ctl(&h.socket, &["status", dev]);
    let t = text(&out.stdout);
    assert!(t.starts_with("PR generation 0x4, 2 registrations:"), "{t}");
    assert!(t.contains("SAS address 0x05001405000000b1"), "{t}");
    assert!(t.contains("iSCSI name iqn.2003-01.org.example:b"), "{t}");
    assert!(t.contains("reservation holder: EXCLUSIVE ACCESS"), "{t}");
}

#[test]
fn every_change_sends_the_right_cdb_and_parameters() {
    let h = Scripted::new(Reply::good(Vec::new()));
    let f = any_file();
    let dev = f.path().to_str().unwrap();
    // (arguments, service action, type, SA-specific parameter check)
    let cases: Vec<(Vec<&str>, u8, u8)> = vec![
        (vec!["register", dev, "--new-key", "0x1111"], 0x00, 0),
        (
            vec!["register", dev, "--new-key", "9", "--ignore-existing"],
            0x06,
            0,
        ),
        (vec!["reserve", dev, "-k", "0x1111", "-t", "we-ro"], 0x01, 5),
        (
            vec!["release", dev, "-k", "0x1111", "-t", "exclusive-access"],
            0x02,
            3,
        ),
        (vec!["clear", dev, "-k", "1111h"], 0x03, 0),
        (
            vec!["preempt", dev, "-k", "2", "--victim-key", "1", "-t", "8"],
            0x04,
            8,
        ),
        (
            vec!["preempt-abort", dev, "-k", "2", "-v", "1", "-t", "ea-ro"],
            0x05,
            6,
        ),
        (
            vec![
                "register-move",
                dev,
                "-k",
                "2",
                "-n",
                "3",
                "-t",
                "we",
                "--transport-id",
                "naa.50014050000000b1",
                "--relative-target-port",
                "1",
            ],
            0x07,
            1,
        ),
    ];
    for (args, sa, rtype) in cases {
        let out = pr_ctl(&h.socket, &args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let seen = h.last();
        assert_eq!(seen.cdb[0], 0x5f, "{args:?}");
        assert_eq!(seen.cdb[1], sa, "{args:?}");
        assert_eq!(seen.cdb[2], rtype, "{args:?}");
        assert!(seen.fd_was_writable, "{args:?}: PR OUT needs a writable fd");
        let len = u32::from_be_bytes(seen.cdb[5..9].try_into().unwrap()) as usize;
        assert_eq!(len, seen.params.len());
        match sa {
            0x00 => assert_eq!(&seen.params[8..16], &0x1111u64.to_be_bytes()),
            0x03 => assert_eq!(&seen.params[..8], &0x1111u64.to_be_bytes()),
            0x04 | 0x05 => {
                assert_eq!(&seen.params[..8], &2u64.to_be_bytes());
                assert_eq!(&seen.params[8..16], &1u64.to_be_bytes());
            }
            0x07 => {
                assert_eq!(len, 48);
                assert_eq!(&seen.params[28..36], &0x50014050000000b1u64.to_be_bytes());
            }
            _ => {}
        }
        assert!(text(&out.stdout).contains(": done"), "{args:?}");
    }
}

#[test]
fn conflict_and_other_statuses_have_their_own_exit_codes() {
    let f = any_file();
    let dev = f.path().to_str().unwrap();
    let h = Scripted::new(Reply::status(Status::RESERVATION_CONFLICT));
    let out = pr_ctl(&h.socket, &["reserve", dev, "-k", "1", "-t", "ea"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("RESERVE failed: RESERVATION CONFLICT"),
        "{}",
        text(&out.stderr)
    );
    let out = pr_ctl(&h.socket, &["--json", "keys", dev]);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "RESERVATION CONFLICT");

    let h = Scripted::new(Reply::status(Status::BUSY));
    let out = pr_ctl(&h.socket, &["keys", dev]);
    assert_eq!(out.status.code(), Some(5));
    assert!(text(&out.stderr).contains("BUSY"));

    // Malformed PR IN data from a device: a clear error, not a panic.
    let h = Scripted::new(Reply::good(vec![0, 0, 0]));
    let out = pr_ctl(&h.socket, &["keys", dev]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("malformed"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_condition_from_both_real_helpers_is_decoded() {
    // A regular file is not a device: our helper refuses it (LOGICAL UNIT NOT SUPPORTED); the
    // C helper fails the SG_IO. Both are CHECK CONDITION, exit code 4, sense in words.
    let f = any_file();
    let dev = f.path().to_str().unwrap();
    let ours = Helper::ours(&["--seccomp", "kill"]);
    let out = pr_ctl(&ours.socket, &["keys", dev]);
    assert_eq!(out.status.code(), Some(4));
    let e = text(&out.stderr);
    assert!(
        e.contains(
            "READ KEYS failed: CHECK CONDITION: ILLEGAL REQUEST, logical unit not supported"
        ),
        "{e}"
    );
    let out = pr_ctl(&ours.socket, &["--json", "register", dev, "-n", "1"]);
    assert_eq!(out.status.code(), Some(4));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sense"]["asc"], 0x25);

    let c = Helper::c_helper();
    let out = pr_ctl(&c.socket, &["keys", dev]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("CHECK CONDITION: "));
}

#[test]
fn loop_device_through_our_daemon() {
    // A loop device is a block device without SCSI: the SG_IO fails and the helper says so.
    let lo = LoopDevice::new();
    let ours = Helper::ours(&[]);
    let out = pr_ctl(&ours.socket, &["status", lo.path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("READ FULL STATUS failed: CHECK CONDITION"));
}

#[test]
fn device_and_socket_errors_exit_1_with_the_reason() {
    let ours = Helper::ours(&[]);
    let out = pr_ctl(&ours.socket, &["keys", "/nonexistent/disk"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot open /nonexistent/disk read-only"));

    // PR OUT needs a writable descriptor, which a directory cannot give.
    let d = tempfile::tempdir().unwrap();
    let d = d.path().to_str().unwrap();
    let out = pr_ctl(&ours.socket, &["register", d, "-n", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("cannot open {d} read-write: Is a directory")),
        "{}",
        text(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let out = pr_ctl(&missing, &["keys", "/dev/null"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot connect to the helper socket"));
}

#[test]
fn usage_errors_exit_2_and_name_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("unused.sock");
    for (args, needle) in [
        (
            vec!["reserve", "/dev/null", "-k", "12ab", "-t", "we"],
            "'12ab' is not a reservation key",
        ),
        (
            vec!["reserve", "/dev/null", "-k", "1", "-t", "2"],
            "reservation type code 2 is reserved",
        ),
        (vec!["keys", "/dev/null", "--maxlen", "9000"], "9000"),
        (vec!["raw", "-d", "/dev/null", "--cdb", "5e0"], "odd number"),
        (vec!["reserve", "/dev/null", "-k", "1"], "--type"),
    ] {
        let out = pr_ctl(&s, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn socket_from_the_environment() {
    let h = Scripted::new(Reply::good(ReadKeys::encode(Generation(1), &[])));
    let f = any_file();
    let out = Command::new(PR_CTL)
        .args(["keys", f.path().to_str().unwrap()])
        .env("PR_HELPER_SOCKET", &h.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "PR generation 0x1, no registered keys\n");
}

#[test]
fn man_page_and_completions_come_from_the_cli() {
    let out = Command::new(PR_CTL).arg("man").output().unwrap();
    assert!(out.status.success());
    let man = text(&out.stdout);
    assert!(
        man.starts_with(".ie") || man.contains(".TH pr-ctl"),
        "{man}"
    );
    for sub in [
        "PR-CTL PREEMPT-ABORT",
        "PR-CTL REGISTER-MOVE",
        "\\-\\-victim\\-key",
    ] {
        assert!(man.contains(sub), "man page lacks {sub}");
    }
    // The committed man page is the generated one.
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/man/pr-ctl.1"),
    )
    .expect("docs/man/pr-ctl.1 exists");
    assert!(
        committed == man,
        "docs/man/pr-ctl.1 is stale: regenerate with `target/release/pr-ctl man > docs/man/pr-ctl.1`"
    );

    let out = Command::new(PR_CTL)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let bash = text(&out.stdout);
    assert!(bash.contains("preempt-abort") && bash.contains("--victim-key"));
    // The script is valid bash.
    let check = Command::new("bash")
        .arg("-n")
        .arg("-c")
        .arg(&bash)
        .status()
        .unwrap();
    assert!(check.success());
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(PR_CTL)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(
            out.status.success() && text(&out.stdout).contains("register-move"),
            "{shell}"
        );
    }
}
