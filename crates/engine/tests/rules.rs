//! One test per SPC-4 rule, driving the engine with raw CDBs and parameter lists. Expected bytes
//! are written literally, with the table or clause they come from.

mod common;

use common::*;
use pr_engine::{
    Access, CommandClass, EngineConfig, LogicalUnit, Reply, ReservationHolder, UnitAttention,
};

fn registered(keys: &[(u8, u64)]) -> LogicalUnit {
    let mut lu = LogicalUnit::default();
    for &(n, k) in keys {
        assert_eq!(code(&apply(&mut lu, &nexus(n), REGISTER, 0, 0, k, 0)), GOOD);
    }
    lu
}

fn reserved(keys: &[(u8, u64)], holder: u8, t: u8) -> LogicalUnit {
    let mut lu = registered(keys);
    let k = keys.iter().find(|(n, _)| *n == holder).unwrap().1;
    assert_eq!(
        code(&apply(&mut lu, &nexus(holder), RESERVE, t, k, 0, 0)),
        GOOD
    );
    lu
}

/// Asserts a refusal left the state alone.
fn refused(lu: &LogicalUnit, o: &pr_engine::Outcome) {
    assert!(!o.changed(), "a refused command changed the state");
    assert!(o.state.is_none());
    let _ = lu;
}

