//! Seeded random PR commands for the random-sequence differential (`random SEED STEPS`).
//!
//! The same seed always gives the same sequence, so a failure is replayed by running the
//! scenario again with the seed it printed. Commands are mostly well formed, with a share of
//! the malformed ones a guest could send: reserved service actions and types, wrong scopes,
//! parameter lists of the wrong length, SPEC_I_PT lists, every allocation length up to 8192.
//!
//! REGISTER AND MOVE and SPEC_I_PT name only initiators that the target does not know (or
//! malformed TransportIDs). With a known one, LIO creates the new registration through
//! `core_get_se_deve_from_rtpi`, which matches the node ACL's LUNs by relative target port
//! alone, not by device: with two LUs behind one target port (as the differential needs) the
//! registration can be attached to the other LU's entry, and the unit attentions meant for it
//! then go to the other LU. Replies would differ because of LIO, not because of a helper
//! (seen with seed 1: a CLEAR's RESERVATIONS PREEMPTED missing on one LU). The success paths of
//! both are in `every-action.steps`, whose fixed sequence does not depend on which LU's entry
//! LIO attaches the new registration to.

use pr_ctl::Operation;
use pr_scsi::transport_id::TransportId;
use pr_scsi::{PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT};

use crate::scenario::Fabric;

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014):
/// small, fast, and every seed gives a full-period, well-mixed sequence.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(1, 100) <= percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() as u64 - 1) as usize]
    }
}

/// What the generator needs to know about the LU's initiators.
#[derive(Debug, Clone, Copy)]
pub struct Initiators {
    /// How many nexuses send commands.
    pub count: usize,
    pub fabric: Fabric,
}

/// A well-formed TransportID of the fabric's protocol naming an initiator the target does not
/// know (see the module's documentation for why no known one).
fn absent_initiator(rng: &mut Rng, fabric: Fabric) -> Vec<u8> {
    let n = rng.range(0, 3);
    match fabric {
        Fabric::Loopback => TransportId::Sas {
            sas_address: (0x5001_4050_0000_0bf0 + n).to_be_bytes(),
        },
        Fabric::Iscsi => TransportId::Iscsi {
            name: format!("iqn.2026-11.org.pr-helper.lab:absent{n}"),
            isid: None,
        },
    }
    .to_bytes()
}

/// The key initiator `i` usually registers with.
fn own_key(i: usize) -> u64 {
    0x1111 * (i as u64 + 1)
}

fn key(rng: &mut Rng, i: usize, count: usize) -> u64 {
    match rng.range(0, 9) {
        0..=4 => own_key(i),
        5 | 6 => 0,
        7 => 0xbad0_0000_0000_0bad,
        _ => own_key(rng.range(0, count as u64 - 1) as usize),
    }
}

