//! The configuration file (`--config FILE`, TOML): logical units and sockets.
//!
//! ```toml
//! # Where reservations live: a SQLite file of this host (the default) or, for an LU shared by
//! # several hosts, an etcd cluster (pr-store-config: endpoints, TLS files, prefix, timeouts, lease timings):
//! #   store = { kind = "etcd", endpoints = ["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"] }
//! # Each LU may name its own.
//! store = "/var/lib/pr-target/reservations.db"
//!
//! [[lu]]
//! name = "shared0"                           # the LU's name in the store
//! path = "/srv/disks/shared0.img"            # a regular file or a block device
//! block_size = 512                           # 512 or 4096
//! read_only = false
//! naa = "6001405a1b2c3d4e5f60718293a4b5c6"   # VPD 83h: 16 hex digits (NAA 5) or 32 (NAA 6)
//! serial = "SHARED0"                         # VPD 80h
//! vendor = "PR-HELP"                         # INQUIRY, at most 8 characters
//! product = "pr-target"                      # INQUIRY, at most 16 characters
//!
//! [[socket]]                                 # one socket = one VM = one I_T nexus
//! path = "/run/pr-target/node1.sock"
//! initiator = "iqn.2026-01.com.example:node1"
//! relative_target_port = 1
//! request_queues = 2                         # QEMU's num_queues must not exceed it
//! luns = { 0 = "shared0" }
//! ```
//!
//! Every error names the file, the line and what was expected. etcd endpoints are IP
//! addresses here: once serving, pr-target's sandbox cannot read /etc/hosts or resolv.conf.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use pr_backend::emulate::identity;
use pr_engine::Nexus;
use pr_scsi::RelativeTargetPort;
use pr_store::LuId;
use pr_store_config::{StoreSelection, StoreSetting};
use serde::Deserialize;
use toml::Spanned;

/// The store of LUs that name none.
pub const DEFAULT_STORE: &str = "/var/lib/pr-target/reservations.db";
/// Most request queues per socket (each is a thread).
pub const MAX_REQUEST_QUEUES: i64 = 16;
/// Highest LUN (flat space addressing, SAM-5).
pub const MAX_LUN: u16 = 0x3fff;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    store: Option<Spanned<StoreSetting>>,
    #[serde(default)]
    lu: Vec<Spanned<LuFormat>>,
    #[serde(default)]
    socket: Vec<Spanned<SocketFormat>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LuFormat {
    name: Spanned<String>,
    path: Spanned<PathBuf>,
    block_size: Option<Spanned<i64>>,
    #[serde(default)]
    read_only: bool,
    naa: Spanned<String>,
    serial: Spanned<String>,
    vendor: Option<Spanned<String>>,
    product: Option<Spanned<String>>,
    store: Option<Spanned<StoreSetting>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SocketFormat {
    path: Spanned<PathBuf>,
    initiator: Spanned<String>,
    relative_target_port: Option<Spanned<i64>>,
    request_queues: Option<Spanned<i64>>,
    luns: Spanned<BTreeMap<String, Spanned<String>>>,
}

/// A logical unit, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuConfig {
    pub name: LuId,
    pub path: PathBuf,
    pub block_size: u32,
    pub read_only: bool,
    /// 8 (NAA 5) or 16 (NAA 6) bytes.
    pub naa: Vec<u8>,
    pub serial: String,
    pub vendor: [u8; 8],
    pub product: [u8; 16],
    pub store: StoreSelection,
}

/// A socket, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketConfig {
    pub path: PathBuf,
    pub nexus: Nexus,
    pub request_queues: usize,
    /// LUN → index into [`Config::lus`].
    pub luns: BTreeMap<u16, usize>,
}

/// The whole configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub lus: Vec<LuConfig>,
    pub sockets: Vec<SocketConfig>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}:{line}: {message}")]
    Value {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        let at = span.start.min(self.text.len());
        let line = self.text[..at].bytes().filter(|&b| b == b'\n').count() + 1;
        Err(ConfigError::Value {
            path: self.path.to_path_buf(),
            line,
            message: message.into(),
        })
    }
}