fn generation(lu: &mut LogicalUnit) -> u32 {
    let d = read_keys(lu, &nexus(99)).data;
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

const CFG: EngineConfig = EngineConfig {
    max_registrations: 128,
    unit_attention_depth: 8,
    ptpl_capable: true,
    spec_i_pt_capable: true,
    all_tg_pt_capable: true,
};

// ---- REGISTER (SPC-4 §5.13.7, Registering) ----

#[test]
fn register_then_read_keys_spc4_table_166() {
    let mut lu = LogicalUnit::default();
    assert_eq!(
        code(&apply(&mut lu, &nexus(1), REGISTER, 0, 0, 0x1111, 0)),
        GOOD
    );
    // Generation 1, additional length 8, one key.
    assert_eq!(
        read_keys(&mut lu, &nexus(1)).data,
        [0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x11, 0x11]
    );
}

#[test]
fn register_unregistered_with_nonzero_reservation_key_conflicts() {
    let lu = LogicalUnit::default();
    let o = out(&lu, &nexus(1), REGISTER, 0, 0x5, 0x1111, 0, &CFG);
    assert_eq!(code(&o.reply), CONFLICT);
    refused(&lu, &o);
}

#[test]
fn register_unregistered_with_zero_service_action_key_does_nothing() {
    let lu = LogicalUnit::default();
    let o = out(&lu, &nexus(1), REGISTER, 0, 0, 0, 0, &CFG);
    assert_eq!(code(&o.reply), GOOD);
    assert!(!o.changed());
}

#[test]
fn register_registered_with_wrong_key_conflicts() {
    let lu = registered(&[(1, 0x1111)]);
    let o = out(&lu, &nexus(1), REGISTER, 0, 0x2222, 0x3333, 0, &CFG);
    assert_eq!(code(&o.reply), CONFLICT);
    refused(&lu, &o);
}

#[test]
fn register_changes_key_and_generation() {
    let mut lu = registered(&[(1, 0x1111)]);
    assert_eq!(
        code(&apply(&mut lu, &nexus(1), REGISTER, 0, 0x1111, 0x2222, 0)),
        GOOD
    );
    assert_eq!(
        read_keys(&mut lu, &nexus(1)).data,
        [0, 0, 0, 2, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x22, 0x22]
    );
}

#[test]
fn unregister_removes_key_and_increments_generation() {
    let mut lu = registered(&[(1, 0x1111), (2, 0x2222)]);
    assert_eq!(
        code(&apply(&mut lu, &nexus(1), REGISTER, 0, 0x1111, 0, 0)),
        GOOD
    );
    assert_eq!(
        read_keys(&mut lu, &nexus(1)).data,
        [0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x22, 0x22]
    );
}

#[test]
fn unregistering_the_holder_of_a_registrants_only_type_releases_with_ua() {
    // SPC-4 §5.13.7 (unregistering the holder): RESERVATIONS RELEASED (2Ah/04h) to the other registrants for types 5, 6.
    for t in [5u8, 6] {
        let mut lu = reserved(&[(1, 0x1), (2, 0x2)], 1, t);
        apply(&mut lu, &nexus(1), REGISTER, 0, 0x1, 0, 0);
        assert!(lu.reservation.is_none());
        assert_eq!(
            code(&read_keys(&mut lu, &nexus(2))),
            (0x02, 0x06, 0x2a, 0x04)
        );
        assert_eq!(code(&read_keys(&mut lu, &nexus(2))), GOOD);
    }
}

#[test]
fn unregistering_the_holder_of_we_or_ea_releases_without_ua() {
    for t in [1u8, 3] {
        let mut lu = reserved(&[(1, 0x1), (2, 0x2)], 1, t);
        apply(&mut lu, &nexus(1), REGISTER, 0, 0x1, 0, 0);
        assert!(lu.reservation.is_none());
        assert_eq!(code(&read_keys(&mut lu, &nexus(2))), GOOD);
    }
}

#[test]
fn all_registrants_reservation_ends_with_its_last_registrant() {
    let mut lu = reserved(&[(1, 0x1), (2, 0x2)], 1, 7);
    apply(&mut lu, &nexus(1), REGISTER, 0, 0x1, 0, 0);
    assert!(
        lu.reservation.is_some(),
        "another registrant still holds it"
    );
    apply(&mut lu, &nexus(2), REGISTER, 0, 0x2, 0, 0);
    assert!(lu.reservation.is_none());
}

#[test]
fn register_and_ignore_existing_key_ignores_the_key_field() {
    let mut lu = registered(&[(1, 0x1111)]);
    assert_eq!(
        code(&apply(
            &mut lu,
            &nexus(1),
            REGISTER_IGNORE,
            0,
            0x9999,
            0x4444,
            0
        )),
        GOOD
    );
    assert_eq!(lu.registrants[0].key.0, 0x4444);
    // An unregistered nexus may give any key field too.
    assert_eq!(
        code(&apply(
            &mut lu,
            &nexus(2),
            REGISTER_IGNORE,
            0,
            0x7777,
            0x5555,
            0
        )),
        GOOD
    );
    assert_eq!(lu.registrants.len(), 2);
}

#[test]
fn register_and_ignore_with_spec_i_pt_is_invalid_field_byte_20_bit_3() {
    let lu = LogicalUnit::default();
    let mut p = basic(0, 0x1, SPEC_I_PT);
    p.extend_from_slice(&[0, 0, 0, 0]);
    let o = lu.execute(&nexus(1), &pr_out(REGISTER_IGNORE, 0, 28), &p, &CFG);
    // ILLEGAL REQUEST / 26h / 00h; SKSV|BPV, bit 3, byte 20 (SPC-4 §4.5.2.4.2).
    assert_eq!(code(&o.reply), (0x02, 0x05, 0x26, 0x00));
    assert_eq!(sks(&o.reply), [0x8b, 0x00, 0x14]);
    refused(&lu, &o);
}

#[test]
fn parameter_list_length_other_than_24_is_a_length_error() {
    let lu = LogicalUnit::default();
    for len in [0usize, 23, 25] {
        let o = lu.execute(
            &nexus(1),
            &pr_out(REGISTER, 0, len as u32),
            &vec![0; len],
            &CFG,
        );
        assert_eq!(code(&o.reply), (0x02, 0x05, 0x1a, 0x00), "length {len}");
    }
    // Fewer bytes than the CDB announces.
    let o = lu.execute(&nexus(1), &pr_out(REGISTER, 0, 24), &[0; 10], &CFG);
    assert_eq!(code(&o.reply), (0x02, 0x05, 0x1a, 0x00));
}

#[test]
fn aptpl_sets_ptpl_a_and_is_refused_without_ptpl_capability() {
    let mut lu = LogicalUnit::default();
    apply(&mut lu, &nexus(1), REGISTER, 0, 0, 0x1, APTPL);
    let caps = lu.execute(&nexus(1), &pr_in(2, 8), &[], &CFG).reply.data;
    assert_eq!(
        caps[3] & 0x01,
        0x01,
        "PTPL_A (SPC-4 table 169 byte 3 bit 0)"
    );
    let cfg = EngineConfig {
        ptpl_capable: false,
        ..CFG
    };
    let o = out(
        &LogicalUnit::default(),
        &nexus(1),
        REGISTER,
        0,
        0,
        0x1,
        APTPL,
        &cfg,
    );
    assert_eq!(code(&o.reply), (0x02, 0x05, 0x26, 0x00));
    assert_eq!(sks(&o.reply), [0x88, 0x00, 0x14]);
}

#[test]
fn last_aptpl_value_governs_the_logical_unit() {
    // SPC-4 §5.13.5: the most recent APTPL value decides for all registrations.
    let mut lu = LogicalUnit::default();
    apply(&mut lu, &nexus(1), REGISTER, 0, 0, 0x1, APTPL);
    apply(&mut lu, &nexus(2), REGISTER, 0, 0, 0x2, 0);
    assert!(!lu.ptpl_active);
    assert!(lu.power_loss().registrants.is_empty());
}

// ---- ALL_TG_PT ----

#[test]
fn all_tg_pt_registers_the_initiator_on_every_target_port() {
    let mut lu = LogicalUnit::default();
    apply(&mut lu, &on_port(1, 1), REGISTER, 0, 0, 0x1, ALL_TG_PT);
    // The same initiator through port 2 is registered: RESERVE with the key succeeds.
    assert_eq!(
        code(&apply(&mut lu, &on_port(1, 2), RESERVE, 1, 0x1, 0, 0)),
        GOOD
    );
    assert!(lu.is_holder(&on_port(1, 1)));
    // Another initiator on port 2 is not.
    assert!(lu.registration(&on_port(2, 2)).is_none());
    // READ FULL STATUS: ALL_TG_PT bit (byte 12 bit 1) and R_HOLDER (bit 0), SPC-4 table 171.
    let d = lu
        .execute(&on_port(1, 1), &pr_in(3, 1024), &[], &CFG)
        .reply
        .data;
    assert_eq!(d[8 + 12], 0x03);
}

#[test]
fn all_tg_pt_refused_when_not_capable() {
    let cfg = EngineConfig {
        all_tg_pt_capable: false,
        ..CFG
    };
    let o = out(
        &LogicalUnit::default(),
        &nexus(1),
        REGISTER,
        0,
        0,
        0x1,
        ALL_TG_PT,
        &cfg,
    );
    assert_eq!(code(&o.reply), (0x02, 0x05, 0x26, 0x00));
    assert_eq!(sks(&o.reply), [0x8a, 0x00, 0x14]);
}

// ---- SPEC_I_PT (SPC-4 §6.16.3) ----

fn spec_list(ids: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = ids.concat();
    let mut p = basic(0, 0xabc, SPEC_I_PT);
    p.extend_from_slice(&(body.len() as u32).to_be_bytes());
    p.extend_from_slice(&body);
    p
}

fn fc_tid(last: u8) -> Vec<u8> {
    // SPC-4 §7.6.4, Fibre Channel TransportID: protocol 0h, N_PORT_NAME at bytes 8..16, 24 bytes.
    let mut b = vec![0u8; 24];
    b[8..16].copy_from_slice(&[0x21, 0, 0, 0, 0, 0, 0, last]);
    b
}

fn iscsi_tid(name: &str) -> Vec<u8> {
    // SPC-4 §7.6.4, iSCSI TransportID: protocol 5h format 00b, ADDITIONAL LENGTH (multiple of 4), NUL-terminated.
    let len = (name.len() + 1).div_ceil(4) * 4;
    let mut b = vec![0x05, 0, 0, len as u8];
    b.extend_from_slice(name.as_bytes());
    b.resize(4 + len, 0);
    b
}

#[test]
fn spec_i_pt_registers_every_listed_initiator() {
    let mut lu = LogicalUnit::default();
    let p = spec_list(&[sas_tid(2), fc_tid(3), iscsi_tid("iqn.2026-12.test:n4")]);
    let o = lu.execute(&nexus(1), &pr_out(REGISTER, 0, p.len() as u32), &p, &CFG);
    assert_eq!(code(&o.reply), GOOD);
    o.commit(&mut lu);
    let d = read_keys(&mut lu, &nexus(1)).data;
    assert_eq!(&d[0..8], &[0, 0, 0, 1, 0, 0, 0, 32]);
    assert!(lu.registration(&nexus(2)).is_some());
    // READ FULL STATUS gives each TransportID back (SPC-4 table 171: descriptors of 24 bytes
    // plus the TransportID; these three are 24 bytes each).
    let d = lu.execute(&nexus(1), &pr_in(3, 1024), &[], &CFG).reply.data;
    assert_eq!(&d[4..8], &[0, 0, 0, 192]);
    assert_eq!(&d[128..152], &fc_tid(3)[..]);
    assert_eq!(&d[176..200], &iscsi_tid("iqn.2026-12.test:n4")[..]);
}

#[test]
fn spec_i_pt_is_all_or_nothing() {
    let lu = registered(&[(3, 0x3)]);
    // Second entry (at offset 28 + 24 = 52) names a registered initiator.
    let p = spec_list(&[sas_tid(2), sas_tid(3)]);
    let o = lu.execute(&nexus(1), &pr_out(REGISTER, 0, p.len() as u32), &p, &CFG);
    assert_eq!(code(&o.reply), (0x02, 0x05, 0x26, 0x00));
    assert_eq!(sks(&o.reply), [0x80, 0x00, 0x34]);
    refused(&lu, &o);
}

#[test]
fn spec_i_pt_malformed_transport_ids_refuse_the_whole_list() {
    let lu = LogicalUnit::default();
    let mut truncated = spec_list(&[sas_tid(2)]);
    truncated.truncate(40);
    truncated[24..28].copy_from_slice(&12u32.to_be_bytes());
    let mut bad_len = spec_list(&[sas_tid(2), vec![0x05, 0, 0, 5, b'a', 0, 0, 0, 0]]);
    bad_len[24..28].copy_from_slice(&33u32.to_be_bytes());
    let mut list_len_wrong = spec_list(&[sas_tid(2)]);
    list_len_wrong[24..28].copy_from_slice(&20u32.to_be_bytes());
    for (p, expect) in [
        (truncated, (0x02, 0x05, 0x26, 0x00)),
        (bad_len, (0x02, 0x05, 0x26, 0x00)),
        (list_len_wrong, (0x02, 0x05, 0x1a, 0x00)),
    ] {
        let o = lu.execute(&nexus(1), &pr_out(REGISTER, 0, p.len() as u32), &p, &CFG);
        assert_eq!(code(&o.reply), expect);
        refused(&lu, &o);
    }
}

#[test]
fn spec_i_pt_on_a_registered_nexus_is_invalid() {
    let lu = registered(&[(1, 0x1)]);
    let mut p = spec_list(&[sas_tid(2)]);
    p[0..8].copy_from_slice(&1u64.to_be_bytes());
    let o = lu.execute(&nexus(1), &pr_out(REGISTER, 0, p.len() as u32), &p, &CFG);
    assert_eq!(code(&o.reply), (0x02, 0x05, 0x26, 0x00));
    assert_eq!(sks(&o.reply), [0x8b, 0x00, 0x14]);
}

#[test]
fn spec_i_pt_refused_when_not_capable_and_for_other_service_actions() {
    let cfg = EngineConfig {
        spec_i_pt_capable: false,
        ..CFG
    };
    let p = spec_list(&[sas_tid(2)]);
    let o = LogicalUnit::default().execute(&nexus(1), &pr_out(REGISTER, 0, 52), &p, &cfg);
    assert_eq!(sks(&o.reply), [0x8b, 0x00, 0x14]);
    let lu = registered(&[(1, 0x1)]);
    let o = out(&lu, &nexus(1), RESERVE, 1, 0x1, 0, SPEC_I_PT, &CFG);
    assert_eq!(code(&o.reply), (0x02, 0x05, 0x26, 0x00));
}

// ---- Registration limit ----

#[test]
fn registration_limit_answers_insufficient_registration_resources() {
    let cfg = EngineConfig {
        max_registrations: 2,
        ..CFG
    };
    let mut lu = LogicalUnit::default();
    for n in 1..=2 {
        out(&lu.clone(), &nexus(n), REGISTER, 0, 0, n.into(), 0, &cfg).commit(&mut lu);
    }
    let o = out(&lu, &nexus(3), REGISTER, 0, 0, 0x3, 0, &cfg);
    // ILLEGAL REQUEST / 55h / 04h (SPC-4 §5.13.7).
    assert_eq!(code(&o.reply), (0x02, 0x05, 0x55, 0x04));
    refused(&lu, &o);
    // A key change still works at the limit.
    let o = out(&lu, &nexus(1), REGISTER, 0, 0x1, 0x9, 0, &cfg);
    assert_eq!(code(&o.reply), GOOD);
    // SPEC_I_PT that would exceed the limit registers nobody.
    let p = spec_list(&[sas_tid(2), sas_tid(3)]);
    let o = LogicalUnit::default().execute(&nexus(1), &pr_out(REGISTER, 0, 76), &p, &cfg);
    assert_eq!(code(&o.reply), (0x02, 0x05, 0x55, 0x04));
}

// ---- RESERVE (SPC-4 §5.13.9) ----

#[test]
fn reserve_unregistered_or_with_wrong_key_conflicts() {
    let lu = registered(&[(1, 0x1)]);
    assert_eq!(
        code(&out(&lu, &nexus(2), RESERVE, 1, 0, 0, 0, &CFG).reply),
        CONFLICT
    );
    assert_eq!(
        code(&out(&lu, &nexus(1), RESERVE, 1, 0x2, 0, 0, &CFG).reply),
        CONFLICT
    );
}

#[test]
fn reserve_with_reserved_type_or_scope_is_invalid_field_in_cdb() {
    let lu = registered(&[(1, 0x1)]);
    for t in [0x00u8, 0x02, 0x04, 0x09, 0x0f] {
        let o = out(&lu, &nexus(1), RESERVE, t, 0x1, 0, 0, &CFG);
        assert_eq!(code(&o.reply), (0x02, 0x05, 0x24, 0x00));
        // SKSV|C/D|BPV, bit 3, byte 2.
        assert_eq!(sks(&o.reply), [0xcb, 0x00, 0x02]);
    }
    let o = out(&lu, &nexus(1), RESERVE, 0x11, 0x1, 0, 0, &CFG);
    assert_eq!(sks(&o.reply), [0xcf, 0x00, 0x02]);
}

#[test]
fn reserve_every_type_and_read_reservation_spc4_table_168() {
    for t in [1u8, 3, 5, 6, 7, 8] {
        let mut lu = reserved(&[(1, 0x1234)], 1, t);
        let d = lu.execute(&nexus(1), &pr_in(1, 1024), &[], &CFG).reply.data;
        // All-registrants types report key 0 (SPC-4 §6.15.3).
        let key = if t >= 7 { 0 } else { 0x34 };
        let hi = if t >= 7 { 0 } else { 0x12 };
        assert_eq!(
            d,
            [0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, hi, key, 0, 0, 0, 0, 0, t, 0, 0],
            "type {t}"
        );
        // RESERVE does not change the generation.
        assert_eq!(generation(&mut lu), 1);
    }
}

#[test]
fn reserve_again_same_type_is_good_other_type_or_nexus_conflicts() {
    let lu = reserved(&[(1, 0x1), (2, 0x2)], 1, 5);
    let o = out(&lu, &nexus(1), RESERVE, 5, 0x1, 0, 0, &CFG);
    assert_eq!(code(&o.reply), GOOD);
    assert!(!o.changed());
    assert_eq!(
        code(&out(&lu, &nexus(1), RESERVE, 6, 0x1, 0, 0, &CFG).reply),
        CONFLICT
    );
    assert_eq!(
        code(&out(&lu, &nexus(2), RESERVE, 5, 0x2, 0, 0, &CFG).reply),
        CONFLICT
    );
    // Under an all-registrants type every registrant is a holder.
    let lu = reserved(&[(1, 0x1), (2, 0x2)], 1, 8);
    assert_eq!(
        code(&out(&lu, &nexus(2), RESERVE, 8, 0x2, 0, 0, &CFG).reply),
        GOOD
    );
}

// ---- RELEASE (SPC-4 §5.13.11.2.2) ----

#[test]
fn release_without_reservation_or_by_non_holder_is_good_and_changes_nothing() {
    let lu = registered(&[(1, 0x1), (2, 0x2)]);
    let o = out(&lu, &nexus(1), RELEASE, 1, 0x1, 0, 0, &CFG);
    assert_eq!((code(&o.reply), o.changed()), (GOOD, false));
    let lu = reserved(&[(1, 0x1), (2, 0x2)], 1, 1);
    let o = out(&lu, &nexus(2), RELEASE, 1, 0x2, 0, 0, &CFG);
    assert_eq!((code(&o.reply), o.changed()), (GOOD, false));
    assert_eq!(
        code(&out(&lu, &nexus(3), RELEASE, 1, 0, 0, 0, &CFG).reply),
        CONFLICT
    );
    assert_eq!(
        code(&out(&lu, &nexus(1), RELEASE, 1, 0x9, 0, 0, &CFG).reply),
        CONFLICT
    );
}

#[test]
fn release_of_another_type_is_invalid_release_of_persistent_reservation() {
    let lu = reserved(&[(1, 0x1)], 1, 5);
    let o = out(&lu, &nexus(1), RELEASE, 6, 0x1, 0, 0, &CFG);
    // ILLEGAL REQUEST / 26h / 04h (SPC-4 §5.13.11.2.2).
    assert_eq!(code(&o.reply), (0x02, 0x05, 0x26, 0x04));
    refused(&lu, &o);
}

#[test]
fn release_sends_reservations_released_for_types_5_to_8_only() {
    for (t, ua) in [
        (1u8, false),
        (3, false),
        (5, true),
        (6, true),
        (7, true),
        (8, true),
    ] {
        let mut lu = reserved(&[(1, 0x1), (2, 0x2)], 1, t);
        assert_eq!(
            code(&apply(&mut lu, &nexus(1), RELEASE, t, 0x1, 0, 0)),
            GOOD
        );
        assert!(lu.reservation.is_none());
        assert_eq!(
            code(&read_keys(&mut lu, &nexus(1))),
            GOOD,
            "not to the issuer"
        );
        let expect = if ua { (0x02, 0x06, 0x2a, 0x04) } else { GOOD };
        assert_eq!(code(&read_keys(&mut lu, &nexus(2))), expect, "type {t}");
        assert_eq!(generation(&mut lu), 2);
    }
}

#[test]
fn any_registrant_releases_an_all_registrants_reservation() {
    let mut lu = reserved(&[(1, 0x1), (2, 0x2)], 1, 7);
    assert_eq!(
        code(&apply(&mut lu, &nexus(2), RELEASE, 7, 0x2, 0, 0)),
        GOOD
    );
    assert!(lu.reservation.is_none());
}

// ---- CLEAR (SPC-4 §5.13.11.2.3) ----

#[test]
fn clear_removes_everything_and_preempts_the_others() {
    let mut lu = reserved(&[(1, 0x1), (2, 0x2), (3, 0x3)], 1, 5);
    let o = out(&lu, &nexus(2), CLEAR, 0, 0x2, 0, 0, &CFG);
    assert_eq!(o.access_lost, vec![nexus(1), nexus(3)]);
    o.commit(&mut lu);
    assert!(lu.registrants.is_empty() && lu.reservation.is_none());
    assert_eq!(
        code(&read_keys(&mut lu, &nexus(1))),
        (0x02, 0x06, 0x2a, 0x03)
    );
    assert_eq!(
        code(&read_keys(&mut lu, &nexus(3))),
        (0x02, 0x06, 0x2a, 0x03)
    );
    assert_eq!(read_keys(&mut lu, &nexus(2)).data, [0, 0, 0, 4, 0, 0, 0, 0]);
}

#[test]
fn clear_unregistered_or_wrong_key_conflicts() {
    let lu = registered(&[(1, 0x1)]);
    assert_eq!(
        code(&out(&lu, &nexus(2), CLEAR, 0, 0, 0, 0, &CFG).reply),
        CONFLICT
    );
    assert_eq!(
        code(&out(&lu, &nexus(1), CLEAR, 0, 0x7, 0, 0, &CFG).reply),
        CONFLICT
    );
}

// ---- PREEMPT / PREEMPT AND ABORT (SPC-4 §5.13.11.4) ----

#[test]
fn preempt_without_reservation_removes_registrations() {
    let mut lu = registered(&[(1, 0x1), (2, 0x2)]);
    let o = out(&lu, &nexus(1), PREEMPT, 5, 0x1, 0x2, 0, &CFG);
    assert_eq!(code(&o.reply), GOOD);
    assert_eq!(o.access_lost, vec![nexus(2)]);
    assert!(o.tasks_to_abort.is_empty(), "PREEMPT aborts nothing");
    o.commit(&mut lu);
    assert!(lu.reservation.is_none(), "no reservation is created");
    assert_eq!(
        code(&read_keys(&mut lu, &nexus(2))),
        (0x02, 0x06, 0x2a, 0x05)
    );
    assert_eq!(generation(&mut lu), 3);
}

#[test]
fn preempt_errors() {
    let lu = registered(&[(1, 0x1), (2, 0x2)]);
    // SA key 0 without an all-registrants reservation: invalid field, byte 8.
    let o = out(&lu, &nexus(1), PREEMPT, 5, 0x1, 0, 0, &CFG);
    assert_eq!(code(&o.reply), (0x02, 0x05, 0x26, 0x00));
    assert_eq!(sks(&o.reply), [0x80, 0x00, 0x08]);
    // SA key that matches nobody.
    assert_eq!(
        code(&out(&lu, &nexus(1), PREEMPT, 5, 0x1, 0x9, 0, &CFG).reply),
        CONFLICT
    );
    assert_eq!(
        code(&out(&lu, &nexus(3), PREEMPT, 5, 0, 0x2, 0, &CFG).reply),
        CONFLICT
    );
    assert_eq!(
        code(&out(&lu, &nexus(1), PREEMPT, 5, 0x7, 0x2, 0, &CFG).reply),
        CONFLICT
    );
    let o = out(&lu, &nexus(1), PREEMPT, 2, 0x1, 0x2, 0, &CFG);
    assert_eq!(sks(&o.reply), [0xcb, 0x00, 0x02]);
}

#[test]
fn preempting_the_holder_takes_the_reservation() {
    let mut lu = reserved(&[(1, 0x1), (2, 0x2), (3, 0x3)], 1, 1);
    let o = out(&lu, &nexus(2), PREEMPT, 5, 0x2, 0x1, 0, &CFG);
    assert_eq!(code(&o.reply), GOOD);
    o.commit(&mut lu);
    let res = lu.reservation.clone().unwrap();
    assert_eq!(res.holder, ReservationHolder::Registrant(nexus(2)));
    assert_eq!(res.reservation_type.code(), 5);
    assert_eq!(
        code(&read_keys(&mut lu, &nexus(1))),
        (0x02, 0x06, 0x2a, 0x05)
    );
    // The type changed: RESERVATIONS RELEASED to the registrants that remain.
    assert_eq!(
        code(&read_keys(&mut lu, &nexus(3))),
        (0x02, 0x06, 0x2a, 0x04)
    );
    assert_eq!(code(&read_keys(&mut lu, &nexus(2))), GOOD);
}

#[test]
fn preempting_the_holder_with_the_same_type_sends_no_released_ua() {
    let mut lu = reserved(&[(1, 0x1), (2, 0x2), (3, 0x3)], 1, 5);
    apply(&mut lu, &nexus(2), PREEMPT, 5, 0x2, 0x1, 0);
    assert_eq!(code(&read_keys(&mut lu, &nexus(3))), GOOD);
}

#[test]
fn the_holder_may_preempt_itself_to_change_type() {
    let mut lu = reserved(&[(1, 0x1), (2, 0x1)], 1, 1);
    assert_eq!(
        code(&apply(&mut lu, &nexus(1), PREEMPT, 3, 0x1, 0x1, 0)),
        GOOD
    );
    // Its registration stays; the other nexus with the same key is removed.
    assert!(lu.registration(&nexus(1)).is_some());
    assert!(lu.registration(&nexus(2)).is_none());
    assert_eq!(lu.reservation.unwrap().reservation_type.code(), 3);
}

#[test]
fn preempt_of_a_non_holder_keeps_the_reservation() {
    let mut lu = reserved(&[(1, 0x1), (2, 0x2), (3, 0x3)], 1, 5);
    assert_eq!(
        code(&apply(&mut lu, &nexus(2), PREEMPT, 1, 0x2, 0x3, 0)),
        GOOD
    );
    let res = lu.reservation.clone().unwrap();
    assert_eq!(res.holder, ReservationHolder::Registrant(nexus(1)));
    assert_eq!(res.reservation_type.code(), 5);
    assert!(lu.registration(&nexus(3)).is_none());
}

#[test]
fn preempt_all_registrants_with_key_zero_removes_every_other_registration() {
    let mut lu = reserved(&[(1, 0x1), (2, 0x2), (3, 0x3)], 1, 8);
    let o = out(&lu, &nexus(2), PREEMPT_AND_ABORT, 1, 0x2, 0, 0, &CFG);
    assert_eq!(code(&o.reply), GOOD);
    assert_eq!(o.tasks_to_abort, vec![nexus(1), nexus(3)]);
    o.commit(&mut lu);
    assert_eq!(lu.registrants.len(), 1);
    let res = lu.reservation.clone().unwrap();
    assert_eq!(res.holder, ReservationHolder::Registrant(nexus(2)));
    assert_eq!(res.reservation_type.code(), 1);
}

#[test]
fn preempt_all_registrants_with_a_key_removes_only_those_registrations() {
    let mut lu = reserved(&[(1, 0x1), (2, 0x2), (3, 0x3)], 1, 7);
    assert_eq!(
        code(&apply(&mut lu, &nexus(2), PREEMPT, 1, 0x2, 0x3, 0)),
        GOOD
    );
    assert_eq!(lu.registrants.len(), 2);
    let res = lu.reservation.clone().unwrap();
    assert_eq!(res.holder, ReservationHolder::AllRegistrants);
    assert_eq!(res.reservation_type.code(), 7);
}

#[test]
fn preempt_and_abort_names_the_nexuses_to_abort() {
    let lu = reserved(&[(1, 0x1), (2, 0x2), (3, 0x1)], 1, 5);
    let o = out(&lu, &nexus(2), PREEMPT_AND_ABORT, 5, 0x2, 0x1, 0, &CFG);
    assert_eq!(code(&o.reply), GOOD);
    assert_eq!(o.tasks_to_abort, vec![nexus(1), nexus(3)]);
    assert_eq!(o.access_lost, vec![nexus(1), nexus(3)]);
}

// ---- REGISTER AND MOVE (SPC-4 §5.13.8, table 186) ----

fn move_params(key: u64, sa_key: u64, flags: u8, port: u16, tid: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 24];
    b[0..8].copy_from_slice(&key.to_be_bytes());
    b[8..16].copy_from_slice(&sa_key.to_be_bytes());
    b[17] = flags;
    b[18..20].copy_from_slice(&port.to_be_bytes());
    b[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    b.extend_from_slice(tid);
    b
}

fn register_move(lu: &LogicalUnit, n: u8, p: &[u8], cfg: &EngineConfig) -> pr_engine::Outcome {
    lu.execute(
        &nexus(n),
        &pr_out(REGISTER_AND_MOVE, 5, p.len() as u32),
        p,
        cfg,
    )
}

#[test]
fn register_and_move_registers_the_destination_and_moves_the_reservation() {
    let mut lu = reserved(&[(1, 0x1)], 1, 5);
    let o = register_move(&lu, 1, &move_params(0x1, 0x22, 0, 1, &sas_tid(2)), &CFG);
    assert_eq!(code(&o.reply), GOOD);
    o.commit(&mut lu);
    assert_eq!(lu.registration(&nexus(2)).unwrap().key.0, 0x22);
    assert!(lu.is_holder(&nexus(2)) && !lu.is_holder(&nexus(1)));
    assert!(
        lu.registration(&nexus(1)).is_some(),
        "UNREG=0 keeps the issuer"
    );
    assert_eq!(generation(&mut lu), 2);
    // UNREG=1 unregisters the issuer.
    let o = register_move(&lu, 2, &move_params(0x22, 0x33, 0x02, 1, &sas_tid(3)), &CFG);
    assert_eq!(code(&o.reply), GOOD);
    o.commit(&mut lu);
    assert!(lu.registration(&nexus(2)).is_none());
    assert!(lu.is_holder(&nexus(3)));
}

#[test]
fn register_and_move_errors() {
    let p = move_params(0x1, 0x22, 0, 1, &sas_tid(2));
    // Not the holder, no reservation, all-registrants type, unregistered: conflict.
    let lu = reserved(&[(1, 0x1), (3, 0x3)], 3, 5);
    assert_eq!(code(&register_move(&lu, 1, &p, &CFG).reply), CONFLICT);
    assert_eq!(
        code(&register_move(&registered(&[(1, 0x1)]), 1, &p, &CFG).reply),
        CONFLICT
    );
    let lu = reserved(&[(1, 0x1)], 1, 7);
    assert_eq!(code(&register_move(&lu, 1, &p, &CFG).reply), CONFLICT);
    assert_eq!(code(&register_move(&lu, 4, &p, &CFG).reply), CONFLICT);
    let lu = reserved(&[(1, 0x1)], 1, 5);
    // SA key 0: invalid field, byte 8.
    let o = register_move(&lu, 1, &move_params(0x1, 0, 0, 1, &sas_tid(2)), &CFG);
    assert_eq!(
        (code(&o.reply), sks(&o.reply)),
        ((0x02, 0x05, 0x26, 0x00), [0x80, 0, 8])
    );
    // The TransportID names the issuer's own I_T nexus: invalid field, byte 24.
    let o = register_move(&lu, 1, &move_params(0x1, 0x5, 0, 1, &sas_tid(1)), &CFG);
    assert_eq!(
        (code(&o.reply), sks(&o.reply)),
        ((0x02, 0x05, 0x26, 0x00), [0x80, 0, 24])
    );
    // APTPL without PTPL capability: byte 17 bit 0.
    let cfg = EngineConfig {
        ptpl_capable: false,
        ..CFG
    };
    let o = register_move(&lu, 1, &move_params(0x1, 0x5, 0x01, 1, &sas_tid(2)), &cfg);
    assert_eq!(sks(&o.reply), [0x88, 0x00, 0x11]);
    // Shorter than 24 bytes: parameter list length error.
    let o = register_move(&lu, 1, &[0; 20], &CFG);
    assert_eq!(code(&o.reply), (0x02, 0x05, 0x1a, 0x00));
}

// ---- Service actions and opcodes ----

#[test]
fn replace_lost_reservation_and_reserved_service_actions_are_invalid_field_in_cdb() {
    let lu = registered(&[(1, 0x1)]);
    for sa in [0x08u8, 0x09, 0x1f] {
        let o = out(&lu, &nexus(1), sa, 0, 0x1, 0, 0, &CFG);
        assert_eq!(code(&o.reply), (0x02, 0x05, 0x24, 0x00));
        assert_eq!(sks(&o.reply), [0xcc, 0x00, 0x01]);
    }
    for sa in [0x04u8, 0x1f] {
        let o = lu.execute(&nexus(1), &pr_in(sa, 64), &[], &CFG);
        assert_eq!(sks(&o.reply), [0xcc, 0x00, 0x01]);
    }
}

#[test]
fn other_opcodes_are_invalid_command_operation_code() {
    let o = LogicalUnit::default().execute(&nexus(1), &[0x12, 0, 0, 0, 36, 0], &[], &CFG);
    assert_eq!(code(&o.reply), (0x02, 0x05, 0x20, 0x00));
}

// ---- PR IN data (SPC-4 §6.15) ----

#[test]
fn read_keys_is_truncated_to_the_allocation_length() {
    let lu = registered(&[(1, 0xaa), (2, 0xbb)]);
    let d = lu.execute(&nexus(1), &pr_in(0, 12), &[], &CFG).reply.data;
    // The additional length still says 16.
    assert_eq!(d, [0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0]);
    assert!(lu
        .execute(&nexus(1), &pr_in(0, 0), &[], &CFG)
        .reply
        .data
        .is_empty());
}

#[test]
fn report_capabilities_tells_what_is_supported_spc4_table_169() {
    let lu = LogicalUnit::default();
    let d = lu.execute(&nexus(1), &pr_in(2, 8), &[], &CFG).reply.data;
    // Length 8; SIP_C|ATP_C|PTPL_C; TMV, ALLOW COMMANDS 001b; all six types (table 170).
    assert_eq!(d, [0x00, 0x08, 0x0d, 0x90, 0xea, 0x01, 0x00, 0x00]);
    let cfg = EngineConfig {
        ptpl_capable: false,
        spec_i_pt_capable: false,
        all_tg_pt_capable: false,
        ..CFG
    };
    let d = lu.execute(&nexus(1), &pr_in(2, 4), &[], &cfg).reply.data;
    assert_eq!(d, [0x00, 0x08, 0x00, 0x90]);
}

#[test]
fn read_full_status_spc4_table_171() {
    let lu = reserved(&[(1, 0x1111)], 1, 5);
    let d = lu.execute(&nexus(1), &pr_in(3, 1024), &[], &CFG).reply.data;
    let mut expect = vec![0, 0, 0, 1, 0, 0, 0, 48];
    expect.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x11, 0x11, 0, 0, 0, 0, 0x01, 0x05]);
    expect.extend_from_slice(&[0, 0, 0, 0, 0x00, 0x01, 0, 0, 0, 24]);
    expect.extend_from_slice(&[0x06, 0, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 1]);
    expect.extend_from_slice(&[0; 12]);
    assert_eq!(d, expect);
    // A registrant that is not the holder: R_HOLDER 0, no scope/type.
    let mut lu = lu;
    apply(&mut lu, &nexus(2), REGISTER, 0, 0, 0x2, 0);
    let d = lu.execute(&nexus(1), &pr_in(3, 1024), &[], &CFG).reply.data;
    assert_eq!(&d[4..8], &[0, 0, 0, 96]);
    assert_eq!(&d[8 + 48 + 12..8 + 48 + 14], &[0, 0]);
}

