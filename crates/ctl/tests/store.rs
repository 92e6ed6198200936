//! `pr-ctl store …`, the real binary, on a real SQLite store in a temporary directory. The
//! state is made the way the daemon will make it: pr-store's `Store::execute` with real CDBs
//! and parameter lists, written out from SPC-4 (table 178 for the PR OUT CDB, table 179 for
//! service actions, table 180 for types, table 183 for the basic parameter list), never from
//! pr-ctl's or pr-scsi's encoders.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pr_engine::{EngineConfig, LogicalUnit, Nexus};
use pr_scsi::transport_id::TransportId;
use pr_scsi::RelativeTargetPort;
use pr_store::{LuId, SqliteStore, Store};
use serde_json::{json, Value};

const PR_CTL: &str = env!("CARGO_BIN_EXE_pr-ctl");

/// The logical unit two initiators share, without APTPL.
const LU_A: &str = "naa.6001405aaaaaaaaa";
/// A logical unit registered with APTPL, where a PREEMPT left a unit attention.
const LU_B: &str = "naa.6001405bbbbbbbbb";

/// PR OUT service actions (SPC-4 table 179), the APTPL and ALL_TG_PT flags of byte 20 (table
/// 183), the WRITE EXCLUSIVE - REGISTRANTS ONLY and WRITE EXCLUSIVE types (table 180).
const REGISTER: u8 = 0x00;
const RESERVE: u8 = 0x01;
const PREEMPT: u8 = 0x04;
const APTPL: u8 = 0x01;
const ALL_TG_PT: u8 = 0x04;
const WE_RO: u8 = 0x05;
const WE: u8 = 0x01;

/// PR OUT CDB (SPC-4 table 178): 5Fh, service action, scope (LU_SCOPE) and type, list length 24.
fn pr_out(sa: u8, rtype: u8) -> [u8; 10] {
    [0x5f, sa, rtype, 0, 0, 0, 0, 0, 24, 0]
}

/// Basic parameter list (SPC-4 table 183): key, service action key, flags at byte 20.
fn basic(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut b = vec![0u8; 24];
    b[0..8].copy_from_slice(&key.to_be_bytes());
    b[8..16].copy_from_slice(&sa_key.to_be_bytes());
    b[20] = flags;
    b
}

/// An iSCSI initiator on target port 1.
fn iscsi() -> Nexus {
    Nexus {
        initiator: TransportId::Iscsi {
            name: "iqn.1994-05.com.example:node1".into(),
            isid: None,
        },
        relative_target_port: RelativeTargetPort(1),
    }
}

/// A SAS initiator on target port 2.
fn sas() -> Nexus {
    Nexus {
        initiator: TransportId::Sas {
            sas_address: [0x50, 0x01, 0x40, 0x50, 0, 0, 0, 0x02],
        },
        relative_target_port: RelativeTargetPort(2),
    }
}

fn run(store: &SqliteStore, lu: &str, nexus: &Nexus, cdb: [u8; 10], params: Vec<u8>) {
    let o = store
        .execute(
            &LuId::new(lu).unwrap(),
            nexus,
            &cdb,
            &params,
            &EngineConfig::default(),
        )
        .unwrap();
    assert_eq!(o.reply.status.0, 0, "{cdb:02x?} from {nexus:?}: {o:?}");
}

/// A store in a temporary directory with [`LU_A`] and [`LU_B`].
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reservations.db");
        let store = SqliteStore::open(&path).unwrap();
        // LU A: both register (the SAS one on all target ports), the iSCSI one reserves.
        run(
            &store,
            LU_A,
            &iscsi(),
            pr_out(REGISTER, 0),
            basic(0, 0x1111, 0),
        );
        run(
            &store,
            LU_A,
            &sas(),
            pr_out(REGISTER, 0),
            basic(0, 0x2222, ALL_TG_PT),
        );
        run(
            &store,
            LU_A,
            &iscsi(),
            pr_out(RESERVE, WE_RO),
            basic(0x1111, 0, 0),
        );
        // LU B: both register with APTPL, SAS reserves, iSCSI preempts it (REGISTRATIONS
        // PREEMPTED is then pending for the SAS nexus).
        run(
            &store,
            LU_B,
            &iscsi(),
            pr_out(REGISTER, 0),
            basic(0, 0xaa, APTPL),
        );
        run(
            &store,
            LU_B,
            &sas(),
            pr_out(REGISTER, 0),
            basic(0, 0xbb, APTPL),
        );
        run(&store, LU_B, &sas(), pr_out(RESERVE, WE), basic(0xbb, 0, 0));
        run(
            &store,
            LU_B,
            &iscsi(),
            pr_out(PREEMPT, WE),
            basic(0xaa, 0xbb, 0),
        );
        drop(store);
        Fixture { _dir: dir, path }
    }

    fn pr_ctl(&self, args: &[&str]) -> Output {
        pr_ctl_on(&self.path, args)
    }

    fn state(&self, lu: &str) -> Option<LogicalUnit> {
        SqliteStore::open(&self.path)
            .unwrap()
            .load(&LuId::new(lu).unwrap())
            .unwrap()
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap()
    }
}

