//! sg_persist's text output, decoded into the same JSON shape pr-ctl's `--json` uses, so the
//! two decodings of one device can be compared field by field.

use pr_scsi::ReservationType;
use serde_json::{json, Map, Value};

fn hex_after(line: &str, marker: &str) -> Option<u64> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let h = rest
        .trim()
        .trim_start_matches("0x")
        .split(|c: char| !c.is_ascii_hexdigit())
        .next()?;
    u64::from_str_radix(h, 16).ok()
}

fn type_from_words(words: &str) -> Option<&'static str> {
    let w = words.trim().trim_end_matches(',').to_ascii_lowercase();
    let t = match w.as_str() {
        "write exclusive" => ReservationType::WriteExclusive,
        "exclusive access" => ReservationType::ExclusiveAccess,
        "write exclusive, registrants only" => ReservationType::WriteExclusiveRegistrantsOnly,
        "exclusive access, registrants only" => ReservationType::ExclusiveAccessRegistrantsOnly,
        "write exclusive, all registrants" => ReservationType::WriteExclusiveAllRegistrants,
        "exclusive access, all registrants" => ReservationType::ExclusiveAccessAllRegistrants,
        _ => return None,
    };
    Some(t.long_cli_name())
}

fn generation(text: &str) -> Result<u64, String> {
    text.lines()
        .find_map(|l| hex_after(l, "PR generation="))
        .ok_or_else(|| format!("no 'PR generation=' in sg_persist output:\n{text}"))
}

fn key_str(k: u64) -> String {
    format!("{k:#x}")
}

/// Decodes `sg_persist --in -k|-r|-c|-s` output for `read` (keys, reservation, capabilities,
/// status).
pub fn decode(read: &str, text: &str) -> Result<Value, String> {
    match read {
        "keys" => {
            let keys: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("0x"))
                .filter_map(|l| hex_after(l, "0x").map(key_str))
                .collect();
            Ok(json!({ "generation": generation(text)?, "keys": keys }))
        }
        "reservation" => {
            let g = generation(text)?;
            if text.contains("NO reservation held") {
                return Ok(json!({ "generation": g, "reservation": null }));
            }
            let key = text
                .lines()
                .find_map(|l| hex_after(l, "Key=0x"))
                .ok_or("reservation without Key=")?;
            let t = text
                .lines()
                .find_map(|l| l.split_once("type: ").map(|(_, t)| t.to_string()))
                .ok_or("reservation without type:")?;
            Ok(json!({
                "generation": g,
                "reservation": {
                    "key": key_str(key),
                    "type": type_from_words(&t).ok_or(format!("unknown type '{t}'"))?,
                }
            }))
        }
        "capabilities" => {
            let mut m = Map::new();
            let mut types = Vec::new();
            for l in text.lines() {
                let Some((name, v)) = l.trim().rsplit_once(": ") else {
                    continue;
                };
                let Ok(v) = v.trim().parse::<u8>() else {
                    continue;
                };
                let field = [
                    ("(RLR_C)", "rlr_c"),
                    ("(CRH)", "crh"),
                    ("(SIP_C)", "sip_c"),
                    ("(ATP_C)", "atp_c"),
                    ("(PTPL_C)", "ptpl_c"),
                    ("(TMV)", "tmv"),
                    ("(PTPL_A)", "ptpl_a"),
                ]
                .iter()
                .find(|(tag, _)| name.ends_with(tag))
                .map(|(_, f)| *f);
                if let Some(f) = field {
                    m.insert(f.into(), json!(v != 0));
                } else if name == "Allow Commands" {
                    m.insert("allow_commands".into(), json!(v));
                } else if let Some(t) = type_from_words(name) {
                    if v != 0 {
                        types.push(t);
                    }
                }
            }
            // Same order as pr-ctl: the type codes ascending.
            types.sort_by_key(|t| {
                ReservationType::ALL
                    .iter()
                    .position(|x| x.long_cli_name() == *t)
            });
            m.insert("types".into(), json!(types));
            Ok(Value::Object(m))
        }
        "status" => {
            let g = generation(text)?;
            let mut regs: Vec<Map<String, Value>> = Vec::new();
            for l in text.lines() {
                let t = l.trim();
                if let Some(k) = hex_after(t, "Key=0x").filter(|_| t.starts_with("Key=")) {
                    let mut m = Map::new();
                    m.insert("key".into(), json!(key_str(k)));
                    m.insert("holder".into(), json!(false));
                    m.insert("type".into(), Value::Null);
                    regs.push(m);
                    continue;
                }
                let Some(m) = regs.last_mut() else { continue };
                if t.starts_with("All target ports bit") {
                    m.insert("all_target_ports".into(), json!(t.ends_with("set")));
                } else if let Some(p) = hex_after(t, "Relative port address: 0x") {
                    m.insert("relative_target_port".into(), json!(p));
                } else if t.contains("Reservation holder") {
                    m.insert("holder".into(), json!(true));
                } else if let Some((_, ty)) = t.split_once("type: ") {
                    m.insert("type".into(), json!(type_from_words(ty)));
                } else if let Some(a) = t.strip_prefix("SAS address: ") {
                    m.insert("transport_id".into(), json!(format!("SAS address {a}")));
                } else if let Some(v) = t.strip_prefix("iSCSI world wide unique port id: ") {
                    let id = match v.split_once(",i,0x") {
                        Some((name, isid)) => format!("iSCSI name {name}, ISID 0x{isid}"),
                        None => format!("iSCSI name {v}"),
                    };
                    m.insert("transport_id".into(), json!(id));
                } else if let Some(v) = t
                    .strip_prefix("iSCSI world wide unique device name: ")
                    .or_else(|| t.strip_prefix("iSCSI name: "))
                {
                    m.insert("transport_id".into(), json!(format!("iSCSI name {v}")));
                }
            }
            Ok(json!({ "generation": g, "registrations": regs }))
        }
        other => Err(format!("no sg_persist decoder for '{other}'")),
    }
}

