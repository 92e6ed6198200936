//! Which store keeps the persistent-reservation state of emulated logical units, as a
//! configuration file says: a SQLite file of this host or an etcd cluster shared by several
//! hosts. One setting, `store`, used alike by pr-helper's `[emulate]` table and pr-target's
//! configuration:
//!
//! ```toml
//! store = "/var/lib/pr-helper/reservations.db"     # a SQLite file (the short form)
//!
//! [store]                                          # the same as a table
//! kind = "sqlite"
//! path = "/var/lib/pr-helper/reservations.db"
//!
//! [store]                                          # an etcd cluster
//! kind = "etcd"
//! endpoints = ["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"]   # or http(s)://HOST:PORT
//! prefix = "/pr-helper/"              # every key starts with it (the default)
//! host_id = "hv1"                     # this host in the command records (default: host name)
//! ca = "/etc/pr-helper/etcd-ca.pem"   # TLS: the CA of the servers' certificates (https://)
//! cert = "/etc/pr-helper/hv1.pem"     # a client certificate, with key
//! key = "/etc/pr-helper/hv1-key.pem"
//! server_name = "etcd.example.com"    # checked in the servers' certificates instead of the host
//! connect_timeout_ms = 3000           # the defaults
//! request_timeout_ms = 2000
//! command_timeout_ms = 5000           # a command answers within it (plus 1 s), never hangs
//! # pr-target's lease fence (docs/etcd.md; pr-helper refuses these: it fences no media I/O)
//! lease_ttl_s = 6                     # the lease's TTL in etcd, whole seconds
//! lease_renew_ms = 2000               # a renewal round every …
//! lease_margin_ms = 1000              # media I/O stops this long before the lease can expire
//! clock_drift_ppm = 10000             # bound on this host's clock running slow (1 %)
//! ```
//!
//! [`StoreSetting`] is what serde reads; [`StoreSetting::resolve`] validates it into a
//! [`StoreSelection`], naming the key and what was expected on any error, and reads the TLS
//! files then (so that a daemon reads them before it drops its privileges);
//! [`StoreSelection::open`] opens the store. The crate knows the stores only through their
//! configurations and the `Store` trait.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pr_store::{SqliteOptions, SqliteStore, Store, StoreError};
use pr_store_etcd::fence::{LeaseTiming, MAX_DRIFT_PPM, MAX_LEASE_TTL, MIN_MARGIN, MIN_RENEW};
use pr_store_etcd::{EtcdConfig, EtcdStore, TlsFiles, TlsPem, MAX_ENDPOINTS, MAX_PREFIX_LEN};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Shortest timeout accepted, in milliseconds.
pub const MIN_TIMEOUT_MS: i64 = 10;
/// Longest timeout accepted, in milliseconds (10 minutes).
pub const MAX_TIMEOUT_MS: i64 = 600_000;
/// Largest TLS file read.
pub const MAX_PEM_LEN: u64 = 1 << 20;

/// The `store` setting as written: a path (a SQLite file) or a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSetting(Raw);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Raw {
    Path(PathBuf),
    Table(Box<Table>),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    kind: Option<String>,
    path: Option<PathBuf>,
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    host_id: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
    connect_timeout_ms: Option<i64>,
    request_timeout_ms: Option<i64>,
    command_timeout_ms: Option<i64>,
    lease_ttl_s: Option<i64>,
    lease_renew_ms: Option<i64>,
    lease_margin_ms: Option<i64>,
    clock_drift_ppm: Option<i64>,
}

impl<'de> Deserialize<'de> for StoreSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StoreSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "the path of a SQLite file, or a table with kind = \"sqlite\" or \
                     kind = \"etcd\"",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StoreSetting, E> {
                Ok(StoreSetting(Raw::Path(PathBuf::from(s))))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StoreSetting, A::Error> {
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(StoreSetting(Raw::Table(Box::new(t))))
            }
        }
        d.deserialize_any(V)
    }
}

impl StoreSetting {
    /// The lease settings given (`lease_ttl_s`, `lease_renew_ms`, `lease_margin_ms`,
    /// `clock_drift_ppm`), in that order: a program that runs no media I/O of its own (pr-helper)
    /// refuses them.
    pub fn lease_keys(&self) -> Vec<&'static str> {
        match &self.0 {
            Raw::Path(_) => Vec::new(),
            Raw::Table(t) => [
                ("lease_ttl_s", t.lease_ttl_s.is_some()),
                ("lease_renew_ms", t.lease_renew_ms.is_some()),
                ("lease_margin_ms", t.lease_margin_ms.is_some()),
                ("clock_drift_ppm", t.clock_drift_ppm.is_some()),
            ]
            .into_iter()
            .filter_map(|(k, set)| set.then_some(k))
            .collect(),
        }
    }

    /// A SQLite file (the short form, `store = "PATH"`).
    pub fn sqlite(path: impl Into<PathBuf>) -> StoreSetting {
        StoreSetting(Raw::Path(path.into()))
    }
}