// ---- Unit attentions (SAM-5 §5.14) ----

#[test]
fn a_unit_attention_is_reported_once_before_the_command_runs() {
    let mut lu = registered(&[(1, 0x1), (2, 0x2)]);
    apply(&mut lu, &nexus(1), PREEMPT, 5, 0x1, 0x2, 0);
    // The PR OUT from nexus 2 is not run: the UA comes first, and only the UA is cleared.
    let o = out(&lu, &nexus(2), REGISTER, 0, 0, 0x5, 0, &CFG);
    assert_eq!(code(&o.reply), (0x02, 0x06, 0x2a, 0x05));
    let after = o.state.unwrap();
    assert!(after.registration(&nexus(2)).is_none());
    assert!(after.unit_attentions.is_empty());
}

#[test]
fn inquiry_report_luns_request_sense_never_see_a_unit_attention() {
    let mut lu = registered(&[(1, 0x1), (2, 0x2)]);
    apply(&mut lu, &nexus(1), CLEAR, 0, 0x1, 0, 0);
    assert_eq!(lu.access(&nexus(2), CommandClass::Exempt), Access::Allowed);
    let a = lu.admit(&nexus(2), CommandClass::Allowed);
    assert_eq!(
        a.access,
        Access::UnitAttention(UnitAttention::ReservationsPreempted)
    );
    assert_eq!(
        a.access.reply().map(|r| code(&r)),
        Some((0x02, 0x06, 0x2a, 0x03))
    );
    let lu = a.state.unwrap();
    assert_eq!(
        lu.admit(&nexus(2), CommandClass::Read).access,
        Access::Allowed
    );
}

