//! The device configuration (`--config FILE`, TOML): which backend serves which device.
//!
//! ```toml
//! # Backend for devices no [[device]] entry names:
//! #   "auto"   SG_IO passthrough; NVMe namespaces (which have no SG_IO) use the block-layer
//! #            PR ioctls (the default)
//! #   "sgio"   SG_IO passthrough for every device
//! #   "blkpr"  the block-layer PR ioctls for every block device (sg devices keep SG_IO)
//! default = "auto"
//! # dm-multipath maps through libmpathpersist: "auto" (when device-mapper and multipath-tools
//! # are present; the default) or "off"
//! multipath = "auto"
//!
//! [[device]]
//! path = "/dev/disk/by-id/dm-uuid-mpath-36001405abcdef"   # resolved once, at start-up
//! backend = "blkpr"
//!
//! [[device]]
//! dev = "8:32"                                              # or a device number
//! backend = "sgio"
//!
//! [[device]]
//! path = "/dev/loop0"
//! backend = "emulate"          # reservations in software, on the store below
//! lu = "shared-disk-1"         # the logical unit's name in the store
//!
//! [emulate]
//! store = "/var/lib/pr-helper/reservations.db"   # the default
//! initiator = "iqn.2026-01.com.example:node1"    # default: derived from the socket path; also
//!                                                # "name,i,0x<ISID>", "sas:0x<16 hex>", "fc:0x<16 hex>"
//! relative_target_port = 1                       # the default
//! max_registrations = 128                        # the default; at most 1023
//! ```
//!
//! Paths are resolved to device numbers when pr-helper starts (the sandbox forbids opening
//! files later), so a device that appears afterwards is matched only by `dev`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pr_backend::blkpr::BlkPrBackend;
use pr_backend::dispatch::Multipath;
use pr_backend::emulate::identity;
use pr_backend::sgio::SgIoBackend;
use pr_backend::{Backend, Dispatcher};
use pr_scsi::transport_id::TransportId;
use pr_scsi::RelativeTargetPort;
use pr_store::LuId;
use pr_sys::device::{DevNum, SCSI_GENERIC_MAJOR};
use serde::Deserialize;

/// A backend a device can be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    Sgio,
    Blkpr,
    Emulate,
}

impl BackendName {
    fn as_str(self) -> &'static str {
        match self {
            BackendName::Sgio => "sgio",
            BackendName::Blkpr => "blkpr",
            BackendName::Emulate => "emulate",
        }
    }
}

/// The backend for devices no entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultBackend {
    #[default]
    Auto,
    Sgio,
    Blkpr,
    /// Refused at load: an unnamed device's LU identity would be its VPD page 0x83 identifier,
    /// which is not implemented yet.
    Emulate,
}

/// Whether dm-multipath maps are recognised and served through libmpathpersist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MultipathMode {
    /// When device-mapper and multipath-tools' libmpathpersist are present (the default).
    #[default]
    Auto,
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    default: DefaultBackend,
    #[serde(default)]
    multipath: MultipathMode,
    #[serde(default, rename = "device")]
    devices: Vec<EntryFormat>,
    emulate: Option<EmulateFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmulateFormat {
    store: Option<PathBuf>,
    initiator: Option<String>,
    relative_target_port: Option<i64>,
    max_registrations: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFormat {
    path: Option<PathBuf>,
    dev: Option<String>,
    backend: BackendName,
    lu: Option<String>,
}

/// One device rule, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub dev: DevNum,
    pub backend: BackendName,
    /// The emulated logical unit, with `backend = "emulate"`.
    pub lu: Option<LuId>,
    /// How the file named it, for messages.
    pub named_as: String,
}

/// Where the store of the default configuration lives.
pub const DEFAULT_STORE: &str = "/var/lib/pr-helper/reservations.db";

/// The PR IN data of a reply is at most 8192 bytes; READ KEYS lists 8 bytes per key after an
/// 8-byte header, so more registrations could not all be read.
pub const MAX_REGISTRATIONS: usize = 1023;

/// The `[emulate]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulateSettings {
    /// The SQLite database file (absolute).
    pub store: PathBuf,
    /// The initiator, when configured; else derived from the socket path.
    pub initiator: Option<TransportId>,
    /// The target port, when configured; else 1.
    pub relative_target_port: Option<RelativeTargetPort>,
    /// The engine's registration limit.
    pub max_registrations: usize,
}

