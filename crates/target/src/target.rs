//! One target port as an initiator sees it through one socket: its I_T nexus and the LUNs it
//! maps to logical units. REPORT LUNS and commands to unmapped LUNs are answered here.

use std::collections::BTreeMap;
use std::sync::Arc;

use pr_engine::{Nexus, Reply, SenseData};
use pr_scsi::SenseCode;

use crate::lu::{FencedLu, SlotId};
use crate::scsi::cdb::Command;
use crate::scsi::{report_luns, BlockDevice};

/// One socket's view: the nexus and its LUN map.
#[derive(Debug)]
pub struct Target<D> {
    nexus: Nexus,
    luns: BTreeMap<u16, (Arc<FencedLu<D>>, SlotId)>,
}

impl<D: BlockDevice> Target<D> {
    /// A target for `nexus` with `luns` (each LU with the slot it attached the nexus to).
    pub fn new(nexus: Nexus, luns: BTreeMap<u16, (Arc<FencedLu<D>>, SlotId)>) -> Self {
        Target { nexus, luns }
    }

    /// The I_T nexus of this socket.
    pub fn nexus(&self) -> &Nexus {
        &self.nexus
    }

    /// Whether `lun` is mapped.
    pub fn has_lun(&self, lun: u16) -> bool {
        self.luns.contains_key(&lun)
    }

    /// The logical units this target maps.
    pub fn units(&self) -> impl Iterator<Item = &Arc<FencedLu<D>>> {
        self.luns.values().map(|(lu, _)| lu)
    }

    /// Executes `cdb` for `lun`. `data_out(n, scratch)` puts up to `n` bytes of the
    /// initiator's data-out at the start of `scratch` and returns how many; it is called
    /// once, after the CDB was checked, with the length the command needs. `scratch` is the
    /// caller's buffer, reused from command to command, so that a 1 MiB WRITE does not
    /// allocate and zero-fill a new one each time.
    pub fn execute(
        &self,
        lun: u16,
        cdb: &[u8],
        scratch: &mut Vec<u8>,
        data_out: &mut dyn FnMut(usize, &mut Vec<u8>) -> usize,
    ) -> Reply {
        let parsed = Command::parse(cdb);
        if let Ok((Command::ReportLuns { allocation }, _)) = parsed {
            let luns: Vec<u16> = self.luns.keys().copied().collect();
            return Reply::good(report_luns(&luns, allocation));
        }
        let Some((lu, slot)) = self.luns.get(&lun) else {
            return match parsed {
                // SPC-4 standard INQUIRY data, PERIPHERAL QUALIFIER 011b and DEVICE TYPE 1Fh:
                // no logical unit here.
                Ok((
                    Command::Inquiry {
                        vpd: None,
                        allocation,
                    },
                    _,
                )) => {
                    let mut v = vec![0u8; 36];
                    v[0] = 0x7f;
                    v[2] = 0x06;
                    v[3] = 0x12;
                    v[4] = 31;
                    v.truncate(allocation.into());
                    Reply::good(v)
                }
                Err(sense) => Reply::check(sense),
                _ => Reply::check(SenseData::new(SenseCode::LOGICAL_UNIT_NOT_SUPPORTED)),
            };
        };
        let prepared = match lu.prepare(cdb) {
            Ok(p) => p,
            Err(reply) => return reply,
        };
        let filled = if prepared.data_out_len > 0 {
            data_out(prepared.data_out_len, scratch).min(scratch.len())
        } else {
            0
        };
        lu.run(*slot, cdb, &prepared, &scratch[..filled])
    }
}