fn pr_ctl_on(store: &Path, args: &[&str]) -> Output {
    Command::new(PR_CTL)
        .arg("store")
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("PR_HELPER_STORE")
        .env_remove("PR_HELPER_SOCKET")
        .output()
        .expect("run pr-ctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Standard output of a run that must succeed.
fn ok(out: Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    text(&out.stdout)
}

/// Standard error of a run that must fail with `code`, printing nothing on standard output.
fn fails(out: Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{}", text(&out.stdout));
    assert_eq!(text(&out.stdout), "");
    text(&out.stderr)
}

fn json_of(out: Output) -> Value {
    serde_json::from_str(&ok(out)).expect("one JSON document")
}

const SHOW_A: &str = "\
naa.6001405aaaaaaaaa
  PR generation 0x2
  APTPL (PTPL_A): no
  2 registrations:
    key 0x1111
      initiator: iSCSI name iqn.1994-05.com.example:node1
      relative target port: 1
      all target ports: no
      reservation holder: yes
    key 0x2222
      initiator: SAS address 0x5001405000000002
      relative target port: 2
      all target ports: yes
      reservation holder: no
  reservation: WRITE EXCLUSIVE - REGISTRANTS ONLY (we-ro, type 5), LU_SCOPE
    holder: key 0x1111, iSCSI name iqn.1994-05.com.example:node1, relative target port 1
  no pending unit attentions
";

#[test]
fn list_names_every_logical_unit_with_a_summary() {
    let f = Fixture::new();
    assert_eq!(
        ok(f.pr_ctl(&["list"])),
        "naa.6001405aaaaaaaaa  PR generation 0x2, 2 registrations, reservation we-ro\n\
         naa.6001405bbbbbbbbb  PR generation 0x3, 1 registration, reservation we, APTPL, \
         1 pending unit attention\n"
    );
    let v = json_of(f.pr_ctl(&["--json", "list"]));
    assert_eq!(
        v["logical_units"],
        json!([
            {"lu": LU_A, "generation": 2, "aptpl": false, "registrations": 2,
             "reservation": "write-exclusive-registrants-only", "unit_attentions": 0},
            {"lu": LU_B, "generation": 3, "aptpl": true, "registrations": 1,
             "reservation": "write-exclusive", "unit_attentions": 1},
        ])
    );
    assert_eq!(v["store"], f.path.display().to_string());
}

#[test]
fn show_decodes_nexuses_keys_reservation_and_unit_attentions() {
    let f = Fixture::new();
    assert_eq!(ok(f.pr_ctl(&["show", LU_A])), SHOW_A);
    assert_eq!(
        ok(f.pr_ctl(&["show", LU_B])),
        "\
naa.6001405bbbbbbbbb
  PR generation 0x3
  APTPL (PTPL_A): yes
  1 registration:
    key 0xaa
      initiator: iSCSI name iqn.1994-05.com.example:node1
      relative target port: 1
      all target ports: no
      reservation holder: yes
  reservation: WRITE EXCLUSIVE (we, type 1), LU_SCOPE
    holder: key 0xaa, iSCSI name iqn.1994-05.com.example:node1, relative target port 1
  pending unit attentions:
    SAS address 0x5001405000000002, relative target port 2: REGISTRATIONS PREEMPTED (2Ah/05h)
"
    );
    let iscsi_nexus = json!({
        "transport_id": "iSCSI name iqn.1994-05.com.example:node1",
        "initiator": {"protocol": "iscsi", "name": "iqn.1994-05.com.example:node1", "isid": null},
        "relative_target_port": 1,
    });
    let sas_nexus = json!({
        "transport_id": "SAS address 0x5001405000000002",
        "initiator": {"protocol": "sas", "sas_address": "0x5001405000000002"},
        "relative_target_port": 2,
    });
    let with = |base: &Value, extra: Value| {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    assert_eq!(
        json_of(f.pr_ctl(&["show", LU_A, "--json"])),
        json!({
            "lu": LU_A,
            "generation": 2,
            "aptpl": false,
            "registrations": [
                with(&iscsi_nexus, json!({"key": "0x1111", "all_target_ports": false, "holder": true})),
                with(&sas_nexus, json!({"key": "0x2222", "all_target_ports": true, "holder": false})),
            ],
            "reservation": {
                "type": "write-exclusive-registrants-only",
                "type_code": 5,
                "type_name": "WRITE EXCLUSIVE - REGISTRANTS ONLY",
                "scope": "lu",
                "holder": with(&iscsi_nexus, json!({"key": "0x1111"})),
            },
            "unit_attentions": [],
        })
    );
    assert_eq!(
        json_of(f.pr_ctl(&["--json", "show", LU_B]))["unit_attentions"],
        json!([with(
            &sas_nexus,
            json!({
                "all_target_ports": false,
                "conditions": ["registrations-preempted"],
            })
        )])
    );
}

#[test]
fn power_cycle_drops_registrations_without_aptpl_and_keeps_them_with_it() {
    let f = Fixture::new();
    let before_b = f.state(LU_B).unwrap();
    assert_eq!(
        ok(f.pr_ctl(&["power-cycle", LU_A])),
        "naa.6001405aaaaaaaaa: power cycled with APTPL off (PTPL_A=0): dropped 2 registrations, \
         the reservation; PR generation 0x2 -> 0x0\n"
    );
    assert_eq!(f.state(LU_A), Some(LogicalUnit::default()));
    let v = json_of(f.pr_ctl(&["--json", "power-cycle", LU_B]));
    assert_eq!(
        v,
        json!({
            "lu": LU_B,
            "operation": "power-cycle",
            "before": {"generation": 3, "aptpl": true, "registrations": 1,
                       "reservation": "write-exclusive", "unit_attentions": 1},
            "after": {"generation": 0, "aptpl": true, "registrations": 1,
                      "reservation": "write-exclusive", "unit_attentions": 0},
        })
    );
    let after_b = f.state(LU_B).unwrap();
    assert_eq!(after_b.registrants, before_b.registrants);
    assert_eq!(after_b.reservation, before_b.reservation);
    assert!(after_b.unit_attentions.is_empty());
}

#[test]
fn export_clear_import_gives_back_the_same_state() {
    let f = Fixture::new();
    let (a, b) = (f.state(LU_A).unwrap(), f.state(LU_B).unwrap());
    let backup = f.dir().join("backup.json");
    let backup_arg = backup.to_str().unwrap();
    assert_eq!(
        ok(f.pr_ctl(&["export", "--output", backup_arg])),
        format!("exported 2 logical units to {backup_arg}\n")
    );
    // Standard output carries the same document.
    let exported = std::fs::read_to_string(&backup).unwrap();
    assert_eq!(ok(f.pr_ctl(&["export"])), exported);
    let doc: Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(doc["format"], "pr-helper-store-export");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["logical_units"][LU_A]["registrants"][0]["key"], 0x1111);
    // One LU alone.
    let only_b: Value = serde_json::from_str(&ok(f.pr_ctl(&["export", LU_B]))).unwrap();
    assert_eq!(
        only_b["logical_units"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        [LU_B]
    );

    assert_eq!(
        ok(f.pr_ctl(&["clear", LU_A])),
        "naa.6001405aaaaaaaaa: cleared: removed 2 registrations, the reservation; PR \
         generation was 0x2\n"
    );
    assert_eq!(f.state(LU_A), None);
    assert_eq!(ok(f.pr_ctl(&["list"])).lines().count(), 1);

    assert_eq!(
        ok(f.pr_ctl(&["import", backup_arg, "--dry-run"])),
        "naa.6001405aaaaaaaaa: would be imported as a new logical unit (PR generation 0x2, 2 \
         registrations, reservation we-ro)\n\
         naa.6001405bbbbbbbbb: would replace the stored state (PR generation 0x3, 1 \
         registration, reservation we, APTPL, 1 pending unit attention)\n\
         dry run: nothing was written\n"
    );
    assert_eq!(f.state(LU_A), None);
    assert_eq!(
        ok(f.pr_ctl(&["import", backup_arg])),
        "naa.6001405aaaaaaaaa: imported as a new logical unit (PR generation 0x2, 2 \
         registrations, reservation we-ro)\n\
         naa.6001405bbbbbbbbb: imported, replacing the stored state (PR generation 0x3, 1 \
         registration, reservation we, APTPL, 1 pending unit attention)\n"
    );
    assert_eq!(f.state(LU_A), Some(a));
    assert_eq!(f.state(LU_B), Some(b));
    assert_eq!(ok(f.pr_ctl(&["show", LU_A])), SHOW_A);
    assert_eq!(ok(f.pr_ctl(&["export"])), exported);
}

#[test]
fn import_creates_a_store_but_a_dry_run_does_not() {
    let f = Fixture::new();
    let backup = f.dir().join("backup.json");
    std::fs::write(&backup, ok(f.pr_ctl(&["export", LU_A]))).unwrap();
    let fresh = f.dir().join("fresh.db");
    let v = json_of(pr_ctl_on(
        &fresh,
        &["--json", "import", "--dry-run", backup.to_str().unwrap()],
    ));
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["logical_units"][0]["replaced"], false);
    assert!(!fresh.exists());
    ok(pr_ctl_on(&fresh, &["import", backup.to_str().unwrap()]));
    assert_eq!(
        ok(pr_ctl_on(&fresh, &["show", LU_A])),
        SHOW_A,
        "imported from {}",
        backup.display()
    );
}

#[test]
fn missing_store_is_named_and_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.db");
    for args in [
        &["list"][..],
        &["show", LU_A],
        &["power-cycle", LU_A],
        &["clear", LU_A],
        &["export"],
    ] {
        let e = fails(pr_ctl_on(&missing, args), 1);
        assert_eq!(
            e,
            format!(
                "pr-ctl: the store database {} does not exist; name another with --store or \
                 PR_HELPER_STORE (only pr-ctl store import creates one)\n",
                missing.display()
            ),
            "{args:?}"
        );
        assert!(!missing.exists(), "{args:?} created the store");
    }
}

#[test]
fn the_store_comes_from_the_environment() {
    let f = Fixture::new();
    let out = Command::new(PR_CTL)
        .args(["store", "show", LU_A])
        .env("PR_HELPER_STORE", &f.path)
        .output()
        .unwrap();
    assert_eq!(ok(out), SHOW_A);
}

#[test]
fn unknown_and_malformed_logical_units() {
    let f = Fixture::new();
    for cmd in ["show", "power-cycle", "clear", "export"] {
        let e = fails(f.pr_ctl(&[cmd, "naa.600140599"]), 1);
        assert_eq!(
            e,
            format!(
                "pr-ctl: the store database {} has no logical unit naa.600140599 (pr-ctl store \
                 list shows those it has)\n",
                f.path.display()
            ),
            "{cmd}"
        );
    }
    let e = fails(f.pr_ctl(&["show", " naa.1"]), 2);
    assert!(
        e.contains("logical unit identifier \" naa.1\" begins or ends with white space"),
        "{e}"
    );
    assert_eq!(f.state("naa.600140599"), None);
}

#[test]
fn malformed_import_says_where_and_writes_nothing() {
    let f = Fixture::new();
    let before = ok(f.pr_ctl(&["export"]));
    let bad = f.dir().join("bad.json");
    let bad_arg = bad.to_str().unwrap();
    for (content, message) in [
        (
            "{\"format\": \"pr-helper-store-export\",\n \"version\": 1,\n \"logical_units\": {,}}",
            "not valid JSON: key must be a string at line 3 column 20",
        ),
        (
            "{\"format\": \"pr-helper-store-export\", \"version\": 2, \"logical_units\": {}}",
            "export \"version\" 2 is not supported; this pr-ctl reads version 1",
        ),
        (
            "{\"format\": \"pr-helper-store-export\", \"version\": 1,\n\"logical_units\": \
             {\"naa.1\": {\"generation\": \"two\"}}}",
            "not a valid store export: invalid type: string \"two\", expected u32 at line 2 \
             column 47",
        ),
    ] {
        std::fs::write(&bad, content).unwrap();
        let e = fails(f.pr_ctl(&["import", bad_arg]), 1);
        assert_eq!(e, format!("pr-ctl: {bad_arg}: {message}\n"));
    }
    let e = fails(f.pr_ctl(&["import", "/nonexistent/backup.json"]), 1);
    assert!(
        e.starts_with("pr-ctl: cannot read /nonexistent/backup.json: "),
        "{e}"
    );
    assert_eq!(ok(f.pr_ctl(&["export"])), before);
}

#[test]
fn import_breaking_an_invariant_is_refused_for_every_logical_unit() {
    let f = Fixture::new();
    let before = ok(f.pr_ctl(&["export"]));
    let mut doc: Value = serde_json::from_str(&before).unwrap();
    // A valid new LU first, then LU B with its only registrant's key set to 0: neither is
    // written, and LU A is not cleared either.
    let valid = doc["logical_units"][LU_A].clone();
    doc["logical_units"]["naa.6001405ccccccccc"] = valid;
    doc["logical_units"][LU_B]["registrants"][0]["key"] = json!(0);
    doc["logical_units"][LU_A]["registrants"] = json!([]);
    let bad = f.dir().join("broken.json");
    std::fs::write(&bad, doc.to_string()).unwrap();
    let e = fails(f.pr_ctl(&["import", bad.to_str().unwrap()]), 1);
    assert_eq!(
        e,
        format!(
            "pr-ctl: {}: refused, nothing was written: the state of 2 logical units breaks the \
             invariants of a logical unit (naa.6001405aaaaaaaaa: reservation holder is not \
             registered; naa.6001405bbbbbbbbb: registration 0 has key 0)\n",
            bad.display()
        )
    );
    assert_eq!(ok(f.pr_ctl(&["export"])), before);
    assert_eq!(f.state("naa.6001405ccccccccc"), None);
}

#[test]
fn import_reads_standard_input() {
    let f = Fixture::new();
    let exported = ok(f.pr_ctl(&["export", LU_A]));
    ok(f.pr_ctl(&["clear", LU_A]));
    let mut child = Command::new(PR_CTL)
        .args(["store", "import", "-", "--store"])
        .arg(&f.path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exported.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        ok(out),
        "naa.6001405aaaaaaaaa: imported as a new logical unit (PR generation 0x2, 2 \
         registrations, reservation we-ro)\n"
    );
    assert_eq!(ok(f.pr_ctl(&["show", LU_A])), SHOW_A);
}

#[test]
fn clear_reports_what_it_removed_as_json() {
    let f = Fixture::new();
    assert_eq!(
        json_of(f.pr_ctl(&["clear", LU_B, "--json"])),
        json!({
            "lu": LU_B,
            "operation": "clear",
            "before": {"generation": 3, "aptpl": true, "registrations": 1,
                       "reservation": "write-exclusive", "unit_attentions": 1},
            "after": {"generation": 0, "aptpl": false, "registrations": 0,
                      "reservation": null, "unit_attentions": 0},
        })
    );
    assert_eq!(f.state(LU_B), None);
}

#[test]
fn man_page_and_completions_know_the_store_commands() {
    let man = ok(Command::new(PR_CTL).arg("man").output().unwrap());
    for section in [
        ".SH \"PR-CTL STORE\"",
        ".SH \"PR-CTL STORE SHOW\"",
        ".SH \"PR-CTL STORE POWER-CYCLE\"",
        ".SH \"PR-CTL STORE IMPORT\"",
        "\\-\\-dry\\-run",
        "PR_HELPER_STORE",
    ] {
        assert!(man.contains(section), "man page lacks {section}");
    }
    let bash = ok(Command::new(PR_CTL)
        .args(["completions", "bash"])
        .output()
        .unwrap());
    assert!(bash.contains("power-cycle") && bash.contains("--dry-run"));
}

#[test]
fn a_file_that_is_not_a_store_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    std::fs::write(&path, "not a database, just some notes\n".repeat(100)).unwrap();
    let e = fails(pr_ctl_on(&path, &["list"]), 1);
    assert!(
        e.starts_with(&format!(
            "pr-ctl: the store database {} is corrupt",
            path.display()
        )),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "not a database, just some notes\n".repeat(100)
    );
}

