//! The Device Identification VPD page (83h, SPC-4 §7.8.6): the logical unit's identifier.
//!
//! An emulated logical unit is named in the store by the designator the device gives for the
//! *logical unit* (ASSOCIATION 00b), preferring, in this order, NAA (designator type 3h),
//! EUI-64 (2h) and SCSI name string (8h): the ones SPC-4 makes worldwide unique. Rendered as
//! Linux names them (`naa.` / `eui.` and lower-case hex digits; a SCSI name string is already
//! text: `naa.…`, `eui.…` or `iqn.…`).
//!
//! Everything a device writes is untrusted: every length is checked against the bytes
//! actually returned, a page that claims more than it holds is cut to what it holds, and a
//! malformed designator is skipped, never trusted.

/// INQUIRY (SPC-4 §6.6): operation code 12h.
pub const INQUIRY: u8 = 0x12;
/// The Device Identification VPD page code.
pub const DEVICE_IDENTIFICATION: u8 = 0x83;

/// The INQUIRY CDB that asks for VPD page `page` (EVPD=1) with `allocation_length`.
pub fn inquiry_vpd_cdb(page: u8, allocation_length: u16) -> [u8; 6] {
    let a = allocation_length.to_be_bytes();
    [INQUIRY, 0x01, page, a[0], a[1], 0]
}

/// Why a reply is not a usable Device Identification page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VpdError {
    #[error("the VPD reply has {0} bytes, fewer than the 4-byte page header")]
    Short(usize),
    #[error("the VPD reply is page {0:#04x}, not the Device Identification page (83h)")]
    WrongPage(u8),
}

/// The kinds of designators used as a logical unit's identifier, most preferred first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DesignatorKind {
    Naa,
    Eui64,
    ScsiName,
}

/// A logical unit's identifier from the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuDesignator {
    pub kind: DesignatorKind,
    /// `naa.<hex>`, `eui.<hex>` or the SCSI name string.
    pub name: String,
}

const CODE_SET_BINARY: u8 = 0x1;
const CODE_SET_UTF8: u8 = 0x3;
const ASSOCIATION_LU: u8 = 0x0;
const TYPE_EUI64: u8 = 0x2;
const TYPE_NAA: u8 = 0x3;
const TYPE_SCSI_NAME: u8 = 0x8;

