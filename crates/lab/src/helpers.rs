//! Helper daemons under test: ours and QEMU's, started on sockets under /run/lab.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::scenario::HelperKind;

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub ours: PathBuf,
    pub c_helper: PathBuf,
    pub pr_ctl: PathBuf,
}

/// A running helper; killed on drop.
#[derive(Debug)]
pub struct Helper {
    pub kind: HelperKind,
    pub socket: PathBuf,
    binary: PathBuf,
    child: Child,
    log: PathBuf,
    /// `--config` file given to our helper, if any.
    config: Option<PathBuf>,
}

impl Helper {
    /// Starts a helper; `config` is a device configuration (TOML) for ours.
    pub fn start(
        kind: HelperKind,
        bins: &Binaries,
        tag: &str,
        config: Option<&str>,
    ) -> Result<Helper, String> {
        let (binary, name) = match kind {
            HelperKind::Ours => (bins.ours.clone(), "ours"),
            HelperKind::C => (bins.c_helper.clone(), "c"),
        };
        let socket = PathBuf::from(format!("/run/lab/{tag}-{name}.sock"));
        let log = PathBuf::from(format!("/run/lab/{tag}-{name}.log"));
        let config = match config {
            Some(text) => {
                let p = PathBuf::from(format!("/run/lab/{tag}-{name}.toml"));
                std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
                Some(p)
            }
            None => None,
        };
        let child = spawn(kind, &binary, &socket, &log, config.as_deref())?;
        let h = Helper {
            kind,
            socket,
            binary,
            child,
            log,
            config,
        };
        h.wait_serving()?;
        Ok(h)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a connection gets the feature word (the helper is past its privilege drop).
    fn wait_serving(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(mut s) = UnixStream::connect(&self.socket) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut w = [0u8; 4];
                if s.read_exact(&mut w).is_ok() {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "{} did not serve on {} within 15 s; its log: {}",
            self.binary.display(),
            self.socket.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        ))
    }

    /// Stops the helper (SIGTERM) and starts a new one on the same socket.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.child = spawn(
            self.kind,
            &self.binary,
            &self.socket,
            &self.log,
            self.config.as_deref(),
        )?;
        self.wait_serving()
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// How the helper ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What the helper has logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The helper's /proc status (Uid, capabilities…).
    pub fn proc_status(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default()
    }
}

fn spawn(
    kind: HelperKind,
    binary: &PathBuf,
    socket: &PathBuf,
    log: &PathBuf,
    config: Option<&std::path::Path>,
) -> Result<Child, String> {
    let _ = std::fs::remove_file(socket);
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(binary);
    cmd.arg("-k").arg(socket);
    // Least privilege: ours always runs as nobody:nogroup. The C helper runs as root, as
    // distributions start it; it is the reference, not the subject.
    if kind == HelperKind::Ours {
        cmd.args(["-u", "nobody", "-g", "nogroup"]);
        if let Some(c) = config {
            // -vv: the block-layer backend logs each command it sends as an ioctl, and each
            // fallback to SG_IO, at debug level (`read-ioctls` reads them).
            cmd.arg("--config").arg(c).arg("-vv");
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.socket);
    }
}
