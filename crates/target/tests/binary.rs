//! The real pr-target binary: configuration checking, one process per backing file, and the
//! SIGTERM drain, on real files and sockets.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pr-target");

fn config(dir: &Path) -> String {
    format!(
        r#"store = "{d}/r.db"

[[lu]]
name = "d0"
path = "{d}/disk.img"
naa = "5001405abcdef012"
serial = "S0"

[[socket]]
path = "{d}/a.sock"
initiator = "iqn.2026-12.org.test:a"
luns = {{ 0 = "d0" }}
"#,
        d = dir.display()
    )
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("disk.img"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(dir.path().join("t.toml"), config(dir.path())).unwrap();
    dir
}

#[test]
fn check_validates_and_names_the_bad_line() {
    let dir = setup();
    let out = Command::new(BIN)
        .args(["--check", "--config"])
        .arg(dir.path().join("t.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 logical units, 1 sockets"));
    let bad = config(dir.path()).replace("naa = \"5001405abcdef012\"", "naa = \"5001\"");
    std::fs::write(dir.path().join("bad.toml"), bad).unwrap();
    let out = Command::new(BIN)
        .args(["--check", "--config"])
        .arg(dir.path().join("bad.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:6: naa = \"5001\": expected 16 hex digits"),
        "{err}"
    );
}

#[test]
fn one_process_per_backing_and_sigterm_exits_zero() {
    let dir = setup();
    let cfg = dir.path().join("t.toml");
    let mut first = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = dir.path().join("a.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "pr-target did not create its socket in 30 s"
        );
        assert!(first.try_wait().unwrap().is_none(), "pr-target exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("locked by another process"), "{err}");
    // The refused instance left the first one's socket alone.
    assert!(sock.exists());
    let pid = rustix::process::Pid::from_raw(first.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = first.wait().unwrap();
    let mut log = String::new();
    first
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "{status:?}: {log}");
    assert!(log.contains("clean shutdown"), "{log}");
}
