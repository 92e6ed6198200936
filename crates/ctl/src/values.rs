//! Parsers for the values people type: reservation keys, reservation types, TransportIDs and hex
//! strings. Every error names what was given and what was expected.

use pr_scsi::transport_id::TransportId;
use pr_scsi::{RelativeTargetPort, ReservationKey, ReservationType};
use pr_store::LuId;

/// A reservation key: `0x` followed by up to 16 hex digits, up to 16 hex digits followed by `h`
/// (sg_persist's convention), or a decimal number up to 2^64-1.
pub fn parse_key(s: &str) -> Result<ReservationKey, String> {
    let t = s.trim();
    let expected = "expected a 64-bit key: 0x1a2b (hex), 1a2bh (hex) or 6699 (decimal)";
    let parsed = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        hex_u64(h)
    } else if let Some(h) = t.strip_suffix('h').or_else(|| t.strip_suffix('H')) {
        hex_u64(h)
    } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<u64>().ok()
    } else {
        None
    };
    parsed
        .map(ReservationKey)
        .ok_or_else(|| format!("'{s}' is not a reservation key; {expected}"))
}

fn hex_u64(h: &str) -> Option<u64> {
    let h = h.replace('_', "");
    if h.is_empty() || h.len() > 16 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(&h, 16).ok()
}

/// A reservation type by long name (`write-exclusive-registrants-only`), short name (`we-ro`),
/// the standard's name in any case with spaces (`"WRITE EXCLUSIVE - REGISTRANTS ONLY"`), or
/// its code (`5`, `0x5`).
pub fn parse_type(s: &str) -> Result<ReservationType, String> {
    let t = s.trim();
    let norm = |x: &str| {
        x.to_ascii_lowercase()
            .replace(" - ", "-")
            .replace([' ', '_'], "-")
    };
    let n = norm(t);
    let by_name = ReservationType::ALL
        .iter()
        .copied()
        .find(|rt| n == rt.long_cli_name() || n == rt.short_name() || n == norm(rt.name()));
    if let Some(rt) = by_name {
        return Ok(rt);
    }
    let code = if let Some(h) = t.strip_prefix("0x") {
        u8::from_str_radix(h, 16).ok()
    } else {
        t.parse::<u8>().ok()
    };
    match code {
        Some(c) => ReservationType::from_code(c).ok_or_else(|| {
            format!("reservation type code {c} is reserved; valid codes are 1, 3, 5, 6, 7 and 8")
        }),
        None => Err(format!(
            "'{s}' is not a reservation type; expected one of {} (or their long names such as \
             write-exclusive-registrants-only, or a code 1, 3, 5-8)",
            ReservationType::ALL
                .iter()
                .map(|t| t.short_name())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A logical-unit identifier of the store (see [`LuId::new`]).
pub fn parse_lu(s: &str) -> Result<LuId, String> {
    LuId::new(s)
        .map_err(|e| format!("{e}; expected the identifier the store lists (pr-ctl store list)"))
}

/// A relative target port identifier, 1 to 65535 (0 is reserved).
pub fn parse_relative_port(s: &str) -> Result<RelativeTargetPort, String> {
    let t = s.trim();
    let v = if let Some(h) = t.strip_prefix("0x") {
        u16::from_str_radix(h, 16).ok()
    } else {
        t.parse::<u16>().ok()
    };
    match v {
        Some(0) => Err("relative target port 0 is reserved; expected 1 to 65535".into()),
        Some(p) => Ok(RelativeTargetPort(p)),
        None => Err(format!(
            "'{s}' is not a relative target port; expected a number from 1 to 65535"
        )),
    }
}

/// A TransportID, written as one of:
/// - `sas:0x50014050000000b1` or `naa.50014050000000b1` (a SAS address, as LIO names them);
/// - `fc:0x21000024ff000001` or `fc:21:00:00:24:ff:00:00:01` (an N_Port name);
/// - `iqn.…` or `eui.…` (an iSCSI name), optionally `…,i,0x<ISID>` for an initiator port.
pub fn parse_transport_id(s: &str) -> Result<TransportId, String> {
    let t = s.trim();
    let bad = |why: &str| {
        format!(
            "'{s}' is not a TransportID ({why}); expected sas:0x<16 hex digits>, \
             naa.<16 hex digits>, fc:0x<16 hex digits>, or an iSCSI name iqn.… / eui.… \
             with optional ',i,0x<ISID>'"
        )
    };
    let addr8 = |h: &str| -> Result<[u8; 8], String> {
        let h: String = h
            .trim_start_matches("0x")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        if h.len() != 16 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the address must be 16 hex digits"));
        }
        Ok(u64::from_str_radix(&h, 16)
            .map_err(|_| bad("bad hex"))?
            .to_be_bytes())
    };
    let lower = t.to_ascii_lowercase();
    if let Some(a) = lower.strip_prefix("sas:") {
        return Ok(TransportId::Sas {
            sas_address: addr8(a)?,
        });
    }
    if let Some(a) = lower.strip_prefix("naa.") {
        return Ok(TransportId::Sas {
            sas_address: addr8(a)?,
        });
    }
    if let Some(a) = lower.strip_prefix("fc:") {
        return Ok(TransportId::Fc {
            n_port_name: addr8(a)?,
        });
    }
    if lower.starts_with("iqn.") || lower.starts_with("eui.") {
        let (name, isid) = match t.split_once(",i,") {
            Some((n, i)) => {
                let i = i.trim_start_matches("0x");
                if i.is_empty() || !i.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("the ISID after ',i,' must be hex"));
                }
                (n, Some(i.to_string()))
            }
            None => (t, None),
        };
        if name.len() > 223 {
            return Err(bad("iSCSI names are at most 223 bytes"));
        }
        return Ok(TransportId::Iscsi {
            name: name.to_string(),
            isid,
        });
    }
    Err(bad("unknown form"))
}

/// Hex bytes, ignoring whitespace and colons.
pub fn parse_hex(what: &str, s: &str) -> Result<Vec<u8>, String> {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if !clean.len().is_multiple_of(2) {
        return Err(format!("{what} '{s}' has an odd number of hex digits"));
    }
    (0..clean.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&clean[i..i + 2], 16)
                .map_err(|_| format!("{what} '{s}' is not hex (digits 0-9, a-f)"))
        })
        .collect()
}

