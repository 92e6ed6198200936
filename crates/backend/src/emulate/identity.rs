//! The initiator an emulated logical unit sees behind one helper socket.
//!
//! QEMU's pr-manager-helper protocol names no initiator, so the helper names one from its
//! socket, the same on every start:
//!
//! - libvirt's managed mode runs one helper per VM on
//!   `<libDir>/domain-<shortname>/pr-helper0.sock`, where `<shortname>` is
//!   `<id>-<name truncated to 20 characters>` (older libvirt: the plain name) — libvirt's
//!   `qemuDomainSetPrivatePaths` and `qemuDomainGetManagedPRSocketPath`. The domain id changes
//!   on every VM start, so the initiator is derived from the name alone:
//!   `iqn.2026-12.org.pr-helper:vm.<name>`.
//! - Any other socket: from its whole path, `iqn.2026-12.org.pr-helper:socket.<path>`.
//!
//! The TransportID is iSCSI format 00b, on relative target port 1. iSCSI names allow only
//! lower-case letters, digits, `-`, `.` and `:` (RFC 3720 §3.2.6.2) and at most 223 bytes; a
//! name or path that does not map onto them one to one, or is too long, gets a different form,
//! `vm-<hash>.<sanitized>` / `socket-<hash>.<sanitized>`, with a 64-bit FNV-1a hash of the
//! original, so two different inputs never share an initiator by accident.

use std::path::Path;

use pr_engine::Nexus;
use pr_scsi::transport_id::TransportId;
use pr_scsi::RelativeTargetPort;

/// The naming authority of derived initiator names.
pub const IQN_PREFIX: &str = "iqn.2026-12.org.pr-helper";

/// Longest iSCSI name, in bytes (RFC 3720 §3.2.6.1; SPC-4 format 00b has room for 223 + NUL).
pub const MAX_ISCSI_NAME_LEN: usize = 223;

/// The target port of derived identities.
pub const DEFAULT_RELATIVE_TARGET_PORT: RelativeTargetPort = RelativeTargetPort(1);

/// The socket libvirt's managed mode gives each VM's helper.
const LIBVIRT_SOCKET: &str = "pr-helper0.sock";
const LIBVIRT_DOMAIN_DIR: &str = "domain-";

/// An initiator name from the configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "initiator = \"{0}\" is not an iSCSI name; expected \"iqn.YYYY-MM.reversed.domain[:id]\" \
         (or eui./naa.), lower case, letters, digits, '-', '.' and ':' only, optionally followed \
         by \",i,0x<ISID>\" (12 hex digits); or \"sas:0x<16 hex digits>\" / \"fc:0x<16 hex digits>\""
    )]
    NotIscsiName(String),
    #[error(
        "initiator = \"{0}\" is not a SAS address or FC N_Port name; expected {1}:0x followed by \
         16 hex digits"
    )]
    BadAddress(String, &'static str),
    #[error("initiator = \"{0}…\" is longer than {MAX_ISCSI_NAME_LEN} bytes")]
    TooLong(String),
    #[error("relative_target_port = {0} is out of range; expected 1 to 65535")]
    BadPort(i64),
}

/// The VM name of a libvirt managed-mode socket path, if `socket` is one.
pub fn libvirt_vm_name(socket: &Path) -> Option<&str> {
    if socket.file_name()? != LIBVIRT_SOCKET {
        return None;
    }
    let dir = socket.parent()?.file_name()?.to_str()?;
    let short = dir.strip_prefix(LIBVIRT_DOMAIN_DIR)?;
    // "<id>-<name>": drop the id, which changes on every start.
    let name = match short.split_once('-') {
        Some((id, rest))
            if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty() =>
        {
            rest
        }
        _ => short,
    };
    (!name.is_empty()).then_some(name)
}

/// The iSCSI initiator name derived from a helper's socket path (see the module comment).
pub fn derived_initiator_name(socket: &Path) -> String {
    match libvirt_vm_name(socket) {
        Some(vm) => qualified("vm", vm),
        None => qualified("socket", &socket.to_string_lossy()),
    }
}

/// The I_T nexus derived from a helper's socket path: iSCSI format 00b, target port 1.
pub fn derived_nexus(socket: &Path) -> Nexus {
    Nexus {
        initiator: TransportId::Iscsi {
            name: derived_initiator_name(socket),
            isid: None,
        },
        relative_target_port: DEFAULT_RELATIVE_TARGET_PORT,
    }
}