/// A `store` setting that cannot be used: the message names the key (`store.endpoints[1]`)
/// and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreConfigError(String);

/// A validated store setting, ready to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSelection {
    /// A SQLite database file (absolute path), shared by the processes of one host.
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// An etcd cluster, shared by hosts.
    Etcd {
        /// The store's configuration, validated.
        config: Box<EtcdConfig>,
        /// The TLS files' contents, read when the setting was resolved.
        tls: Option<TlsPem>,
    },
}

impl fmt::Display for StoreSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSelection::Sqlite { path } => write!(f, "SQLite {}", path.display()),
            StoreSelection::Etcd { config, tls } => write!(
                f,
                "etcd [{}] prefix {}{}",
                config.endpoints.join(", "),
                config.prefix,
                if tls.is_some() { " (TLS)" } else { "" }
            ),
        }
    }
}

/// An open store, as its own type (pr-target's cross-host fencing needs the etcd store's own
/// API) or as the trait ([`OpenedStore::store`]).
#[derive(Debug, Clone)]
pub enum OpenedStore {
    /// A SQLite database.
    Sqlite(Arc<SqliteStore>),
    /// A connection to an etcd cluster.
    Etcd(Arc<EtcdStore>),
}

impl OpenedStore {
    /// The store behind the trait.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            OpenedStore::Sqlite(s) => s.clone(),
            OpenedStore::Etcd(s) => s.clone(),
        }
    }
}

impl StoreSelection {
    /// Opens the store: the SQLite file with `sqlite` options, or a connection to the etcd
    /// cluster (which fails within `connect_timeout_ms` when no member answers).
    pub fn open(&self, sqlite: SqliteOptions) -> Result<OpenedStore, StoreError> {
        Ok(match self {
            StoreSelection::Sqlite { path } => {
                OpenedStore::Sqlite(Arc::new(SqliteStore::open_with(path, sqlite)?))
            }
            StoreSelection::Etcd { config, tls } => OpenedStore::Etcd(Arc::new(
                EtcdStore::open_with_tls((**config).clone(), tls.as_ref())?,
            )),
        })
    }

    /// The SQLite file, for a SQLite store.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            StoreSelection::Sqlite { path } => Some(path),
            StoreSelection::Etcd { .. } => None,
        }
    }

    /// Whether the store is reached over the network (etcd).
    pub fn is_networked(&self) -> bool {
        matches!(self, StoreSelection::Etcd { .. })
    }
}

/// Checks one endpoint and gives it as a URL: `HOST:PORT` gets the scheme TLS implies.
fn endpoint(key: &str, e: &str, tls: bool) -> Result<String, StoreConfigError> {
    let scheme = if tls { "https://" } else { "http://" };
    let expected = format!(
        "expected HOST:PORT or {scheme}HOST:PORT, e.g. \"10.0.0.1:2379\" or \"{scheme}[fd00::1]:2379\""
    );
    let bad = |why: &str| Err(StoreConfigError(format!("{key} = {e:?}: {why}")));
    let rest = if let Some(r) = e.strip_prefix(scheme) {
        r
    } else if e.starts_with("http://") {
        return bad("plain http:// while ca is set (TLS); use https:// or HOST:PORT");
    } else if e.starts_with("https://") {
        return bad("https:// needs TLS: set ca, the CA certificate of the etcd servers");
    } else if e.contains("://") {
        return bad(&format!("unknown scheme; {expected}"));
    } else {
        e
    };
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.is_empty()
        || hostport.contains(['/', '?', '#', '@'])
        || hostport
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return bad(&expected);
    }
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => match v6.split_once("]:") {
            Some((h, p)) if h.parse::<std::net::Ipv6Addr>().is_ok() => (h, p),
            _ => return bad(&expected),
        },
        None => match hostport.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.contains(':') => (h, p),
            _ => return bad(&expected),
        },
    };
    if host.len() > 253 {
        return bad("the host name is longer than 253 characters");
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return bad(&format!("port {port:?} is not 1 to 65535; {expected}")),
    }
    Ok(format!("{scheme}{hostport}"))
}

