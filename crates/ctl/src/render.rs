//! Turning replies and stored states into words, JSON and exit codes.

use pr_client::Reply;
use pr_engine::{LogicalUnit, Nexus, ReservationHolder, UnitAttention};
use pr_scsi::prin::{Capabilities, FullStatus, ReadKeys, ReadReservation};
use pr_scsi::transport_id::TransportId;
use pr_scsi::{ReservationKey, ReservationType, Sense, Status};
use pr_store::LuId;
use serde_json::{json, Value};

use crate::request::Read;

/// Exit codes. Scripts can tell a reservation conflict from a device error from a usage error.
pub mod exit {
    /// The command completed with GOOD status.
    pub const OK: u8 = 0;
    /// pr-ctl could not do its job: the helper socket, the device, a malformed reply, or the
    /// store (missing database, unknown logical unit, refused import).
    pub const FAILURE: u8 = 1;
    /// The command line is wrong (unknown option, bad key or type…).
    pub const USAGE: u8 = 2;
    /// The device answered RESERVATION CONFLICT.
    pub const CONFLICT: u8 = 3;
    /// The device answered CHECK CONDITION; the sense is printed in words.
    pub const CHECK_CONDITION: u8 = 4;
    /// The device answered another status (BUSY, TASK SET FULL…).
    pub const OTHER_STATUS: u8 = 5;
}

/// The exit code for a reply's status.
pub fn exit_code(status: Status) -> u8 {
    match status {
        Status::GOOD => exit::OK,
        Status::RESERVATION_CONFLICT => exit::CONFLICT,
        Status::CHECK_CONDITION => exit::CHECK_CONDITION,
        _ => exit::OTHER_STATUS,
    }
}

fn status_name(s: Status) -> String {
    s.name()
        .map_or_else(|| format!("status {:#04x}", s.0), str::to_string)
}

/// A non-GOOD reply in words: `RESERVATION CONFLICT`, or `CHECK CONDITION: ILLEGAL REQUEST,
/// invalid field in CDB (ASC 24h, ASCQ 00h)`.
pub fn failure_words(reply: &Reply) -> String {
    let mut s = status_name(reply.status);
    if reply.status == Status::CHECK_CONDITION {
        match Sense::parse(&reply.sense) {
            Some(sense) => {
                s.push_str(": ");
                s.push_str(&sense.code.to_string());
                if sense.deferred {
                    s.push_str(" (deferred error)");
                }
            }
            None => s.push_str(" with no sense data"),
        }
    }
    s
}

/// A non-GOOD reply as JSON.
pub fn failure_json(reply: &Reply) -> Value {
    let sense = Sense::parse(&reply.sense).map(|s| {
        json!({
            "key": s.code.key.0,
            "key_name": s.code.key.name(),
            "asc": s.code.asc,
            "ascq": s.code.ascq,
            "description": s.code.description(),
            "deferred": s.deferred,
        })
    });
    json!({
        "status": status_name(reply.status),
        "status_code": reply.status.0,
        "sense": sense,
    })
}

/// Keys print as 0x-prefixed hex without leading zeros, as sg_persist prints them. JSON carries
/// them as such strings too: a 64-bit key does not survive a JSON number in most parsers.
pub fn key_str(k: ReservationKey) -> String {
    format!("{:#x}", k.0)
}

fn type_json(code: u8) -> Value {
    match ReservationType::from_code(code) {
        Some(t) => json!(t.long_cli_name()),
        None => json!(format!("reserved-{code}")),
    }
}

fn type_words(code: u8) -> String {
    match ReservationType::from_code(code) {
        Some(t) => format!("{} ({}, type {})", t.name(), t.short_name(), t.code()),
        None => format!("reserved type {code}"),
    }
}