/// `IQN_PREFIX:<kind>.<text>` when `text` maps one to one onto iSCSI characters and fits;
/// else `IQN_PREFIX:<kind>-<hash>.<sanitized, truncated>`.
fn qualified(kind: &str, text: &str) -> String {
    // '/' becomes ':' (which a lossless text never contains), so the mapping is one to one.
    let lossless = text
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '/'));
    let sanitized: String = text
        .chars()
        .map(|c| match c {
            '/' => ':',
            c if c.is_ascii_alphanumeric() || c == '-' || c == '.' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let plain = format!("{IQN_PREFIX}:{kind}.{sanitized}");
    if lossless && plain.len() <= MAX_ISCSI_NAME_LEN {
        return plain;
    }
    let mut hashed = format!("{IQN_PREFIX}:{kind}-{:016x}.", fnv1a64(text.as_bytes()));
    let room = MAX_ISCSI_NAME_LEN - hashed.len();
    // Keep the end of a long path: it is the part that tells sockets apart.
    hashed.push_str(&sanitized[sanitized.len().saturating_sub(room)..]);
    hashed
}

/// 64-bit FNV-1a: small, and stable across Rust versions (std's hasher is not).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Validates a configured initiator and makes its TransportID (SPC-4 §7.6.4):
/// - an iSCSI name (`iqn.`, `eui.` or `naa.`), lower case, of the characters iSCSI names allow,
///   at most [`MAX_ISCSI_NAME_LEN`] bytes: format 00b (initiator device);
/// - the same followed by `,i,0x<ISID>` (12 hex digits): format 01b (initiator port);
/// - `sas:0x<16 hex digits>`: a SAS address (protocol 6), as tcm_loop's and SAS HBAs' ports;
/// - `fc:0x<16 hex digits>`: an FC N_Port name (protocol 0).
///
/// So an emulated LU can see the very TransportIDs a real target reports for its initiators.
pub fn parse_initiator(name: &str) -> Result<TransportId, IdentityError> {
    for (prefix, what) in [("sas:", "sas"), ("fc:", "fc")] {
        if let Some(hex) = name.strip_prefix(prefix) {
            let digits = hex.strip_prefix("0x").unwrap_or(hex);
            let bytes = (digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(digits, 16).ok())
                .flatten()
                .ok_or_else(|| IdentityError::BadAddress(name.chars().take(40).collect(), what))?
                .to_be_bytes();
            return Ok(if what == "sas" {
                TransportId::Sas { sas_address: bytes }
            } else {
                TransportId::Fc { n_port_name: bytes }
            });
        }
    }
    let (name, isid) = match name.split_once(",i,0x") {
        Some((n, i))
            if i.len() == 12
                && i.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            (n, Some(i.to_string()))
        }
        Some(_) => return Err(IdentityError::NotIscsiName(name.escape_debug().collect())),
        None => (name, None),
    };
    if name.len() > MAX_ISCSI_NAME_LEN {
        return Err(IdentityError::TooLong(name.chars().take(40).collect()));
    }
    let body = ["iqn.", "eui.", "naa."]
        .iter()
        .find_map(|p| name.strip_prefix(p));
    let valid = body.is_some_and(|b| {
        !b.is_empty()
            && b.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':')
            })
    });
    if !valid {
        return Err(IdentityError::NotIscsiName(name.escape_debug().collect()));
    }
    Ok(TransportId::Iscsi {
        name: name.to_string(),
        isid,
    })
}