/// One random command: the initiator that sends it and the command.
pub fn step(rng: &mut Rng, who: Initiators) -> (usize, Operation) {
    let i = rng.range(0, who.count as u64 - 1) as usize;
    let mut cdb = [0u8; 16];
    if rng.chance(40) {
        cdb[0] = PERSISTENT_RESERVE_IN;
        cdb[1] = if rng.chance(95) {
            rng.range(0, 3) as u8
        } else {
            rng.range(4, 31) as u8
        };
        let alloc = match rng.range(0, 3) {
            0 | 1 => rng.range(1, 300),
            2 => rng.range(0, 8192),
            _ => rng.pick(&[0, 8, 24, 40, 8192]),
        } as u16;
        cdb[7..9].copy_from_slice(&alloc.to_be_bytes());
        return (
            i,
            Operation::Raw {
                cdb,
                data: Vec::new(),
            },
        );
    }
    // PR OUT. PREEMPT AND ABORT (5) deadlocks LIO over tcm_loop (lab/README.md): iSCSI only.
    let mut actions = vec![0u8, 0, 0, 1, 1, 2, 3, 4, 6, 6, 7];
    if who.fabric == Fabric::Iscsi {
        actions.extend([5, 5]);
    }
    let sa = if rng.chance(2) {
        rng.range(8, 31) as u8
    } else {
        rng.pick(&actions)
    };
    let rtype = if rng.chance(85) {
        rng.pick(&[1u8, 3, 5, 6, 7, 8])
    } else {
        rng.range(0, 15) as u8
    };
    let scope = if rng.chance(95) {
        0
    } else {
        rng.range(1, 15) as u8
    };
    cdb[0] = PERSISTENT_RESERVE_OUT;
    cdb[1] = sa;
    cdb[2] = scope << 4 | rtype;
    let mut data = Vec::new();
    data.extend(key(rng, i, who.count).to_be_bytes());
    data.extend(key(rng, i, who.count).to_be_bytes());
    if sa == 7 {
        // REGISTER AND MOVE: reserved, UNREG/APTPL, relative target port, TransportID.
        data.push(0);
        data.push(rng.range(0, 3) as u8);
        data.extend((rng.range(0, 3) as u16).to_be_bytes());
        let tid = if rng.chance(90) {
            absent_initiator(rng, who.fabric)
        } else {
            (0..rng.range(0, 40))
                .map(|_| rng.next_u64() as u8)
                .collect()
        };
        data.extend((tid.len() as u32).to_be_bytes());
        data.extend(tid);
    } else {
        data.extend([0; 4]);
        let spec_i_pt = rng.chance(5);
        let mut flags = 0u8;
        if spec_i_pt {
            flags |= 0x08;
        }
        if rng.chance(10) {
            flags |= 0x04;
        }
        if rng.chance(20) {
            flags |= 0x01;
        }
        data.extend([flags, 0, 0, 0]);
        if spec_i_pt {
            let mut list = Vec::new();
            for _ in 0..rng.range(0, 2) {
                list.extend(absent_initiator(rng, who.fabric));
            }
            if rng.chance(20) {
                list.extend((0..rng.range(1, 30)).map(|_| rng.next_u64() as u8));
            }
            data.extend((list.len() as u32).to_be_bytes());
            data.extend(list);
        }
    }
    if rng.chance(8) {
        data.resize(rng.range(0, 40) as usize, 0);
    }
    cdb[5..9].copy_from_slice(&(data.len() as u32).to_be_bytes());
    (i, Operation::Raw { cdb, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Initiators {
        Initiators {
            count: 3,
            fabric: Fabric::Loopback,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let seq = |seed| {
            let mut rng = Rng::new(seed);
            (0..200)
                .map(|_| {
                    let (i, op) = step(&mut rng, who());
                    (i, op.request())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(seq(7), seq(7));
        assert_ne!(seq(7), seq(8));
    }

    #[test]
    fn commands_are_consistent_and_cover_what_they_should() {
        let mut rng = Rng::new(1);
        let (mut service_actions_in, mut service_actions_out) = ([0; 32], [0; 32]);
        let mut senders = [0; 3];
        for _ in 0..5000 {
            let (i, op) = step(&mut rng, who());
            senders[i] += 1;
            let (cdb, data) = op.request();
            match cdb[0] {
                0x5e => {
                    service_actions_in[usize::from(cdb[1])] += 1;
                    assert!(u16::from_be_bytes([cdb[7], cdb[8]]) <= 8192);
                }
                0x5f => {
                    service_actions_out[usize::from(cdb[1])] += 1;
                    // The parameter list is exactly as long as the CDB says.
                    let len = u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]);
                    assert_eq!(len as usize, data.len());
                }
                other => panic!("opcode {other:#x}"),
            }
        }
        assert!(senders.iter().all(|n| *n > 1000), "{senders:?}");
        assert!(service_actions_in[..4].iter().all(|n| *n > 300));
        for sa in [0, 1, 2, 3, 4, 6, 7] {
            assert!(service_actions_out[sa] > 50, "PR OUT {sa}");
        }
        // No PREEMPT AND ABORT over tcm_loop.
        assert_eq!(service_actions_out[5], 0);
    }
}
