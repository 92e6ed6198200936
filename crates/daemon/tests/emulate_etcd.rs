//! The `emulate` backend on an etcd store, against the real daemon: a real 3-member etcd
//! cluster on loopback (pr-store-etcd's test harness; Debian's etcd-server, which scripts/setup
//! installs), real sockets, loop devices, the daemon as nobody under its seccomp filter. Two
//! daemons with different host ids and initiators stand for two hosts. Expected bytes are
//! written out from SPC-4 (§6.15.2 READ KEYS, §6.15.3 READ RESERVATION). Tests run as root
//! (CI does).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::emulate::*;
use common::*;
use pr_client::Client;
use pr_scsi::Status;
use pr_store::{LuId, Store};
use pr_store_etcd::cluster::{Cluster, Timing};
use pr_store_etcd::proxy::Proxy;
use pr_store_etcd::{EtcdConfig, EtcdStore};

/// The store calls' bound in these daemons' configurations.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(2000);

/// CHECK CONDITION, ABORTED COMMAND, LOGICAL UNIT COMMUNICATION FAILURE (0Bh/08h/00h).
const COMMUNICATION_FAILURE: (u8, u8, u8) = (0x0b, 0x08, 0x00);

/// A daemon standing for one host: its own initiator and host id, `lu` emulated on `endpoints`.
struct Host {
    helper: Helper,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Host {
    fn start(name: &str, lo: &LoopDevice, endpoints: &[String], prefix: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let list = endpoints
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("pr-helper.toml");
        std::fs::write(
            &config,
            format!(
                "[[device]]\npath = \"{}\"\nbackend = \"emulate\"\nlu = \"disk0\"\n\n\
                 [emulate]\ninitiator = \"iqn.2026-12.org.test:{name}\"\n\n\
                 [emulate.store]\nkind = \"etcd\"\nendpoints = [{list}]\nprefix = \"{prefix}\"\n\
                 host_id = \"{name}\"\nconnect_timeout_ms = 5000\nrequest_timeout_ms = 700\n\
                 command_timeout_ms = {}\n",
                lo.path.display(),
                COMMAND_TIMEOUT.as_millis()
            ),
        )
        .unwrap();
        let log = dir.path().join("log");
        let socket = dir.path().join("pr.sock");
        let helper = start_emulating(&socket, &config, &log, &[]);
        Host {
            helper,
            log,
            _dir: dir,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.helper.socket).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An etcd client of its own, to look at what the daemons wrote.
fn observer(cluster: &Cluster, prefix: &str) -> EtcdStore {
    let mut c = EtcdConfig::new(cluster.endpoints());
    c.prefix = prefix.into();
    c.host_id = Some("observer".into());
    EtcdStore::open(c).unwrap()
}

#[test]
fn two_daemons_as_two_hosts_share_one_reservation_state_through_etcd() {
    let mut cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    let lo = LoopDevice::new();
    let mut a = Host::start("hv-a", &lo, &cluster.endpoints(), "/two-hosts/");
    let b = Host::start("hv-b", &lo, &cluster.endpoints(), "/two-hosts/");
    let dev = lo.open(true);
    let (mut ca, mut cb) = (a.client(), b.client());
    // The fence, with a follower killed between the reservation and the PREEMPT: both hosts
    // go on, and the unit attention queued in etcd for A's nexus is delivered on host A.
    fence_each_other(
        &mut ca,
        &mut cb,
        &dev,
        || {
            let leader = cluster.leader(Duration::from_secs(10)).unwrap();
            cluster.kill((leader + 1) % 3);
        },
        || a.log(),
    );
    // What etcd holds is that one state, read by a third client.
    let state = observer(&cluster, "/two-hosts/")
        .load(&LuId::new("disk0").unwrap())
        .unwrap()
        .expect("the LU's state is in etcd");
    assert_eq!(state.generation.0, 3);
    assert_eq!(state.registrants.len(), 1);
    assert_eq!(state.registrants[0].key.0, 0x2222);
    assert_eq!(
        state.registrants[0].nexus.initiator.to_string(),
        "iSCSI name iqn.2026-12.org.test:hv-b"
    );
    // The daemon shuts down cleanly with its etcd client (closed on the store thread, under
    // that thread's filter).
    let st = a.helper.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "{st:?}: {}", a.log());
    assert!(b.log().contains("on the store etcd ["), "{}", b.log());
}

#[test]
fn a_host_cut_off_from_etcd_answers_check_condition_in_bounded_time_and_never_stale_state() {
    let cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    let lo = LoopDevice::new();
    // Host A reaches every member through a proxy the test can cut; host B directly.
    let proxies: Vec<Proxy> = cluster.proxies().unwrap();
    let through: Vec<String> = proxies.iter().map(|p| p.addr().to_string()).collect();
    let a = Host::start("hv-a", &lo, &through, "/cut/");
    let b = Host::start("hv-b", &lo, &cluster.endpoints(), "/cut/");
    let dev = lo.open(true);
    let (mut ca, mut cb) = (a.client(), b.client());
    assert_eq!(
        prout(&mut ca, &dev, REGISTER, 0, 0, 0x1111).status,
        Status::GOOD
    );

    proxies.iter().for_each(Proxy::cut);
    // Cut off, A answers an error, within the command timeout (and the store's one-second
    // backstop), for PR IN and PR OUT alike: never the state it saw last.
    let bound = COMMAND_TIMEOUT + Duration::from_millis(1500);
    for what in ["READ KEYS", "RESERVE"] {
        let start = Instant::now();
        let r = if what == "READ KEYS" {
            read_keys(&mut ca, &dev)
        } else {
            prout(&mut ca, &dev, RESERVE, WRITE_EXCLUSIVE, 0x1111, 0)
        };
        let took = start.elapsed();
        assert_eq!(
            (r.status, sense(&r)),
            (Status::CHECK_CONDITION, COMMUNICATION_FAILURE),
            "{what} while cut off: {}",
            a.log()
        );
        assert!(took < bound, "{what} took {took:?}, more than {bound:?}");
    }
    // Host B is not cut off: it registers meanwhile.
    assert_eq!(
        prout(&mut cb, &dev, REGISTER, 0, 0, 0x2222).status,
        Status::GOOD
    );

    proxies.iter().for_each(Proxy::heal);
    // Back in contact, A answers from the current state: B's registration is there, and A's
    // RESERVE sent while cut off was not applied (no reservation).
    let deadline = Instant::now() + Duration::from_secs(15);
    let r = loop {
        let r = read_keys(&mut ca, &dev);
        if r.status == Status::GOOD {
            break r;
        }
        assert_eq!(sense(&r), COMMUNICATION_FAILURE);
        assert!(
            Instant::now() < deadline,
            "host A did not answer within 15 s of the heal: {}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        r.data,
        [0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0x11, 0x11, 0, 0, 0, 0, 0, 0, 0x22, 0x22]
    );
    let r = read_reservation(&mut cb, &dev);
    assert_eq!(r.data, [0, 0, 0, 2, 0, 0, 0, 0]);
    let log = a.log();
    assert!(
        log.contains("the store failed for logical unit disk0") && log.contains("/cut/"),
        "{log}"
    );
}

#[test]
fn a_daemon_whose_etcd_does_not_answer_refuses_to_start_naming_it() {
    // A loopback port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = l.local_addr().unwrap().to_string();
    drop(l);
    let lo = LoopDevice::new();
    let dir = tempfile::tempdir().unwrap();
    // The dropped user removes its socket when it gives up.
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(nobody.uid.as_raw()), None).unwrap();
    let config = dir.path().join("pr-helper.toml");
    std::fs::write(
        &config,
        format!(
            "[[device]]\npath = \"{}\"\nbackend = \"emulate\"\nlu = \"disk0\"\n\n[emulate]\n\
             initiator = \"iqn.2026-12.org.test:a\"\n\
             store = {{ kind = \"etcd\", endpoints = [\"{endpoint}\"], connect_timeout_ms = 800 }}\n",
            lo.path.display()
        ),
    )
    .unwrap();
    let start = Instant::now();
    let out = Command::new(our_helper())
        .arg("-k")
        .arg(dir.path().join("s.sock"))
        .arg("--config")
        .arg(&config)
        .args(["-u", "nobody", "-g", "nogroup"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without etcd: {err}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "took {:?} to give up",
        start.elapsed()
    );
    assert!(
        err.contains(&format!("etcd [http://{endpoint}]")) && err.contains("connecting"),
        "{err}"
    );
    assert!(!Path::new(&dir.path().join("s.sock")).exists());
}

#[test]
fn bad_etcd_settings_stop_the_start_naming_the_key() {
    let lo = LoopDevice::new();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "store = { kind = \"etcd\", endpoints = [\"10.0.0.1\"] }",
            "[emulate]: store.endpoints[0] = \"10.0.0.1\": expected HOST:PORT or \
             http://HOST:PORT",
        ),
        (
            "store = { kind = \"etcd\", endpoints = [\"10.0.0.1:2379\"], ca = \"/nonexistent/ca.pem\" }",
            "[emulate]: store.ca = \"/nonexistent/ca.pem\": cannot read it: No such file or \
             directory",
        ),
        (
            "store = { kind = \"etcd\", endpoints = [\"10.0.0.1:2379\"], command_timeout_ms = 0 }",
            "[emulate]: store.command_timeout_ms = 0: expected 10 to 600000 (milliseconds)",
        ),
    ];
    for (store, want) in cases {
        let config = dir.path().join("pr-helper.toml");
        std::fs::write(
            &config,
            format!(
                "[[device]]\npath = \"{}\"\nbackend = \"emulate\"\nlu = \"disk0\"\n\n[emulate]\n\
                 {store}\n",
                lo.path.display()
            ),
        )
        .unwrap();
        let out = Command::new(our_helper())
            .arg("-k")
            .arg(dir.path().join("s.sock"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{store}: started");
        assert!(err.contains(want), "{store}: {err}");
    }
}
