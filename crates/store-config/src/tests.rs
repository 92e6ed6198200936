use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    store: StoreSetting,
}

fn resolve(text: &str) -> Result<StoreSelection, String> {
    let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
    f.store
        .resolve("store", "/var/lib/pr-helper/reservations.db")
        .map_err(|e| e.to_string())
}

fn etcd(lines: &str) -> Result<StoreSelection, String> {
    resolve(&format!("[store]\nkind = \"etcd\"\n{lines}\n"))
}

fn config_of(s: StoreSelection) -> (EtcdConfig, Option<TlsPem>) {
    match s {
        StoreSelection::Etcd { config, tls } => (*config, tls),
        other => panic!("not etcd: {other:?}"),
    }
}

#[test]
fn a_path_or_a_sqlite_table_is_a_sqlite_store() {
    let s = resolve("store = \"/srv/r.db\"").unwrap();
    assert_eq!(
        s,
        StoreSelection::Sqlite {
            path: "/srv/r.db".into()
        }
    );
    assert_eq!(s.to_string(), "SQLite /srv/r.db");
    let t = resolve("[store]\nkind = \"sqlite\"\npath = \"/srv/r.db\"").unwrap();
    assert_eq!(t, s);
    assert_eq!(
        resolve("store = \"r.db\"").unwrap_err(),
        "store = \"r.db\" must be an absolute path, e.g. \"/var/lib/pr-helper/reservations.db\""
    );
    assert_eq!(
        resolve("[store]\nkind = \"sqlite\"").unwrap_err(),
        "store: kind = \"sqlite\" needs path = \"…\", e.g. \"/var/lib/pr-helper/reservations.db\""
    );
    assert_eq!(
        resolve("[store]\nkind = \"sqlite\"\npath = \"/a\"\nendpoints = [\"h:1\"]").unwrap_err(),
        "store.endpoints is an etcd setting; kind = \"sqlite\" takes only path"
    );
    assert_eq!(
        resolve("[store]\npath = \"/a\"").unwrap_err(),
        "store: a store table needs kind = \"sqlite\" (with path) or kind = \"etcd\" (with \
         endpoints)"
    );
    assert_eq!(
        resolve("[store]\nkind = \"zookeeper\"").unwrap_err(),
        "store.kind = \"zookeeper\": expected \"sqlite\" or \"etcd\""
    );
    let e = resolve("[store]\nkind = \"etcd\"\nendpoint = [\"h:1\"]").unwrap_err();
    assert!(e.contains("unknown field `endpoint`"), "{e}");
    let e = resolve("store = 7").unwrap_err();
    assert!(e.contains("the path of a SQLite file, or a table"), "{e}");
}

#[test]
fn an_etcd_table_with_defaults() {
    let (c, tls) = config_of(
        etcd("endpoints = [\"10.0.0.1:2379\", \"http://10.0.0.2:2379\", \"[fd00::3]:2379\"]")
            .unwrap(),
    );
    assert_eq!(
        c.endpoints,
        [
            "http://10.0.0.1:2379",
            "http://10.0.0.2:2379",
            "http://[fd00::3]:2379"
        ]
    );
    assert_eq!(c.prefix, "/pr-helper/");
    assert_eq!(c.host_id, None);
    assert_eq!(c.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.request_timeout, Duration::from_secs(2));
    assert_eq!(c.command_timeout, Duration::from_secs(5));
    assert!(tls.is_none() && c.tls.is_none());
    let (c, _) = config_of(
        etcd(
            "endpoints = [\"e1:2379\"]\nprefix = \"/cluster-a/\"\nhost_id = \"hv1\"\n\
             connect_timeout_ms = 500\nrequest_timeout_ms = 300\ncommand_timeout_ms = 900",
        )
        .unwrap(),
    );
    assert_eq!(c.prefix, "/cluster-a/");
    assert_eq!(c.host_id.as_deref(), Some("hv1"));
    assert_eq!(c.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.request_timeout, Duration::from_millis(300));
    assert_eq!(c.command_timeout, Duration::from_millis(900));
}

