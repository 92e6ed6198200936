//! `pr-lab run --against emulate`: a scenario's commands go, for every initiator, to a daemon of
//! its own with the `emulate` backend, configured with that initiator's LIO TransportID and
//! relative target port, all on one SQLite store and one emulated logical unit; LIO itself
//! answers the same commands on another LU (sg_raw). The replies must be byte-identical except
//! for the departures listed below, each one a clause of SPC-4 where LIO departs from it and
//! the engine follows it (docs/emulation.md).

use std::path::{Path, PathBuf};

use pr_engine::{Access, CommandClass, LogicalUnit, Nexus};
use pr_scsi::transport_id::TransportId;
use pr_scsi::RelativeTargetPort;
use pr_store::{LuId, SqliteStore, Store};

use crate::helpers::{Binaries, Helper};
use crate::lio::{self, Lio};
use crate::run::Answer;
use crate::scenario::{Fabric, HelperKind};

/// Where the LIO reference and the emulated LU are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Against {
    /// Our helper on LIO (passthrough), as the scenario says.
    Lio,
    /// The emulate backend, one daemon per initiator, against LIO's own answers.
    Emulate,
}

/// A difference between LIO's reply and the engine's that is allowed: LIO departs from SPC-4
/// there and the engine follows SPC-4 (docs/emulation.md, "LIO's departures from SPC-4").
#[derive(Debug)]
pub struct Departure {
    /// Short name, printed with each step that shows it.
    pub name: &'static str,
    /// The clause the engine follows.
    pub clause: &'static str,
    /// Whether this reply pair is exactly this departure (the CDB, LIO's reply, the engine's).
    matches: fn(&[u8; 16], &Answer, &Answer) -> bool,
}

const PR_IN: u8 = pr_scsi::PERSISTENT_RESERVE_IN;
const PR_OUT: u8 = pr_scsi::PERSISTENT_RESERVE_OUT;
const GOOD: u8 = 0x00;
const CHECK: u8 = 0x02;
const CONFLICT: u8 = 0x18;

/// Status and (key, ASC, ASCQ) of a fixed or descriptor sense buffer.
fn code(a: &Answer) -> (u8, Option<(u8, u8, u8)>) {
    let sense = pr_scsi::Sense::parse(&a.sense).map(|s| (s.code.key.0, s.code.asc, s.code.ascq));
    (a.status, sense)
}

fn service_action(cdb: &[u8; 16]) -> u8 {
    cdb[1] & 0x1f
}

/// The listed departures. Each matches one service action, LIO's exact reply and the engine's
/// exact reply; everything else must be identical.
pub const DEPARTURES: &[Departure] = &[
    Departure {
        name: "unregistered RESERVE/RELEASE/CLEAR/REGISTER AND MOVE",
        clause: "SPC-4 §5.13.9 Reserving, §5.13.11.2 Releasing, §5.13.11.3 Clearing, §5.13.8 \
                 Registering and moving the reservation: RESERVATION CONFLICT (LIO: CHECK \
                 CONDITION 02/08/00 LOGICAL UNIT COMMUNICATION FAILURE)",
        matches: |cdb, lio, emu| {
            cdb[0] == PR_OUT
                && matches!(service_action(cdb), 1 | 2 | 3 | 7)
                && code(lio) == (CHECK, Some((0x02, 0x08, 0x00)))
                && code(emu) == (CONFLICT, None)
                && lio.data.is_empty()
                && emu.data.is_empty()
        },
    },
    Departure {
        name: "RELEASE by the holder with another TYPE",
        clause: "SPC-4 §5.13.11.2.2 Releasing: CHECK CONDITION, ILLEGAL REQUEST, INVALID RELEASE \
                 OF PERSISTENT RESERVATION 05/26/04 (LIO: RESERVATION CONFLICT)",
        matches: |cdb, lio, emu| {
            cdb[0] == PR_OUT
                && service_action(cdb) == 2
                && code(lio) == (CONFLICT, None)
                && code(emu) == (CHECK, Some((0x05, 0x26, 0x04)))
        },
    },
    Departure {
        name: "REPORT CAPABILITIES: CRH",
        clause: "SPC-4 §6.15.4 REPORT CAPABILITIES, CRH (compatible reservation handling, \
                 §5.13.3 Exceptions to SPC-2 RESERVE and RELEASE behavior): the engine \
                 implements no SPC-2 RESERVE/RELEASE, so CRH=0; LIO, which does, reports \
                 CRH=1. Every other byte identical",
        matches: |cdb, lio, emu| {
            // Byte 2 bit 4 is CRH (SPC-4 table "REPORT CAPABILITIES parameter data").
            let masked = |d: &[u8]| {
                let mut d = d.to_vec();
                if d.len() > 2 {
                    d[2] &= !0x10;
                }
                d
            };
            cdb[0] == PR_IN
                && service_action(cdb) == 2
                && lio.status == GOOD
                && emu.status == GOOD
                && lio.data.len() >= 3
                && lio.data.len() == emu.data.len()
                && masked(&lio.data) == masked(&emu.data)
                && lio.data[2] & 0x10 == 0x10
                && emu.data[2] & 0x10 == 0
        },
    },
];