/// Lower-case hex of `b`, no separators.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_every_notation() {
        assert_eq!(parse_key("0x1a2b").unwrap(), ReservationKey(0x1a2b));
        assert_eq!(parse_key("1a2bh").unwrap(), ReservationKey(0x1a2b));
        assert_eq!(parse_key("6699").unwrap(), ReservationKey(6699));
        assert_eq!(
            parse_key("0xffffffffffffffff").unwrap(),
            ReservationKey(u64::MAX)
        );
        assert_eq!(
            parse_key("18446744073709551615").unwrap(),
            ReservationKey(u64::MAX)
        );
        for bad in [
            "",
            "0x",
            "0x10000000000000000",
            "18446744073709551616",
            "12ab",
            "-1",
            "key",
        ] {
            let e = parse_key(bad).unwrap_err();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
    }

    #[test]
    fn types_by_every_name_and_code() {
        use ReservationType::*;
        for (s, t) in [
            ("we-ro", WriteExclusiveRegistrantsOnly),
            (
                "write-exclusive-registrants-only",
                WriteExclusiveRegistrantsOnly,
            ),
            (
                "WRITE EXCLUSIVE - REGISTRANTS ONLY",
                WriteExclusiveRegistrantsOnly,
            ),
            ("5", WriteExclusiveRegistrantsOnly),
            ("0x5", WriteExclusiveRegistrantsOnly),
            ("ea", ExclusiveAccess),
            ("1", WriteExclusive),
            ("ea-ar", ExclusiveAccessAllRegistrants),
            ("8", ExclusiveAccessAllRegistrants),
        ] {
            assert_eq!(parse_type(s).unwrap(), t, "{s}");
        }
        assert!(parse_type("2").unwrap_err().contains("reserved"));
        assert!(parse_type("exclusive").unwrap_err().contains("we-ro"));
    }

    #[test]
    fn transport_ids() {
        assert_eq!(
            parse_transport_id("naa.50014050000000b1").unwrap(),
            TransportId::Sas {
                sas_address: 0x5001_4050_0000_00b1u64.to_be_bytes()
            }
        );
        assert_eq!(
            parse_transport_id("sas:0x50014050000000B1").unwrap(),
            parse_transport_id("naa.50014050000000b1").unwrap()
        );
        assert_eq!(
            parse_transport_id("fc:21:00:00:24:ff:00:00:01").unwrap(),
            TransportId::Fc {
                n_port_name: 0x2100_0024_ff00_0001u64.to_be_bytes()
            }
        );
        assert_eq!(
            parse_transport_id("iqn.2003-01.org.example:a,i,0x23d000000001").unwrap(),
            TransportId::Iscsi {
                name: "iqn.2003-01.org.example:a".into(),
                isid: Some("23d000000001".into())
            }
        );
        assert!(parse_transport_id("naa.123").is_err());
        assert!(parse_transport_id("wwn-0x1").unwrap_err().contains("naa."));
        assert!(parse_relative_port("0").is_err());
        assert_eq!(parse_relative_port("2").unwrap(), RelativeTargetPort(2));
    }

    #[test]
    fn hex_strings() {
        assert_eq!(parse_hex("x", "5e 00:01").unwrap(), vec![0x5e, 0, 1]);
        assert!(parse_hex("--cdb", "5").unwrap_err().contains("odd"));
        assert!(parse_hex("--cdb", "zz").unwrap_err().contains("--cdb"));
    }
}
