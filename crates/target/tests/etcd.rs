//! pr-target on an etcd store: configuration, start-up against a real 3-member etcd cluster on
//! loopback (pr-store-etcd's harness), an unreachable cluster at start, and the etcd client
//! working under pr-target's seccomp filter through a partition and a reconnection.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pr_engine::{EngineConfig, Nexus};
use pr_scsi::transport_id::TransportId;
use pr_scsi::RelativeTargetPort;
use pr_store::{ErrorKind, LuId, SqliteOptions, Store};
use pr_store_config::StoreSetting;
use pr_store_etcd::cluster::{Cluster, Timing};
use pr_store_etcd::proxy::Proxy;
use pr_store_etcd::{EtcdConfig, EtcdStore};

const BIN: &str = env!("CARGO_BIN_EXE_pr-target");

fn config(dir: &Path, store: &str) -> String {
    format!(
        r#"{store}

[[lu]]
name = "d0"
path = "{d}/disk.img"
naa = "5001405abcdef012"
serial = "S0"

[[socket]]
path = "{d}/a.sock"
initiator = "iqn.2026-12.org.test:a"
luns = {{ 0 = "d0" }}
"#,
        d = dir.display()
    )
}

fn setup(store: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("disk.img"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(dir.path().join("t.toml"), config(dir.path(), store)).unwrap();
    dir
}

fn list(endpoints: &[String]) -> String {
    endpoints
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn nexus() -> Nexus {
    Nexus {
        initiator: TransportId::Iscsi {
            name: "iqn.2026-12.org.test:other-host".into(),
            isid: None,
        },
        relative_target_port: RelativeTargetPort(1),
    }
}

/// PERSISTENT RESERVE OUT, REGISTER (SPC-4 §6.16.1: opcode 5Fh, service action 00h, parameter
/// list length 24) and its parameter list: SERVICE ACTION RESERVATION KEY at bytes 8..16.
fn register(key: u64) -> (Vec<u8>, Vec<u8>) {
    let cdb = vec![0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0];
    let mut p = vec![0u8; 24];
    p[8..16].copy_from_slice(&key.to_be_bytes());
    (cdb, p)
}

/// PERSISTENT RESERVE IN, READ KEYS (SPC-4 §6.15.2: opcode 5Eh, service action 00h,
/// allocation length 256).
fn read_keys() -> Vec<u8> {
    vec![0x5e, 0x00, 0, 0, 0, 0, 0, 0x01, 0x00, 0]
}

#[test]
fn check_validates_etcd_settings_naming_the_line_and_key() {
    let dir =
        setup("store = { kind = \"etcd\", endpoints = [\"10.0.0.1:2379\", \"[fd00::2]:2379\"] }");
    let out = Command::new(BIN)
        .args(["--check", "--config"])
        .arg(dir.path().join("t.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cases = [
        (
            "store = { kind = \"etcd\", endpoints = [\"etcd1.example.com:2379\"] }",
            "t.toml:1: store.endpoints[0] = \"http://etcd1.example.com:2379\": expected an IP \
             address",
        ),
        (
            "[store]\nkind = \"etcd\"\nendpoints = [\"10.0.0.1:2379\"]\ncert = \"/c.pem\"",
            "t.toml:1: store.cert needs TLS: set store.ca too",
        ),
        (
            "store = { kind = \"etcd\", endpoints = [\"10.0.0.1:2379\"], request_timeout_ms = 0 }",
            "t.toml:1: store.request_timeout_ms = 0: expected 10 to 600000 (milliseconds)",
        ),
        (
            "# the lease fence\n[store]\nkind = \"etcd\"\nendpoints = [\"10.0.0.1:2379\"]\n\
             lease_ttl_s = 3\nlease_margin_ms = 5",
            "t.toml:2: store.lease_margin_ms = 5: expected 100 to 600000 (milliseconds; at \
             least the longest medium write in flight), e.g. 1000",
        ),
        (
            "store = { kind = \"etcd\", endpoints = [\"10.0.0.1:2379\"], lease_ttl_s = 2 }",
            "t.toml:1: store.lease_margin_ms = 1000 + store.lease_renew_ms = 2000 leave nothing \
             of store.lease_ttl_s = 2",
        ),
        (
            "store = \"relative.db\"",
            "t.toml:1: store = \"relative.db\" must be an absolute path",
        ),
    ];
    for (store, want) in cases {
        std::fs::write(dir.path().join("t.toml"), config(dir.path(), store)).unwrap();
        let out = Command::new(BIN)
            .args(["--check", "--config"])
            .arg(dir.path().join("t.toml"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{store}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{store}: {err}");
    }
}

#[test]
fn starts_on_an_etcd_store_serves_and_drains_on_sigterm() {
    let cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    let lu = LuId::new("d0").unwrap();
    // Another host registered on the LU before this one starts.
    let mut c = EtcdConfig::new(cluster.endpoints());
    c.prefix = "/target-start/".into();
    c.host_id = Some("other-host".into());
    let other = EtcdStore::open(c).unwrap();
    let (cdb, p) = register(0x4242);
    let o = other
        .execute(&lu, &nexus(), &cdb, &p, &EngineConfig::default())
        .unwrap();
    assert!(o.state.is_some());
    let dir = setup(&format!(
        "store = {{ kind = \"etcd\", endpoints = [{}], prefix = \"/target-start/\", host_id = \
         \"hv-a\", request_timeout_ms = 1000, lease_ttl_s = 3, lease_renew_ms = 500, \
         lease_margin_ms = 500 }}",
        list(&cluster.endpoints())
    ));
    let mut t = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("t.toml"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = dir.path().join("a.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "pr-target did not create its socket in 30 s"
        );
        assert!(t.try_wait().unwrap().is_none(), "pr-target exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Serving under its seccomp filter, with the etcd client's threads alive: the state
    // stays one, readable by the other host.
    std::thread::sleep(Duration::from_millis(200));
    assert!(t.try_wait().unwrap().is_none(), "pr-target exited");
    let keys = other
        .execute(&lu, &nexus(), &read_keys(), &[], &EngineConfig::default())
        .unwrap();
    assert_eq!(
        keys.reply.data,
        [0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x42, 0x42]
    );
    // Its lease fence runs with the configured timings: etcd granted the lease of its host key
    // the configured 3 s (the default is 6 s), as etcd itself reports it.
    let hosts = other.host_leases().unwrap();
    assert_eq!(hosts.len(), 1, "one fenced host: {hosts:?}");
    assert!(hosts[0].host.starts_with("hv-a#"), "{hosts:?}");
    assert_eq!(
        hosts[0].granted_ttl,
        Some(Duration::from_secs(3)),
        "{hosts:?}"
    );
    let pid = rustix::process::Pid::from_raw(t.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = t.wait().unwrap();
    let mut log = String::new();
    t.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(status.success(), "{status:?}: {log}");
    assert!(
        log.contains("store etcd [http://") && log.contains("/target-start/ open"),
        "{log}"
    );
    assert!(
        log.contains(
            "lease fence started (TTL 3 s granted for 3 s asked, renewal every 500 ms, margin \
             500 ms, clock drift bound 10000 ppm)"
        ),
        "{log}"
    );
    assert!(log.contains("clean shutdown"), "{log}");
}

#[test]
fn an_unreachable_etcd_at_start_is_a_clear_error_in_bounded_time() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = l.local_addr().unwrap().to_string();
    drop(l);
    let dir = setup(&format!(
        "store = {{ kind = \"etcd\", endpoints = [\"{endpoint}\"], connect_timeout_ms = 800 }}"
    ));
    let start = Instant::now();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("t.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "gave up after {:?}",
        start.elapsed()
    );
    assert!(
        err.contains(&format!(
            "store etcd [http://{endpoint}] prefix /pr-helper/: "
        )) && err.contains("connecting"),
        "{err}"
    );
}

/// The child's side of [`the_etcd_client_works_under_the_seccomp_filter_through_a_partition`]:
/// runs only when the parent starts this test binary with `PR_TARGET_SANDBOX_ENDPOINTS`.
/// Lines starting with "sandbox: " on stdout ask the parent to act; the parent answers on
/// stdin.
fn sandboxed_child(endpoints: &str) {
    let ask = |what: &str| {
        println!("sandbox: {what}");
        std::io::stdout().flush().unwrap();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done", "parent answered {line:?} to {what}");
    };
    #[derive(serde::Deserialize)]
    struct F {
        store: StoreSetting,
    }
    let f: F = toml::from_str(&format!(
        "store = {{ kind = \"etcd\", endpoints = [{endpoints}], prefix = \"/sandbox/\", \
         host_id = \"hv-a\", request_timeout_ms = 500, command_timeout_ms = 1500 }}"
    ))
    .unwrap();
    let store = f
        .store
        .resolve("store", "/unused.db")
        .unwrap()
        .open(SqliteOptions::default())
        .unwrap()
        .store();
    pr_target::seccomp::install(pr_target::seccomp::SeccompMode::Kill, true).unwrap();
    let lu = LuId::new("d0").unwrap();
    let cfg = EngineConfig::default();
    let (cdb, p) = register(0x7777);
    store.execute(&lu, &nexus(), &cdb, &p, &cfg).unwrap();
    ask("cut");
    let start = Instant::now();
    let e = store
        .execute(&lu, &nexus(), &read_keys(), &[], &cfg)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(start.elapsed() < Duration::from_millis(1500 + 1500));
    ask("heal");
    // New connections, under the filter.
    let deadline = Instant::now() + Duration::from_secs(15);
    let o = loop {
        match store.execute(&lu, &nexus(), &read_keys(), &[], &cfg) {
            Ok(o) => break o,
            Err(e) => {
                assert!(Instant::now() < deadline, "no answer after the heal: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(
        o.reply.data,
        [0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x77, 0x77]
    );
    println!("sandbox: passed");
}

#[test]
fn the_etcd_client_works_under_the_seccomp_filter_through_a_partition() {
    if let Ok(endpoints) = std::env::var("PR_TARGET_SANDBOX_ENDPOINTS") {
        sandboxed_child(&endpoints);
        return;
    }
    let cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    let proxies: Vec<Proxy> = cluster.proxies().unwrap();
    let through: Vec<String> = proxies.iter().map(|p| p.addr().to_string()).collect();
    // This test again, alone, in a process of its own: the filter goes on every thread.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "the_etcd_client_works_under_the_seccomp_filter_through_a_partition",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PR_TARGET_SANDBOX_ENDPOINTS", list(&through))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a child that hangs is killed (it is ours, by its pid) and the test fails.
    let (finished, watchdog) = std::sync::mpsc::channel::<()>();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let killer = std::thread::spawn(move || {
        let hung = watchdog.recv_timeout(Duration::from_secs(90)).is_err();
        if hung {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        hung
    });
    let mut to_child = child.stdin.take().unwrap();
    let mut passed = false;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest's "test NAME ... " may come first on the line.
        match line.split_once("sandbox: ").map(|(_, ask)| ask) {
            Some("cut") => proxies.iter().for_each(Proxy::cut),
            Some("heal") => proxies.iter().for_each(Proxy::heal),
            Some("passed") => {
                passed = true;
                continue;
            }
            _ => continue,
        }
        writeln!(to_child, "done").unwrap();
    }
    let status = child.wait().unwrap();
    let _ = finished.send(());
    let hung = killer.join().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !hung,
        "the sandboxed child did not finish within 90 s: {err}"
    );
    // Killed by the filter: SIGSYS (31).
    assert!(status.success() && passed, "{status:?}: {err}");
}

#[test]
fn two_hosts_serve_one_backing_file_on_etcd_each_under_its_lease_fence() {
    // Two pr-target processes ("hv-a" and "hv-b") on one backing file and one etcd store: an
    // etcd LU is shared, so each locks the file shared and starts its lease fence; a SQLite
    // LU would refuse the second process (the exclusive lock, tests/target.rs).
    let cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let start = |host: &str| {
        let conf = format!(
            r#"store = {{ kind = "etcd", endpoints = [{e}], prefix = "/two-hosts/", host_id = "{host}" }}

[[lu]]
name = "d0"
path = "{disk}"
naa = "5001405abcdef013"
serial = "S1"

[[socket]]
path = "{d}/{host}.sock"
initiator = "iqn.2026-12.org.test:{host}"
luns = {{ 0 = "d0" }}
"#,
            e = list(&cluster.endpoints()),
            disk = disk.display(),
            d = dir.path().display(),
        );
        let path = dir.path().join(format!("{host}.toml"));
        std::fs::write(&path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join(format!("{host}.log"))).unwrap();
        Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let log_of = |host: &str| {
        std::fs::read_to_string(dir.path().join(format!("{host}.log"))).unwrap_or_default()
    };
    let mut a = start("hv-a");
    let mut b = start("hv-b");
    let deadline = Instant::now() + Duration::from_secs(60);
    for (host, t) in [("hv-a", &mut a), ("hv-b", &mut b)] {
        while !log_of(host).contains("ready") {
            assert!(
                Instant::now() < deadline,
                "{host} not ready within 60 s: {}",
                log_of(host)
            );
            assert!(
                t.try_wait().unwrap().is_none(),
                "{host} exited: {}",
                log_of(host)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = log_of(host);
        assert!(log.contains("lease fence started"), "{host}: {log}");
        assert!(
            log.contains("d0: shared with other hosts under the lease fence"),
            "{host}: {log}"
        );
    }
    for (host, t) in [("hv-a", &mut a), ("hv-b", &mut b)] {
        let pid = rustix::process::Pid::from_raw(t.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = t.wait().unwrap();
        assert!(status.success(), "{host}: {status:?}: {}", log_of(host));
        assert!(
            log_of(host).contains("clean shutdown"),
            "{host}: {}",
            log_of(host)
        );
    }
}