#[test]
fn unit_attention_queue_is_bounded_and_has_no_duplicates() {
    let cfg = EngineConfig {
        unit_attention_depth: 2,
        ..CFG
    };
    let mut lu = reserved(&[(1, 0x1), (2, 0x2)], 1, 5);
    for _ in 0..3 {
        out(&lu.clone(), &nexus(1), RELEASE, 5, 0x1, 0, 0, &cfg).commit(&mut lu);
        out(&lu.clone(), &nexus(1), RESERVE, 5, 0x1, 0, 0, &cfg).commit(&mut lu);
    }
    assert_eq!(
        lu.pending_unit_attentions(&nexus(2)),
        vec![UnitAttention::ReservationsReleased]
    );
    out(&lu.clone(), &nexus(1), PREEMPT, 5, 0x1, 0x2, 0, &cfg).commit(&mut lu);
    out(&lu.clone(), &nexus(1), CLEAR, 0, 0x1, 0, 0, &cfg).commit(&mut lu);
    assert_eq!(lu.pending_unit_attentions(&nexus(2)).len(), 2);
}

// ---- Access table (SPC-4 "SPC commands that are allowed in the presence of various
// reservations", and SBC-3's table for the block commands) ----

#[test]
fn access_table_for_every_type() {
    // Rows: type; columns: (holder, registered non-holder, unregistered) × (read, write).
    // 'A' allowed, 'C' RESERVATION CONFLICT.
    let table: [(u8, [&str; 3]); 6] = [
        (1, ["AA", "AC", "AC"]),
        (3, ["AA", "CC", "CC"]),
        (5, ["AA", "AA", "AC"]),
        (6, ["AA", "AA", "CC"]),
        (7, ["AA", "AA", "AC"]),
        (8, ["AA", "AA", "CC"]),
    ];
    for (t, cols) in table {
        let lu = reserved(&[(1, 0x1), (2, 0x2)], 1, t);
        for (who, expect) in [1u8, 2, 3].into_iter().zip(cols) {
            for (class, e) in [CommandClass::Read, CommandClass::Write]
                .into_iter()
                .zip(expect.chars())
            {
                let want = if e == 'A' {
                    Access::Allowed
                } else {
                    Access::ReservationConflict
                };
                assert_eq!(
                    lu.access(&nexus(who), class),
                    want,
                    "type {t} nexus {who} {class:?}"
                );
            }
            assert_eq!(
                lu.access(&nexus(who), CommandClass::Other),
                lu.access(&nexus(who), CommandClass::Write)
            );
            assert_eq!(
                lu.access(&nexus(who), CommandClass::Allowed),
                Access::Allowed
            );
            assert_eq!(
                lu.access(&nexus(who), CommandClass::Exempt),
                Access::Allowed
            );
        }
    }
    let lu = registered(&[(1, 0x1)]);
    assert_eq!(lu.access(&nexus(3), CommandClass::Write), Access::Allowed);
    assert_eq!(
        Access::ReservationConflict.reply().map(|r| r.status.0),
        Some(0x18)
    );
}