impl Default for EmulateSettings {
    fn default() -> Self {
        EmulateSettings {
            store: PathBuf::from(DEFAULT_STORE),
            initiator: None,
            relative_target_port: None,
            max_registrations: pr_engine::EngineConfig::default().max_registrations,
        }
    }
}

/// The validated device configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceConfig {
    pub default: DefaultBackend,
    pub multipath: MultipathMode,
    pub rules: Vec<DeviceRule>,
    pub emulate: EmulateSettings,
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: [[device]] entry {index}: {message}")]
    Entry {
        path: PathBuf,
        index: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Default { path: PathBuf, message: String },
    #[error("{path}: [emulate]: {message}")]
    Emulate { path: PathBuf, message: String },
}

/// Parses "MAJOR:MINOR".
fn parse_devnum(s: &str) -> Result<DevNum, String> {
    let bad =
        || format!("dev = \"{s}\" is not a device number; expected MAJOR:MINOR, e.g. \"8:16\"");
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    Ok(DevNum {
        major: a.trim().parse().map_err(|_| bad())?,
        minor: b.trim().parse().map_err(|_| bad())?,
    })
}

/// The device number of a path, which must be a block device or an sg character device.
fn resolve_path(p: &Path) -> Result<(DevNum, bool), String> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(p).map_err(|e| format!("path {}: {e}", p.display()))?;
    let ft = md.file_type();
    let dev = DevNum {
        major: rustix::fs::major(md.rdev()),
        minor: rustix::fs::minor(md.rdev()),
    };
    if ft.is_block_device() {
        Ok((dev, true))
    } else if ft.is_char_device() && dev.major == SCSI_GENERIC_MAJOR {
        Ok((dev, false))
    } else {
        Err(format!(
            "path {} is neither a block device nor an sg device",
            p.display()
        ))
    }
}