#[test]
fn bad_etcd_settings_name_the_key_and_what_was_expected() {
    let cases: &[(&str, &str)] = &[
        (
            "",
            "store: kind = \"etcd\" needs endpoints = [\"HOST:PORT\", …], the cluster's client \
             addresses",
        ),
        (
            "endpoints = []",
            "store.endpoints = []: expected at least one HOST:PORT, e.g. [\"10.0.0.1:2379\"]",
        ),
        (
            "endpoints = [\"h:1\", \"10.0.0.1\"]",
            "store.endpoints[1] = \"10.0.0.1\": expected HOST:PORT or http://HOST:PORT, e.g. \
             \"10.0.0.1:2379\" or \"http://[fd00::1]:2379\"",
        ),
        (
            "endpoints = [\"h:0\"]",
            "store.endpoints[0] = \"h:0\": port \"0\" is not 1 to 65535; expected HOST:PORT or \
             http://HOST:PORT, e.g. \"10.0.0.1:2379\" or \"http://[fd00::1]:2379\"",
        ),
        (
            "endpoints = [\"h:99999\"]",
            "store.endpoints[0] = \"h:99999\": port \"99999\" is not 1 to 65535; expected \
             HOST:PORT or http://HOST:PORT, e.g. \"10.0.0.1:2379\" or \"http://[fd00::1]:2379\"",
        ),
        (
            "endpoints = [\"https://h:2379\"]",
            "store.endpoints[0] = \"https://h:2379\": https:// needs TLS: set ca, the CA \
             certificate of the etcd servers",
        ),
        (
            "endpoints = [\"unix://h:2379\"]",
            "store.endpoints[0] = \"unix://h:2379\": unknown scheme; expected HOST:PORT or \
             http://HOST:PORT, e.g. \"10.0.0.1:2379\" or \"http://[fd00::1]:2379\"",
        ),
        (
            "endpoints = [\"http://h:2379/v3\"]",
            "store.endpoints[0] = \"http://h:2379/v3\": expected HOST:PORT or http://HOST:PORT, \
             e.g. \"10.0.0.1:2379\" or \"http://[fd00::1]:2379\"",
        ),
        (
            "endpoints = [\"fd00::1:2379\"]",
            "store.endpoints[0] = \"fd00::1:2379\": expected HOST:PORT or http://HOST:PORT, \
             e.g. \"10.0.0.1:2379\" or \"http://[fd00::1]:2379\"",
        ),
        (
            "endpoints = [\"h:1\", \"http://h:1\"]",
            "store.endpoints[1] = \"http://h:1\" is given twice",
        ),
        (
            "endpoints = [\"h:1\"]\nprefix = \"/pr\"",
            "store.prefix = \"/pr\": expected 1 to 512 bytes ending in '/', without control \
             characters, e.g. \"/pr-helper/\"",
        ),
        (
            "endpoints = [\"h:1\"]\nhost_id = \"a#b\"",
            "store.host_id = \"a#b\": expected 1 to 128 characters without control characters \
             or '#', unique per host, e.g. \"hv1\"",
        ),
        (
            "endpoints = [\"h:1\"]\ncommand_timeout_ms = 0",
            "store.command_timeout_ms = 0: expected 10 to 600000 (milliseconds)",
        ),
        (
            "endpoints = [\"h:1\"]\nconnect_timeout_ms = 86400000",
            "store.connect_timeout_ms = 86400000: expected 10 to 600000 (milliseconds)",
        ),
        (
            "endpoints = [\"h:1\"]\nrequest_timeout_ms = -5",
            "store.request_timeout_ms = -5: expected 10 to 600000 (milliseconds)",
        ),
        (
            "endpoints = [\"h:1\"]\ncommand_timeout_ms = 1000",
            "store.request_timeout_ms = 2000 is longer than store.command_timeout_ms = 1000: a \
             command must allow at least one request",
        ),
        (
            "endpoints = [\"h:1\"]\npath = \"/a\"",
            "store.path is a SQLite setting; kind = \"etcd\" takes endpoints instead",
        ),
        (
            "endpoints = [\"h:1\"]\ncert = \"/c.pem\"\nkey = \"/k.pem\"",
            "store.cert needs TLS: set store.ca too, the CA certificate of the etcd servers",
        ),
    ];
    for (lines, want) in cases {
        assert_eq!(etcd(lines).unwrap_err(), *want, "for {lines:?}");
    }
}