/// The departure this pair of different replies is, if any.
pub fn departure(cdb: &[u8; 16], lio: &Answer, emu: &Answer) -> Option<&'static Departure> {
    DEPARTURES.iter().find(|d| (d.matches)(cdb, lio, emu))
}

/// The emulated logical unit: each initiator's nexus and the store (its daemons are returned
/// by [`Emulation::start`] to run with the scenario's other helpers).
#[derive(Debug)]
pub struct Emulation {
    /// Each initiator's I_T nexus as its daemon was configured.
    pub nexuses: Vec<Nexus>,
    lu: LuId,
    store_path: PathBuf,
    store: Option<SqliteStore>,
}

/// Initiator `i`'s TransportID as LIO reports it, in the daemon's `initiator =` syntax.
fn transport_id(fabric: Fabric, index: usize, i: usize) -> Result<String, String> {
    Ok(match fabric {
        // tcm_loop: the nexus WWN naa.<16 hex digits> is a SAS address (protocol 6).
        Fabric::Loopback => format!("sas:0x{}", lio::initiator_wwn(i).trim_start_matches("naa.")),
        // iSCSI: LIO names the initiator port, format 01b: the name and the session's ISID.
        Fabric::Iscsi => format!(
            "{},i,0x{}",
            lio::iscsi::initiator_name(i),
            lio::iscsi::session_isid(index, i)?
        ),
    })
}