/// An import of several logical units is one transaction: when the database refuses the
/// second (a trigger standing for any write failure), the first is not written either, and
/// pr-ctl says nothing was imported; once the database accepts, both are.
#[test]
fn import_of_several_logical_units_is_all_or_nothing() {
    let f = Fixture::new();
    let (a, b) = (f.state(LU_A).unwrap(), f.state(LU_B).unwrap());
    let backup = f.dir().join("backup.json");
    let backup_arg = backup.to_str().unwrap();
    ok(f.pr_ctl(&["export", "--output", backup_arg]));
    ok(f.pr_ctl(&["clear", LU_A]));
    ok(f.pr_ctl(&["clear", LU_B]));
    let db = rusqlite::Connection::open(&f.path).unwrap();
    db.execute_batch(&format!(
        "CREATE TRIGGER refuse_b BEFORE INSERT ON logical_units WHEN NEW.lu_id = '{LU_B}'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
    ))
    .unwrap();
    let e = fails(f.pr_ctl(&["import", backup_arg]), 1);
    assert!(e.contains("refused by the test"), "{e}");
    assert!(e.trim_end().ends_with("nothing was imported"), "{e}");
    assert_eq!(f.state(LU_A), None, "the first logical unit was written");
    assert_eq!(f.state(LU_B), None);
    db.execute_batch("DROP TRIGGER refuse_b").unwrap();
    ok(f.pr_ctl(&["import", backup_arg]));
    assert_eq!((f.state(LU_A), f.state(LU_B)), (Some(a), Some(b)));
}