const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

#[test]
fn tls_files_are_checked_and_read_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ca.pem"), CERT).unwrap();
    std::fs::write(d.join("c.pem"), CERT).unwrap();
    std::fs::write(d.join("k.pem"), KEY).unwrap();
    let f = |n: &str| d.join(n).display().to_string();
    let (c, tls) = config_of(
        etcd(&format!(
            "endpoints = [\"e1:2379\", \"https://e2:2379\"]\nca = \"{}\"\ncert = \"{}\"\nkey = \
             \"{}\"\nserver_name = \"etcd.example.com\"",
            f("ca.pem"),
            f("c.pem"),
            f("k.pem")
        ))
        .unwrap(),
    );
    assert_eq!(c.endpoints, ["https://e1:2379", "https://e2:2379"]);
    let tls = tls.unwrap();
    assert_eq!(tls.ca, CERT.as_bytes());
    assert_eq!(
        tls.identity,
        Some((CERT.as_bytes().to_vec(), KEY.as_bytes().to_vec()))
    );
    assert_eq!(tls.domain.as_deref(), Some("etcd.example.com"));
    // The key never reaches a log through Debug.
    assert!(!format!("{tls:?}").contains("MIIE"));
    let s = StoreSelection::Etcd {
        config: Box::new(c),
        tls: Some(tls),
    };
    assert_eq!(
        s.to_string(),
        "etcd [https://e1:2379, https://e2:2379] prefix /pr-helper/ (TLS)"
    );
    let ca = format!("endpoints = [\"e1:2379\"]\nca = \"{}\"", f("ca.pem"));
    assert_eq!(
        etcd(&format!("{ca}\ncert = \"{}\"", f("c.pem"))).unwrap_err(),
        "store.cert without store.key: a client certificate needs its private key"
    );
    assert_eq!(
        etcd(&format!("{ca}\nkey = \"{}\"", f("k.pem"))).unwrap_err(),
        "store.key without store.cert: a private key needs its client certificate"
    );
    let missing = etcd(&format!(
        "{ca}\ncert = \"{}\"\nkey = \"{}\"",
        f("c.pem"),
        f("nope.pem")
    ))
    .unwrap_err();
    assert_eq!(
        missing,
        format!(
            "store.key = {:?}: cannot read it: No such file or directory (os error 2)",
            d.join("nope.pem")
        )
    );
    // The key where the certificate should be, and the other way round.
    let swapped = etcd(&format!(
        "{ca}\ncert = \"{}\"\nkey = \"{}\"",
        f("k.pem"),
        f("c.pem")
    ))
    .unwrap_err();
    assert!(
        swapped.starts_with("store.cert = ")
            && swapped
                .ends_with("expected a PEM file with a \"-----BEGIN …CERTIFICATE-----\" block"),
        "{swapped}"
    );
    assert_eq!(
        etcd(&format!("endpoints = [\"e1:2379\"]\nca = \"{}\"", f(""))).unwrap_err(),
        format!("store.ca = {:?}: not a regular file", d.join(""))
    );
    assert_eq!(
        etcd("endpoints = [\"e1:2379\"]\nca = \"ca.pem\"").unwrap_err(),
        "store.ca = \"ca.pem\": expected an absolute path"
    );
    assert_eq!(
        etcd(&format!(
            "endpoints = [\"http://e1:2379\"]\nca = \"{}\"",
            f("ca.pem")
        ))
        .unwrap_err(),
        "store.endpoints[0] = \"http://e1:2379\": plain http:// while ca is set (TLS); use \
         https:// or HOST:PORT"
    );
}

