//! Property tests of the invariants, over random command sequences from four initiators on two
//! target ports (SPEC_I_PT lists, ALL_TG_PT, APTPL, reserved codes and bad lengths included):
//! at most one reservation; the holder is registered except for the all-registrants types; the
//! generation never decreases; a refused command changes nothing.

mod common;

use common::*;
use pr_engine::{EngineConfig, LogicalUnit, Nexus};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Cmd {
    Out {
        n: u8,
        port: u16,
        sa: u8,
        scope_type: u8,
        key: u64,
        sa_key: u64,
        flags: u8,
        spec: Vec<u8>,
        cut: Option<usize>,
    },
    In {
        n: u8,
        port: u16,
        sa: u8,
        alloc: u16,
    },
}

fn cmd() -> impl Strategy<Value = Cmd> {
    let out = (
        1u8..=4,
        1u16..=2,
        prop_oneof![8 => 0u8..=7, 1 => 8u8..=9],
        prop_oneof![8 => 0u8..=8, 1 => Just(0x15u8)],
        0u64..=3,
        0u64..=3,
        prop_oneof![4 => Just(0u8), 1 => Just(APTPL), 1 => Just(ALL_TG_PT), 1 => Just(SPEC_I_PT)],
        proptest::collection::vec(1u8..=5, 0..3),
        prop_oneof![9 => Just(None), 1 => (0usize..40).prop_map(Some)],
    )
        .prop_map(
            |(n, port, sa, scope_type, key, sa_key, flags, spec, cut)| Cmd::Out {
                n,
                port,
                sa,
                scope_type,
                key,
                sa_key,
                flags,
                spec,
                cut,
            },
        );
    let inp = (
        1u8..=4,
        1u16..=2,
        0u8..=4,
        prop_oneof![Just(1024u16), 0u16..40],
    )
        .prop_map(|(n, port, sa, alloc)| Cmd::In { n, port, sa, alloc });
    prop_oneof![4 => out, 1 => inp]
}

fn bytes(c: &Cmd) -> (Nexus, Vec<u8>, Vec<u8>) {
    match c {
        Cmd::Out {
            n,
            port,
            sa,
            scope_type,
            key,
            sa_key,
            flags,
            spec,
            cut,
        } => {
            let mut p = basic(*key, *sa_key, *flags);
            if *sa == REGISTER_AND_MOVE {
                // REGISTER AND MOVE list (SPC-4 table 186): port at 18, TransportID at 24.
                p[17] = flags & 0x03;
                p[18..20].copy_from_slice(&1u16.to_be_bytes());
                p[20..24].copy_from_slice(&24u32.to_be_bytes());
                p.extend_from_slice(&sas_tid(spec.first().copied().unwrap_or(2)));
            } else if flags & SPEC_I_PT != 0 {
                let ids: Vec<u8> = spec.iter().flat_map(|i| sas_tid(*i)).collect();
                p.extend_from_slice(&(ids.len() as u32).to_be_bytes());
                p.extend_from_slice(&ids);
            }
            if let Some(cut) = cut {
                p.truncate(*cut);
            }
            let cdb = pr_out(*sa, *scope_type, p.len() as u32).to_vec();
            (on_port(*n, *port), cdb, p)
        }
        Cmd::In { n, port, sa, alloc } => (on_port(*n, *port), pr_in(*sa, *alloc).to_vec(), vec![]),
    }
}

fn generation_of(lu: &LogicalUnit) -> u32 {
    lu.generation.0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_random_sequences(cmds in proptest::collection::vec(cmd(), 1..40)) {
        let cfg = EngineConfig { max_registrations: 6, ..EngineConfig::default() };
        let mut lu = LogicalUnit::default();
        for c in &cmds {
            let (n, cdb, p) = bytes(c);
            let before = lu.clone();
            let o = lu.execute(&n, &cdb, &p, &cfg);
            let unit_attention = o.reply.sense.map(|s| s.to_fixed()[2]) == Some(0x06);
            if o.reply.status.0 != 0x00 && !unit_attention {
                // A refused command changes nothing.
                prop_assert!(o.state.is_none(), "{c:?} refused but changed the state");
                prop_assert!(o.tasks_to_abort.is_empty() && o.access_lost.is_empty());
                // And it is refused the same way again: nothing moved underneath.
                prop_assert_eq!(&lu.execute(&n, &cdb, &p, &cfg), &o);
            }
            if unit_attention {
                // Reporting a unit attention only clears it.
                let s = o.state.clone().expect("a reported UA changes the queue");
                prop_assert_eq!(&s.registrants, &before.registrants);
                prop_assert_eq!(&s.reservation, &before.reservation);
                prop_assert_eq!(s.generation, before.generation);
            }
            o.commit(&mut lu);
            prop_assert!(lu.check_invariants().is_ok(), "{:?} after {c:?}", lu.check_invariants());
            // The generation never decreases.
            prop_assert!(generation_of(&lu) >= generation_of(&before));
            // At most one reservation, as READ FULL STATUS shows it: exactly one R_HOLDER
            // descriptor for types 1, 3, 5, 6, every registrant for types 7, 8.
            let fs = lu.execute(&on_port(9, 1), &pr_in(3, 8192), &[], &cfg).reply.data;
            let holders = holder_flags(&fs);
            match &lu.reservation {
                None => prop_assert!(holders.iter().all(|h| !h)),
                Some(r) if r.reservation_type.is_all_registrants() => {
                    prop_assert!(!holders.is_empty() && holders.iter().all(|h| *h))
                }
                Some(_) => prop_assert_eq!(holders.iter().filter(|h| **h).count(), 1),
            }
            prop_assert!(lu.registrants.len() <= cfg.max_registrations);
        }
        // The state a store would write reads back identical, and a power loss keeps the
        // invariants.
        let json = serde_json::to_string(&lu).unwrap();
        prop_assert_eq!(&serde_json::from_str::<LogicalUnit>(&json).unwrap(), &lu);
        let p = lu.power_loss();
        prop_assert!(p.check_invariants().is_ok());
        prop_assert!(p.unit_attentions.is_empty());
        prop_assert_eq!(p.registrants.is_empty(), !lu.ptpl_active || lu.registrants.is_empty());
    }

    #[test]
    fn execute_never_panics_on_arbitrary_bytes(
        cdb in proptest::collection::vec(any::<u8>(), 0..16),
        p in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut lu = LogicalUnit::default();
        apply(&mut lu, &nexus(1), REGISTER, 0, 0, 1, 0);
        let mut cdb = cdb;
        if let Some(b) = cdb.first_mut() {
            *b = if *b & 1 == 0 { 0x5e } else { 0x5f };
        }
        let o = lu.execute(&nexus(1), &cdb, &p, &EngineConfig::default());
        if o.reply.status.0 != 0 {
            prop_assert!(o.state.is_none());
        }
    }
}

/// R_HOLDER of each READ FULL STATUS descriptor (SPC-4 table 171: byte 12 bit 0; the additional
/// descriptor length at bytes 20–23).
fn holder_flags(d: &[u8]) -> Vec<bool> {
    let mut at = 8;
    let mut v = Vec::new();
    while at + 24 <= d.len() {
        v.push(d[at + 12] & 1 == 1);
        let len = u32::from_be_bytes([d[at + 20], d[at + 21], d[at + 22], d[at + 23]]) as usize;
        at += 24 + len;
    }
    v
}
