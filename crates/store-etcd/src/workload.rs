//! Random mixes of persistent-reservation commands for tests and benchmarks (the CDB and
//! parameter-list layouts of SPC-4 §6.15 PERSISTENT RESERVE IN and §6.16 PERSISTENT RESERVE
//! OUT), deterministic from a seed.

use pr_engine::Nexus;
use pr_scsi::transport_id::TransportId;
use pr_scsi::RelativeTargetPort;

/// The I_T nexus of client `i`: a SAS initiator port numbered `i`, on target port 1.
pub fn nexus(i: u16) -> Nexus {
    let [hi, lo] = i.to_be_bytes();
    Nexus {
        initiator: TransportId::Sas {
            sas_address: [0x50, 0x01, 0x40, 0x50, 0, 0, hi, lo],
        },
        relative_target_port: RelativeTargetPort(1),
    }
}

/// The reservation key client `i` registers.
pub fn key(i: u16) -> u64 {
    0x1000 + u64::from(i)
}

/// PERSISTENT RESERVE OUT with service action `sa`, TYPE `t` (LU_SCOPE) and a 24-byte basic
/// parameter list: RESERVATION KEY `key`, SERVICE ACTION RESERVATION KEY `sa_key`.
pub fn pr_out(sa: u8, t: u8, key: u64, sa_key: u64) -> (Vec<u8>, Vec<u8>) {
    let cdb = vec![0x5f, sa & 0x1f, t & 0x0f, 0, 0, 0, 0, 0, 24, 0];
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    (cdb, p)
}

/// PERSISTENT RESERVE IN with service action `sa` and an allocation length of 1024.
pub fn pr_in(sa: u8) -> (Vec<u8>, Vec<u8>) {
    (
        vec![0x5e, sa & 0x1f, 0, 0, 0, 0, 0, 0x04, 0x00, 0],
        Vec::new(),
    )
}

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded with `seed` (0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const TYPES: [u8; 6] = [1, 3, 5, 6, 7, 8];

/// The mix's kinds of command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Registrations, reservations, preemptions, clears and reads, as a cluster does them.
    Cluster,
    /// READ KEYS only.
    ReadKeys,
    /// REGISTER AND IGNORE EXISTING KEY with a new key each time (every one changes the
    /// state).
    Register,
}

/// The next command of client `me` among `clients`, as (CDB, parameter list).
pub fn command(rng: &mut Rng, mix: Mix, me: u16, clients: u16, n: u64) -> (Vec<u8>, Vec<u8>) {
    let k = key(me);
    let victim = key(rng.below(u64::from(clients.max(1))) as u16);
    let t = TYPES[rng.below(TYPES.len() as u64) as usize];
    match mix {
        Mix::ReadKeys => pr_in(0),
        Mix::Register => pr_out(6, 0, 0, (u64::from(me) << 32) | (n + 1)),
        Mix::Cluster => match rng.below(100) {
            0..=14 => pr_out(6, 0, 0, k),
            15..=19 => pr_out(6, 0, 0, 0),
            20..=34 => pr_out(1, t, k, 0),
            35..=44 => pr_out(2, t, k, 0),
            45..=56 => pr_out(4, t, k, victim),
            57..=61 => pr_out(5, t, k, victim),
            62..=65 => pr_out(3, 0, k, 0),
            66..=79 => pr_in(0),
            80..=92 => pr_in(1),
            _ => pr_in(3),
        },
    }
}