impl Ctx<'_> {
    /// A `store` setting, validated; etcd endpoints must be IP addresses (see the module
    /// documentation).
    fn store(&self, s: &Spanned<StoreSetting>) -> Result<StoreSelection, ConfigError> {
        let selection = s
            .get_ref()
            .clone()
            .resolve("store", DEFAULT_STORE)
            .or_else(|e| self.err(s.span(), e.to_string()))?;
        if let StoreSelection::Etcd { config, .. } = &selection {
            for (i, e) in config.endpoints.iter().enumerate() {
                let hostport = e.split_once("://").map_or(e.as_str(), |(_, r)| r);
                let hostport = hostport.trim_end_matches('/');
                let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.parse::<std::net::IpAddr>().is_err() {
                    return self.err(
                        s.span(),
                        format!(
                            "store.endpoints[{i}] = {e:?}: expected an IP address: once \
                             serving, pr-target's sandbox cannot read /etc/hosts or \
                             resolv.conf to look a name up (with TLS, server_name gives the \
                             name the certificates carry)"
                        ),
                    );
                }
            }
        }
        Ok(selection)
    }
}

fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut b = [b' '; N];
    b[..s.len()].copy_from_slice(s.as_bytes());
    b
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn parse_naa(s: &str) -> Result<Vec<u8>, String> {
    let expected = "expected 16 hex digits starting with 5 (NAA IEEE Registered) or 32 \
                    starting with 6 (NAA IEEE Registered Extended), e.g. \
                    \"6001405a1b2c3d4e5f60718293a4b5c6\"";
    let hex = s.strip_prefix("naa.").unwrap_or(s);
    let ok_len = matches!(
        (hex.len(), hex.as_bytes().first()),
        (16, Some(b'5')) | (32, Some(b'6'))
    );
    if !ok_len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("naa = {s:?}: {expected}"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("naa = {s:?}: {expected}"))
        })
        .collect()
}

