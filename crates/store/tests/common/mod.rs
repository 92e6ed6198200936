//! Helpers shared by the store's tests: I_T nexuses, and CDB / parameter-list bytes written
//! out from the SPC-4 layouts (table 178 for the PR OUT CDB, table 163 for PR IN, table 183
//! for the basic parameter list), never from the crates' own encoders.
#![allow(dead_code)]

use pr_engine::{EngineConfig, Nexus, Outcome};
use pr_scsi::transport_id::TransportId;
use pr_scsi::RelativeTargetPort;
use pr_store::{LuId, Store};

/// SAS initiator `n` (SAS address 50 00 00 00 + n) on target port 1.
pub fn nexus(n: u32) -> Nexus {
    let mut sas_address = [0x50, 0, 0, 0, 0, 0, 0, 0];
    sas_address[4..].copy_from_slice(&n.to_be_bytes());
    Nexus {
        initiator: TransportId::Sas { sas_address },
        relative_target_port: RelativeTargetPort(1),
    }
}

/// PR IN CDB (SPC-4 table 163): 5Eh, service action, allocation length at bytes 7–8.
pub fn pr_in(sa: u8, alloc: u16) -> [u8; 10] {
    let a = alloc.to_be_bytes();
    [0x5e, sa, 0, 0, 0, 0, 0, a[0], a[1], 0]
}

/// PR OUT CDB (SPC-4 table 178): 5Fh, service action, scope/type, list length 24.
pub fn pr_out(sa: u8, scope_type: u8) -> [u8; 10] {
    [0x5f, sa, scope_type, 0, 0, 0, 0, 0, 24, 0]
}

/// Basic parameter list (SPC-4 table 183): key, service action key, flags at byte 20.
pub fn basic(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut b = vec![0u8; 24];
    b[0..8].copy_from_slice(&key.to_be_bytes());
    b[8..16].copy_from_slice(&sa_key.to_be_bytes());
    b[20] = flags;
    b
}

/// SPC-4 table 179 service actions, table 183 flags, table 180 types.
pub const REGISTER: u8 = 0x00;
pub const RESERVE: u8 = 0x01;
pub const REGISTER_IGNORE: u8 = 0x06;
pub const APTPL: u8 = 0x01;
pub const WRITE_EXCLUSIVE: u8 = 0x01;
/// PR IN READ KEYS (SPC-4 table 164).
pub const READ_KEYS: u8 = 0x00;

/// GOOD and RESERVATION CONFLICT (SAM-5 table 39).
pub const GOOD: u8 = 0x00;
pub const RESERVATION_CONFLICT: u8 = 0x18;

/// The engine configuration of the tests: room for many registrations.
pub fn config() -> EngineConfig {
    EngineConfig {
        max_registrations: 4096,
        ..EngineConfig::default()
    }
}

/// The logical unit of the tests.
pub fn lu() -> LuId {
    LuId::new("naa.6001405a1b2c3d4e5f60718293a4b5c6").unwrap()
}

/// REGISTER `key` for `n` (from key 0).
pub fn register(store: &dyn Store, lu: &LuId, n: u32, key: u64, flags: u8) -> Outcome {
    store
        .execute(
            lu,
            &nexus(n),
            &pr_out(REGISTER, 0),
            &basic(0, key, flags),
            &config(),
        )
        .unwrap()
}

/// The status byte of an outcome.
pub fn status(o: &Outcome) -> u8 {
    o.reply.status.0
}