#[test]
fn an_unreadable_tls_file_is_named_even_for_root() {
    // Root reads any file whatever its mode, so unreadability is made by a directory in place
    // of the file's parent component instead.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), CERT).unwrap();
    let p = dir.path().join("file").join("ca.pem");
    let e = etcd(&format!(
        "endpoints = [\"e1:2379\"]\nca = \"{}\"",
        p.display()
    ))
    .unwrap_err();
    assert_eq!(
        e,
        format!("store.ca = {p:?}: cannot read it: Not a directory (os error 20)")
    );
}

#[test]
fn opening_an_unanswered_cluster_is_unavailable_within_the_connect_timeout() {
    // A port on loopback that nobody listens on: connecting is refused at once, and open keeps
    // trying until its connect timeout.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let s = etcd(&format!(
        "endpoints = [\"127.0.0.1:{port}\"]\nconnect_timeout_ms = 400\nrequest_timeout_ms = \
         200\ncommand_timeout_ms = 500"
    ))
    .unwrap();
    let start = std::time::Instant::now();
    let e = match s.open(SqliteOptions::default()) {
        Ok(_) => panic!("opened a cluster nobody serves"),
        Err(e) => e,
    };
    assert!(e.kind() == pr_store::ErrorKind::Unavailable, "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(
        start.elapsed() < Duration::from_millis(400 + 2000),
        "open took {:?}",
        start.elapsed()
    );
}

#[test]
fn lease_settings_of_an_etcd_table() {
    let (c, _) = config_of(etcd("endpoints = [\"h:1\"]").unwrap());
    assert_eq!(c.lease, None, "no lease key: the fence's defaults");
    let (c, _) = config_of(
        etcd(
            "endpoints = [\"h:1\"]\nlease_ttl_s = 3\nlease_renew_ms = 500\n\
             lease_margin_ms = 400\nclock_drift_ppm = 100\nrequest_timeout_ms = 1000",
        )
        .unwrap(),
    );
    assert_eq!(
        c.lease,
        Some(LeaseTiming {
            ttl: Duration::from_secs(3),
            renew_every: Duration::from_millis(500),
            margin: Duration::from_millis(400),
            drift_ppm: 100,
        })
    );
    // One key given: the others keep the defaults of docs/etcd.md (renewal every 2 s, margin
    // 1 s, 1 %).
    let (c, _) = config_of(etcd("endpoints = [\"h:1\"]\nlease_ttl_s = 10").unwrap());
    assert_eq!(
        c.lease,
        Some(LeaseTiming {
            ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            margin: Duration::from_secs(1),
            drift_ppm: 10_000,
        })
    );
    // Just inside the request-timeout relation: 1000 + 1999 < 4 s − 1000 ms.
    let (c, _) = config_of(
        etcd(
            "endpoints = [\"h:1\"]\nlease_ttl_s = 4\nlease_renew_ms = 1000\n\
             lease_margin_ms = 1000\nclock_drift_ppm = 0\nrequest_timeout_ms = 1999",
        )
        .unwrap(),
    );
    assert!(c.lease.is_some());
    // What a program that fences nothing refuses, in the order of the docs.
    let f: File = toml::from_str(
        "[store]\nkind = \"etcd\"\nendpoints = [\"h:1\"]\nclock_drift_ppm = 5\nlease_ttl_s = 9",
    )
    .unwrap();
    assert_eq!(f.store.lease_keys(), ["lease_ttl_s", "clock_drift_ppm"]);
    assert!(StoreSetting::sqlite("/a.db").lease_keys().is_empty());
    assert_eq!(
        resolve("[store]\nkind = \"sqlite\"\npath = \"/a\"\nlease_ttl_s = 6").unwrap_err(),
        "store.lease_ttl_s is an etcd setting; kind = \"sqlite\" takes only path"
    );
}

