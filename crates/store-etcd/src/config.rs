//! What an [`crate::EtcdStore`] connects to and how long it waits.

use std::path::PathBuf;
use std::time::Duration;

use pr_store::StoreError;

use crate::fence::LeaseTiming;
use serde::{Deserialize, Serialize};

/// Client certificate files for TLS to etcd (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA certificate(s) that signed the etcd servers' certificates.
    pub ca: PathBuf,
    /// This host's client certificate, when the cluster checks client certificates.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (with `cert`).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The name the servers' certificates are checked against, when it is not the endpoint's
    /// host name.
    #[serde(default)]
    pub domain: Option<String>,
}

/// The contents of the TLS files, read once (for example as root, before a daemon drops its
/// privileges) and handed to [`crate::EtcdStore::open_with_tls`].
#[derive(Clone, PartialEq, Eq)]
pub struct TlsPem {
    /// The CA certificate(s), PEM.
    pub ca: Vec<u8>,
    /// The client certificate and its private key, PEM, when the cluster checks clients.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the servers' certificates are checked against, when not the endpoint's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for TlsPem {
    /// Sizes only: the private key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca_bytes", &self.ca.len())
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl TlsFiles {
    /// Reads the files; an unreadable one is [`StoreError::Config`] naming it.
    pub fn read(&self) -> Result<TlsPem, StoreError> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| StoreError::Config {
                detail: format!("etcd tls {what} {}: {e}", p.display()),
            })
        };
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read("cert", c)?, read("key", k)?)),
            _ => None,
        };
        Ok(TlsPem {
            ca: read("ca", &self.ca)?,
            identity,
            domain: self.domain.clone(),
        })
    }
}

/// Configuration of an [`crate::EtcdStore`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// The cluster's client URLs (`http://10.0.0.1:2379`; `https://` with `tls`).
    pub endpoints: Vec<String>,
    /// Every key of the store starts with this (default `/pr-helper/`); several independent
    /// stores can share a cluster under different prefixes.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// This host's name, recorded with each command so that a retried command is never applied
    /// twice; unique per host (default: the host name).
    #[serde(default)]
    pub host_id: Option<String>,
    /// TLS to etcd (absent: plain `http://`).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// How long [`crate::EtcdStore::open`] waits for the cluster to answer.
    #[serde(default = "default_connect", with = "millis")]
    pub connect_timeout: Duration,
    /// Bound on one request to etcd (one transaction or read).
    #[serde(default = "default_request", with = "millis")]
    pub request_timeout: Duration,
    /// Bound on a whole store operation, retries included: after it the caller gets
    /// [`StoreError::Unavailable`] or [`StoreError::OutcomeUnknown`], never a hang.
    #[serde(default = "default_command", with = "millis")]
    pub command_timeout: Duration,
    /// The timings of the lease fence that pr-target runs on this store (absent: not
    /// configured, [`LeaseTiming::default`]). A store client that fences nothing (pr-helper's
    /// emulate backend) has none.
    #[serde(default)]
    pub lease: Option<LeaseTiming>,
}

fn default_prefix() -> String {
    "/pr-helper/".into()
}
fn default_connect() -> Duration {
    Duration::from_secs(3)
}
fn default_request() -> Duration {
    Duration::from_secs(2)
}
fn default_command() -> Duration {
    Duration::from_secs(5)
}

pub(crate) mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Longest key prefix accepted.
pub const MAX_PREFIX_LEN: usize = 512;
/// Most endpoints accepted.
pub const MAX_ENDPOINTS: usize = 64;