// ---- Power loss ----

#[test]
fn power_loss_drops_everything_without_ptpl_and_keeps_it_with() {
    let mut lu = reserved(&[(1, 0x1), (2, 0x2)], 1, 5);
    apply(&mut lu, &nexus(1), PREEMPT, 5, 0x1, 0x2, 0);
    let p = lu.power_loss();
    assert!(p.registrants.is_empty() && p.reservation.is_none() && p.unit_attentions.is_empty());
    let mut lu = LogicalUnit::default();
    apply(&mut lu, &nexus(1), REGISTER, 0, 0, 0x1, APTPL);
    apply(&mut lu, &nexus(2), REGISTER, 0, 0, 0x2, APTPL);
    apply(&mut lu, &nexus(1), RESERVE, 6, 0x1, 0, 0);
    apply(&mut lu, &nexus(1), PREEMPT, 6, 0x1, 0x2, 0);
    let mut p = lu.power_loss();
    assert_eq!(p.registrants, lu.registrants);
    assert_eq!(p.reservation, lu.reservation);
    assert!(p.unit_attentions.is_empty());
    assert_eq!(read_keys(&mut p, &nexus(1)).data[0..4], [0, 0, 0, 0]);
}

// ---- Serialization ----

#[test]
fn state_round_trips_through_json() {
    let mut lu = reserved(&[(1, 0x1), (2, 0x2)], 1, 5);
    apply(&mut lu, &nexus(1), RELEASE, 5, 0x1, 0, 0);
    let json = serde_json::to_string(&lu).unwrap();
    let back: LogicalUnit = serde_json::from_str(&json).unwrap();
    assert_eq!(back, lu);
}

