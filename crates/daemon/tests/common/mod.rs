//! Support for the daemon's integration tests: a running helper process on a temporary socket,
//! raw protocol access for malformed input, and loop devices. Tests run as root (CI does).
#![allow(dead_code)]

pub mod emulate;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Our daemon's binary: cargo names it for the daemon's own tests; other packages' tests
/// (pr-ctl's) find it beside their own executable in the same target directory.
pub fn our_helper() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_pr-helper") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("pr-helper");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo test --workspace builds it)",
        p.display()
    );
    p
}
pub const C_HELPER: &str = "/usr/bin/qemu-pr-helper";

/// A helper process listening on a socket in a temporary directory; killed on drop.
pub struct Helper {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Helper {
    /// Starts our daemon with `args` (besides -k).
    pub fn ours(args: &[&str]) -> Helper {
        Helper::start(our_helper(), args)
    }

    /// Starts QEMU's C helper.
    pub fn c_helper() -> Helper {
        assert!(
            Path::new(C_HELPER).exists(),
            "{C_HELPER} is missing: install qemu-system-common (scripts/setup does)"
        );
        Helper::start(C_HELPER, &[])
    }

    pub fn start(binary: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Helper {
        let binary = binary.as_ref();
        raise_nofile();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("helper.sock");
        let child = Command::new(binary)
            .arg("-k")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("PR_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.to_string_lossy()));
        let h = Helper { child, socket, dir };
        h.wait_for_socket();
        h
    }

    /// Waits until the helper serves: it has sent its feature word on a connection. (The
    /// socket listens before privileges are dropped and the seccomp filter is in; the feature
    /// word only comes once the daemon is serving, i.e. after both.)
    pub fn wait_for_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut s) = UnixStream::connect(&self.socket) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut w = [0u8; 4];
                if s.read_exact(&mut w).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "helper did not listen on {} within 10 s",
            self.socket.display()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(&self.socket)
    }

    /// Sends a signal and waits for the exit status (at most 10 s).
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::try_from(sig).unwrap(),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "helper did not exit within 10 s of signal {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    pub fn proc_status(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw protocol connection.
pub struct Conn {
    pub stream: UnixStream,
}

/// What came back for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Reply {
        status: u32,
        sense: Vec<u8>,
        data: Vec<u8>,
    },
    /// The helper closed the connection without replying.
    Closed,
}

impl Answer {
    pub fn status(&self) -> u32 {
        match self {
            Answer::Reply { status, .. } => *status,
            Answer::Closed => panic!("connection was closed instead of a reply"),
        }
    }
    /// Sense key, ASC, ASCQ of a fixed-format sense.
    pub fn sense_code(&self) -> (u8, u8, u8) {
        match self {
            Answer::Reply { sense, .. } => (sense[2] & 0xf, sense[12], sense[13]),
            Answer::Closed => panic!("connection was closed instead of a reply"),
        }
    }
}

impl Conn {
    pub fn connect_raw(path: &Path) -> Conn {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Conn { stream }
    }

    /// Connects and does the handshake (reads the helper's word, which must be 0, sends 0).
    pub fn connect(path: &Path) -> Conn {
        let mut c = Conn::connect_raw(path);
        let mut w = [0u8; 4];
        c.stream.read_exact(&mut w).unwrap();
        assert_eq!(w, [0, 0, 0, 0], "helper feature word");
        c.stream.write_all(&[0, 0, 0, 0]).unwrap();
        c
    }

    pub fn send(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        let n = pr_sys::scm::send_with_fds(self.stream.as_fd(), bytes, fds)?;
        self.stream.write_all(&bytes[n..])
    }

    /// Reads a reply, or notices that the helper closed the connection.
    pub fn answer(&mut self) -> Answer {
        let mut h = [0u8; 104];
        let mut got = 0;
        while got < h.len() {
            match self.stream.read(&mut h[got..]) {
                Ok(0) => {
                    assert_eq!(got, 0, "connection closed in the middle of a reply header");
                    return Answer::Closed;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Answer::Closed,
                Err(e) => panic!("reading reply: {e}"),
            }
        }
        let status = u32::from_be_bytes(h[0..4].try_into().unwrap());
        let len = u32::from_be_bytes(h[4..8].try_into().unwrap()) as usize;
        assert!(len <= 8192, "reply length {len}");
        let mut data = vec![0u8; len];
        self.stream.read_exact(&mut data).unwrap();
        Answer::Reply {
            status,
            sense: h[8..].to_vec(),
            data,
        }
    }

    /// One whole request: CDB with `fd`, parameter data, then the answer.
    pub fn request(&mut self, cdb: &[u8; 16], fd: BorrowedFd<'_>, params: &[u8]) -> Answer {
        if self.send(cdb, &[fd]).is_err() {
            return Answer::Closed;
        }
        if !params.is_empty() && self.stream.write_all(params).is_err() {
            return Answer::Closed;
        }
        self.answer()
    }
}

/// PR IN CDB for service action `sa` with allocation length `len`.
pub fn pr_in(sa: u8, len: u16) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x5e;
    c[1] = sa;
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

/// PR OUT CDB for service action `sa`, type byte, parameter list length `len`.
pub fn pr_out(sa: u8, scope_type: u8, len: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x5f;
    c[1] = sa;
    c[2] = scope_type;
    c[5..9].copy_from_slice(&len.to_be_bytes());
    c
}

/// A 24-byte basic parameter list.
pub fn params(key: u64, sa_key: u64) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p
}

/// A loop device over a sparse temporary file; detached on drop.
pub struct LoopDevice {
    pub path: PathBuf,
    _backing: tempfile::NamedTempFile,
}

impl LoopDevice {
    pub fn new() -> LoopDevice {
        let backing = tempfile::NamedTempFile::new().unwrap();
        backing.as_file().set_len(8 << 20).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing.path())
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup failed (tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        LoopDevice {
            path,
            _backing: backing,
        }
    }

    pub fn open(&self, write: bool) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(&self.path)
            .unwrap()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// Raises this test process's open-file limit (a thousand clients need more than 1024).
pub fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}
