//! `pr-lab run --against emulate`: a scenario's commands go, for every initiator, to a daemon of
//! its own with the `emulate` backend, configured with that initiator's LIO TransportID and
//! relative target port, all on one SQLite store and one emulated logical unit; LIO itself
//! answers the same commands on another LU (sg_raw). The replies must be byte-identical except
//! for the departures listed below, each one a clause of SPC-4 where LIO departs from it and
//! the engine follows it (docs/emulation.md).

use std::path::PathBuf;

use pr_engine::{Access, CommandClass, LogicalUnit, Nexus};
use pr_scsi::transport_id::TransportId;
use pr_store::{LuId, SqliteStore, Store};

use crate::helpers::{Binaries, Helper};
use crate::lio::Lio;
use crate::run::Answer;
use crate::scenario::HelperKind;

/// Where the LIO reference and the emulated LU are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Against {
    /// Our helper on LIO (passthrough), as the scenario says.
    Lio,
    /// The emulate backend, one daemon per initiator, against LIO's own answers.
    Emulate,
    /// pr-target's disks in the guest, one socket per initiator, against LIO's own answers.
    Target,
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
        clause: "SPC-4 §5.13.9 Reserving, §5.13.11.2 Releasing/Clearing, §5.13.8 Registering \
                 and moving the reservation: RESERVATION CONFLICT (LIO: CHECK CONDITION 02/08/00 \
                 LOGICAL UNIT COMMUNICATION FAILURE)",
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
    Departure {
        name: "field pointer in ILLEGAL REQUEST sense data",
        clause: "SPC-4 §4.5.2.4.2 Field pointer sense key specific data: the engine sets SKSV \
                 and points at the CDB or parameter list byte and bit in error (C/D, BPV); \
                 LIO sets no sense key specific data. Sense key, ASC and ASCQ identical",
        matches: |_, lio, emu| {
            // Fixed format (response code 70h): SKSV is byte 15 bit 7, the field pointer
            // bytes 15-17 (SPC-4 table "Fixed format sense data").
            let pad = |s: &[u8]| {
                let mut v = s.to_vec();
                v.resize(v.len().max(18), 0);
                v
            };
            let (l, e) = (pad(&lio.sense), pad(&emu.sense));
            let without_sks = |v: &[u8]| {
                let mut v = v.to_vec();
                v[15..18].fill(0);
                let end = v.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
                v.truncate(end);
                v
            };
            lio.status == CHECK
                && emu.status == CHECK
                && l[0] & 0x7f == 0x70
                && e[0] & 0x7f == 0x70
                && l[2] & 0x0f == 0x05
                && l[15..18] == [0, 0, 0]
                && e[15] & 0x80 != 0
                && without_sks(&l) == without_sks(&e)
                && lio.data.is_empty()
                && emu.data.is_empty()
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

/// A TransportID in the daemon's `initiator =` syntax (crates/backend/src/emulate/identity.rs).
fn config_syntax(t: &TransportId) -> Result<String, String> {
    let hex = |b: &[u8; 8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    Ok(match t {
        TransportId::Sas { sas_address } => format!("sas:0x{}", hex(sas_address)),
        TransportId::Fc { n_port_name } => format!("fc:0x{}", hex(n_port_name)),
        TransportId::Iscsi { name, isid: None } => name.clone(),
        TransportId::Iscsi {
            name,
            isid: Some(i),
        } => format!("{name},i,0x{}", i.to_ascii_lowercase()),
        other => {
            return Err(format!(
                "LIO reported a TransportID we cannot configure: {other}"
            ))
        }
    })
}

/// Each initiator's I_T nexus as LIO itself names it: every initiator registers a key of its
/// own on the scratch LU `scratch` (straight on the device, sg_raw), and LIO's READ FULL
/// STATUS gives each key's TransportID and relative target port (SPC-4 §6.14.5). So the
/// emulation sees the very nexuses LIO sees (over iSCSI: format 01b with the session's ISID).
pub(crate) fn lio_nexuses(lio: &Lio, scratch: usize) -> Result<Vec<Nexus>, String> {
    let key = |i: usize| 0x5c5c_0000_0000_0000u64 + i as u64 + 1;
    for (i, devs) in lio.devices.iter().enumerate() {
        let mut cdb = [0u8; 16];
        cdb[0] = PR_OUT;
        cdb[8] = 24; // PARAMETER LIST LENGTH (bytes 5-8): REGISTER
        let mut data = vec![0u8; 24];
        data[8..16].copy_from_slice(&key(i).to_be_bytes());
        let a = crate::run::via_sg_raw(&devs[scratch], &pr_ctl::Operation::Raw { cdb, data })?;
        if a.status != GOOD {
            return Err(format!(
                "I{}: REGISTER on the scratch LU {}: {}",
                i + 1,
                devs[scratch].display(),
                a.describe()
            ));
        }
    }
    let mut cdb = [0u8; 16];
    cdb[0] = PR_IN;
    cdb[1] = 3; // READ FULL STATUS
    cdb[7] = 0x10; // ALLOCATION LENGTH 4096
    let dev = &lio.devices[0][scratch];
    let a = crate::run::via_sg_raw(
        dev,
        &pr_ctl::Operation::Raw {
            cdb,
            data: Vec::new(),
        },
    )?;
    let full = pr_scsi::prin::FullStatus::decode(&a.data)
        .map_err(|e| format!("READ FULL STATUS of {}: {e}", dev.display()))?;
    (0..lio.devices.len())
        .map(|i| {
            full.descriptors
                .iter()
                .find(|d| d.key.0 == key(i))
                .map(|d| Nexus {
                    // As the daemon will hold it: an ISID in lower case (config_syntax).
                    initiator: match &d.transport_id {
                        TransportId::Iscsi { name, isid } => TransportId::Iscsi {
                            name: name.clone(),
                            isid: isid.as_ref().map(|i| i.to_ascii_lowercase()),
                        },
                        other => other.clone(),
                    },
                    relative_target_port: d.relative_target_port,
                })
                .ok_or_else(|| {
                    format!(
                        "LIO's READ FULL STATUS has no registration of I{}: {}",
                        i + 1,
                        a.describe()
                    )
                })
        })
        .collect()
}

impl Emulation {
    /// Starts one emulate daemon per initiator on a fresh store, each with its initiator's
    /// device of LU `lu_index` mapped to the emulated LU named after the scenario, and the
    /// nexus LIO names on the scratch LU `scratch`.
    pub fn start(
        name: &str,
        lio: &Lio,
        lu_index: usize,
        scratch: usize,
        bins: &Binaries,
    ) -> Result<(Emulation, Vec<Helper>), String> {
        // A directory of its own that does not exist yet: the daemon creates it for nobody.
        let dir = PathBuf::from(format!("/run/lab/emulate-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let store_path = dir.join("store.db");
        let lu = LuId::new(format!("lab-{name}")).map_err(|e| e.to_string())?;
        let nexuses = lio_nexuses(lio, scratch)?;
        let mut helpers = Vec::new();
        for (i, (devs, nexus)) in lio.devices.iter().zip(&nexuses).enumerate() {
            let config = format!(
                "[[device]]\npath = \"{}\"\nbackend = \"emulate\"\nlu = \"{lu}\"\n\n\
                 [emulate]\nstore = \"{}\"\ninitiator = \"{}\"\nrelative_target_port = {}\n",
                devs[lu_index].display(),
                store_path.display(),
                config_syntax(&nexus.initiator)?,
                nexus.relative_target_port.0
            );
            helpers.push(Helper::start(
                HelperKind::Ours,
                bins,
                &format!("{name}-i{}", i + 1),
                Some(&config),
            )?);
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
        // The daemons name the LU by its VPD page 0x83 identifier when the LIO LU has one
        // (docs/backends.md), else by the configured `lu`: whichever the store holds, as
        // long as it holds one LU.
        if store
            .load(&self.lu)
            .map_err(|e| format!("load {}: {e}", self.lu))?
            .is_none()
        {
            let lus = store
                .list()
                .map_err(|e| format!("{}: {e}", self.store_path.display()))?;
            match lus.as_slice() {
                [] => {}
                [only] => self.lu = only.clone(),
                many => {
                    return Err(format!(
                        "{} holds {} logical units ({}), expected the one emulated LU",
                        self.store_path.display(),
                        many.len(),
                        many.iter()
                            .map(|l| l.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
        }
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
    fn field_pointer_departure_is_only_the_sense_key_specific_bytes() {
        // LIO: 05/24/00 without SKS; the engine: the same with SKSV, C/D=1, byte 1 bit 4.
        let lio = fixed(5, 0x24, 0);
        let mut emu = fixed(5, 0x24, 0);
        emu[15] = 0x80 | 0x40 | 0x08 | 4;
        emu[17] = 1;
        let c = cdb(PR_IN, 9);
        let a = |s: &[u8]| ans(CHECK, s, &[]);
        assert_eq!(
            departure(&c, &a(&lio), &a(&emu)).map(|d| d.name),
            Some("field pointer in ILLEGAL REQUEST sense data")
        );
        // Another ASC, or LIO with a field pointer of its own, is no departure.
        let mut other = emu.clone();
        other[12] = 0x26;
        assert!(departure(&c, &a(&lio), &a(&other)).is_none());
        assert!(departure(&c, &a(&emu), &a(&lio)).is_none());
        // Trimmed as the runner trims (trailing zeros removed).
        assert!(departure(&c, &a(&lio[..13]), &a(&emu)).is_some());
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
}