#[test]
fn outcome_commit_returns_the_reply() {
    let mut lu = LogicalUnit::default();
    let r: Reply = out(&lu.clone(), &nexus(1), REGISTER, 0, 0, 0x1, 0, &CFG).commit(&mut lu);
    assert_eq!(code(&r), GOOD);
    assert_eq!(lu.registrants.len(), 1);
}

// ---- The worked example of docs/emulation.md ----

#[test]
fn worked_example_of_the_emulation_doc() {
    let (i1, i2) = (nexus(1), nexus(2));
    let mut lu = registered(&[(1, 0x1111), (2, 0x2222)]);
    assert_eq!(code(&apply(&mut lu, &i1, RESERVE, 5, 0x1111, 0, 0)), GOOD);
    let o = out(&lu, &i2, PREEMPT_AND_ABORT, 5, 0x2222, 0x1111, 0, &CFG);
    assert!(o.changed());
    assert_eq!(o.tasks_to_abort, vec![i1.clone()]);
    o.commit(&mut lu);
    assert!(matches!(
        lu.access(&i1, CommandClass::Write),
        Access::UnitAttention(UnitAttention::RegistrationsPreempted)
    ));
    let mut lu = lu.admit(&i1, CommandClass::Write).state.unwrap();
    assert_eq!(
        lu.access(&i1, CommandClass::Write),
        Access::ReservationConflict
    );
    assert_eq!(lu.access(&i1, CommandClass::Read), Access::Allowed);
    assert_eq!(
        read_keys(&mut lu, &i2).data,
        [0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x22, 0x22]
    );
    let d = lu.execute(&i2, &pr_in(1, 64), &[], &CFG).reply.data;
    assert_eq!(
        d,
        [0, 0, 0, 3, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0x22, 0x22, 0, 0, 0, 0, 0, 5, 0, 0]
    );
}

#[test]
fn unit_attention_queues_of_departed_nexuses_are_bounded() {
    let cfg = EngineConfig {
        max_registrations: 2,
        ..CFG
    };
    let mut lu = LogicalUnit::default();
    out(&lu.clone(), &nexus(1), REGISTER, 0, 0, 0x1, 0, &cfg).commit(&mut lu);
    // Nexuses 10.. register and are preempted one after the other, never to return.
    for n in 10..20u8 {
        out(&lu.clone(), &nexus(n), REGISTER, 0, 0, 0x2, 0, &cfg).commit(&mut lu);
        out(&lu.clone(), &nexus(1), PREEMPT, 5, 0x1, 0x2, 0, &cfg).commit(&mut lu);
    }
    assert_eq!(lu.unit_attentions.len(), 4);
    // The most recent ones are kept.
    assert_eq!(
        lu.pending_unit_attentions(&nexus(19)),
        vec![UnitAttention::RegistrationsPreempted]
    );
    assert!(lu.pending_unit_attentions(&nexus(10)).is_empty());
}
