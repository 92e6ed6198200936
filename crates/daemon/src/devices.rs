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
//! lu = "shared-disk-1"         # the LU's name in the store when it has no VPD 0x83 identifier
//!
//! [[device]]
//! id = "naa.6001405a1b2c3d4e5f60718293a4b5c6"  # every device with this VPD page 0x83
//! backend = "emulate"                          # identifier (found at start-up)
//!
//! [emulate]
//! store = "/var/lib/pr-helper/reservations.db"   # the default: a SQLite file of this host
//! # or an etcd cluster shared by hosts (pr-store-config: endpoints, TLS files, prefix, timeouts):
//! # store = { kind = "etcd", endpoints = ["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"] }
//! initiator = "iqn.2026-01.com.example:node1"    # default: derived from the socket path; also
//!                                                # "name,i,0x<ISID>", "sas:0x<16 hex>", "fc:0x<16 hex>"
//! relative_target_port = 1                       # the default
//! max_registrations = 128                        # the default; at most 1023
//! max_batch = 256                                # PR OUTs per group commit (1: an fsync each)
//!
//! # More listening sockets besides -k, each its own initiator of the emulated devices (a VM
//! # per socket): a connection on it is that I_T nexus.
//! [[socket]]
//! path = "/run/pr-helper/vm2.sock"               # absolute; created like -k
//! initiator = "iqn.2026-01.com.example:vm2"      # default: derived from the path, as for -k
//! relative_target_port = 1                       # the default
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
use pr_engine::Nexus;
use pr_scsi::transport_id::TransportId;
use pr_scsi::RelativeTargetPort;
use pr_store::LuId;
use pr_store_config::{StoreSelection, StoreSetting};
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
    /// Every device found at start-up with a VPD page 0x83 identifier is emulated under it;
    /// the others are served as with `Auto`.
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
    #[serde(default, rename = "socket")]
    sockets: Vec<SocketFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SocketFormat {
    path: toml::Spanned<PathBuf>,
    initiator: Option<String>,
    relative_target_port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmulateFormat {
    store: Option<StoreSetting>,
    initiator: Option<String>,
    relative_target_port: Option<i64>,
    max_registrations: Option<i64>,
    max_batch: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFormat {
    path: Option<PathBuf>,
    dev: Option<String>,
    id: Option<String>,
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
    /// Where `lu` came from ("VPD page 0x83", "configured name"), for the log.
    pub lu_from: &'static str,
    /// How the file named it, for messages.
    pub named_as: String,
}

/// One more listening socket (`[[socket]]`), validated: connections on it are the I_T nexus
/// `initiator` on `relative_target_port` for emulated devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRule {
    /// Where to listen (absolute).
    pub path: PathBuf,
    /// The configured initiator; else derived from `path` as for `-k`.
    pub initiator: Option<TransportId>,
    /// The configured target port; else 1.
    pub relative_target_port: Option<RelativeTargetPort>,
    /// The line of its `path`, for messages.
    pub line: usize,
}

impl SocketRule {
    /// The I_T nexus of connections on this socket.
    pub fn nexus(&self) -> Nexus {
        let mut n = match &self.initiator {
            Some(i) => Nexus {
                initiator: i.clone(),
                relative_target_port: identity::DEFAULT_RELATIVE_TARGET_PORT,
            },
            None => identity::derived_nexus(&self.path),
        };
        if let Some(p) = self.relative_target_port {
            n.relative_target_port = p;
        }
        n
    }
}

/// Where the store of the default configuration lives.
pub const DEFAULT_STORE: &str = "/var/lib/pr-helper/reservations.db";

/// The PR IN data of a reply is at most 8192 bytes; READ KEYS lists 8 bytes per key after an
/// 8-byte header, so more registrations could not all be read.
pub const MAX_REGISTRATIONS: usize = 1023;

/// The `[emulate]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulateSettings {
    /// The store: a SQLite database file (absolute) or an etcd cluster.
    pub store: StoreSelection,
    /// The initiator, when configured; else derived from the socket path.
    pub initiator: Option<TransportId>,
    /// The target port, when configured; else 1.
    pub relative_target_port: Option<RelativeTargetPort>,
    /// The engine's registration limit.
    pub max_registrations: usize,
    /// Most commands the store commits in one transaction (one fsync).
    pub max_batch: usize,
}

/// Largest `max_batch`.
pub const MAX_BATCH: usize = 4096;

