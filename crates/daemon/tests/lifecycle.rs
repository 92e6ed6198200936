//! The process contract: privilege drop, seccomp, signals, pidfile, daemonizing, systemd socket
//! activation and readiness, command-line errors. Tests run as root (CI does).

mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("{name} missing from /proc status"))
        .trim()
        .to_string()
}

/// CAP_SYS_RAWIO is capability 17 (linux/capability.h).
const ONLY_SYS_RAWIO: &str = "0000000000020000";

#[test]
fn drops_to_nobody_with_only_cap_sys_rawio_and_still_serves() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test must run as root"
    );
    let h = Helper::ours(&["-u", "nobody", "-g", "nogroup"]);
    let st = h.proc_status();
    assert_eq!(status_field(&st, "CapEff"), ONLY_SYS_RAWIO);
    assert_eq!(status_field(&st, "CapPrm"), ONLY_SYS_RAWIO);
    assert_eq!(status_field(&st, "CapInh"), "0000000000000000");
    assert_eq!(status_field(&st, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(&st, "CapAmb"), "0000000000000000");
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    assert_eq!(
        status_field(&st, "Uid"),
        format!("{nobody}\t{nobody}\t{nobody}\t{nobody}")
    );
    assert_eq!(
        status_field(&st, "Gid"),
        format!("{nogroup}\t{nogroup}\t{nogroup}\t{nogroup}")
    );
    assert_eq!(status_field(&st, "Groups"), "");
    assert_eq!(status_field(&st, "NoNewPrivs"), "1");
    assert_eq!(status_field(&st, "Seccomp"), "2");
    // Still serves, including through SG_IO on a real block device.
    let lo = LoopDevice::new();
    let dev = lo.open(false);
    let a = h.connect().request(&pr_in(0, 64), dev.as_fd(), &[]);
    assert_eq!((a.status(), a.sense_code()), (2, (0x05, 0x24, 0x00)));
    // Every thread — the runtime's workers and the connection threads that served requests — runs
    // under the filter and with the same capabilities (the filter is installed before
    // the runtime starts its threads, which inherit it, and theirs).
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{}/task", h.pid()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        tasks.len() >= 2,
        "expected runtime threads, found {tasks:?}"
    );
    for t in tasks {
        // A connection thread ends once its client has closed: gone since the listing.
        let Ok(st) = std::fs::read_to_string(t.join("status")) else {
            continue;
        };
        assert_eq!(status_field(&st, "Seccomp"), "2", "{}", t.display());
        assert_eq!(
            status_field(&st, "CapEff"),
            ONLY_SYS_RAWIO,
            "{}",
            t.display()
        );
    }
}

#[test]
fn numeric_user_and_group_work_too() {
    let h = Helper::ours(&["-u", "65534", "-g", "65534"]);
    let st = h.proc_status();
    assert!(status_field(&st, "Uid").starts_with("65534\t"));
    assert_eq!(status_field(&st, "CapEff"), ONLY_SYS_RAWIO);
}

#[test]
fn without_user_keeps_root_ids_but_drops_capabilities() {
    let h = Helper::ours(&[]);
    let st = h.proc_status();
    assert_eq!(status_field(&st, "CapEff"), ONLY_SYS_RAWIO);
    assert_eq!(status_field(&st, "CapBnd"), "0000000000000000");
    assert!(status_field(&st, "Uid").starts_with("0\t"));
}

#[test]
fn seccomp_none_is_honoured() {
    let h = Helper::ours(&["--seccomp", "none"]);
    assert_eq!(status_field(&h.proc_status(), "Seccomp"), "0");
}

#[test]
fn termination_signals_exit_zero_and_remove_the_socket() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let mut h = Helper::ours(&[]);
        let f = File::open("/dev/null").unwrap();
        // An idle connection is closed by the shutdown, not waited for.
        let mut idle = h.connect();
        assert_eq!(idle.request(&pr_in(0, 8), f.as_fd(), &[]).status(), 2);
        let st = h.signal_and_wait(sig);
        assert_eq!(st.code(), Some(0), "signal {sig}");
        assert!(!h.socket.exists(), "socket removed after signal {sig}");
        assert_eq!(idle.answer(), Answer::Closed);
    }
}

#[test]
fn sigpipe_does_not_kill_the_daemon() {
    let h = Helper::ours(&[]);
    let f = File::open("/dev/null").unwrap();
    for _ in 0..50 {
        let mut c = h.connect();
        // Large PR IN reply requested, then the client vanishes before reading it.
        c.send(&pr_in(0, 8192), &[f.as_fd()]).unwrap();
        drop(c);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        h.connect().request(&pr_in(0, 8), f.as_fd(), &[]).status(),
        2
    );
}