impl DeviceConfig {
    /// Reads and validates a configuration file, resolving paths to device numbers.
    pub fn load(path: &Path) -> Result<DeviceConfig, DeviceConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| DeviceConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        DeviceConfig::parse(&text, path)
    }

    /// Validates a configuration's text; `path` names it in messages.
    pub fn parse(text: &str, path: &Path) -> Result<DeviceConfig, DeviceConfigError> {
        let file: FileFormat = toml::from_str(text).map_err(|e| DeviceConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if file.default == DefaultBackend::Emulate {
            return Err(DeviceConfigError::Default {
                path: path.to_path_buf(),
                message: "default = \"emulate\" is not supported yet: a device no entry names \
                          would be identified by its VPD page 0x83 identifier, which pr-helper \
                          does not read yet; name each emulated device in a [[device]] entry with \
                          backend = \"emulate\" and lu = \"NAME\""
                    .into(),
            });
        }
        let emulate = EmulateSettings::parse(file.emulate, path)?;
        let mut rules: Vec<DeviceRule> = Vec::new();
        for (i, e) in file.devices.into_iter().enumerate() {
            let entry_err = |message: String| DeviceConfigError::Entry {
                path: path.to_path_buf(),
                index: i + 1,
                message,
            };
            let (dev, named_as, is_block) = match (&e.path, &e.dev) {
                (Some(p), None) => {
                    let (dev, block) = resolve_path(p).map_err(entry_err)?;
                    (dev, p.display().to_string(), Some(block))
                }
                (None, Some(d)) => (parse_devnum(d).map_err(entry_err)?, d.clone(), None),
                _ => {
                    return Err(entry_err(
                        "give exactly one of path = \"/dev/…\" or dev = \"MAJOR:MINOR\"".into(),
                    ))
                }
            };
            if e.backend == BackendName::Blkpr
                && (is_block == Some(false)
                    || dev.major == SCSI_GENERIC_MAJOR && is_block.is_none())
            {
                return Err(entry_err(format!(
                    "{named_as} is an sg character device; backend \"blkpr\" needs a block device"
                )));
            }
            let lu = match (e.backend, e.lu) {
                (BackendName::Emulate, Some(lu)) => {
                    Some(LuId::new(lu).map_err(|err| entry_err(format!("lu = …: {err}")))?)
                }
                (BackendName::Emulate, None) => {
                    return Err(entry_err(
                        "backend \"emulate\" needs lu = \"NAME\", the logical unit's name in \
                         the store (identification by VPD page 0x83 is not implemented yet)"
                            .into(),
                    ))
                }
                (b, Some(lu)) => {
                    return Err(entry_err(format!(
                        "lu = {lu:?} is only for backend = \"emulate\", not \"{}\"",
                        b.as_str()
                    )))
                }
                (_, None) => None,
            };
            if let Some(prev) = rules.iter().find(|r| r.dev == dev) {
                return Err(entry_err(format!(
                    "{named_as} is device {dev}, already configured by the entry for {}",
                    prev.named_as
                )));
            }
            rules.push(DeviceRule {
                dev,
                backend: e.backend,
                lu,
                named_as,
            });
        }
        Ok(DeviceConfig {
            default: file.default,
            multipath: file.multipath,
            rules,
            emulate,
        })
    }

    /// Whether any device is emulated (then the store is opened at start-up).
    pub fn configures_emulate(&self) -> bool {
        self.rules.iter().any(|r| r.backend == BackendName::Emulate)
    }

    /// The emulated devices and their logical units.
    pub fn emulated_units(&self) -> HashMap<DevNum, LuId> {
        self.rules
            .iter()
            .filter_map(|r| Some((r.dev, r.lu.clone()?)))
            .collect()
    }

    /// Whether any device may be served by the block-layer backend by configuration (then
    /// CAP_SYS_ADMIN is kept: kernels before 6.5 require it for IOC_PR_*).
    pub fn configures_blkpr(&self) -> bool {
        self.default == DefaultBackend::Blkpr
            || self.rules.iter().any(|r| r.backend == BackendName::Blkpr)
    }

    /// The dispatcher this configuration describes, with multipath support if started and the
    /// emulate backend if the store was opened.
    pub fn dispatcher(
        &self,
        sgio: SgIoBackend,
        multipath: Option<Multipath>,
        emulate: Option<Arc<dyn Backend>>,
    ) -> Dispatcher {
        let sgio_backend: Arc<dyn Backend> = Arc::new(sgio.clone());
        let blkpr_backend: Arc<dyn Backend> = Arc::new(BlkPrBackend::new(sgio));
        let mut d = Dispatcher::new(sgio_backend.clone());
        match self.default {
            DefaultBackend::Auto => d = d.with_nvme(blkpr_backend.clone()),
            DefaultBackend::Sgio => {}
            DefaultBackend::Blkpr => d = d.with_block_default(blkpr_backend.clone()),
            DefaultBackend::Emulate => unreachable!("refused by DeviceConfig::parse"),
        }
        for r in &self.rules {
            let backend = match (r.backend, &emulate) {
                (BackendName::Sgio, _) => &sgio_backend,
                (BackendName::Blkpr, _) => &blkpr_backend,
                (BackendName::Emulate, Some(e)) => e,
                // The daemon opens the store whenever a device is emulated.
                (BackendName::Emulate, None) => continue,
            };
            d = d.with_device(r.dev, backend.clone());
        }
        if let Some(m) = multipath {
            d = d.with_multipath(m);
        }
        d
    }

    /// One line per rule, for the start-up log.
    pub fn describe(&self) -> Vec<String> {
        let mut v = vec![format!("default backend: {:?}", self.default).to_lowercase()];
        v.extend(self.rules.iter().map(|r| {
            let lu =
                r.lu.as_ref()
                    .map(|lu| format!(", logical unit {lu}"))
                    .unwrap_or_default();
            format!(
                "device {} ({}): {}{lu}",
                r.dev,
                r.named_as,
                r.backend.as_str()
            )
        }));
        v
    }
}