/// Reads a PEM file named by `key`, bounded, checking that it holds a PEM block of `label`.
fn pem(key: &str, path: &Path, label: &str) -> Result<Vec<u8>, StoreConfigError> {
    let err = |why: String| StoreConfigError(format!("{key} = {:?}: {why}", path));
    if !path.is_absolute() {
        return Err(err("expected an absolute path".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let md = file
        .metadata()
        .map_err(|e| err(format!("cannot read it: {e}")))?;
    if !md.is_file() {
        return Err(err("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_LEN {
        return Err(err(format!("larger than {MAX_PEM_LEN} bytes")));
    }
    let text = String::from_utf8_lossy(&bytes);
    if !text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(label))
    {
        return Err(err(format!(
            "expected a PEM file with a \"-----BEGIN …{label}-----\" block"
        )));
    }
    Ok(bytes)
}

fn timeout(key: &str, v: Option<i64>, default: Duration) -> Result<Duration, StoreConfigError> {
    match v {
        None => Ok(default),
        Some(ms) if (MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&ms) => {
            Ok(Duration::from_millis(ms as u64))
        }
        Some(ms) => Err(StoreConfigError(format!(
            "{key} = {ms}: expected {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS} (milliseconds)"
        ))),
    }
}

/// The lease settings of an etcd table, validated (`None`: none given, the defaults apply):
/// each on its own, then the relations the fencing argument needs (docs/etcd.md), each
/// message naming the keys and the values that would do.
fn lease(
    [ttl, renew, margin, drift]: [Option<i64>; 4],
    key: &str,
    request_timeout: Duration,
) -> Result<Option<LeaseTiming>, StoreConfigError> {
    let k = |name: &str| format!("{key}.{name}");
    let e = |m: String| Err(StoreConfigError(m));
    if ttl.is_none() && renew.is_none() && margin.is_none() && drift.is_none() {
        return Ok(None);
    }
    let mut l = LeaseTiming::default();
    let max_ttl = MAX_LEASE_TTL.as_secs() as i64;
    if let Some(v) = ttl {
        if !(1..=max_ttl).contains(&v) {
            return e(format!(
                "{} = {v}: expected 1 to {max_ttl} (whole seconds: etcd grants a lease's TTL in \
                 seconds), e.g. 6",
                k("lease_ttl_s")
            ));
        }
        l.ttl = Duration::from_secs(v as u64);
    }
    let min_renew = MIN_RENEW.as_millis() as i64;
    if let Some(v) = renew {
        if !(min_renew..=MAX_TIMEOUT_MS).contains(&v) {
            return e(format!(
                "{} = {v}: expected {min_renew} to {MAX_TIMEOUT_MS} (milliseconds between \
                 renewal rounds), e.g. 2000",
                k("lease_renew_ms")
            ));
        }
        l.renew_every = Duration::from_millis(v as u64);
    }
    let min_margin = MIN_MARGIN.as_millis() as i64;
    if let Some(v) = margin {
        if !(min_margin..=MAX_TIMEOUT_MS).contains(&v) {
            return e(format!(
                "{} = {v}: expected {min_margin} to {MAX_TIMEOUT_MS} (milliseconds; at least the \
                 longest medium write in flight), e.g. 1000",
                k("lease_margin_ms")
            ));
        }
        l.margin = Duration::from_millis(v as u64);
    }
    if let Some(v) = drift {
        if !(0..=i64::from(MAX_DRIFT_PPM)).contains(&v) {
            return e(format!(
                "{} = {v}: expected 0 to {MAX_DRIFT_PPM} (parts per million; 10000 = 1 %)",
                k("clock_drift_ppm")
            ));
        }
        l.drift_ppm = v as u32;
    }
    let ms = |d: Duration| d.as_millis();
    let usable = l.shrink(l.ttl);
    if l.margin + l.renew_every >= usable {
        return e(format!(
            "{} = {} + {} = {} leave nothing of {} = {} × (1 − {} = {} ppm) = {} ms: media I/O \
             would stop between renewals; renew more often or lengthen the TTL",
            k("lease_margin_ms"),
            ms(l.margin),
            k("lease_renew_ms"),
            ms(l.renew_every),
            k("lease_ttl_s"),
            l.ttl.as_secs(),
            k("clock_drift_ppm"),
            l.drift_ppm,
            ms(usable)
        ));
    }
    if l.renew_every + request_timeout >= l.validity() {
        return e(format!(
            "{} = {} + {} = {} must be shorter than {} × (1 − {}) − {} = {} ms: a renewal \
             round that takes the whole request timeout would stop media I/O on a healthy \
             host; renew more often, shorten request_timeout_ms or lengthen the TTL",
            k("lease_renew_ms"),
            ms(l.renew_every),
            k("request_timeout_ms"),
            ms(request_timeout),
            k("lease_ttl_s"),
            k("clock_drift_ppm"),
            k("lease_margin_ms"),
            ms(l.validity())
        ));
    }
    // The store's own check, so that nothing the fence would refuse passes here.
    l.validate_with(request_timeout)
        .map_err(|err| StoreConfigError(format!("{key}: {err}")))?;
    Ok(Some(l))
}

impl StoreSetting {
    /// Validates the setting. `key` is its name in messages (`store`); `example` a path to
    /// suggest when a SQLite path is not absolute. TLS files are read now.
    pub fn resolve(self, key: &str, example: &str) -> Result<StoreSelection, StoreConfigError> {
        let sqlite = |path: PathBuf, name: &str| {
            if !path.is_absolute() || path.file_name().is_none() {
                return Err(StoreConfigError(format!(
                    "{name} = {:?} must be an absolute path, e.g. \"{example}\"",
                    path.display().to_string()
                )));
            }
            Ok(StoreSelection::Sqlite { path })
        };
        let t = match self.0 {
            Raw::Path(p) => return sqlite(p, key),
            Raw::Table(t) => *t,
        };
        let k = |name: &str| format!("{key}.{name}");
        let etcd_only: [(&str, bool); 14] = [
            ("endpoints", t.endpoints.is_some()),
            ("prefix", t.prefix.is_some()),
            ("host_id", t.host_id.is_some()),
            ("ca", t.ca.is_some()),
            ("cert", t.cert.is_some()),
            ("key", t.key.is_some()),
            ("server_name", t.server_name.is_some()),
            ("connect_timeout_ms", t.connect_timeout_ms.is_some()),
            ("request_timeout_ms", t.request_timeout_ms.is_some()),
            ("command_timeout_ms", t.command_timeout_ms.is_some()),
            ("lease_ttl_s", t.lease_ttl_s.is_some()),
            ("lease_renew_ms", t.lease_renew_ms.is_some()),
            ("lease_margin_ms", t.lease_margin_ms.is_some()),
            ("clock_drift_ppm", t.clock_drift_ppm.is_some()),
        ];
        match t.kind.as_deref() {
            Some("sqlite") => {
                if let Some((name, _)) = etcd_only.iter().find(|(_, set)| *set) {
                    return Err(StoreConfigError(format!(
                        "{} is an etcd setting; kind = \"sqlite\" takes only path",
                        k(name)
                    )));
                }
                let Some(path) = t.path else {
                    return Err(StoreConfigError(format!(
                        "{}: kind = \"sqlite\" needs path = \"…\", e.g. \"{example}\"",
                        key
                    )));
                };
                sqlite(path, &k("path"))
            }
            Some("etcd") => Table::etcd(t, key),
            Some(other) => Err(StoreConfigError(format!(
                "{} = {other:?}: expected \"sqlite\" or \"etcd\"",
                k("kind")
            ))),
            None => Err(StoreConfigError(format!(
                "{key}: a store table needs kind = \"sqlite\" (with path) or kind = \"etcd\" \
                 (with endpoints)"
            ))),
        }
    }
}

impl Table {
    fn etcd(t: Table, key: &str) -> Result<StoreSelection, StoreConfigError> {
        let k = |name: &str| format!("{key}.{name}");
        let e = |m: String| Err(StoreConfigError(m));
        if t.path.is_some() {
            return e(format!(
                "{} is a SQLite setting; kind = \"etcd\" takes endpoints instead",
                k("path")
            ));
        }
        let tls = t.ca.is_some();
        if !tls {
            for (name, set) in [
                ("cert", t.cert.is_some()),
                ("key", t.key.is_some()),
                ("server_name", t.server_name.is_some()),
            ] {
                if set {
                    return e(format!(
                        "{} needs TLS: set {} too, the CA certificate of the etcd servers",
                        k(name),
                        k("ca")
                    ));
                }
            }
        }
        match (&t.cert, &t.key) {
            (Some(_), None) => {
                return e(format!(
                    "{} without {}: a client certificate needs its private key",
                    k("cert"),
                    k("key")
                ))
            }
            (None, Some(_)) => {
                return e(format!(
                    "{} without {}: a private key needs its client certificate",
                    k("key"),
                    k("cert")
                ))
            }
            _ => {}
        }
        let Some(list) = t.endpoints else {
            return e(format!(
                "{key}: kind = \"etcd\" needs endpoints = [\"HOST:PORT\", …], the cluster's \
                 client addresses"
            ));
        };
        if list.is_empty() {
            return e(format!(
                "{} = []: expected at least one HOST:PORT, e.g. [\"10.0.0.1:2379\"]",
                k("endpoints")
            ));
        }
        if list.len() > MAX_ENDPOINTS {
            return e(format!(
                "{}: {} given, at most {MAX_ENDPOINTS} accepted",
                k("endpoints"),
                list.len()
            ));
        }
        let mut endpoints: Vec<String> = Vec::new();
        for (i, raw) in list.iter().enumerate() {
            let url = endpoint(&format!("{}[{i}]", k("endpoints")), raw, tls)?;
            if endpoints.contains(&url) {
                return e(format!("{}[{i}] = {raw:?} is given twice", k("endpoints")));
            }
            endpoints.push(url);
        }
        let mut config = EtcdConfig::new(endpoints);
        if let Some(p) = t.prefix {
            if p.is_empty()
                || p.len() > MAX_PREFIX_LEN
                || p.chars().any(char::is_control)
                || !p.ends_with('/')
            {
                return e(format!(
                    "{} = {:?}: expected 1 to {MAX_PREFIX_LEN} bytes ending in '/', without \
                     control characters, e.g. \"/pr-helper/\"",
                    k("prefix"),
                    p.escape_debug().take(80).collect::<String>()
                ));
            }
            config.prefix = p;
        }
        if let Some(h) = t.host_id {
            if h.is_empty() || h.len() > 128 || h.chars().any(|c| c.is_control() || c == '#') {
                return e(format!(
                    "{} = {:?}: expected 1 to 128 characters without control characters or \
                     '#', unique per host, e.g. \"hv1\"",
                    k("host_id"),
                    h.escape_debug().take(80).collect::<String>()
                ));
            }
            config.host_id = Some(h);
        }
        if let Some(n) = &t.server_name {
            if n.is_empty()
                || n.len() > 253
                || n.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return e(format!(
                    "{} = {n:?}: expected the DNS name in the servers' certificates",
                    k("server_name")
                ));
            }
        }
        config.connect_timeout = timeout(
            &k("connect_timeout_ms"),
            t.connect_timeout_ms,
            config.connect_timeout,
        )?;
        config.request_timeout = timeout(
            &k("request_timeout_ms"),
            t.request_timeout_ms,
            config.request_timeout,
        )?;
        config.command_timeout = timeout(
            &k("command_timeout_ms"),
            t.command_timeout_ms,
            config.command_timeout,
        )?;
        if config.request_timeout > config.command_timeout {
            return e(format!(
                "{} = {} is longer than {} = {}: a command must allow at least one request",
                k("request_timeout_ms"),
                config.request_timeout.as_millis(),
                k("command_timeout_ms"),
                config.command_timeout.as_millis()
            ));
        }
        config.lease = lease(
            [
                t.lease_ttl_s,
                t.lease_renew_ms,
                t.lease_margin_ms,
                t.clock_drift_ppm,
            ],
            key,
            config.request_timeout,
        )?;
        let pem_tls = match &t.ca {
            None => None,
            Some(ca) => {
                let ca_pem = pem(&k("ca"), ca, "CERTIFICATE")?;
                let identity = match (&t.cert, &t.key) {
                    (Some(c), Some(kf)) => Some((
                        pem(&k("cert"), c, "CERTIFICATE")?,
                        pem(&k("key"), kf, "PRIVATE KEY")?,
                    )),
                    _ => None,
                };
                config.tls = Some(TlsFiles {
                    ca: ca.clone(),
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                    domain: t.server_name.clone(),
                });
                Some(TlsPem {
                    ca: ca_pem,
                    identity,
                    domain: t.server_name.clone(),
                })
            }
        };
        // The store's own check, so that nothing it would refuse at open passes here.
        config
            .validate()
            .map_err(|err| StoreConfigError(format!("{key}: {err}")))?;
        Ok(StoreSelection::Etcd {
            config: Box::new(config),
            tls: pem_tls,
        })
    }
}

#[cfg(test)]
mod tests;