/// list, show and export open the database read-only: a user who may read the file but not
/// write it or its directory (nobody, on root's 0644 file) can use them, and the file is not
/// changed; power-cycle, which writes, is refused with the database's error.
#[test]
fn a_store_the_user_may_only_read_is_listed_shown_and_exported() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    std::fs::set_permissions(f.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = std::fs::read(&f.path).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid",
                "nobody",
                "--regid",
                "nogroup",
                "--clear-groups",
                "--",
            ])
            .arg(PR_CTL)
            .arg("store")
            .arg("--store")
            .arg(&f.path)
            .args(args)
            .env_remove("PR_HELPER_STORE")
            .output()
            .expect("run pr-ctl as nobody")
    };
    let listed = ok(as_nobody(&["list"]));
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert_eq!(ok(as_nobody(&["show", LU_A])), SHOW_A);
    let exported: Value = serde_json::from_str(&ok(as_nobody(&["export"]))).unwrap();
    assert_eq!(
        exported["logical_units"][LU_A]["registrants"][0]["key"],
        0x1111
    );
    let e = fails(as_nobody(&["power-cycle", LU_A]), 1);
    assert!(e.starts_with("pr-ctl: "), "{e}");
    assert_eq!(std::fs::read(&f.path).unwrap(), before);
    let left: Vec<_> = std::fs::read_dir(f.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["reservations.db"], "files beside the database");
}

/// `pr-ctl store` talks to no helper: its help does not offer --socket or --timeout, and
/// giving them there is a usage error that says why.
#[test]
fn store_commands_have_no_helper_options() {
    for args in [&["store", "--help"][..], &["store", "list", "--help"]] {
        let out = Command::new(PR_CTL).args(args).output().unwrap();
        let help = ok(out);
        assert!(help.contains("--store <PATH>"), "{help}");
        assert!(
            !help.contains("--socket") && !help.contains("--timeout"),
            "{help}"
        );
    }
    let e = fails(f_usage(&["store", "--socket", "/run/x.sock", "list"]), 2);
    assert!(e.contains("talk to no helper"), "{e}");
    let e = fails(f_usage(&["store", "--timeout", "5", "list"]), 2);
    assert!(e.contains("talk to no helper"), "{e}");
    let e = fails(f_usage(&["store", "list", "--socket", "/run/x.sock"]), 2);
    assert!(e.contains("unexpected argument '--socket'"), "{e}");
}

fn f_usage(args: &[&str]) -> Output {
    Command::new(PR_CTL)
        .args(args)
        .env_remove("PR_HELPER_STORE")
        .output()
        .unwrap()
}