#[test]
fn bad_lease_settings_name_the_key_and_what_was_expected() {
    let cases: &[(&str, &str)] = &[
        (
            "lease_ttl_s = 0",
            "store.lease_ttl_s = 0: expected 1 to 3600 (whole seconds: etcd grants a lease's \
             TTL in seconds), e.g. 6",
        ),
        (
            "lease_ttl_s = 7200",
            "store.lease_ttl_s = 7200: expected 1 to 3600 (whole seconds: etcd grants a lease's \
             TTL in seconds), e.g. 6",
        ),
        (
            "lease_renew_ms = 50",
            "store.lease_renew_ms = 50: expected 100 to 600000 (milliseconds between renewal \
             rounds), e.g. 2000",
        ),
        (
            "lease_margin_ms = 0",
            "store.lease_margin_ms = 0: expected 100 to 600000 (milliseconds; at least the \
             longest medium write in flight), e.g. 1000",
        ),
        (
            "clock_drift_ppm = 500000",
            "store.clock_drift_ppm = 500000: expected 0 to 499999 (parts per million; 10000 = \
             1 %)",
        ),
        (
            "clock_drift_ppm = -1",
            "store.clock_drift_ppm = -1: expected 0 to 499999 (parts per million; 10000 = 1 %)",
        ),
        // Margin and renewal period must fit in the TTL shrunk by the drift bound.
        (
            "lease_ttl_s = 2\nclock_drift_ppm = 0",
            "store.lease_margin_ms = 1000 + store.lease_renew_ms = 2000 leave nothing of \
             store.lease_ttl_s = 2 × (1 − store.clock_drift_ppm = 0 ppm) = 2000 ms: media I/O \
             would stop between renewals; renew more often or lengthen the TTL",
        ),
        // A round taking the whole request timeout (default 2000 ms) must end in the validity.
        (
            "lease_ttl_s = 4\nlease_renew_ms = 1000\nlease_margin_ms = 1000\nclock_drift_ppm = 0",
            "store.lease_renew_ms = 1000 + store.request_timeout_ms = 2000 must be shorter than \
             store.lease_ttl_s × (1 − store.clock_drift_ppm) − store.lease_margin_ms = 3000 ms: \
             a renewal round that takes the whole request timeout would stop media I/O on a \
             healthy host; renew more often, shorten request_timeout_ms or lengthen the TTL",
        ),
    ];
    for (lines, want) in cases {
        let lines = format!("endpoints = [\"h:1\"]\n{lines}");
        assert_eq!(etcd(&lines).unwrap_err(), *want, "for {lines:?}");
    }
    let e = etcd("endpoints = [\"h:1\"]\nlease_ttl_s = 1.5").unwrap_err();
    assert!(
        e.contains("invalid type: floating point `1.5`, expected i64"),
        "{e}"
    );
    let e = etcd("endpoints = [\"h:1\"]\nlease_ttl_ms = 6000").unwrap_err();
    assert!(e.contains("unknown field `lease_ttl_ms`"), "{e}");
}

#[test]
fn the_worked_lease_example_of_the_docs() {
    // docs/etcd.md, "Worked example: a faster failover".
    let example = "endpoints = [\"10.0.0.1:2379\", \"10.0.0.2:2379\", \"10.0.0.3:2379\"]\n\
                   host_id = \"hv1\"\nrequest_timeout_ms = 1000\nlease_renew_ms = 750\n\
                   lease_margin_ms = 500\nclock_drift_ppm = 10000";
    let (c, _) = config_of(etcd(&format!("{example}\nlease_ttl_s = 3")).unwrap());
    let l = c.lease.unwrap();
    assert_eq!(l.shrink(l.ttl), Duration::from_millis(2970));
    assert_eq!(l.validity(), Duration::from_millis(2470));
    assert_eq!(l.ack_wait(), Duration::from_secs(7));
    let e = etcd(&format!("{example}\nlease_ttl_s = 2")).unwrap_err();
    assert_eq!(
        e,
        "store.lease_renew_ms = 750 + store.request_timeout_ms = 1000 must be shorter than \
         store.lease_ttl_s × (1 − store.clock_drift_ppm) − store.lease_margin_ms = 1480 ms: a \
         renewal round that takes the whole request timeout would stop media I/O on a healthy \
         host; renew more often, shorten request_timeout_ms or lengthen the TTL"
    );
}
