//! The iSCSI fabric: an LIO iSCSI target on 127.0.0.1 and open-iscsi logging in once per
//! initiator (one iface per initiator name), so each initiator is its own I_T nexus.
//!
//! tcm_loop cannot run PREEMPT AND ABORT (LIO deadlocks flushing the submission work that runs
//! the command); the iSCSI target submits from its own threads and can.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{mkdir, write, Lio, CONFIGFS};

const PORTAL: &str = "127.0.0.1:3260";

/// The iSCSI name of initiator `i` (0-based).
pub fn initiator_name(i: usize) -> String {
    format!("iqn.2026-11.org.pr-helper.lab:i{}", i + 1)
}

fn target_name(index: usize) -> String {
    format!("iqn.2026-11.org.pr-helper.lab:s{index}")
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn iscsiadm(args: &[&str]) -> Result<String, String> {
    run(crate::bounded("iscsiadm").args(args))
}

/// Starts iscsid once, with its database on a tmpfs over /etc/iscsi (the guest's root is the
/// host's, read-only), and creates one iface per initiator name.
fn ensure_iscsid(initiators: usize) -> Result<(), String> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/etc/iscsi"))
    {
        let conf = fs::read_to_string("/etc/iscsi/iscsid.conf").map_err(|e| {
            format!("/etc/iscsi/iscsid.conf: {e} (is open-iscsi installed on the host?)")
        })?;
        run(Command::new("mount").args(["-t", "tmpfs", "tmpfs", "/etc/iscsi"]))?;
        // No systemd here: iscsid is started below, not by iscsiadm.
        let conf: String = conf
            .lines()
            .filter(|l| !l.starts_with("iscsid.startup"))
            .map(|l| format!("{l}\n"))
            .collect();
        write("/etc/iscsi/iscsid.conf", &conf)?;
        write(
            "/etc/iscsi/initiatorname.iscsi",
            "InitiatorName=iqn.2026-11.org.pr-helper.lab:default\n",
        )?;
        mkdir("/run/lock/iscsi")?;
        let log = fs::File::create("/run/lab/iscsid.log").map_err(|e| e.to_string())?;
        Command::new("iscsid")
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start iscsid: {e}"))?;
        std::thread::sleep(Duration::from_millis(500));
    }
    for i in 0..initiators {
        let iface = format!("i{}", i + 1);
        if !Path::new("/etc/iscsi/ifaces").join(&iface).exists() {
            iscsiadm(&["-m", "iface", "-I", &iface, "-o", "new"])?;
        }
        iscsiadm(&[
            "-m",
            "iface",
            "-I",
            &iface,
            "-o",
            "update",
            "-n",
            "iface.initiatorname",
            "-v",
            &initiator_name(i),
        ])?;
    }
    Ok(())
}

/// Creates the target for scenario `index` with every LU, logs every initiator in, and
/// returns `devices[initiator][lu]`.
pub fn setup(lio: &Lio, index: usize) -> Result<Vec<Vec<PathBuf>>, String> {
    let _ = run(Command::new("ip").args(["link", "set", "lo", "up"]));
    ensure_iscsid(lio.initiators)?;
    let target = target_name(index);
    let tpg = Path::new(CONFIGFS)
        .join("iscsi")
        .join(&target)
        .join("tpgt_1");
    for l in 0..lio.lus {
        let lun = tpg.join(format!("lun/lun_{l}"));
        mkdir(&lun)?;
        std::os::unix::fs::symlink(lio.backstore(l), lun.join("lu"))
            .map_err(|e| format!("link LU {l} into {}: {e}", lun.display()))?;
    }
    mkdir(tpg.join("np").join(PORTAL))?;
    for (attr, v) in [
        ("authentication", "0"),
        ("generate_node_acls", "1"),
        ("demo_mode_write_protect", "0"),
        ("cache_dynamic_acls", "1"),
    ] {
        write(tpg.join("attrib").join(attr), v)?;
    }
    write(tpg.join("enable"), "1")?;
    let mut discover = vec!["-m", "discovery", "-t", "st", "-p", PORTAL];
    let ifaces: Vec<String> = (0..lio.initiators).map(|i| format!("i{}", i + 1)).collect();
    for f in &ifaces {
        discover.extend(["-I", f.as_str()]);
    }
    iscsiadm(&discover)?;
    // One iface after the other, I1 first: the initiator gives each new session the next
    // ISID, so in a guest that starts from none the ISIDs are predictable (pr-lab --against
    // target needs pr-target configured with the very nexuses LIO sees; lab/target-lio.sh).
    for f in &ifaces {
        iscsiadm(&[
            "-m", "node", "-T", &target, "-p", PORTAL, "-I", f, "--login",
        ])?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = sessions(&target, lio.initiators, lio.lus)?;
        if let Some(d) = found {
            return Ok(d);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "iSCSI disks for {target} did not all appear in 30 s:\n{}",
                iscsiadm(&["-m", "session", "-P3"]).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads `iscsiadm -m session -P3` for `target`: the disk of each (initiator, LUN), once every
/// one exists.
fn sessions(
    target: &str,
    initiators: usize,
    lus: usize,
) -> Result<Option<Vec<Vec<PathBuf>>>, String> {
    let text = iscsiadm(&["-m", "session", "-P3"])?;
    let mut devices = vec![vec![None; lus]; initiators];
    let (mut in_target, mut initiator, mut lun) = (false, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix("Target: ") {
            in_target = t.split_whitespace().next() == Some(target);
            initiator = None;
        } else if let Some(name) = line.strip_prefix("Iface Initiatorname: ") {
            initiator = (0..initiators).find(|i| initiator_name(*i) == name.trim());
        } else if let Some(l) = line.split("Lun: ").nth(1) {
            lun = l.trim().parse::<usize>().ok();
        } else if let Some(rest) = line.strip_prefix("Attached scsi disk ") {
            let disk = rest.split_whitespace().next().unwrap_or("");
            if let (true, Some(i), Some(l)) = (in_target, initiator, lun) {
                let node = PathBuf::from(format!("/dev/{disk}"));
                if l < lus && node.exists() {
                    devices[i][l] = Some(node);
                }
            }
        }
    }
    Ok(devices
        .into_iter()
        .map(|row| row.into_iter().collect::<Option<Vec<_>>>())
        .collect::<Option<Vec<_>>>())
}
