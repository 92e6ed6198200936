//! `pr-lab run --against target`: a scenario's commands go, for every initiator, straight to a
//! disk of pr-target (a vhost-user-scsi controller of the guest, one socket of pr-target: one
//! I_T nexus), and LIO answers the same commands on an LU of its own (sg_raw on both). The
//! replies must be byte-identical except for the SPC-4 departures of the engine listed in
//! [`crate::emulate::DEPARTURES`]; the I/O steps run `dd` on both, so a read or write allowed
//! or refused with RESERVATION CONFLICT must be the same on pr-target as on LIO.
//!
//! pr-target is configured on the host (lab/target-lio.sh): every socket maps LUN 0 to a
//! scratch LU (serial `lab-scratch`) and one LU per scenario (serial `lab-NAME`). Each
//! scenario's initiators are the sockets whose nexus (TransportID and relative target port) is
//! the one LIO names for that initiator, so READ FULL STATUS, REGISTER AND MOVE and the
//! TransportIDs of SPEC_I_PT compare byte for byte. The nexus of every socket is read from
//! pr-target itself (READ FULL STATUS on the scratch LU), never assumed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use pr_engine::Nexus;
use pr_scsi::transport_id::TransportId;

use crate::run::via_sg_raw;

/// INQUIRY's VENDOR IDENTIFICATION of pr-target's disks (its default; lab/target-lio.sh keeps it).
const VENDOR: &str = "PR-HELP";
/// The serial of the scratch LU every socket maps.
pub const SCRATCH_SERIAL: &str = "lab-scratch";

/// One vhost-user-scsi controller of the guest: one pr-target socket.
#[derive(Debug)]
pub struct Port {
    /// The SCSI host number the guest gave the controller.
    pub host: u32,
    /// The nexus pr-target serves this socket as.
    pub nexus: Nexus,
    /// Its disks by VPD 80h serial.
    pub disks: BTreeMap<String, PathBuf>,
}

/// Every pr-target socket the guest sees.
#[derive(Debug)]
pub struct Targets {
    pub ports: Vec<Port>,
}

/// The nexus with the ISID in lower case, as both sides are compared.
pub fn normalized(n: &Nexus) -> Nexus {
    Nexus {
        initiator: match &n.initiator {
            TransportId::Iscsi { name, isid } => TransportId::Iscsi {
                name: name.clone(),
                isid: isid.as_ref().map(|i| i.to_ascii_lowercase()),
            },
            other => other.clone(),
        },
        relative_target_port: n.relative_target_port,
    }
}

fn describe(n: &Nexus) -> String {
    format!(
        "{} on relative target port {}",
        n.initiator, n.relative_target_port.0
    )
}