impl EmulateSettings {
    fn parse(table: Option<EmulateFormat>, path: &Path) -> Result<Self, DeviceConfigError> {
        let mut s = EmulateSettings::default();
        let Some(t) = table else { return Ok(s) };
        let err = |message: String| DeviceConfigError::Emulate {
            path: path.to_path_buf(),
            message,
        };
        if let Some(store) = t.store {
            if !store.is_absolute() {
                return Err(err(format!(
                    "store = \"{}\" must be an absolute path, e.g. \"{DEFAULT_STORE}\"",
                    store.display()
                )));
            }
            s.store = store;
        }
        if let Some(i) = t.initiator {
            s.initiator = Some(identity::parse_initiator(&i).map_err(|e| err(e.to_string()))?);
        }
        if let Some(p) = t.relative_target_port {
            s.relative_target_port =
                Some(identity::parse_relative_target_port(p).map_err(|e| err(e.to_string()))?);
        }
        if let Some(m) = t.max_registrations {
            s.max_registrations = usize::try_from(m)
                .ok()
                .filter(|m| (1..=MAX_REGISTRATIONS).contains(m))
                .ok_or_else(|| {
                    err(format!(
                        "max_registrations = {m} is out of range; expected 1 to \
                         {MAX_REGISTRATIONS} (READ KEYS must fit in 8192 bytes)"
                    ))
                })?;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DeviceConfig, String> {
        DeviceConfig::parse(text, Path::new("/etc/pr-helper.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_auto() {
        assert_eq!(parse("").unwrap(), DeviceConfig::default());
        assert!(!parse("").unwrap().configures_blkpr());
    }

    #[test]
    fn rules_by_number_and_path() {
        let c = parse(
            "default = \"sgio\"\n[[device]]\ndev = \"8:16\"\nbackend = \"blkpr\"\n\
             [[device]]\npath = \"/dev/loop-control\"\nbackend = \"sgio\"\n",
        );
        // /dev/loop-control is a character device that is not sg: refused with its name.
        assert_eq!(
            c.unwrap_err(),
            "/etc/pr-helper.toml: [[device]] entry 2: path /dev/loop-control is neither a block \
             device nor an sg device"
        );
        let c = parse("[[device]]\ndev = \"8:16\"\nbackend = \"blkpr\"\n").unwrap();
        assert_eq!(
            c.rules,
            vec![DeviceRule {
                dev: DevNum {
                    major: 8,
                    minor: 16
                },
                backend: BackendName::Blkpr,
                lu: None,
                named_as: "8:16".into()
            }]
        );
        assert!(c.configures_blkpr());
        assert!(parse("default = \"blkpr\"").unwrap().configures_blkpr());
    }

    #[test]
    fn multipath_switch() {
        assert_eq!(parse("").unwrap().multipath, MultipathMode::Auto);
        let c = parse("default = \"sgio\"\nmultipath = \"off\"\n").unwrap();
        assert_eq!(c.multipath, MultipathMode::Off);
        let e = parse("multipath = \"yes\"").unwrap_err();
        assert!(
            e.contains("unknown variant `yes`, expected `auto` or `off`"),
            "{e}"
        );
    }

    #[test]
    fn every_mistake_is_named() {
        let e = parse("default = \"fast\"").unwrap_err();
        assert!(e.starts_with("/etc/pr-helper.toml: "), "{e}");
        assert!(e.contains("unknown variant `fast`"), "{e}");
        assert!(e.contains("auto"), "{e}");
        let e = parse("[[device]]\ndev = \"8\"\nbackend = \"sgio\"").unwrap_err();
        assert!(
            e.contains("entry 1: dev = \"8\" is not a device number"),
            "{e}"
        );
        let e = parse("[[device]]\nbackend = \"sgio\"").unwrap_err();
        assert!(e.contains("exactly one of path"), "{e}");
        let e = parse("[[device]]\ndev = \"21:0\"\nbackend = \"blkpr\"").unwrap_err();
        assert!(e.contains("needs a block device"), "{e}");
        let e = parse("[[device]]\npath = \"/nonexistent\"\nbackend = \"blkpr\"").unwrap_err();
        assert!(e.contains("path /nonexistent: No such file"), "{e}");
        let e = parse(
            "[[device]]\ndev = \"8:0\"\nbackend = \"sgio\"\n[[device]]\ndev = \"8:0\"\nbackend = \"blkpr\"",
        )
        .unwrap_err();
        assert!(
            e.contains("entry 2: 8:0 is device 8:0, already configured"),
            "{e}"
        );
        let e = parse("colour = 1").unwrap_err();
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn emulated_devices_and_the_emulate_table() {
        let c = parse(
            "[[device]]\ndev = \"7:0\"\nbackend = \"emulate\"\nlu = \"disk-1\"\n\
             [emulate]\nstore = \"/srv/pr.db\"\ninitiator = \"iqn.2026-01.com.example:n1\"\n\
             relative_target_port = 2\nmax_registrations = 16\n",
        )
        .unwrap();
        assert!(c.configures_emulate() && !c.configures_blkpr());
        assert_eq!(
            c.emulated_units(),
            HashMap::from([(DevNum { major: 7, minor: 0 }, LuId::new("disk-1").unwrap())])
        );
        assert_eq!(c.emulate.store, Path::new("/srv/pr.db"));
        assert_eq!(
            c.emulate.initiator,
            Some(TransportId::Iscsi {
                name: "iqn.2026-01.com.example:n1".into(),
                isid: None
            })
        );
        assert_eq!(c.emulate.relative_target_port, Some(RelativeTargetPort(2)));
        assert_eq!(c.emulate.max_registrations, 16);
        let d = parse("").unwrap();
        assert!(!d.configures_emulate());
        assert_eq!(d.emulate.store, Path::new(DEFAULT_STORE));
        assert_eq!(d.emulate.initiator, None);
        // The TransportIDs the lab gives its daemons: LIO's tcm_loop SAS addresses and iSCSI
        // initiator ports with their ISID.
        let sas = parse("[emulate]\ninitiator = \"sas:0x5001405000000b01\"\n").unwrap();
        assert_eq!(
            sas.emulate.initiator,
            Some(TransportId::Sas {
                sas_address: [0x50, 0x01, 0x40, 0x50, 0, 0, 0x0b, 0x01]
            })
        );
        let port =
            parse("[emulate]\ninitiator = \"iqn.2026-11.org.x:i1,i,0x00023d000003\"\n").unwrap();
        assert_eq!(
            port.emulate.initiator,
            Some(TransportId::Iscsi {
                name: "iqn.2026-11.org.x:i1".into(),
                isid: Some("00023d000003".into())
            })
        );
    }

    #[test]
    fn emulate_mistakes_are_named() {
        let e = parse("[[device]]\ndev = \"7:0\"\nbackend = \"emulate\"").unwrap_err();
        assert!(
            e.starts_with(
                "/etc/pr-helper.toml: [[device]] entry 1: backend \"emulate\" needs lu = \"NAME\""
            ),
            "{e}"
        );
        let e = parse("[[device]]\ndev = \"7:0\"\nbackend = \"emulate\"\nlu = \" x\"").unwrap_err();
        assert!(
            e.contains(
                "entry 1: lu = …: logical unit identifier \" x\" begins or ends with white space"
            ),
            "{e}"
        );
        let e = parse("[[device]]\ndev = \"7:0\"\nbackend = \"sgio\"\nlu = \"x\"").unwrap_err();
        assert!(
            e.contains("entry 1: lu = \"x\" is only for backend = \"emulate\", not \"sgio\""),
            "{e}"
        );
        let e = parse("default = \"emulate\"").unwrap_err();
        assert!(
            e.starts_with("/etc/pr-helper.toml: default = \"emulate\" is not supported yet"),
            "{e}"
        );
        assert!(e.contains("VPD page 0x83"), "{e}");
        let e = parse("[emulate]\ninitiator = \"node1\"").unwrap_err();
        assert!(
            e.starts_with(
                "/etc/pr-helper.toml: [emulate]: initiator = \"node1\" is not an iSCSI name"
            ),
            "{e}"
        );
        let e = parse("[emulate]\nstore = \"pr.db\"").unwrap_err();
        assert!(
            e.contains("[emulate]: store = \"pr.db\" must be an absolute path"),
            "{e}"
        );
        let e = parse("[emulate]\nrelative_target_port = 0").unwrap_err();
        assert!(
            e.contains("[emulate]: relative_target_port = 0 is out of range; expected 1 to 65535"),
            "{e}"
        );
        let e = parse("[emulate]\nmax_registrations = 5000").unwrap_err();
        assert!(
            e.contains("[emulate]: max_registrations = 5000 is out of range; expected 1 to 1023"),
            "{e}"
        );
        let e = parse("[emulate]\npath = \"/x\"").unwrap_err();
        assert!(e.contains("unknown field `path`"), "{e}");
    }
}