#[test]
fn pidfile_is_written_locked_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("h.pid");
    let pidarg = pidfile.to_str().unwrap();
    let mut h = Helper::ours(&["-f", pidarg]);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        h.pid().to_string()
    );
    // A second instance with the same pidfile refuses to start, naming the running pid.
    let sock2 = dir.path().join("second.sock");
    let out = Command::new(our_helper())
        .arg("-k")
        .arg(&sock2)
        .args(["-f", pidarg])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is locked") && err.contains(&h.pid().to_string()),
        "{err}"
    );
    assert_eq!(h.signal_and_wait(libc::SIGTERM).code(), Some(0));
    assert!(!pidfile.exists());
}

#[test]
fn daemonizes_and_writes_the_daemons_pid() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("d.pid");
    let sock = dir.path().join("d.sock");
    let status = Command::new(our_helper())
        .args(["-d", "-f"])
        .arg(&pidfile)
        .arg("-k")
        .arg(&sock)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        if let Some(p) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break p;
        }
        assert!(Instant::now() < deadline, "no pidfile");
        std::thread::sleep(Duration::from_millis(20));
    };
    let guard = KillOnDrop(pid);
    // Detached: its own session, parent is no longer us.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let (ppid, sid): (i32, i32) = (fields[1].parse().unwrap(), fields[3].parse().unwrap());
    assert_ne!(ppid as u32, std::process::id());
    assert_eq!(sid, pid, "daemon leads its own session");
    let f = File::open("/dev/null").unwrap();
    assert_eq!(
        Conn::connect(&sock)
            .request(&pr_in(0, 8), f.as_fd(), &[])
            .status(),
        2
    );
    drop(guard);
}

struct KillOnDrop(i32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

#[test]
fn command_line_errors_are_clear() {
    let out = Command::new(our_helper())
        .args(["-k", "relative.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("socket path must be absolute"));
    let out = Command::new(our_helper())
        .args(["-u", "no-such-user-zz", "-k", "/tmp/x.sock"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid user 'no-such-user-zz'"));
    let out = Command::new(our_helper()).arg("--bogus").output().unwrap();
    assert!(!out.status.success());
    let out = Command::new(our_helper()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--daemon",
        "--pidfile",
        "--socket",
        "--trace",
        "--user",
        "--group",
        "--verbose",
        "--quiet",
        "--version",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}");
    }
    let out = Command::new(our_helper()).arg("-V").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pr-helper "));
    // A path that exists and is not a socket is never replaced.
    let f = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(our_helper())
        .arg("-k")
        .arg(f.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert!(f.path().exists());
}

#[test]
fn socket_activation_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("act.sock");
    let notify = dir.path().join("notify.sock");
    let nsock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    nsock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // systemd-socket-activate binds the socket and execs us with LISTEN_FDS=1 and fd 3.
    let pidfile = dir.path().join("act.pid");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&sock)
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify.display()))
        .arg(our_helper())
        .arg("-f")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    let mut buf = [0u8; 64];
    // systemd-socket-activate accepts lazily: READY=1 comes once we run, i.e. after a connect.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let f = File::open("/dev/null").unwrap();
    let mut c = Conn::connect(&sock);
    let n = nsock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(c.request(&pr_in(0, 8), f.as_fd(), &[]).status(), 2);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(KillOnDrop(pid));
    let _ = child.kill();
    let _ = child.wait();
    // -k together with activation is an error, as in the C helper.
    let sock2 = dir.path().join("act2.sock");
    let mut out = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&sock2)
        .arg(our_helper())
        .args(["-k", "/tmp/other.sock"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock2).is_err() {
        if Instant::now() > deadline {
            let _ = out.kill();
            panic!("systemd-socket-activate did not listen");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = out.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("can't be set when using socket activation")
    );
}

/// The daemon says at start-up whether multipath maps will go through libmpathpersist, and if
/// not, why (here: no device-mapper in the kernel, or multipath-tools missing).
#[test]
fn start_up_says_whether_multipath_support_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let child = Command::new(our_helper())
        .arg("-k")
        .arg(&sock)
        .arg("-v")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    terminate(child.id());
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("multipath support"))
        .unwrap_or_else(|| panic!("no multipath line in:\n{log}"));
    let dm = std::path::Path::new("/dev/mapper/control").exists();
    if !dm {
        assert!(
            line.contains("multipath support unavailable: the kernel has no device-mapper")
                || line.contains("multipath support unavailable: /dev/mapper/control"),
            "{line}"
        );
        assert!(
            line.contains("SG_IO passthrough, which reaches one path only"),
            "{line}"
        );
    }
}

fn terminate(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
}
