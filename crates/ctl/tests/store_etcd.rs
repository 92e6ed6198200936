//! `pr-ctl store --config FILE`, the real binary, on the etcd store a pr-target configuration
//! selects: a real etcd member on loopback (pr-store-etcd's harness). The state is made with
//! `Store::execute` and CDBs written out from SPC-4 (table 178, PR OUT; table 183, the basic
//! parameter list).

use std::path::Path;
use std::process::{Command, Output};

use pr_engine::{EngineConfig, Nexus};
use pr_scsi::transport_id::TransportId;
use pr_scsi::RelativeTargetPort;
use pr_store::{LuId, Store};
use pr_store_etcd::cluster::{Cluster, Timing};
use pr_store_etcd::{EtcdConfig, EtcdStore};
use serde_json::Value;

const PR_CTL: &str = env!("CARGO_BIN_EXE_pr-ctl");
const LU: &str = "naa.6001405ccccccccc";

fn ctl(args: &[&str]) -> Output {
    Command::new(PR_CTL).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn iscsi() -> Nexus {
    Nexus {
        initiator: TransportId::Iscsi {
            name: "iqn.1994-05.com.example:node1".into(),
            isid: None,
        },
        relative_target_port: RelativeTargetPort(1),
    }
}

/// A pr-target configuration whose store is the cluster under `prefix`.
fn target_config(dir: &Path, name: &str, endpoints: &[String], prefix: &str) -> String {
    let list = endpoints
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "store = {{ kind = \"etcd\", endpoints = [{list}], prefix = \"{prefix}\" }}\n\n\
             [[lu]]\nname = \"d0\"\npath = \"/srv/d0.img\"\nnaa = \"5001405abcdef012\"\n\
             serial = \"S0\"\n"
        ),
    )
    .unwrap();
    p.display().to_string()
}

#[test]
fn store_commands_work_on_the_etcd_store_a_configuration_selects() {
    let timing = Timing::FAST;
    let cluster = Cluster::start(1, timing).expect("etcd member");
    let mut c = EtcdConfig::new(cluster.endpoints());
    c.prefix = "/ctl-a/".into();
    let etcd = EtcdStore::open(c).unwrap();
    // REGISTER (SPC-4 table 178: 5Fh, service action 00h, list length 24), key 0x1111.
    let mut params = vec![0u8; 24];
    params[8..16].copy_from_slice(&0x1111u64.to_be_bytes());
    let o = etcd
        .execute(
            &LuId::new(LU).unwrap(),
            &iscsi(),
            &[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0],
            &params,
            &EngineConfig::default(),
        )
        .unwrap();
    assert_eq!(o.reply.status.0, 0);

    let dir = tempfile::tempdir().unwrap();
    let a = target_config(dir.path(), "a.toml", &cluster.endpoints(), "/ctl-a/");
    let b = target_config(dir.path(), "b.toml", &cluster.endpoints(), "/ctl-b/");
    let list = ok(&ctl(&["store", "--config", &a, "--json", "list"]));
    let v: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v["logical_units"][0]["lu"], LU, "{v}");
    assert_eq!(v["logical_units"][0]["registrations"], 1, "{v}");
    assert!(
        v["store"].as_str().unwrap().starts_with("etcd [http://"),
        "{v}"
    );
    let show = ok(&ctl(&["store", "--config", &a, "show", LU]));
    assert!(show.contains("0x1111"), "{show}");
    // Export from one prefix, import into another: every LU in one etcd transaction.
    let export = dir.path().join("export.json").display().to_string();
    ok(&ctl(&[
        "store", "--config", &a, "export", "--output", &export,
    ]));
    let imported = ok(&ctl(&["store", "--config", &b, "import", &export]));
    assert!(
        imported.contains("imported as a new logical unit"),
        "{imported}"
    );
    let mut c = EtcdConfig::new(cluster.endpoints());
    c.prefix = "/ctl-b/".into();
    let other = EtcdStore::open(c).unwrap();
    assert_eq!(
        other.load(&LuId::new(LU).unwrap()).unwrap(),
        etcd.load(&LuId::new(LU).unwrap()).unwrap()
    );
    let cleared = ok(&ctl(&["store", "--config", &b, "clear", LU]));
    assert!(cleared.contains("cleared"), "{cleared}");
    assert_eq!(other.load(&LuId::new(LU).unwrap()).unwrap(), None);
    let missing = ctl(&["store", "--config", &b, "show", LU]);
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("the store etcd [http://") && err.contains("/ctl-b/ has no logical unit"),
        "{err}"
    );
    // One store at a time.
    let both = ctl(&["store", "--config", &a, "--store", "/tmp/x.db", "list"]);
    assert_eq!(both.status.code(), Some(2), "{both:?}");
    assert!(String::from_utf8_lossy(&both.stderr).contains("both name a store"));
    // A file that selects no store, and a bad store setting, are named.
    std::fs::write(dir.path().join("none.toml"), "[[lu]]\nname = \"d0\"\n").unwrap();
    let none = ctl(&[
        "store",
        "--config",
        &dir.path().join("none.toml").display().to_string(),
        "list",
    ]);
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("selects no store"),
        "{none:?}"
    );
    std::fs::write(
        dir.path().join("bad.toml"),
        "[emulate]\nstore = { kind = \"etcd\", endpoints = [\"nohost\"] }\n",
    )
    .unwrap();
    let bad = ctl(&[
        "store",
        "--config",
        &dir.path().join("bad.toml").display().to_string(),
        "list",
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("store.endpoints[0] = \"nohost\": expected HOST:PORT"),
        "{err}"
    );
}