/// The RELATIVE TARGET PORT identifier LIO reports for `dev` in its Device Identification VPD
/// page (0x83): designator type 4, association 01b (target port), SPC-4 §7.8.6.6.
pub fn relative_target_port(dev: &Path) -> Result<u16, String> {
    let out = crate::bounded("sg_vpd")
        .args(["--page=0x83", "--raw"])
        .arg(dev)
        .output()
        .map_err(|e| format!("sg_vpd: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sg_vpd --page=0x83 {} failed: {}",
            dev.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    rtpi_from_vpd83(&out.stdout).ok_or_else(|| {
        format!(
            "{}: VPD page 0x83 has no relative target port designator",
            dev.display()
        )
    })
}

fn rtpi_from_vpd83(page: &[u8]) -> Option<u16> {
    if page.len() < 4 || page[1] != 0x83 {
        return None;
    }
    let end = (4 + usize::from(u16::from_be_bytes([page[2], page[3]]))).min(page.len());
    let mut off = 4;
    while off + 4 <= end {
        let len = usize::from(page[off + 3]);
        let body = page.get(off + 4..off + 4 + len)?;
        let (assoc, kind) = ((page[off + 1] >> 4) & 3, page[off + 1] & 0xf);
        if kind == 4 && assoc == 1 && len == 4 {
            return Some(u16::from_be_bytes([body[2], body[3]]));
        }
        off += 4 + len;
    }
    None
}

impl Emulation {
    /// Starts one emulate daemon per initiator on a fresh store, each with its initiator's
    /// device of LU `lu_index` mapped to the emulated LU named after the scenario.
    pub fn start(
        name: &str,
        lio: &Lio,
        fabric: Fabric,
        index: usize,
        lu_index: usize,
        bins: &Binaries,
    ) -> Result<(Emulation, Vec<Helper>), String> {
        // A directory of its own that does not exist yet: the daemon creates it for nobody.
        let dir = PathBuf::from(format!("/run/lab/emulate-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let store_path = dir.join("store.db");
        let lu = LuId::new(format!("lab-{name}")).map_err(|e| e.to_string())?;
        let mut helpers = Vec::new();
        let mut nexuses = Vec::new();
        for (i, devs) in lio.devices.iter().enumerate() {
            let dev = &devs[lu_index];
            let tid = transport_id(fabric, index, i)?;
            let rtpi = relative_target_port(dev)?;
            let config = format!(
                "[[device]]\npath = \"{}\"\nbackend = \"emulate\"\nlu = \"{lu}\"\n\n\
                 [emulate]\nstore = \"{}\"\ninitiator = \"{tid}\"\nrelative_target_port = {rtpi}\n",
                dev.display(),
                store_path.display()
            );
            helpers.push(Helper::start(
                HelperKind::Ours,
                bins,
                &format!("{name}-i{}", i + 1),
                Some(&config),
            )?);
            nexuses.push(Nexus {
                initiator: lab_transport_id(&tid)?,
                relative_target_port: RelativeTargetPort(rtpi),
            });
        }
        Ok((
            Emulation {
                nexuses,
                lu,
                store_path,
                store: None,
            },
            helpers,
        ))
    }

    /// One line per daemon: initiator and port, for the transcript.
    pub fn describe(&self) -> String {
        self.nexuses
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "I{} = {} on relative target port {}",
                    i + 1,
                    n.initiator,
                    n.relative_target_port.0
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// What the emulated LU answers a one-block direct read or write from initiator `i`: the
    /// engine's access check on the store's state (SPC-4 §5.13.1's conflict table), with each
    /// unit attention reported first and then the command retried, as Linux's sd does for a
    /// non-removable disk. The emulate backend itself fences no I/O behind QEMU's
    /// pr-manager-helper (docs/backends.md); this checks the check pr-target will make.
    pub fn io(&mut self, i: usize, write: bool) -> Result<bool, String> {
        if self.store.is_none() {
            self.store = Some(
                SqliteStore::open(&self.store_path)
                    .map_err(|e| format!("{}: {e}", self.store_path.display()))?,
            );
        }
        let store = self.store.as_ref().expect("opened above");
        let mut lu: LogicalUnit = store
            .load(&self.lu)
            .map_err(|e| format!("load {}: {e}", self.lu))?
            .unwrap_or_default();
        let class = if write {
            CommandClass::Write
        } else {
            CommandClass::Read
        };
        let mut changed = false;
        // Bounded: each round clears one unit attention, and the queue is bounded.
        let mut result = None;
        for _ in 0..64 {
            let a = lu.admit(&self.nexuses[i], class);
            if let Some(s) = a.state {
                lu = s;
                changed = true;
            }
            match a.access {
                Access::UnitAttention(_) => continue,
                Access::Allowed => result = Some(true),
                Access::ReservationConflict => result = Some(false),
            }
            break;
        }
        let result = result.ok_or("more than 64 unit attentions in a row")?;
        if changed {
            store
                .import(&self.lu, &lu)
                .map_err(|e| format!("write {}: {e}", self.lu))?;
        }
        Ok(result)
    }
}

/// The daemon's `initiator =` syntax back into a TransportID (the daemon validates it itself;
/// this is only the lab's own record of what it configured).
fn lab_transport_id(tid: &str) -> Result<TransportId, String> {
    if let Some(h) = tid.strip_prefix("sas:0x") {
        let v = u64::from_str_radix(h, 16).map_err(|e| format!("{tid}: {e}"))?;
        return Ok(TransportId::Sas {
            sas_address: v.to_be_bytes(),
        });
    }
    let (name, isid) = match tid.split_once(",i,0x") {
        Some((n, i)) => (n, Some(i.to_string())),
        None => (tid, None),
    };
    Ok(TransportId::Iscsi {
        name: name.to_string(),
        isid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(status: u8, sense: &[u8], data: &[u8]) -> Answer {
        Answer {
            status,
            sense: sense.to_vec(),
            data: data.to_vec(),
        }
    }

    fn fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = key;
        s[7] = 10;
        s[12] = asc;
        s[13] = ascq;
        s
    }

    fn cdb(op: u8, sa: u8) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = op;
        c[1] = sa;
        c
    }

    fn rc_of() -> [u8; 16] {
        cdb(PR_IN, 2)
    }

    #[test]
    fn each_departure_is_exact() {
        let lio_nr = ans(CHECK, &fixed(2, 8, 0), &[]);
        let conflict = ans(CONFLICT, &[], &[]);
        let bad_release = ans(CHECK, &fixed(5, 0x26, 4), &[]);
        // RESERVE (1) unregistered.
        assert!(departure(&cdb(PR_OUT, 1), &lio_nr, &conflict).is_some());
        // Not for REGISTER (0) or PREEMPT (4), nor for another sense.
        assert!(departure(&cdb(PR_OUT, 0), &lio_nr, &conflict).is_none());
        assert!(departure(&cdb(PR_OUT, 4), &lio_nr, &conflict).is_none());
        let other = ans(CHECK, &fixed(2, 4, 0), &[]);
        assert!(departure(&cdb(PR_OUT, 1), &other, &conflict).is_none());
        // RELEASE of the wrong type: only that sense.
        assert!(departure(&cdb(PR_OUT, 2), &conflict, &bad_release).is_some());
        assert!(departure(
            &cdb(PR_OUT, 2),
            &conflict,
            &ans(CHECK, &fixed(5, 0x26, 0), &[])
        )
        .is_none());
        assert!(departure(&cdb(PR_OUT, 1), &conflict, &bad_release).is_none());
        // REPORT CAPABILITIES: only CRH may differ, in that direction (bytes as LIO and the
        // engine answered in the lab).
        let lio_caps = [0, 8, 0x1d, 0x90, 0xea, 1, 0, 0];
        let emu_caps = [0, 8, 0x0d, 0x90, 0xea, 1, 0, 0];
        assert!(departure(&rc_of(), &ans(0, &[], &emu_caps), &ans(0, &[], &lio_caps)).is_none());
        let mut allow = emu_caps;
        allow[3] = 0x80;
        assert!(departure(&rc_of(), &ans(0, &[], &lio_caps), &ans(0, &[], &allow)).is_none());
        let rc = cdb(PR_IN, 2);
        assert!(departure(&rc, &ans(0, &[], &lio_caps), &ans(0, &[], &emu_caps)).is_some());
        let mut other_byte = emu_caps;
        other_byte[4] = 0xe8;
        assert!(departure(&rc, &ans(0, &[], &lio_caps), &ans(0, &[], &other_byte)).is_none());
        assert!(departure(
            &cdb(PR_IN, 0),
            &ans(0, &[], &lio_caps),
            &ans(0, &[], &emu_caps)
        )
        .is_none());
    }

    #[test]
    fn relative_target_port_from_vpd_0x83() {
        // NAA designator (type 3, LU), then relative target port (type 4, assoc 01b) = 2.
        let page = [
            0x00, 0x83, 0x00, 0x14, // header, 20 bytes of descriptors
            0x01, 0x03, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8, // NAA, 8 bytes
            0x61, 0x94, 0x00, 0x04, 0, 0, 0, 2, // SAS, PIV, target port, type 4
        ];
        assert_eq!(rtpi_from_vpd83(&page), Some(2));
        assert_eq!(rtpi_from_vpd83(&page[..16]), None);
        assert_eq!(rtpi_from_vpd83(&[0, 0x80, 0, 0]), None);
    }
}