fn hex(prefix: &str, bytes: &[u8]) -> String {
    let mut s = String::with_capacity(prefix.len() + 2 * bytes.len());
    s.push_str(prefix);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One designation descriptor's designator, if it names the logical unit in a form we use.
fn designator(code_set: u8, association: u8, kind: u8, d: &[u8]) -> Option<LuDesignator> {
    if association != ASSOCIATION_LU {
        return None;
    }
    match kind {
        TYPE_NAA if code_set == CODE_SET_BINARY => {
            // NAA field (bits 7–4 of the first byte): 2h, 3h, 5h are 8 bytes, 6h 16.
            let len = match d.first()? >> 4 {
                0x2 | 0x3 | 0x5 => 8,
                0x6 => 16,
                _ => return None,
            };
            (d.len() == len).then(|| LuDesignator {
                kind: DesignatorKind::Naa,
                name: hex("naa.", d),
            })
        }
        TYPE_EUI64 if code_set == CODE_SET_BINARY => {
            matches!(d.len(), 8 | 12 | 16).then(|| LuDesignator {
                kind: DesignatorKind::Eui64,
                name: hex("eui.", d),
            })
        }
        TYPE_SCSI_NAME if code_set == CODE_SET_UTF8 => {
            // NUL-terminated, NUL-padded; the name is what precedes the first NUL.
            let end = d.iter().position(|&b| b == 0).unwrap_or(d.len());
            let name = std::str::from_utf8(&d[..end]).ok()?;
            let known = ["naa.", "eui.", "iqn."]
                .iter()
                // Bytes, not a str slice: a multi-byte character may straddle the prefix.
                .any(|p| {
                    name.len() > p.len()
                        && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
                });
            let printable = name.chars().all(|c| c.is_ascii_graphic());
            (known && printable && name.len() <= 256).then(|| LuDesignator {
                kind: DesignatorKind::ScsiName,
                name: name.to_string(),
            })
        }
        _ => None,
    }
}

/// The logical unit's preferred designator in a Device Identification page (`Ok(None)`: the
/// page names the logical unit by none of NAA, EUI-64 or SCSI name string). Among several of
/// one kind the first is taken.
pub fn lu_designator(page: &[u8]) -> Result<Option<LuDesignator>, VpdError> {
    if page.len() < 4 {
        return Err(VpdError::Short(page.len()));
    }
    if page[1] != DEVICE_IDENTIFICATION {
        return Err(VpdError::WrongPage(page[1]));
    }
    let claimed = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let list = &page[4..page.len().min(4 + claimed)];
    let mut best: Option<LuDesignator> = None;
    let mut at = 0;
    while at + 4 <= list.len() {
        let code_set = list[at] & 0x0f;
        let association = (list[at + 1] >> 4) & 0x03;
        let kind = list[at + 1] & 0x0f;
        let len = usize::from(list[at + 3]);
        let Some(d) = list.get(at + 4..at + 4 + len) else {
            break;
        };
        if let Some(found) = designator(code_set, association, kind, d) {
            if best.as_ref().is_none_or(|b| found.kind < b.kind) {
                best = Some(found);
            }
        }
        at += 4 + len;
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A designation descriptor laid out as SPC-4 table "Designation descriptor": byte 0
    /// PROTOCOL IDENTIFIER (7–4) and CODE SET (3–0), byte 1 PIV (7), ASSOCIATION (5–4) and
    /// DESIGNATOR TYPE (3–0), byte 2 reserved, byte 3 DESIGNATOR LENGTH, then the designator.
    fn descriptor(code_set: u8, association: u8, kind: u8, d: &[u8]) -> Vec<u8> {
        let mut v = vec![code_set, (association << 4) | kind, 0, d.len() as u8];
        v.extend_from_slice(d);
        v
    }

    /// The page (SPC-4 table "Device Identification VPD page"): byte 0 peripheral qualifier
    /// and device type (00h: a connected direct-access device), byte 1 page code 83h, bytes
    /// 2–3 PAGE LENGTH, then the descriptors.
    fn page(descriptors: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = descriptors.concat();
        let mut v = vec![0x00, 0x83];
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(&body);
        v
    }

    /// NAA IEEE Registered Extended (NAA 6h, 16 bytes) as LIO gives its LUs: 6h, the
    /// OUI 001405h, then the vendor-specific identifier.
    const NAA6: [u8; 16] = [
        0x60, 0x01, 0x40, 0x5a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71, 0x82, 0x93, 0xa4, 0xb5,
        0xc6,
    ];

    #[test]
    fn naa_of_the_logical_unit_is_preferred() {
        // T10 vendor identification (type 1h, ASCII), a target-port association NAA, a
        // relative target port (type 4h), then the LU's NAA and a SCSI name string.
        let p = page(&[
            descriptor(0x2, 0, 0x1, b"LIO-ORG disk0"),
            descriptor(0x1, 1, 0x3, &[0x50, 1, 2, 3, 4, 5, 6, 7]),
            descriptor(0x1, 1, 0x4, &[0, 0, 0, 1]),
            descriptor(0x3, 0, 0x8, b"iqn.2003-01.org.example:lu\0\0"),
            descriptor(0x1, 0, 0x3, &NAA6),
        ]);
        assert_eq!(
            lu_designator(&p),
            Ok(Some(LuDesignator {
                kind: DesignatorKind::Naa,
                name: "naa.6001405a1b2c3d4e5f60718293a4b5c6".into()
            }))
        );
    }

    #[test]
    fn eui64_then_scsi_name_when_there_is_no_naa() {
        let eui = [0x00, 0x25, 0x38, 0xb1, 0x71, 0xb0, 0x07, 0x42];
        let p = page(&[
            descriptor(0x3, 0, 0x8, b"eui.002538B171B00742\0\0\0\0"),
            descriptor(0x1, 0, 0x2, &eui),
        ]);
        assert_eq!(
            lu_designator(&p).unwrap().unwrap().name,
            "eui.002538b171b00742"
        );
        let p = page(&[descriptor(0x3, 0, 0x8, b"iqn.2003-01.org.example:lu\0\0")]);
        assert_eq!(
            lu_designator(&p).unwrap().unwrap(),
            LuDesignator {
                kind: DesignatorKind::ScsiName,
                name: "iqn.2003-01.org.example:lu".into()
            }
        );
    }

    #[test]
    fn no_usable_designator() {
        // Only vendor-specific (0h), T10 (1h), MD5 (7h) designators, an NAA with the ASCII
        // code set, an NAA 8 bytes long claiming NAA 6h, and a target-device NAA.
        let p = page(&[
            descriptor(0x2, 0, 0x0, b"serial"),
            descriptor(0x2, 0, 0x1, b"VENDOR  PRODUCT"),
            descriptor(0x1, 0, 0x7, &[0; 16]),
            descriptor(0x2, 0, 0x3, b"60014050"),
            descriptor(0x1, 0, 0x3, &NAA6[..8]),
            descriptor(0x1, 2, 0x3, &NAA6),
        ]);
        assert_eq!(lu_designator(&p), Ok(None));
        assert_eq!(lu_designator(&page(&[])), Ok(None));
    }

    #[test]
    fn hostile_lengths_are_bounded() {
        assert_eq!(lu_designator(&[0, 0x83, 0]), Err(VpdError::Short(3)));
        assert_eq!(
            lu_designator(&[0, 0x80, 0, 0]),
            Err(VpdError::WrongPage(0x80))
        );
        // PAGE LENGTH claims more than was returned; the last descriptor's length runs past
        // the end: the complete descriptor before it is still used.
        let mut p = page(&[descriptor(0x1, 0, 0x3, &NAA6)]);
        p[2..4].copy_from_slice(&0xffffu16.to_be_bytes());
        p.extend_from_slice(&[0x01, 0x03, 0, 200, 0x60]);
        assert_eq!(
            lu_designator(&p).unwrap().unwrap().name,
            "naa.6001405a1b2c3d4e5f60718293a4b5c6"
        );
        // PAGE LENGTH shorter than the descriptors: those beyond it are not read.
        let mut p = page(&[descriptor(0x1, 0, 0x3, &NAA6)]);
        p[3] = 4;
        assert_eq!(lu_designator(&p), Ok(None));
        // A SCSI name string that is not UTF-8, or has control characters: skipped.
        let p = page(&[
            descriptor(0x3, 0, 0x8, b"iqn.\xff\xfe\0\0"),
            descriptor(0x3, 0, 0x8, b"iqn.a\nb\0\0\0"),
        ]);
        assert_eq!(lu_designator(&p), Ok(None));
        // Found by the fuzz target: a SCSI name string whose 4th byte begins a two-byte
        // UTF-8 character ("naa" + U+0343) panicked when its prefix was sliced as a str.
        let p = page(&[descriptor(0x3, 0, 0x8, "naa\u{343}x\0\0".as_bytes())]);
        assert_eq!(lu_designator(&p), Ok(None));
    }

    #[test]
    fn inquiry_cdb() {
        // SPC-4 table "INQUIRY command": 12h, EVPD (byte 1 bit 0), PAGE CODE, ALLOCATION
        // LENGTH (bytes 3–4), CONTROL.
        assert_eq!(
            inquiry_vpd_cdb(0x83, 0x0200),
            [0x12, 0x01, 0x83, 0x02, 0x00, 0x00]
        );
    }
}