/// pr-ctl's JSON restricted to what sg_persist shows (pr-ctl reports a few more fields).
pub fn project(read: &str, ours: &Value) -> Value {
    let pick = |v: &Value, keys: &[&str]| {
        let mut m = Map::new();
        for k in keys {
            m.insert((*k).into(), v.get(*k).cloned().unwrap_or(Value::Null));
        }
        Value::Object(m)
    };
    match read {
        "keys" => pick(ours, &["generation", "keys"]),
        "reservation" => {
            let mut v = pick(ours, &["generation", "reservation"]);
            if let Some(r) = ours.get("reservation").filter(|r| !r.is_null()) {
                v["reservation"] = pick(r, &["key", "type"]);
            }
            v
        }
        "capabilities" => pick(
            ours,
            &[
                "rlr_c",
                "crh",
                "sip_c",
                "atp_c",
                "ptpl_c",
                "tmv",
                "ptpl_a",
                "allow_commands",
                "types",
            ],
        ),
        "status" => {
            let regs: Vec<Value> = ours["registrations"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            pick(
                                r,
                                &[
                                    "key",
                                    "holder",
                                    "type",
                                    "all_target_ports",
                                    "relative_target_port",
                                    "transport_id",
                                ],
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({ "generation": ours["generation"], "registrations": regs })
        }
        _ => ours.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Text as sg_persist 1.46 (Debian 12) printed it for LIO in the lab.
    #[test]
    fn decodes_keys_and_status() {
        let keys = "  PR generation=0x1, 1 registered reservation key follows:\n    0x2222\n";
        assert_eq!(
            decode("keys", keys).unwrap(),
            json!({"generation": 1, "keys": ["0x2222"]})
        );
        let none = "  PR generation=0x0, there are NO registered reservation keys\n";
        assert_eq!(
            decode("keys", none).unwrap(),
            json!({"generation": 0, "keys": []})
        );
        let status =
            "  PR generation=0x1\n    Key=0x2222\n      All target ports bit clear\n      \
                      Relative port address: 0x2\n      << Reservation holder >>\n      \
                      scope: LU_SCOPE,  type: Write Exclusive, registrants only\n      \
                      Transport Id of initiator:\n        SAS address: 0x5001405000000b02\n";
        let v = decode("status", status).unwrap();
        assert_eq!(
            v,
            json!({"generation": 1, "registrations": [{
                "key": "0x2222", "holder": true, "type": "write-exclusive-registrants-only",
                "all_target_ports": false, "relative_target_port": 2,
                "transport_id": "SAS address 0x5001405000000b02"}]})
        );
    }

    #[test]
    fn decodes_iscsi_transport_ids() {
        let status = "  PR generation=0x6\n    Key=0x6a0002\n      All target ports bit clear\n      \
                      Relative port address: 0x1\n      not reservation holder\n      \
                      Transport Id of initiator:\n        \
                      iSCSI world wide unique port id: iqn.2026-11.org.pr-helper.lab:i2,i,0x00023d000002\n";
        let v = decode("status", status).unwrap();
        assert_eq!(
            v["registrations"][0]["transport_id"],
            "iSCSI name iqn.2026-11.org.pr-helper.lab:i2, ISID 0x00023d000002"
        );
    }

    #[test]
    fn decodes_capabilities_and_reservation() {
        let caps = "Report capabilities response:\n  Replace Lost Reservation Capable(RLR_C): 0\n  \
                    Compatible Reservation Handling(CRH): 1\n  Specify Initiator Ports Capable(SIP_C): 1\n  \
                    All Target Ports Capable(ATP_C): 1\n  Persist Through Power Loss Capable(PTPL_C): 1\n  \
                    Type Mask Valid(TMV): 1\n  Allow Commands: 1\n  \
                    Persist Through Power Loss Active(PTPL_A): 0\n    Support indicated in Type mask:\n      \
                    Write Exclusive, all registrants: 1\n      Exclusive Access, registrants only: 1\n      \
                    Write Exclusive, registrants only: 1\n      Exclusive Access: 1\n      \
                    Write Exclusive: 1\n      Exclusive Access, all registrants: 0\n";
        let v = decode("capabilities", caps).unwrap();
        assert_eq!(v["crh"], true);
        assert_eq!(v["rlr_c"], false);
        assert_eq!(v["allow_commands"], 1);
        assert_eq!(
            v["types"],
            json!([
                "write-exclusive",
                "exclusive-access",
                "write-exclusive-registrants-only",
                "exclusive-access-registrants-only",
                "write-exclusive-all-registrants"
            ])
        );
        let res = "  PR generation=0x3, Reservation follows:\n    Key=0x1111\n    \
                   scope: LU_SCOPE,  type: Exclusive Access\n";
        assert_eq!(
            decode("reservation", res).unwrap(),
            json!({"generation": 3, "reservation": {"key": "0x1111", "type": "exclusive-access"}})
        );
    }
}