/// VPD page 80h's serial, from sysfs when the kernel cached it, else sg_vpd.
fn serial(sysfs: &Path, dev: &Path) -> Result<String, String> {
    let raw = match fs::read(sysfs.join("device/vpd_pg80")) {
        Ok(b) if b.len() >= 4 => b,
        _ => {
            let out = crate::bounded("sg_vpd")
                .args(["--page=0x80", "--raw"])
                .arg(dev)
                .output()
                .map_err(|e| format!("sg_vpd: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "sg_vpd --page=0x80 {}: {}",
                    dev.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            out.stdout
        }
    };
    let len = raw
        .get(2..4)
        .map_or(0, |l| usize::from(u16::from_be_bytes([l[0], l[1]])));
    let body = raw.get(4..4 + len).unwrap_or(raw.get(4..).unwrap_or(&[]));
    Ok(String::from_utf8_lossy(body).trim().to_string())
}

/// Consumes pending unit attentions (power on, LUNs added) with TEST UNIT READY.
pub fn quiet(dev: &Path) -> Result<(), String> {
    let ok = (0..10).any(|_| {
        crate::bounded("sg_turs")
            .arg(dev)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if ok {
        Ok(())
    } else {
        Err(format!("{} keeps failing TEST UNIT READY", dev.display()))
    }
}

/// The registration key by which the scratch LU names the socket of SCSI host `host`.
fn scratch_key(host: u32) -> u64 {
    0x7a7a_0000_0000_0000 | u64::from(host)
}

impl Targets {
    /// Finds pr-target's disks (INQUIRY vendor PR-HELP) and names each controller's nexus:
    /// every controller registers a key of its own on the scratch LU (REGISTER AND IGNORE
    /// EXISTING KEY, so a second run works too) and one READ FULL STATUS gives each key's
    /// TransportID and relative target port.
    pub fn discover() -> Result<Targets, String> {
        let mut by_host: BTreeMap<u32, BTreeMap<String, PathBuf>> = BTreeMap::new();
        let blocks =
            fs::read_dir("/sys/class/block").map_err(|e| format!("/sys/class/block: {e}"))?;
        for b in blocks.flatten() {
            let name = b.file_name().to_string_lossy().into_owned();
            if !name.starts_with("sd") || name.chars().any(|c| c.is_ascii_digit()) {
                continue;
            }
            let sys = b.path();
            let vendor = fs::read_to_string(sys.join("device/vendor")).unwrap_or_default();
            if vendor.trim() != VENDOR {
                continue;
            }
            let addr = fs::read_link(sys.join("device"))
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
                .unwrap_or_default();
            let Some(host) = addr.split(':').next().and_then(|h| h.parse::<u32>().ok()) else {
                continue;
            };
            let dev = PathBuf::from(format!("/dev/{name}"));
            let s = serial(&sys, &dev)?;
            if let Some(other) = by_host
                .entry(host)
                .or_default()
                .insert(s.clone(), dev.clone())
            {
                return Err(format!(
                    "SCSI host {host} has two pr-target disks with serial {s}: {} and {}",
                    other.display(),
                    dev.display()
                ));
            }
        }
        if by_host.is_empty() {
            return Err(format!(
                "no pr-target disk (INQUIRY vendor {VENDOR}) in /sys/class/block"
            ));
        }
        let mut scratch_dev = None;
        for (host, disks) in &by_host {
            let dev = disks.get(SCRATCH_SERIAL).ok_or_else(|| {
                format!(
                    "pr-target's controller at SCSI host {host} has no scratch LU (serial \
                     {SCRATCH_SERIAL}); its disks: {disks:?}"
                )
            })?;
            quiet(dev)?;
            let mut cdb = [0u8; 16];
            cdb[0] = pr_scsi::PERSISTENT_RESERVE_OUT;
            cdb[1] = 6; // REGISTER AND IGNORE EXISTING KEY
            cdb[8] = 24;
            let mut data = vec![0u8; 24];
            data[8..16].copy_from_slice(&scratch_key(*host).to_be_bytes());
            let a = via_sg_raw(dev, &pr_ctl::Operation::Raw { cdb, data })?;
            if a.status != 0 {
                return Err(format!(
                    "REGISTER AND IGNORE EXISTING KEY on {} (SCSI host {host}): {}",
                    dev.display(),
                    a.describe()
                ));
            }
            scratch_dev = Some(dev.clone());
        }
        let dev = scratch_dev.expect("by_host is not empty");
        let mut cdb = [0u8; 16];
        cdb[0] = pr_scsi::PERSISTENT_RESERVE_IN;
        cdb[1] = 3; // READ FULL STATUS
        cdb[7] = 0x20; // ALLOCATION LENGTH 8192
        let a = via_sg_raw(
            &dev,
            &pr_ctl::Operation::Raw {
                cdb,
                data: Vec::new(),
            },
        )?;
        let full = pr_scsi::prin::FullStatus::decode(&a.data)
            .map_err(|e| format!("pr-target's READ FULL STATUS of {}: {e}", dev.display()))?;
        let mut ports = Vec::new();
        for (host, disks) in by_host {
            let d = full
                .descriptors
                .iter()
                .find(|d| d.key.0 == scratch_key(host))
                .ok_or_else(|| {
                    format!(
                        "pr-target's READ FULL STATUS has no registration of SCSI host {host}: {}",
                        a.describe()
                    )
                })?;
            ports.push(Port {
                host,
                nexus: normalized(&Nexus {
                    initiator: d.transport_id.clone(),
                    relative_target_port: d.relative_target_port,
                }),
                disks,
            });
        }
        Ok(Targets { ports })
    }

    /// One line per controller, for the transcript.
    pub fn describe(&self) -> String {
        self.ports
            .iter()
            .map(|p| {
                format!(
                    "host {}: {} ({} disks)",
                    p.host,
                    describe(&p.nexus),
                    p.disks.len()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Initiator i's pr-target disk of the LU with `serial`: the disk of that serial on the
    /// controller whose nexus is `nexuses[i]` (LIO's name for initiator i), with its unit
    /// attentions consumed.
    pub fn disks_for(&self, nexuses: &[Nexus], serial: &str) -> Result<Vec<PathBuf>, String> {
        let mut out = Vec::new();
        for (i, n) in nexuses.iter().enumerate() {
            let n = normalized(n);
            let port = self.ports.iter().find(|p| p.nexus == n).ok_or_else(|| {
                format!(
                    "no pr-target socket is I{}'s nexus as LIO names it ({}); configure one \
                     in lab/target-lio.sh. The sockets: {}",
                    i + 1,
                    describe(&n),
                    self.describe()
                )
            })?;
            let dev = port.disks.get(serial).ok_or_else(|| {
                format!(
                    "pr-target's socket for I{} ({}) maps no LU with serial {serial}; it has {:?}",
                    i + 1,
                    describe(&n),
                    port.disks.keys().collect::<Vec<_>>()
                )
            })?;
            quiet(dev)?;
            out.push(dev.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pr_scsi::RelativeTargetPort;

    #[test]
    fn nexuses_compare_with_the_isid_in_lower_case() {
        let iscsi = |isid: &str| Nexus {
            initiator: TransportId::Iscsi {
                name: "iqn.2026-11.org.pr-helper.lab:i1".into(),
                isid: Some(isid.into()),
            },
            relative_target_port: RelativeTargetPort(1),
        };
        assert_eq!(normalized(&iscsi("00023D00000A")), iscsi("00023d00000a"));
        assert_ne!(normalized(&iscsi("00023d00000b")), iscsi("00023d00000a"));
        let sas = Nexus {
            initiator: TransportId::Sas {
                sas_address: [0x50, 0x01, 0x40, 0x50, 0, 0, 0x0b, 0x01],
            },
            relative_target_port: RelativeTargetPort(2),
        };
        assert_eq!(normalized(&sas), sas);
    }
}
