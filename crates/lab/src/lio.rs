//! LIO inside the lab guest: fileio logical units, one tcm_loop target per initiator with every
//! LU behind it, and the SCSI disks the kernel creates for them.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::scenario::Fabric;

pub(crate) mod iscsi;

pub(crate) const CONFIGFS: &str = "/sys/kernel/config/target";
const LU_SIZE: u64 = 8 << 20;

/// A configured set of LUs and initiators.
///
/// It is never torn down: removing tcm_loop LUNs and nexuses right after use hung LIO's
/// kernel workers on the lab's 6.1 kernel. Each scenario gets its own targets and backstores
/// instead (fresh reservation state), and the guest's end clears everything.
#[derive(Debug)]
pub struct Lio {
    tag: String,
    index: usize,
    lus: usize,
    initiators: usize,
    /// `devices[initiator][lu]`: the disk node through which that initiator reaches that LU.
    pub devices: Vec<Vec<PathBuf>>,
    images: Vec<PathBuf>,
}

pub(crate) fn write(path: impl AsRef<Path>, value: &str) -> Result<(), String> {
    let p = path.as_ref();
    fs::write(p, value).map_err(|e| format!("write '{value}' to {}: {e}", p.display()))
}

pub(crate) fn mkdir(path: impl AsRef<Path>) -> Result<(), String> {
    let p = path.as_ref();
    fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

/// The initiator-side (nexus) SAS address of initiator `i` (0-based): what READ FULL STATUS
/// reports and REGISTER AND MOVE names.
pub fn initiator_wwn(i: usize) -> String {
    format!("naa.5001405000000b{:02x}", i + 1)
}

/// The target-side WWN of initiator `i`'s loopback target in scenario `index`.
fn target_wwn(index: usize, i: usize) -> String {
    format!("naa.5001405{:03x}{:06x}", index & 0xfff, 0xa00 + i + 1)
}

impl Lio {
    /// Creates `lus` fileio LUs (fresh files, so no reservation state) and `initiators`
    /// loopback nexuses that each see every LU, and waits for the disks.
    pub fn setup(
        tag: &str,
        index: usize,
        lus: usize,
        initiators: usize,
        fabric: Fabric,
    ) -> Result<Lio, String> {
        let cfg = Path::new(CONFIGFS);
        if !cfg.exists() {
            return Err(format!(
                "{CONFIGFS} is missing: configfs is not mounted or target_core_mod not loaded"
            ));
        }
        let mut lio = Lio {
            tag: tag.to_string(),
            index,
            lus,
            initiators,
            devices: Vec::new(),
            images: Vec::new(),
        };
        mkdir("/run/lab")?;
        for l in 0..lus {
            let img = PathBuf::from(format!("/run/lab/{tag}-lu{l}.img"));
            let f = fs::File::create(&img).map_err(|e| format!("{}: {e}", img.display()))?;
            f.set_len(LU_SIZE)
                .map_err(|e| format!("{}: {e}", img.display()))?;
            let dir = lio.backstore(l);
            mkdir(&dir)?;
            write(
                dir.join("control"),
                &format!("fd_dev_name={},fd_dev_size={LU_SIZE}", img.display()),
            )?;
            // A serial of our own: LIO names its PR metadata file after it.
            write(dir.join("wwn/vpd_unit_serial"), &format!("{tag}-lu{l}"))?;
            write(dir.join("enable"), "1")?;
            lio.images.push(img);
        }
        match fabric {
            Fabric::Loopback => {
                for i in 0..initiators {
                    // The nexus first: linking a LUN makes tcm_loop add its SCSI device, which needs
                    // the nexus to exist.
                    let tpg = cfg
                        .join("loopback")
                        .join(target_wwn(index, i))
                        .join("tpgt_1");
                    mkdir(tpg.join("lun"))?;
                    write(tpg.join("nexus"), &initiator_wwn(i))?;
                    for l in 0..lus {
                        let lun = tpg.join(format!("lun/lun_{l}"));
                        mkdir(&lun)?;
                        std::os::unix::fs::symlink(lio.backstore(l), lun.join("lu"))
                            .map_err(|e| format!("link LU {l} into {}: {e}", lun.display()))?;
                    }
                }
                lio.devices = lio.find_disks()?;
            }
            Fabric::Iscsi => lio.devices = iscsi::setup(&lio, index)?,
        }
        // Adding LUNs raises unit attentions (REPORTED LUNS DATA HAS CHANGED…) on nexuses
        // that already see other LUNs; consume them so that scenarios start quiet.
        for dev in lio.devices.iter().flatten() {
            let quiet = (0..10).any(|_| {
                crate::bounded("sg_turs")
                    .arg(dev)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
            if !quiet {
                return Err(format!("{} keeps failing TEST UNIT READY", dev.display()));
            }
        }
        Ok(lio)
    }

    pub(crate) fn backstore(&self, l: usize) -> PathBuf {
        Path::new(CONFIGFS).join(format!("core/fileio_{l}/{}", self.tag))
    }

    /// Maps (initiator, LU) to /dev/sdX through the tcm_loop host's address and sysfs.
    fn find_disks(&self) -> Result<Vec<Vec<PathBuf>>, String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut all = Vec::new();
            let mut missing = None;
            for i in 0..self.initiators {
                let addr_file = Path::new(CONFIGFS)
                    .join("loopback")
                    .join(target_wwn(self.index, i))
                    .join("tpgt_1/address");
                let addr = fs::read_to_string(&addr_file)
                    .map_err(|e| format!("{}: {e}", addr_file.display()))?;
                let mut row = Vec::new();
                for l in 0..self.lus {
                    let want = format!("{}:{l}", addr.trim());
                    match disk_at(&want) {
                        Some(d) => row.push(d),
                        None => {
                            missing = Some(want);
                            break;
                        }
                    }
                }
                all.push(row);
            }
            match missing {
                None => return Ok(all),
                Some(want) if Instant::now() > deadline => {
                    return Err(format!("no disk appeared for SCSI address {want} in 20 s"))
                }
                Some(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// The /dev/sdX whose SCSI address (host:channel:target:lun) is `addr`, once its node exists.
fn disk_at(addr: &str) -> Option<PathBuf> {
    let blocks = fs::read_dir("/sys/class/block").ok()?;
    for b in blocks.flatten() {
        let name = b.file_name().to_string_lossy().into_owned();
        if !name.starts_with("sd") || name.chars().any(|c| c.is_ascii_digit()) {
            continue;
        }
        let dev = fs::read_link(b.path().join("device")).ok()?;
        if dev.file_name().map(|f| f.to_string_lossy().into_owned()) == Some(addr.to_string()) {
            let node = PathBuf::from(format!("/dev/{name}"));
            return node.exists().then_some(node);
        }
    }
    None
}
