//! Helpers shared by the engine's tests: I_T nexuses and CDB / parameter-list bytes written out
//! from the SPC-4 layouts (table 178 for the PR OUT CDB, table 163 for PR IN, table 183 for the
//! basic parameter list), never from the crate's own encoders.
#![allow(dead_code)]

use pr_engine::{EngineConfig, LogicalUnit, Nexus, Outcome, Reply};
use pr_scsi::transport_id::TransportId;
use pr_scsi::RelativeTargetPort;

/// SAS initiator `n` (SAS address 50:00:00:00:00:00:00:0n) on target port 1.
pub fn nexus(n: u8) -> Nexus {
    on_port(n, 1)
}

/// SAS initiator `n` on target port `port`.
pub fn on_port(n: u8, port: u16) -> Nexus {
    Nexus {
        initiator: TransportId::Sas {
            sas_address: [0x50, 0, 0, 0, 0, 0, 0, n],
        },
        relative_target_port: RelativeTargetPort(port),
    }
}

/// SAS TransportID bytes of initiator `n` (SPC-4 table 376: protocol 6h, address at 4..12).
pub fn sas_tid(n: u8) -> Vec<u8> {
    let mut b = vec![0u8; 24];
    b[0] = 0x06;
    b[4..12].copy_from_slice(&[0x50, 0, 0, 0, 0, 0, 0, n]);
    b
}

/// PR IN CDB (SPC-4 table 163): 5Eh, service action, allocation length at bytes 7–8.
pub fn pr_in(sa: u8, alloc: u16) -> [u8; 10] {
    let a = alloc.to_be_bytes();
    [0x5e, sa, 0, 0, 0, 0, 0, a[0], a[1], 0]
}

/// PR OUT CDB (SPC-4 table 178): 5Fh, service action, scope/type, list length at bytes 5–8.
pub fn pr_out(sa: u8, scope_type: u8, len: u32) -> [u8; 10] {
    let l = len.to_be_bytes();
    [0x5f, sa, scope_type, 0, 0, l[0], l[1], l[2], l[3], 0]
}

/// Basic parameter list (SPC-4 table 183): key, service action key, flags at byte 20.
pub fn basic(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut b = vec![0u8; 24];
    b[0..8].copy_from_slice(&key.to_be_bytes());
    b[8..16].copy_from_slice(&sa_key.to_be_bytes());
    b[20] = flags;
    b
}

/// SPC-4 service action codes (table 179) and flag bits (table 183).
pub const REGISTER: u8 = 0x00;
pub const RESERVE: u8 = 0x01;
pub const RELEASE: u8 = 0x02;
pub const CLEAR: u8 = 0x03;
pub const PREEMPT: u8 = 0x04;
pub const PREEMPT_AND_ABORT: u8 = 0x05;
pub const REGISTER_IGNORE: u8 = 0x06;
pub const REGISTER_AND_MOVE: u8 = 0x07;
pub const SPEC_I_PT: u8 = 0x08;
pub const ALL_TG_PT: u8 = 0x04;
pub const APTPL: u8 = 0x01;

/// Runs a PR OUT with a basic parameter list.
#[allow(clippy::too_many_arguments)]
pub fn out(
    lu: &LogicalUnit,
    n: &Nexus,
    sa: u8,
    scope_type: u8,
    key: u64,
    sa_key: u64,
    flags: u8,
    cfg: &EngineConfig,
) -> Outcome {
    lu.execute(
        n,
        &pr_out(sa, scope_type, 24),
        &basic(key, sa_key, flags),
        cfg,
    )
}

/// Runs a PR OUT and commits its state.
pub fn apply(
    lu: &mut LogicalUnit,
    n: &Nexus,
    sa: u8,
    scope_type: u8,
    key: u64,
    sa_key: u64,
    flags: u8,
) -> Reply {
    let cfg = EngineConfig::default();
    out(lu, n, sa, scope_type, key, sa_key, flags, &cfg).commit(lu)
}

/// (status, sense key, ASC, ASCQ) of a reply; sense fields are 0 without sense.
pub fn code(r: &Reply) -> (u8, u8, u8, u8) {
    match &r.sense {
        None => (r.status.0, 0, 0, 0),
        Some(s) => {
            let b = s.to_fixed();
            (r.status.0, b[2], b[12], b[13])
        }
    }
}

/// Bytes 15–17 of the fixed sense data (the sense-key specific field).
pub fn sks(r: &Reply) -> [u8; 3] {
    let b = r.sense.expect("sense").to_fixed();
    [b[15], b[16], b[17]]
}

/// The reply to READ KEYS (allocation length 1024), as sent.
pub fn read_keys(lu: &mut LogicalUnit, n: &Nexus) -> Reply {
    lu.execute(n, &pr_in(0, 1024), &[], &EngineConfig::default())
        .commit(lu)
}

pub const GOOD: (u8, u8, u8, u8) = (0x00, 0, 0, 0);
pub const CONFLICT: (u8, u8, u8, u8) = (0x18, 0, 0, 0);
