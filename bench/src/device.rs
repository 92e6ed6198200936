//! The descriptor every request carries: a regular file, a loop device, or any path the lab
//! names (an LIO disk, an sg node, a multipath map).

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Which kind of descriptor to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FdKind {
    /// A scratch regular file: measures the helpers' own overhead (no device behind it).
    File,
    /// A loop device over a scratch image: both helpers issue SG_IO, which the loop driver
    /// rejects with EINVAL.
    Loop,
    /// A device the caller names (`--device PATH`), e.g. an LIO disk in the VM lab.
    Path(PathBuf),
}

impl std::fmt::Display for FdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FdKind::File => f.write_str("file"),
            FdKind::Loop => f.write_str("loop"),
            FdKind::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// An open device, with whatever must be undone when it is dropped.
#[derive(Debug)]
pub struct Device {
    pub file: File,
    pub description: String,
    scratch: Option<PathBuf>,
    loop_dev: Option<PathBuf>,
}

impl Device {
    /// The loop device's path, for a loop device.
    pub fn loop_path(&self) -> Option<&Path> {
        self.loop_dev.as_deref()
    }

    /// Opens (creating if needed) the device of `kind` read-write, scratch files in `dir`.
    pub fn open(kind: &FdKind, dir: &Path) -> io::Result<Device> {
        match kind {
            FdKind::File => {
                let path = dir.join(format!("pr-bench-{}.img", std::process::id()));
                let file = scratch_file(&path, 1 << 20)?;
                Ok(Device {
                    file,
                    description: format!("regular file {}", path.display()),
                    scratch: Some(path),
                    loop_dev: None,
                })
            }
            FdKind::Loop => {
                let path = dir.join(format!("pr-bench-{}-loop.img", std::process::id()));
                drop(scratch_file(&path, 16 << 20)?);
                let out = Command::new("losetup")
                    .args(["-f", "--show"])
                    .arg(&path)
                    .output()?;
                if !out.status.success() {
                    let _ = fs::remove_file(&path);
                    return Err(io::Error::other(format!(
                        "losetup failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                let mut d = Device {
                    file: File::open("/dev/null")?,
                    description: format!("loop device {} over {}", dev.display(), path.display()),
                    scratch: Some(path),
                    loop_dev: Some(dev.clone()),
                };
                // On failure `d` is dropped and detaches the loop device.
                d.file = OpenOptions::new().read(true).write(true).open(&dev)?;
                Ok(d)
            }
            FdKind::Path(p) => Ok(Device {
                file: OpenOptions::new().read(true).write(true).open(p)?,
                description: format!("device {}", p.display()),
                scratch: None,
                loop_dev: None,
            }),
        }
    }
}

fn scratch_file(path: &Path, len: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.set_len(len)?;
    Ok(f)
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
        if let Some(p) = &self.scratch {
            let _ = fs::remove_file(p);
        }
    }
}