impl EtcdConfig {
    /// A configuration with `endpoints` and every other setting at its default.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: default_prefix(),
            host_id: None,
            tls: None,
            connect_timeout: default_connect(),
            request_timeout: default_request(),
            command_timeout: default_command(),
            lease: None,
        }
    }

    /// Checks every setting, naming the first one that is wrong and what was expected.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |detail: String| Err(StoreError::Config { detail });
        if self.endpoints.is_empty() {
            return bad(
                "etcd endpoints: none given; expected at least one URL such as \
                        http://127.0.0.1:2379"
                    .into(),
            );
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return bad(format!(
                "etcd endpoints: {} given, at most {MAX_ENDPOINTS} accepted",
                self.endpoints.len()
            ));
        }
        let scheme = if self.tls.is_some() {
            "https://"
        } else {
            "http://"
        };
        for e in &self.endpoints {
            let Some(rest) = e.strip_prefix(scheme) else {
                return bad(format!(
                    "etcd endpoint {e:?}: expected a URL starting with {scheme}{}",
                    if self.tls.is_some() {
                        " (TLS is configured)"
                    } else {
                        " (configure tls for https://)"
                    }
                ));
            };
            let hostport = rest.trim_end_matches('/');
            let port_ok = hostport
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            if !port_ok || hostport.contains('/') || hostport.chars().any(char::is_whitespace) {
                return bad(format!(
                    "etcd endpoint {e:?}: expected {scheme}HOST:PORT (for example \
                     {scheme}127.0.0.1:2379)"
                ));
            }
        }
        if self.prefix.is_empty()
            || self.prefix.len() > MAX_PREFIX_LEN
            || self.prefix.chars().any(char::is_control)
        {
            return bad(format!(
                "etcd key prefix {:?}: expected 1 to {MAX_PREFIX_LEN} bytes without control \
                 characters, such as /pr-helper/",
                self.prefix.escape_debug().take(80).collect::<String>()
            ));
        }
        if let Some(h) = &self.host_id {
            if h.is_empty() || h.len() > 128 || h.chars().any(|c| c.is_control() || c == '#') {
                return bad(format!(
                    "host id {:?}: expected 1 to 128 bytes without control characters or '#'",
                    h.escape_debug().take(80).collect::<String>()
                ));
            }
        }
        if let Some(t) = &self.tls {
            if t.cert.is_some() != t.key.is_some() {
                return bad("etcd tls: cert and key go together; give both or neither".into());
            }
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("command_timeout", self.command_timeout),
        ] {
            if d < Duration::from_millis(10) || d > Duration::from_secs(600) {
                return bad(format!(
                    "etcd {name} {d:?}: expected between 10 ms and 600 s"
                ));
            }
        }
        if self.request_timeout > self.command_timeout {
            return bad(format!(
                "etcd request_timeout {:?} is longer than command_timeout {:?}: a command \
                 must allow at least one request",
                self.request_timeout, self.command_timeout
            ));
        }
        if let Some(l) = &self.lease {
            l.validate_with(self.request_timeout)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pr_store::ErrorKind;

    fn err(c: &EtcdConfig) -> String {
        let e = c.validate().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        e.to_string()
    }

    #[test]
    fn accepts_defaults_and_names_bad_settings() {
        let ok = EtcdConfig::new(["http://127.0.0.1:2379", "http://[::1]:2379/"]);
        ok.validate().unwrap();
        assert!(err(&EtcdConfig::new(Vec::<String>::new())).contains("none given"));
        assert!(err(&EtcdConfig::new(["127.0.0.1:2379"])).contains("starting with http://"));
        assert!(err(&EtcdConfig::new(["http://host"])).contains("HOST:PORT"));
        assert!(err(&EtcdConfig::new(["http://host:0"])).contains("HOST:PORT"));
        let mut c = ok.clone();
        c.tls = Some(TlsFiles {
            ca: "/ca.pem".into(),
            cert: None,
            key: None,
            domain: None,
        });
        assert!(err(&c).contains("https://"));
        c.endpoints = vec!["https://h:2379".into()];
        c.validate().unwrap();
        c.tls.as_mut().unwrap().cert = Some("/c.pem".into());
        assert!(err(&c).contains("cert and key"));
        let mut c = ok.clone();
        c.prefix = String::new();
        assert!(err(&c).contains("key prefix"));
        let mut c = ok.clone();
        c.command_timeout = Duration::from_secs(1);
        assert!(err(&c).contains("longer than command_timeout"));
        let mut c = ok;
        c.host_id = Some("a#b".into());
        assert!(err(&c).contains("host id"));
    }

    #[test]
    fn toml_like_json_round_trip_with_defaults() {
        let c: EtcdConfig = serde_json::from_str(
            r#"{"endpoints":["http://127.0.0.1:2379"],"command_timeout":900}"#,
        )
        .unwrap();
        assert_eq!(c.prefix, "/pr-helper/");
        assert_eq!(c.command_timeout, Duration::from_millis(900));
        assert_eq!(c.request_timeout, Duration::from_secs(2));
        assert!(serde_json::from_str::<EtcdConfig>(r#"{"endpoints":[],"bogus":1}"#).is_err());
    }
}