/// Validates a configured relative target port (0 is reserved, SPC-4 §7.7.3.9).
pub fn parse_relative_target_port(port: i64) -> Result<RelativeTargetPort, IdentityError> {
    u16::try_from(port)
        .ok()
        .filter(|&p| p != 0)
        .map(RelativeTargetPort)
        .ok_or(IdentityError::BadPort(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(p: &str) -> String {
        derived_initiator_name(Path::new(p))
    }

    #[test]
    fn libvirt_managed_socket_is_named_after_the_vm_whatever_its_id() {
        let a = name("/var/lib/libvirt/qemu/domain-5-node-a/pr-helper0.sock");
        let b = name("/var/lib/libvirt/qemu/domain-6-node-a/pr-helper0.sock");
        assert_eq!(a, "iqn.2026-12.org.pr-helper:vm.node-a");
        assert_eq!(a, b);
        // Older libvirt: the plain name, no id.
        assert_eq!(
            name("/var/lib/libvirt/qemu/domain-node-a/pr-helper0.sock"),
            a
        );
        // Another libDir (session mode) names the same VM the same way.
        assert_eq!(
            name("/home/u/.config/libvirt/qemu/lib/domain-12-node-a/pr-helper0.sock"),
            a
        );
        assert_ne!(
            name("/var/lib/libvirt/qemu/domain-5-node-b/pr-helper0.sock"),
            a
        );
    }

    #[test]
    fn two_sockets_give_two_initiators() {
        let a = name("/run/pr-helper/vm1.sock");
        let b = name("/run/pr-helper/vm2.sock");
        assert_eq!(
            a,
            "iqn.2026-12.org.pr-helper:socket.:run:pr-helper:vm1.sock"
        );
        assert_ne!(a, b);
        // Not the libvirt layout: the whole path.
        assert!(name("/tmp/domain-5-x/other.sock").contains(":socket."));
        assert!(name("/tmp/x/pr-helper0.sock").contains(":socket."));
    }

    #[test]
    fn lossy_and_long_inputs_get_a_hash_and_never_collide() {
        let upper = name("/run/VM1.sock");
        let lower = name("/run/vm1.sock");
        let space = name("/run/vm 1.sock");
        let underscore = name("/run/vm_1.sock");
        assert!(
            upper.starts_with("iqn.2026-12.org.pr-helper:socket-"),
            "{upper}"
        );
        assert_ne!(upper, lower);
        assert_ne!(space, underscore, "both sanitize to vm-1 but hash apart");
        // A lossless name never looks like a hashed one.
        let tricky = name(&format!(
            "/run/vm1.sock-{:016x}.x",
            fnv1a64(b"/run/VM1.sock")
        ));
        assert_ne!(tricky, upper);
        let long_a = name(&format!("/run/{}/a.sock", "d".repeat(300)));
        let long_b = name(&format!("/run/{}/b.sock", "d".repeat(300)));
        assert_ne!(long_a, long_b);
        for n in [&upper, &space, &long_a, &long_b, &lower] {
            assert!(n.len() <= MAX_ISCSI_NAME_LEN, "{n}");
            assert!(parse_initiator(n).is_ok(), "{n}");
        }
        assert!(long_a.ends_with(":a.sock"), "{long_a}");
        // A VM name that is not lower-case ASCII.
        let vm = name("/var/lib/libvirt/qemu/domain-3-Nöde/pr-helper0.sock");
        assert!(vm.starts_with("iqn.2026-12.org.pr-helper:vm-"), "{vm}");
        assert!(parse_initiator(&vm).is_ok(), "{vm}");
    }

    #[test]
    fn derived_nexus_is_iscsi_format_00b_on_port_1() {
        let n = derived_nexus(Path::new("/run/a.sock"));
        assert_eq!(n.relative_target_port, RelativeTargetPort(1));
        // SPC-4 §7.6.4.6: byte 0 = format 00b, protocol 5 (iSCSI).
        assert_eq!(n.initiator.to_bytes()[0], 0x05);
    }

    #[test]
    fn configured_initiators_are_validated() {
        assert!(parse_initiator("iqn.2026-01.com.example:node1").is_ok());
        assert!(parse_initiator("eui.0123456789abcdef").is_ok());
        for bad in [
            "",
            "node1",
            "iqn.",
            "IQN.2026-01.com.example",
            "iqn.2026 x",
            "iqn.a_b",
        ] {
            let e = parse_initiator(bad).unwrap_err().to_string();
            assert!(e.contains("is not an iSCSI name"), "{bad}: {e}");
        }
        // The other TransportID forms (SPC-4 §7.6.4): SAS (protocol 6, address at bytes 4..12 of
        // 24), FC (protocol 0, N_Port name at 8..16), iSCSI format 01b (byte 0 = 0x45).
        let sas = parse_initiator("sas:0x5001405000000b01")
            .unwrap()
            .to_bytes();
        assert_eq!((sas.len(), sas[0]), (24, 0x06));
        assert_eq!(sas[4..12], [0x50, 0x01, 0x40, 0x50, 0, 0, 0x0b, 0x01]);
        let fc = parse_initiator("fc:2100001b32000001").unwrap().to_bytes();
        assert_eq!((fc.len(), fc[0], fc[8], fc[15]), (24, 0x00, 0x21, 0x01));
        let port = parse_initiator("iqn.2026-01.com.example:n1,i,0x23d000000001").unwrap();
        assert_eq!(port.to_bytes()[0], 0x45);
        assert_eq!(
            port,
            TransportId::Iscsi {
                name: "iqn.2026-01.com.example:n1".into(),
                isid: Some("23d000000001".into())
            }
        );
        for bad in [
            "sas:0x12",
            "sas:0x5001405000000b0g",
            "fc:",
            "sas:0x5001405000000b011",
        ] {
            let e = parse_initiator(bad).unwrap_err().to_string();
            assert!(
                e.contains("is not a SAS address or FC N_Port name"),
                "{bad}: {e}"
            );
        }
        for bad in [
            "iqn.2026-01.com.example:n1,i,0x12",
            "iqn.x,i,0x23D000000001",
        ] {
            let e = parse_initiator(bad).unwrap_err().to_string();
            assert!(e.contains("is not an iSCSI name"), "{bad}: {e}");
        }
        let e = parse_initiator(&format!("iqn.{}", "a".repeat(230))).unwrap_err();
        assert!(e.to_string().contains("longer than 223 bytes"), "{e}");
        assert_eq!(parse_relative_target_port(2), Ok(RelativeTargetPort(2)));
        for bad in [0, -1, 65536] {
            assert_eq!(
                parse_relative_target_port(bad),
                Err(IdentityError::BadPort(bad))
            );
        }
    }
}