impl Config {
    /// Whether a logical unit's store is an etcd cluster (the sandbox then allows its
    /// connections).
    pub fn uses_network_store(&self) -> bool {
        self.lus.iter().any(|l| l.store.is_networked())
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates a configuration's text; `path` names it in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: FileFormat = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let cx = Ctx { path, text };
        let default_store = match &file.store {
            Some(s) => cx.store(s)?,
            None => StoreSelection::Sqlite {
                path: PathBuf::from(DEFAULT_STORE),
            },
        };
        if file.lu.is_empty() {
            return cx.err(
                0..0,
                "no [[lu]] table: configure at least one logical unit (name, path, naa, serial)",
            );
        }
        if file.socket.is_empty() {
            return cx.err(
                0..0,
                "no [[socket]] table: configure at least one socket (path, initiator, luns)",
            );
        }
        let mut lus: Vec<LuConfig> = Vec::new();
        for lu in &file.lu {
            let l = lu.get_ref();
            let name = LuId::new(l.name.get_ref().clone()).or_else(|e| {
                cx.err(l.name.span(), format!("name = {:?}: {e}", l.name.get_ref()))
            })?;
            if lus.iter().any(|o| o.name == name) {
                return cx.err(
                    l.name.span(),
                    format!(
                        "name = {:?} names two [[lu]] tables; names must be unique",
                        l.name.get_ref()
                    ),
                );
            }
            let p = l.path.get_ref();
            if !p.is_absolute() {
                return cx.err(
                    l.path.span(),
                    format!("path = {p:?} must be an absolute path to a file or block device"),
                );
            }
            if lus.iter().any(|o| &o.path == p) {
                return cx.err(
                    l.path.span(),
                    format!("path = {p:?} is the backing of two [[lu]] tables"),
                );
            }
            let block_size = match &l.block_size {
                None => 512,
                Some(b) if matches!(*b.get_ref(), 512 | 4096) => *b.get_ref() as u32,
                Some(b) => {
                    return cx.err(
                        b.span(),
                        format!("block_size = {}: expected 512 or 4096", b.get_ref()),
                    )
                }
            };
            let naa = parse_naa(l.naa.get_ref()).or_else(|m| cx.err(l.naa.span(), m))?;
            if lus.iter().any(|o| o.naa == naa) {
                return cx.err(
                    l.naa.span(),
                    format!(
                        "naa = {:?} is already the identifier of another [[lu]]",
                        l.naa.get_ref()
                    ),
                );
            }
            let serial = l.serial.get_ref();
            if serial.is_empty()
                || serial.len() > 64
                || !printable(serial)
                || serial.trim() != serial
            {
                return cx.err(l.serial.span(), format!("serial = {serial:?}: expected 1 to 64 printable ASCII characters, no leading or trailing spaces"));
            }
            let text_field = |v: &Option<Spanned<String>>,
                              key: &str,
                              max: usize,
                              default: &str|
             -> Result<String, ConfigError> {
                match v {
                    None => Ok(default.to_string()),
                    Some(s)
                        if !s.get_ref().is_empty()
                            && s.get_ref().len() <= max
                            && printable(s.get_ref()) =>
                    {
                        Ok(s.get_ref().clone())
                    }
                    Some(s) => cx.err(
                        s.span(),
                        format!(
                            "{key} = {:?}: expected 1 to {max} printable ASCII characters",
                            s.get_ref()
                        ),
                    ),
                }
            };
            let vendor = text_field(&l.vendor, "vendor", 8, "PR-HELP")?;
            let product = text_field(&l.product, "product", 16, "pr-target")?;
            let store = match &l.store {
                Some(s) => cx.store(s)?,
                None => default_store.clone(),
            };
            lus.push(LuConfig {
                name,
                path: p.clone(),
                block_size,
                read_only: l.read_only,
                naa,
                serial: serial.clone(),
                vendor: padded(&vendor),
                product: padded(&product),
                store,
            });
        }
        let mut sockets: Vec<SocketConfig> = Vec::new();
        let mut nexuses = HashSet::new();
        for s in &file.socket {
            let sc = s.get_ref();
            let p = sc.path.get_ref();
            if !p.is_absolute() {
                return cx.err(
                    sc.path.span(),
                    format!("path = {p:?} must be an absolute path for the vhost-user socket"),
                );
            }
            if sockets.iter().any(|o| &o.path == p) {
                return cx.err(
                    sc.path.span(),
                    format!("path = {p:?} names two [[socket]] tables"),
                );
            }
            let initiator = identity::parse_initiator(sc.initiator.get_ref())
                .or_else(|e| cx.err(sc.initiator.span(), e.to_string()))?;
            let port = match &sc.relative_target_port {
                None => RelativeTargetPort(1),
                Some(v) => identity::parse_relative_target_port(*v.get_ref())
                    .or_else(|e| cx.err(v.span(), e.to_string()))?,
            };
            let nexus = Nexus {
                initiator,
                relative_target_port: port,
            };
            if !nexuses.insert(nexus.clone()) {
                return cx.err(sc.initiator.span(), format!("initiator = {:?} on relative_target_port = {} is already another socket's I_T nexus; each socket is one initiator", sc.initiator.get_ref(), port.0));
            }
            let request_queues = match &sc.request_queues {
                None => 2,
                Some(q) if (1..=MAX_REQUEST_QUEUES).contains(q.get_ref()) => *q.get_ref() as usize,
                Some(q) => {
                    return cx.err(
                        q.span(),
                        format!(
                            "request_queues = {}: expected 1 to {MAX_REQUEST_QUEUES}",
                            q.get_ref()
                        ),
                    )
                }
            };
            let mut luns = BTreeMap::new();
            if sc.luns.get_ref().is_empty() {
                return cx.err(
                    sc.luns.span(),
                    "luns = {}: map at least one LUN, e.g. luns = { 0 = \"disk0\" }",
                );
            }
            for (k, v) in sc.luns.get_ref() {
                let lun = match k.parse::<u16>() {
                    Ok(l) if l <= MAX_LUN => l,
                    _ => {
                        return cx.err(
                            v.span(),
                            format!("LUN {k:?}: expected a number from 0 to {MAX_LUN}"),
                        )
                    }
                };
                let Some(i) = lus.iter().position(|l| l.name.as_str() == v.get_ref()) else {
                    let names: Vec<&str> = lus.iter().map(|l| l.name.as_str()).collect();
                    return cx.err(
                        v.span(),
                        format!(
                            "LUN {lun} = {:?} names no [[lu]]; expected one of {names:?}",
                            v.get_ref()
                        ),
                    );
                };
                luns.insert(lun, i);
            }
            sockets.push(SocketConfig {
                path: p.clone(),
                nexus,
                request_queues,
                luns,
            });
        }
        Ok(Config { lus, sockets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
store = "/var/lib/t/r.db"
[[lu]]
name = "d0"
path = "/srv/d0.img"
block_size = 4096
naa = "6001405a1b2c3d4e5f60718293a4b5c6"
serial = "S0"

[[socket]]
path = "/run/t/a.sock"
initiator = "iqn.2026-01.com.example:a"
luns = { 0 = "d0" }

[[socket]]
path = "/run/t/b.sock"
initiator = "iqn.2026-01.com.example:b"
relative_target_port = 2
request_queues = 4
luns = { 0 = "d0", 300 = "d0" }
"#;

    fn parse(t: &str) -> Result<Config, String> {
        Config::parse(t, Path::new("/etc/t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_file() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.lus.len(), 1);
        assert_eq!(c.lus[0].block_size, 4096);
        assert_eq!(c.lus[0].naa[0], 0x60);
        assert_eq!(c.lus[0].naa.len(), 16);
        assert_eq!(&c.lus[0].vendor, b"PR-HELP ");
        assert_eq!(
            c.lus[0].store.sqlite_path(),
            Some(Path::new("/var/lib/t/r.db"))
        );
        assert_eq!(
            c.sockets[1].nexus.relative_target_port,
            RelativeTargetPort(2)
        );
        assert_eq!(c.sockets[1].request_queues, 4);
        assert_eq!(
            c.sockets[1].luns.keys().copied().collect::<Vec<_>>(),
            [0, 300]
        );
    }

    #[test]
    fn errors_name_the_line_and_the_expected_value() {
        let bad = GOOD.replace("block_size = 4096", "block_size = 1000");
        assert_eq!(
            parse(&bad).unwrap_err(),
            "/etc/t.toml:6: block_size = 1000: expected 512 or 4096"
        );
        let bad = GOOD.replace("\"6001405a1b2c3d4e5f60718293a4b5c6\"", "\"7001\"");
        let e = parse(&bad).unwrap_err();
        assert!(
            e.starts_with("/etc/t.toml:7: naa = \"7001\": expected 16 hex digits"),
            "{e}"
        );
        let bad = GOOD.replace("300 = \"d0\"", "300 = \"d9\"");
        let e = parse(&bad).unwrap_err();
        assert!(
            e.starts_with("/etc/t.toml:20: LUN 300 = \"d9\" names no [[lu]]"),
            "{e}"
        );
        let bad = GOOD
            .replace("iqn.2026-01.com.example:b", "iqn.2026-01.com.example:a")
            .replace("relative_target_port = 2", "relative_target_port = 1");
        let e = parse(&bad).unwrap_err();
        assert!(e.contains("already another socket's I_T nexus"), "{e}");
        let bad = GOOD.replace("request_queues = 4", "request_queues = 0");
        assert_eq!(
            parse(&bad).unwrap_err(),
            "/etc/t.toml:19: request_queues = 0: expected 1 to 16"
        );
        let bad = GOOD.replace("serial = \"S0\"", "serial = \"S0\"\ncolour = 1");
        let e = parse(&bad).unwrap_err();
        assert!(
            e.contains("unknown field `colour`") && e.contains("line 9"),
            "{e}"
        );
    }
}