impl Default for EmulateSettings {
    fn default() -> Self {
        EmulateSettings {
            store: StoreSelection::Sqlite {
                path: PathBuf::from(DEFAULT_STORE),
            },
            initiator: None,
            relative_target_port: None,
            max_registrations: pr_engine::EngineConfig::default().max_registrations,
            max_batch: pr_store::SqliteOptions::default().max_batch,
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
    /// Listening sockets besides `-k`, in file order.
    pub sockets: Vec<SocketRule>,
    /// With `default = "emulate"`: the devices found without a usable identifier (and why),
    /// which keep the `auto` backend.
    pub unidentified: Vec<String>,
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
    #[error("{path}: [[socket]] entry {index} (line {line}): {message}")]
    Socket {
        path: PathBuf,
        index: usize,
        line: usize,
        message: String,
    },
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
        let emulate = EmulateSettings::parse(file.emulate, path)?;
        let mut rules: Vec<DeviceRule> = Vec::new();
        // The devices found at start-up and their identifiers, read once when needed.
        let mut scanned: Option<Vec<Scanned>> = None;
        for (i, e) in file.devices.into_iter().enumerate() {
            let entry_err = |message: String| DeviceConfigError::Entry {
                path: path.to_path_buf(),
                index: i + 1,
                message,
            };
            if let Some(id) = &e.id {
                if e.path.is_some() || e.dev.is_some() {
                    return Err(entry_err(
                        "give exactly one of path = \"/dev/…\", dev = \"MAJOR:MINOR\" or id = \
                         \"naa.…\""
                            .into(),
                    ));
                }
                if e.backend != BackendName::Emulate {
                    return Err(entry_err(format!(
                        "id = {id:?} selects devices for backend = \"emulate\" only, not \"{}\"",
                        e.backend.as_str()
                    )));
                }
                if e.lu.is_some() {
                    return Err(entry_err(
                        "with id = …, the logical unit is that identifier; remove lu = …".into(),
                    ));
                }
                let lu =
                    LuId::new(id.clone()).map_err(|err| entry_err(format!("id = …: {err}")))?;
                let found: Vec<&Scanned> = scanned
                    .get_or_insert_with(scan_devices)
                    .iter()
                    .filter(|d| {
                        // Hex digits in either case: "naa.6001405A…" is the same identifier.
                        d.id.as_ref()
                            .is_ok_and(|i| i.as_deref().is_some_and(|i| i.eq_ignore_ascii_case(id)))
                    })
                    .collect();
                if found.is_empty() {
                    let known: Vec<String> = scanned
                        .iter()
                        .flatten()
                        .filter_map(|d| {
                            Some(format!("{} {}", d.node, d.id.as_ref().ok()?.as_ref()?))
                        })
                        .collect();
                    return Err(entry_err(format!(
                        "no device present has the VPD page 0x83 identifier {id}; expected one \
                         of the devices' identifiers ({})",
                        if known.is_empty() {
                            "no device has one".to_string()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
                for d in found {
                    if let Some(prev) = rules.iter().find(|r| r.dev == d.dev) {
                        return Err(entry_err(format!(
                            "{} (device {}, identifier {id}) is already configured by the entry \
                             for {}",
                            d.node, d.dev, prev.named_as
                        )));
                    }
                    // Named as the device spells it, as with default = "emulate".
                    let lu =
                        d.id.as_ref()
                            .ok()
                            .and_then(|i| LuId::new(i.clone()?).ok())
                            .unwrap_or_else(|| lu.clone());
                    rules.push(DeviceRule {
                        dev: d.dev,
                        backend: BackendName::Emulate,
                        lu: Some(lu),
                        lu_from: "VPD page 0x83",
                        named_as: format!("{} (id {id})", d.node),
                    });
                }
                continue;
            }
            let (dev, named_as, is_block) = match (&e.path, &e.dev) {
                (Some(p), None) => {
                    let (dev, block) = resolve_path(p).map_err(entry_err)?;
                    (dev, p.display().to_string(), Some(block))
                }
                (None, Some(d)) => (parse_devnum(d).map_err(entry_err)?, d.clone(), None),
                _ => {
                    return Err(entry_err(
                        "give exactly one of path = \"/dev/…\", dev = \"MAJOR:MINOR\" or id = \
                         \"naa.…\""
                            .into(),
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
            let (lu, lu_from) = match (e.backend, e.lu) {
                (BackendName::Emulate, configured) => {
                    // The LU's identity: its VPD page 0x83 identifier, else the configured name.
                    let node = match &e.path {
                        Some(p) => p.clone(),
                        None => dev_node(dev),
                    };
                    match read_identifier(&node) {
                        Ok(Some(id)) => (
                            Some(LuId::new(id).map_err(|err| {
                                entry_err(format!(
                                    "the VPD page 0x83 identifier of {named_as}: {err}"
                                ))
                            })?),
                            "VPD page 0x83",
                        ),
                        other => match configured {
                            Some(lu) => (
                                Some(
                                    LuId::new(lu)
                                        .map_err(|err| entry_err(format!("lu = …: {err}")))?,
                                ),
                                "configured name",
                            ),
                            None => {
                                let why = match other {
                                    Err(e) => e,
                                    _ => "its VPD page 0x83 names the logical unit by no NAA, \
                                          EUI-64 or SCSI name string"
                                        .into(),
                                };
                                return Err(entry_err(format!(
                                    "backend \"emulate\" needs the logical unit's identity: \
                                     {named_as} has no VPD page 0x83 identifier ({why}); give \
                                     lu = \"NAME\", its name in the store"
                                )));
                            }
                        },
                    }
                }
                (b, Some(lu)) => {
                    return Err(entry_err(format!(
                        "lu = {lu:?} is only for backend = \"emulate\", not \"{}\"",
                        b.as_str()
                    )))
                }
                (_, None) => (None, ""),
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
                lu_from,
                named_as,
            });
        }
        let mut unidentified = Vec::new();
        if file.default == DefaultBackend::Emulate {
            for d in scanned.get_or_insert_with(scan_devices).iter() {
                if rules.iter().any(|r| r.dev == d.dev) {
                    continue;
                }
                match &d.id {
                    Ok(Some(id)) => match LuId::new(id.clone()) {
                        Ok(lu) => rules.push(DeviceRule {
                            dev: d.dev,
                            backend: BackendName::Emulate,
                            lu: Some(lu),
                            lu_from: "VPD page 0x83",
                            named_as: format!("{} (default)", d.node),
                        }),
                        Err(e) => unidentified.push(format!("{}: {e}", d.node)),
                    },
                    Ok(None) => unidentified.push(format!(
                        "{}: no NAA, EUI-64 or SCSI name designator",
                        d.node
                    )),
                    Err(e) => unidentified.push(format!("{}: {e}", d.node)),
                }
            }
        }
        let mut config = DeviceConfig {
            default: file.default,
            multipath: file.multipath,
            rules,
            emulate,
            sockets: Vec::new(),
            unidentified,
        };
        config.sockets = parse_sockets(file.sockets, text, path, config.configures_emulate())?;
        Ok(config)
    }

    /// Whether any device is emulated (then the store is opened at start-up).
    pub fn configures_emulate(&self) -> bool {
        self.default == DefaultBackend::Emulate
            || self.rules.iter().any(|r| r.backend == BackendName::Emulate)
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
            // The emulated devices are rules; every other device is served as with auto.
            DefaultBackend::Emulate => d = d.with_nvme(blkpr_backend.clone()),
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
                    .map(|lu| format!(", logical unit {lu} ({})", r.lu_from))
                    .unwrap_or_default();
            format!(
                "device {} ({}): {}{lu}",
                r.dev,
                r.named_as,
                r.backend.as_str()
            )
        }));
        v.extend(
            self.unidentified
                .iter()
                .map(|u| format!("default emulate: not emulated, no identifier: {u}")),
        );
        v
    }
}

/// A device found at start-up and its VPD page 0x83 identifier (or why there is none).
#[derive(Debug)]
struct Scanned {
    dev: DevNum,
    node: String,
    id: Result<Option<String>, String>,
}

/// Most devices asked for their identifier at start-up.
const MAX_SCANNED: usize = 4096;

/// The block devices (not partitions) and sg devices of the machine, from sysfs, each asked
/// for its identifier (as root, at start-up).
fn scan_devices() -> Vec<Scanned> {
    let mut found = Vec::new();
    for (class, dir) in [
        ("block", "/sys/class/block"),
        ("scsi_generic", "/sys/class/scsi_generic"),
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            if found.len() >= MAX_SCANNED {
                return found;
            }
            let sys = Path::new(dir).join(&name);
            if class == "block" && sys.join("partition").exists() {
                continue;
            }
            let Some(dev) = std::fs::read_to_string(sys.join("dev"))
                .ok()
                .and_then(|t| parse_devnum(t.trim()).ok())
            else {
                continue;
            };
            let node = format!("/dev/{name}");
            let id = read_identifier(Path::new(&node));
            found.push(Scanned { dev, node, id });
        }
    }
    found
}

/// The device node of a device number (udev's /dev/block and /dev/char links).
fn dev_node(dev: DevNum) -> PathBuf {
    let kind = if dev.major == SCSI_GENERIC_MAJOR {
        "char"
    } else {
        "block"
    };
    PathBuf::from(format!("/dev/{kind}/{}:{}", dev.major, dev.minor))
}

/// How long start-up waits for one device's INQUIRY.
const INQUIRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The VPD page 0x83 identifier of the device at `node` (`Ok(None)`: the page has none that
/// names the logical unit; `Err`: no page, in words).
fn read_identifier(node: &Path) -> Result<Option<String>, String> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(node)
        .map_err(|e| format!("cannot open {}: {e}", node.display()))?;
    pr_backend::emulate::vpd::read_lu_identifier(f.as_fd(), INQUIRY_TIMEOUT)
        .map(|d| d.map(|d| d.name))
}

/// Validates the `[[socket]]` entries; `text` gives their line numbers.
fn parse_sockets(
    entries: Vec<SocketFormat>,
    text: &str,
    path: &Path,
    emulates: bool,
) -> Result<Vec<SocketRule>, DeviceConfigError> {
    let mut rules: Vec<SocketRule> = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        let line = text
            .get(..e.path.span().start)
            .map_or(0, |t| t.matches('\n').count() + 1);
        let err = |message: String| DeviceConfigError::Socket {
            path: path.to_path_buf(),
            index: i + 1,
            line,
            message,
        };
        let socket = e.path.into_inner();
        if !emulates {
            return Err(err(
                "a [[socket]] entry gives emulated devices another initiator, but no [[device]] has backend = \"emulate\""
                    .into(),
            ));
        }
        if !socket.is_absolute() || socket.file_name().is_none() {
            return Err(err(format!(
                "path = \"{}\" must be an absolute path of a socket file, e.g. \
                 \"/run/pr-helper/vm2.sock\"",
                socket.display()
            )));
        }
        let initiator = e
            .initiator
            .map(|i| identity::parse_initiator(&i))
            .transpose()
            .map_err(|e| err(e.to_string()))?;
        let relative_target_port = e
            .relative_target_port
            .map(identity::parse_relative_target_port)
            .transpose()
            .map_err(|e| err(e.to_string()))?;
        let rule = SocketRule {
            path: socket,
            initiator,
            relative_target_port,
            line,
        };
        if let Some(prev) = rules.iter().find(|r| r.path == rule.path) {
            return Err(err(format!(
                "path = \"{}\" is already the socket of line {}",
                rule.path.display(),
                prev.line
            )));
        }
        if let Some(prev) = rules.iter().find(|r| r.nexus() == rule.nexus()) {
            return Err(err(format!(
                "initiator {} on relative target port {} is already the socket {} (line {}); \
                 expected a different initiator or relative_target_port for each socket",
                rule.nexus().initiator,
                rule.nexus().relative_target_port.0,
                prev.path.display(),
                prev.line
            )));
        }
        rules.push(rule);
    }
    Ok(rules)
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
            // The lease fence guards media I/O that the serving process runs itself
            // (pr-target); pr-helper only answers PR commands (QEMU reaches the device
            // directly), so a lease would fence nothing: refused rather than ignored.
            if let Some(k) = store.lease_keys().first() {
                return Err(err(format!(
                    "store.{k}: the lease settings belong to pr-target, which runs media I/O \
                     under a lease fence; pr-helper's emulate backend runs none of its own \
                     (QEMU reaches the device directly) and holds no lease: remove \
                     lease_ttl_s, lease_renew_ms, lease_margin_ms and clock_drift_ppm here"
                )));
            }
            s.store = store
                .resolve("store", DEFAULT_STORE)
                .map_err(|e| err(e.to_string()))?;
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
        if let Some(b) = t.max_batch {
            s.max_batch = usize::try_from(b)
                .ok()
                .filter(|b| (1..=MAX_BATCH).contains(b))
                .ok_or_else(|| {
                    err(format!(
                        "max_batch = {b} is out of range; expected 1 (one fsync per command) \
                         to {MAX_BATCH}"
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
                lu_from: "",
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
        assert_eq!(c.emulate.store.sqlite_path(), Some(Path::new("/srv/pr.db")));
        assert_eq!(
            c.emulate.initiator,
            Some(TransportId::Iscsi {
                name: "iqn.2026-01.com.example:n1".into(),
                isid: None
            })
        );
        assert_eq!(c.emulate.relative_target_port, Some(RelativeTargetPort(2)));
        assert_eq!(c.emulate.max_registrations, 16);
        assert_eq!(c.emulate.max_batch, 256);
        let etcd = parse(
            "[emulate]\nstore = { kind = \"etcd\", endpoints = [\"10.0.0.1:2379\"], \
             host_id = \"hv1\", command_timeout_ms = 3000 }\n",
        )
        .unwrap();
        match &etcd.emulate.store {
            StoreSelection::Etcd { config, tls: None } => {
                assert_eq!(config.endpoints, ["http://10.0.0.1:2379"]);
                assert_eq!(config.host_id.as_deref(), Some("hv1"));
                assert_eq!(config.command_timeout, std::time::Duration::from_secs(3));
            }
            other => panic!("not etcd: {other:?}"),
        }
        // The lease settings are pr-target's: refused here, naming the key.
        let e = parse(
            "[emulate]\nstore = { kind = \"etcd\", endpoints = [\"10.0.0.1:2379\"], \
             lease_margin_ms = 1500, lease_ttl_s = 4 }\n",
        )
        .unwrap_err();
        assert!(
            e.contains("store.lease_ttl_s: the lease settings belong to pr-target"),
            "{e}"
        );
        let c = parse("[emulate]\nmax_batch = 1\n").unwrap();
        assert_eq!(c.emulate.max_batch, 1);
        let d = parse("").unwrap();
        assert!(!d.configures_emulate());
        assert_eq!(
            d.emulate.store.sqlite_path(),
            Some(Path::new(DEFAULT_STORE))
        );
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
    fn extra_sockets_and_their_mistakes() {
        let dev = "[[device]]\ndev = \"7:0\"\nbackend = \"emulate\"\nlu = \"d\"\n";
        let c = parse(&format!(
            "{dev}[[socket]]\npath = \"/run/a.sock\"\ninitiator = \"iqn.2026-01.com.example:a\"\n\
             [[socket]]\npath = \"/run/b.sock\"\nrelative_target_port = 7\n"
        ))
        .unwrap();
        assert_eq!(c.sockets.len(), 2);
        assert_eq!((c.sockets[0].line, c.sockets[1].line), (6, 9));
        assert_eq!(
            c.sockets[0].nexus(),
            Nexus {
                initiator: TransportId::Iscsi {
                    name: "iqn.2026-01.com.example:a".into(),
                    isid: None
                },
                relative_target_port: RelativeTargetPort(1)
            }
        );
        let b = c.sockets[1].nexus();
        assert_eq!(b.relative_target_port, RelativeTargetPort(7));
        assert_eq!(b, {
            let mut n = identity::derived_nexus(Path::new("/run/b.sock"));
            n.relative_target_port = RelativeTargetPort(7);
            n
        });
        let e = parse("[[socket]]\npath = \"/run/a.sock\"\n").unwrap_err();
        assert_eq!(
            e,
            "/etc/pr-helper.toml: [[socket]] entry 1 (line 2): a [[socket]] entry gives \
             emulated devices another initiator, but no [[device]] has backend = \"emulate\""
        );
        let e = parse(&format!("{dev}[[socket]]\npath = \"a.sock\"\n")).unwrap_err();
        assert!(
            e.contains("[[socket]] entry 1 (line 6): path = \"a.sock\" must be an absolute path"),
            "{e}"
        );
        let e = parse(&format!(
            "{dev}[[socket]]\npath = \"/run/a.sock\"\n[[socket]]\npath = \"/run/a.sock\"\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("[[socket]] entry 2 (line 8): path = \"/run/a.sock\" is already the socket of line 6"),
            "{e}"
        );
        let e = parse(&format!(
            "{dev}[[socket]]\npath = \"/run/a.sock\"\ninitiator = \"iqn.2026-01.com.example:x\"\n\
             [[socket]]\npath = \"/run/b.sock\"\ninitiator = \"iqn.2026-01.com.example:x\"\n"
        ))
        .unwrap_err();
        assert!(
            e.contains(
                "[[socket]] entry 2 (line 9): initiator iSCSI name iqn.2026-01.com.example:x on \
                 relative target port 1 is already the socket /run/a.sock (line 6)"
            ),
            "{e}"
        );
        let e = parse(&format!(
            "{dev}[[socket]]\npath = \"/run/a.sock\"\ninitiator = \"VM 1\"\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("[[socket]] entry 1 (line 6): initiator = \"VM 1\" is not an iSCSI name"),
            "{e}"
        );
        let e = parse(&format!(
            "{dev}[[socket]]\npath = \"/run/a.sock\"\nrelative_target_port = 70000\n"
        ))
        .unwrap_err();
        assert!(
            e.contains(
                "(line 6): relative_target_port = 70000 is out of range; expected 1 to 65535"
            ),
            "{e}"
        );
        let e = parse(&format!(
            "{dev}[[socket]]\ninitiator = \"iqn.2026-01.a:b\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("missing field `path`"), "{e}");
        let e = parse(&format!(
            "{dev}[[socket]]\npath = \"/run/a.sock\"\nport = 1\n"
        ))
        .unwrap_err();
        assert!(e.contains("unknown field `port`"), "{e}");
    }

    #[test]
    fn emulate_mistakes_are_named() {
        // The host has no SCSI device: 7:0 (a loop device or nothing) has no VPD page 0x83.
        let e = parse("[[device]]\ndev = \"7:0\"\nbackend = \"emulate\"").unwrap_err();
        assert!(
            e.starts_with(
                "/etc/pr-helper.toml: [[device]] entry 1: backend \"emulate\" needs the logical \
                 unit's identity: 7:0 has no VPD page 0x83 identifier ("
            ),
            "{e}"
        );
        assert!(
            e.ends_with("give lu = \"NAME\", its name in the store"),
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
        // default = "emulate" opens the store; the host's devices have no identifier, so none
        // is emulated and each is named in the log.
        let c = parse("default = \"emulate\"").unwrap();
        assert!(c.configures_emulate());
        assert!(c.emulated_units().is_empty());
        assert!(c
            .describe()
            .iter()
            .skip(1)
            .all(|l| l.starts_with("default emulate: not emulated, no identifier: /dev/")));
        let id = "naa.6001405000000000000000000000abcd";
        let e = parse(&format!("[[device]]\nid = \"{id}\"\nbackend = \"emulate\"")).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "/etc/pr-helper.toml: [[device]] entry 1: no device present has the VPD page \
                 0x83 identifier {id}; expected one of the devices' identifiers (no device has one)"
            )),
            "{e}"
        );
        let e = parse(&format!(
            "[[device]]\nid = \"{id}\"\npath = \"/dev/null\"\nbackend = \"emulate\""
        ))
        .unwrap_err();
        assert!(e.contains("give exactly one of path"), "{e}");
        let e = parse(&format!("[[device]]\nid = \"{id}\"\nbackend = \"sgio\"")).unwrap_err();
        assert!(
            e.contains("selects devices for backend = \"emulate\" only, not \"sgio\""),
            "{e}"
        );
        let e = parse(&format!(
            "[[device]]\nid = \"{id}\"\nbackend = \"emulate\"\nlu = \"x\""
        ))
        .unwrap_err();
        assert!(e.contains("remove lu"), "{e}");
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
        let e = parse("[emulate.store]\nkind = \"etcd\"\nendpoints = [\"10.0.0.1\"]").unwrap_err();
        assert_eq!(
            e,
            "/etc/pr-helper.toml: [emulate]: store.endpoints[0] = \"10.0.0.1\": expected \
             HOST:PORT or http://HOST:PORT, e.g. \"10.0.0.1:2379\" or \"http://[fd00::1]:2379\""
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
        let e = parse("[emulate]\nmax_batch = 0").unwrap_err();
        assert!(
            e.contains("[emulate]: max_batch = 0 is out of range; expected 1 (one fsync per command) to 4096"),
            "{e}"
        );
        let e = parse("[emulate]\npath = \"/x\"").unwrap_err();
        assert!(e.contains("unknown field `path`"), "{e}");
    }
}
