//! The `store` setting's TLS keys against a real etcd member serving TLS with client
//! certificate authentication (pr-store-etcd's harness), with certificates made here by the
//! `openssl` command: commands run over TLS; a missing client certificate, a foreign CA and a
//! wrong server name are refused at open, within the connect timeout.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pr_engine::EngineConfig;
use pr_store::{LuId, SqliteOptions};
use pr_store_config::{StoreSelection, StoreSetting};
use pr_store_etcd::cluster::{Cluster, ServerTls, Timing};
use pr_store_etcd::workload::{key, nexus, pr_in, pr_out};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME-ca.pem`) and, signed by it, a certificate with `ext` (`NAME.pem`, key
/// `NAME-key.pem`).
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} CA"),
            "-keyout",
            &format!("{name}-ca-key.pem"),
            "-out",
            &format!("{name}-ca.pem"),
        ],
    );
}

fn signed(dir: &Path, ca: &str, name: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca-key.pem"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

fn selection(text: &str) -> Result<StoreSelection, String> {
    #[derive(serde::Deserialize)]
    struct F {
        store: StoreSetting,
    }
    let f: F = toml::from_str(text).map_err(|e| e.to_string())?;
    f.store
        .resolve("store", "/unused.db")
        .map_err(|e| e.to_string())
}

#[test]
fn commands_run_over_tls_with_a_client_certificate_and_bad_trust_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "test");
    ca(d, "other");
    signed(
        d,
        "test",
        "server",
        "subjectAltName=DNS:etcd.test\nextendedKeyUsage=serverAuth\n",
    );
    signed(d, "test", "hv1", "extendedKeyUsage=clientAuth\n");
    let timing = Timing::FAST;
    let cluster = Cluster::start_tls(
        1,
        timing,
        ServerTls {
            cert: d.join("server.pem"),
            key: d.join("server-key.pem"),
            ca: d.join("test-ca.pem"),
        },
    )
    .expect("etcd member with TLS");
    let url = cluster.members[0].tls_client_url();
    let f = |n: &str| d.join(n).display().to_string();
    let store = |ca: &str, identity: bool, server_name: &str| {
        let mut t = format!(
            "[store]\nkind = \"etcd\"\nendpoints = [\"{url}\"]\nca = \"{}\"\n\
             server_name = \"{server_name}\"\nconnect_timeout_ms = 1500\n",
            f(ca)
        );
        if identity {
            t.push_str(&format!(
                "cert = \"{}\"\nkey = \"{}\"\n",
                f("hv1.pem"),
                f("hv1-key.pem")
            ));
        }
        selection(&t).unwrap()
    };

    let good = store("test-ca.pem", true, "etcd.test")
        .open(SqliteOptions::default())
        .unwrap()
        .store();
    let lu = LuId::new("tls0").unwrap();
    let cfg = EngineConfig::default();
    let (c, p) = pr_out(0, 0, 0, key(1));
    let o = good.execute(&lu, &nexus(1), &c, &p, &cfg).unwrap();
    assert_eq!(o.reply.status.0, 0);
    let (c, p) = pr_in(0);
    let o = good.execute(&lu, &nexus(1), &c, &p, &cfg).unwrap();
    let mut want = vec![0, 0, 0, 1, 0, 0, 0, 8];
    want.extend_from_slice(&key(1).to_be_bytes());
    assert_eq!(o.reply.data, want);

    for (what, sel) in [
        (
            "no client certificate",
            store("test-ca.pem", false, "etcd.test"),
        ),
        ("another CA", store("other-ca.pem", true, "etcd.test")),
        (
            "a name the certificate does not carry",
            store("test-ca.pem", true, "wrong.test"),
        ),
    ] {
        let start = Instant::now();
        match sel.open(SqliteOptions::default()) {
            Ok(_) => panic!("{what}: the store opened"),
            Err(e) => assert!(
                e.to_string().contains(&url),
                "{what}: the error does not name the endpoint: {e}"
            ),
        }
        assert!(
            start.elapsed() < Duration::from_millis(1500 + 2000),
            "{what}: took {:?}",
            start.elapsed()
        );
    }
}