fn scope_words(code: u8) -> String {
    if code == 0 {
        "LU_SCOPE".into()
    } else {
        format!("reserved scope {code}")
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Decoded PR IN data: what to print and what to emit as JSON.
#[derive(Debug)]
pub struct Rendered {
    pub human: String,
    pub json: Value,
}

/// Decodes the data of a successful read.
pub fn render_read(read: Read, data: &[u8]) -> Result<Rendered, String> {
    let bad =
        |e: pr_scsi::prin::PrInDecodeError| format!("the device returned malformed data: {e}");
    Ok(match read {
        Read::Keys => {
            let k = ReadKeys::decode(data).map_err(bad)?;
            let mut human = format!("PR generation {:#x}, ", k.generation.0);
            if k.keys.is_empty() {
                human.push_str("no registered keys\n");
            } else {
                human.push_str(&format!(
                    "{} registered key{}:\n",
                    k.keys.len(),
                    if k.keys.len() == 1 { "" } else { "s" }
                ));
                for key in &k.keys {
                    human.push_str(&format!("  {}\n", key_str(*key)));
                }
            }
            if k.is_truncated() {
                human.push_str(&format!(
                    "(truncated: the device has {} bytes of keys; raise --maxlen)\n",
                    k.additional_length
                ));
            }
            Rendered {
                human,
                json: json!({
                    "generation": k.generation.0,
                    "keys": k.keys.iter().map(|k| key_str(*k)).collect::<Vec<_>>(),
                    "truncated": k.is_truncated(),
                }),
            }
        }
        Read::Reservation => {
            let r = ReadReservation::decode(data).map_err(bad)?;
            let mut human = format!("PR generation {:#x}, ", r.generation.0);
            let res = match r.reservation {
                None => {
                    human.push_str("no reservation held\n");
                    Value::Null
                }
                Some(d) => {
                    human.push_str(&format!(
                        "reservation held:\n  key {}\n  type {}\n  scope {}\n",
                        key_str(d.key),
                        type_words(d.type_code),
                        scope_words(d.scope_code)
                    ));
                    json!({
                        "key": key_str(d.key),
                        "type": type_json(d.type_code),
                        "type_code": d.type_code,
                        "scope": if d.scope_code == 0 { json!("lu") } else { json!(d.scope_code) },
                    })
                }
            };
            Rendered {
                human,
                json: json!({ "generation": r.generation.0, "reservation": res }),
            }
        }
        Read::Capabilities => {
            let c = Capabilities::decode(data).map_err(bad)?;
            let types: Vec<ReservationType> = if c.tmv {
                c.supported_types()
            } else {
                Vec::new()
            };
            let mut human = String::from("Capabilities:\n");
            for (abbr, what, v) in [
                ("RLR_C", "replace lost reservation capable", c.rlr_c),
                ("CRH", "compatible reservation handling", c.crh),
                ("SIP_C", "specify initiator ports capable", c.sip_c),
                ("ATP_C", "all target ports capable", c.atp_c),
                ("PTPL_C", "persist through power loss capable", c.ptpl_c),
                ("PTPL_A", "persist through power loss active", c.ptpl_a),
                ("TMV", "type mask valid", c.tmv),
            ] {
                human.push_str(&format!("  {abbr:<7}{what:<36}{}\n", yes(v)));
            }
            human.push_str(&format!("  allow commands: {}\n", c.allow_commands));
            if c.tmv {
                human.push_str("  types supported:\n");
                for t in ReservationType::ALL {
                    human.push_str(&format!("    {:<38}{}\n", t.name(), yes(types.contains(t))));
                }
            } else {
                human.push_str("  types supported: not reported (type mask not valid)\n");
            }
            Rendered {
                human,
                json: json!({
                    "rlr_c": c.rlr_c,
                    "crh": c.crh,
                    "sip_c": c.sip_c,
                    "atp_c": c.atp_c,
                    "ptpl_c": c.ptpl_c,
                    "tmv": c.tmv,
                    "allow_commands": c.allow_commands,
                    "ptpl_a": c.ptpl_a,
                    "type_mask": c.type_mask,
                    "types": types.iter().map(|t| t.long_cli_name()).collect::<Vec<_>>(),
                }),
            }
        }
        Read::Status => {
            let s = FullStatus::decode(data).map_err(bad)?;
            let n = s.descriptors.len();
            let mut human = format!("PR generation {:#x}, ", s.generation.0);
            if n == 0 {
                human.push_str("no registrations\n");
            } else {
                human.push_str(&format!(
                    "{n} registration{}:\n",
                    if n == 1 { "" } else { "s" }
                ));
            }
            let mut regs = Vec::new();
            for d in &s.descriptors {
                human.push_str(&format!(
                    "  key {}\n    initiator: {}\n    relative target port: {}\n    \
                     all target ports: {}\n",
                    key_str(d.key),
                    d.transport_id,
                    d.relative_target_port.0,
                    yes(d.all_tg_pt)
                ));
                if d.reservation_holder {
                    human.push_str(&format!(
                        "    reservation holder: {}, {}\n",
                        type_words(d.type_code),
                        scope_words(d.scope_code)
                    ));
                } else {
                    human.push_str("    reservation holder: no\n");
                }
                regs.push(json!({
                    "key": key_str(d.key),
                    "transport_id": d.transport_id.to_string(),
                    "relative_target_port": d.relative_target_port.0,
                    "all_target_ports": d.all_tg_pt,
                    "holder": d.reservation_holder,
                    "type": if d.reservation_holder { type_json(d.type_code) } else { Value::Null },
                }));
            }
            let used: usize = data.len().saturating_sub(8);
            let truncated = (s.additional_length as usize) > used;
            if truncated {
                human.push_str(&format!(
                    "(truncated: the device has {} bytes of descriptors; raise --maxlen)\n",
                    s.additional_length
                ));
            }
            Rendered {
                human,
                json: json!({
                    "generation": s.generation.0,
                    "registrations": regs,
                    "truncated": truncated,
                }),
            }
        }
    })
}

/// `n thing` or `n things`.
pub fn plural(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}

/// A stored state in one line: `PR generation 0x2, 2 registrations, reservation we-ro`.
pub fn state_summary(s: &LogicalUnit) -> String {
    let mut line = format!(
        "PR generation {:#x}, {}, ",
        s.generation.0,
        plural(s.registrants.len(), "registration")
    );
    match &s.reservation {
        Some(r) => line.push_str(&format!("reservation {}", r.reservation_type.short_name())),
        None => line.push_str("no reservation"),
    }
    if s.ptpl_active {
        line.push_str(", APTPL");
    }
    let uas = unit_attention_count(s);
    if uas > 0 {
        line.push_str(&format!(", {}", plural(uas, "pending unit attention")));
    }
    line
}

fn unit_attention_count(s: &LogicalUnit) -> usize {
    s.unit_attentions.iter().map(|q| q.conditions.len()).sum()
}

/// A stored state's counts as JSON, for lists and for what a change did.
pub fn summary_json(s: &LogicalUnit) -> Value {
    json!({
        "generation": s.generation.0,
        "aptpl": s.ptpl_active,
        "registrations": s.registrants.len(),
        "reservation": s.reservation.as_ref().map(|r| r.reservation_type.long_cli_name()),
        "unit_attentions": unit_attention_count(s),
    })
}

/// A TransportID's fields as JSON, decoded.
fn initiator_json(id: &TransportId) -> Value {
    let hex8 = |b: &[u8; 8]| format!("{:#018x}", u64::from_be_bytes(*b));
    match id {
        TransportId::Fc { n_port_name } => {
            json!({"protocol": "fc", "n_port_name": hex8(n_port_name)})
        }
        TransportId::Sas { sas_address } => {
            json!({"protocol": "sas", "sas_address": hex8(sas_address)})
        }
        TransportId::Iscsi { name, isid } => {
            json!({"protocol": "iscsi", "name": name, "isid": isid})
        }
        TransportId::Other { protocol_id, bytes } => json!({
            "protocol": protocol_id,
            "bytes": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        }),
    }
}

fn nexus_json(n: &Nexus) -> Value {
    json!({
        "transport_id": n.initiator.to_string(),
        "initiator": initiator_json(&n.initiator),
        "relative_target_port": n.relative_target_port.0,
    })
}

fn nexus_words(n: &Nexus) -> String {
    format!(
        "{}, relative target port {}",
        n.initiator, n.relative_target_port.0
    )
}

/// A unit attention condition: its words (with ASC/ASCQ) and its JSON name.
fn unit_attention_names(ua: UnitAttention) -> (String, &'static str) {
    let (words, name) = match ua {
        UnitAttention::ReservationsPreempted => {
            ("RESERVATIONS PREEMPTED", "reservations-preempted")
        }
        UnitAttention::ReservationsReleased => ("RESERVATIONS RELEASED", "reservations-released"),
        UnitAttention::RegistrationsPreempted => {
            ("REGISTRATIONS PREEMPTED", "registrations-preempted")
        }
    };
    let code = ua.sense_code();
    (
        format!("{words} ({:02X}h/{:02X}h)", code.asc, code.ascq),
        name,
    )
}

/// The whole stored state of a logical unit (`pr-ctl store show`).
pub fn render_state(lu: &LuId, s: &LogicalUnit) -> Rendered {
    let mut human = format!(
        "{lu}\n  PR generation {:#x}\n  APTPL (PTPL_A): {}\n",
        s.generation.0,
        yes(s.ptpl_active)
    );
    let holds = |nexus: &Nexus| match s.reservation.as_ref().map(|r| &r.holder) {
        Some(ReservationHolder::AllRegistrants) => true,
        Some(ReservationHolder::Registrant(h)) => h == nexus,
        None => false,
    };
    if s.registrants.is_empty() {
        human.push_str("  no registrations\n");
    } else {
        human.push_str(&format!(
            "  {}:\n",
            plural(s.registrants.len(), "registration")
        ));
    }
    let mut regs = Vec::new();
    for r in &s.registrants {
        human.push_str(&format!(
            "    key {}\n      initiator: {}\n      relative target port: {}\n      \
             all target ports: {}\n      reservation holder: {}\n",
            key_str(r.key),
            r.nexus.initiator,
            r.nexus.relative_target_port.0,
            yes(r.all_tg_pt),
            yes(holds(&r.nexus)),
        ));
        let mut j = nexus_json(&r.nexus);
        j["key"] = json!(key_str(r.key));
        j["all_target_ports"] = json!(r.all_tg_pt);
        j["holder"] = json!(holds(&r.nexus));
        regs.push(j);
    }
    let reservation = match &s.reservation {
        None => {
            human.push_str("  no reservation\n");
            Value::Null
        }
        Some(res) => {
            let t = res.reservation_type;
            human.push_str(&format!(
                "  reservation: {}, {}\n",
                type_words(t.code()),
                scope_words(res.scope.code())
            ));
            let holder = match &res.holder {
                ReservationHolder::AllRegistrants => {
                    human.push_str("    holder: every registrant\n");
                    json!("all-registrants")
                }
                ReservationHolder::Registrant(h) => {
                    let key = s.holder_registration().map(|r| key_str(r.key));
                    human.push_str(&format!(
                        "    holder: key {}, {}\n",
                        key.as_deref().unwrap_or("none"),
                        nexus_words(h)
                    ));
                    let mut j = nexus_json(h);
                    j["key"] = json!(key);
                    j
                }
            };
            json!({
                "type": t.long_cli_name(),
                "type_code": t.code(),
                "type_name": t.name(),
                "scope": "lu",
                "holder": holder,
            })
        }
    };
    if s.unit_attentions.is_empty() {
        human.push_str("  no pending unit attentions\n");
    } else {
        human.push_str("  pending unit attentions:\n");
    }
    let mut uas = Vec::new();
    for q in &s.unit_attentions {
        let names: Vec<_> = q
            .conditions
            .iter()
            .map(|c| unit_attention_names(*c))
            .collect();
        human.push_str(&format!(
            "    {}{}: {}\n",
            nexus_words(&q.nexus),
            if q.all_target_ports {
                " (all target ports)"
            } else {
                ""
            },
            names
                .iter()
                .map(|n| n.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut j = nexus_json(&q.nexus);
        j["all_target_ports"] = json!(q.all_target_ports);
        j["conditions"] = json!(names.iter().map(|n| n.1).collect::<Vec<_>>());
        uas.push(j);
    }
    Rendered {
        human,
        json: json!({
            "lu": lu,
            "generation": s.generation.0,
            "aptpl": s.ptpl_active,
            "registrations": regs,
            "reservation": reservation,
            "unit_attentions": uas,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pr_scsi::prin::{FullStatusDescriptor, ReservationDescriptor};
    use pr_scsi::transport_id::TransportId;
    use pr_scsi::{Generation, RelativeTargetPort, SenseCode};

    #[test]
    fn keys_human_and_json() {
        let data = ReadKeys::encode(
            Generation(3),
            &[ReservationKey(0x1111), ReservationKey(0xabc)],
        );
        let r = render_read(Read::Keys, &data).unwrap();
        assert_eq!(
            r.human,
            "PR generation 0x3, 2 registered keys:\n  0x1111\n  0xabc\n"
        );
        assert_eq!(
            r.json,
            json!({"generation": 3, "keys": ["0x1111", "0xabc"], "truncated": false})
        );
        let r = render_read(Read::Keys, &ReadKeys::encode(Generation(0), &[])).unwrap();
        assert_eq!(r.human, "PR generation 0x0, no registered keys\n");
    }

    #[test]
    fn reservation_names_the_type() {
        let data = ReadReservation {
            generation: Generation(9),
            reservation: Some(ReservationDescriptor {
                key: ReservationKey(0x2222),
                scope_code: 0,
                type_code: 5,
            }),
        }
        .encode();
        let r = render_read(Read::Reservation, &data).unwrap();
        assert!(r
            .human
            .contains("WRITE EXCLUSIVE - REGISTRANTS ONLY (we-ro, type 5)"));
        assert_eq!(
            r.json["reservation"]["type"],
            "write-exclusive-registrants-only"
        );
        assert_eq!(r.json["reservation"]["key"], "0x2222");
    }

    #[test]
    fn full_status_lists_initiators() {
        let data = FullStatus::encode(
            Generation(1),
            &[FullStatusDescriptor {
                key: ReservationKey(7),
                all_tg_pt: false,
                reservation_holder: true,
                scope_code: 0,
                type_code: 1,
                relative_target_port: RelativeTargetPort(1),
                transport_id: TransportId::Sas {
                    sas_address: 0x5001405000000000u64.to_be_bytes(),
                },
            }],
        );
        let r = render_read(Read::Status, &data).unwrap();
        assert!(
            r.human.contains("SAS address 0x5001405000000000"),
            "{}",
            r.human
        );
        assert_eq!(r.json["registrations"][0]["holder"], true);
        assert_eq!(r.json["registrations"][0]["type"], "write-exclusive");
    }

    #[test]
    fn stored_state_with_all_registrants_and_an_fc_initiator() {
        use pr_engine::{PendingUnitAttentions, Registrant, Reservation};
        let fc = Nexus {
            initiator: TransportId::Fc {
                n_port_name: [0x21, 0, 0, 0x24, 0xff, 0x3a, 0x4b, 0x5c],
            },
            relative_target_port: RelativeTargetPort(3),
        };
        let state = LogicalUnit {
            generation: Generation(0x10),
            registrants: vec![Registrant {
                nexus: fc.clone(),
                key: ReservationKey(0xdead_beef),
                all_tg_pt: true,
            }],
            reservation: Some(Reservation::new(
                ReservationType::ExclusiveAccessAllRegistrants,
                fc.clone(),
            )),
            ptpl_active: true,
            unit_attentions: vec![PendingUnitAttentions {
                nexus: fc,
                all_target_ports: true,
                conditions: [
                    UnitAttention::ReservationsReleased,
                    UnitAttention::ReservationsPreempted,
                ]
                .into(),
            }],
        };
        let r = render_state(&LuId::new("disk0").unwrap(), &state);
        assert_eq!(
            r.human,
            "disk0\n  PR generation 0x10\n  APTPL (PTPL_A): yes\n  1 registration:\n    \
             key 0xdeadbeef\n      initiator: FC N_Port name 0x21000024ff3a4b5c\n      \
             relative target port: 3\n      all target ports: yes\n      \
             reservation holder: yes\n  reservation: EXCLUSIVE ACCESS - ALL REGISTRANTS \
             (ea-ar, type 8), LU_SCOPE\n    holder: every registrant\n  \
             pending unit attentions:\n    FC N_Port name 0x21000024ff3a4b5c, relative target \
             port 3 (all target ports): RESERVATIONS RELEASED (2Ah/04h), RESERVATIONS \
             PREEMPTED (2Ah/03h)\n"
        );
        assert_eq!(r.json["reservation"]["holder"], "all-registrants");
        assert_eq!(
            r.json["registrations"][0]["initiator"],
            json!({"protocol": "fc", "n_port_name": "0x21000024ff3a4b5c"})
        );
        assert_eq!(
            r.json["unit_attentions"][0]["conditions"],
            json!(["reservations-released", "reservations-preempted"])
        );
        assert_eq!(
            state_summary(&state),
            "PR generation 0x10, 1 registration, reservation ea-ar, APTPL, 2 pending unit \
             attentions"
        );
    }

    #[test]
    fn malformed_data_is_an_error_not_a_panic() {
        assert!(render_read(Read::Keys, &[0, 0, 0])
            .unwrap_err()
            .contains("malformed"));
    }

    #[test]
    fn failures_in_words_and_codes() {
        let reply = Reply {
            status: Status::CHECK_CONDITION,
            sense: SenseCode::INVALID_FIELD_IN_CDB.to_fixed(),
            data: vec![],
        };
        let w = failure_words(&reply);
        assert!(w.starts_with("CHECK CONDITION: ILLEGAL REQUEST"), "{w}");
        assert_eq!(exit_code(reply.status), exit::CHECK_CONDITION);
        assert_eq!(failure_json(&reply)["sense"]["asc"], 0x24);
        assert_eq!(exit_code(Status::RESERVATION_CONFLICT), exit::CONFLICT);
        assert_eq!(exit_code(Status::BUSY), exit::OTHER_STATUS);
        assert_eq!(exit_code(Status::GOOD), exit::OK);
    }
}
