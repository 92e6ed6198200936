//! Runs the load tool against the real pr-helper daemon on a temporary socket and checks that
//! every request was counted. No timing assertions: this machine is shared.
//!
//! Needs the daemon built first (`cargo build --release -p pr-helper`, or a debug build), or
//! its path in PR_HELPER; runs as root like the daemon's own integration tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use pr_bench::compare::HelperProcess;
use pr_bench::device::{Device, FdKind};
use pr_bench::load::{self, Generator, LoadConfig, Stop};

fn daemon() -> PathBuf {
    if let Some(p) = std::env::var_os("PR_HELPER") {
        return p.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), PathBuf::from);
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("pr-helper"))
        .find(|p| p.exists())
        .expect("build the daemon first: cargo build --release -p pr-helper (or set PR_HELPER)")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pr-bench-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn counts_every_request_and_holds_idle_connections() {
    let dir = scratch("api");
    let helper = HelperProcess::start(
        "pr-helper",
        &daemon(),
        &[],
        &[],
        &dir.join("s.sock"),
        &dir.join("log"),
    )
    .expect("the daemon starts");
    let device = Device::open(&FdKind::File, &dir).unwrap();
    let mut before_fds = None;
    // Both generators, the event-driven one with its clients split over two threads.
    for generator in [Generator::Events { threads: 2 }, Generator::Threads] {
        let cfg = LoadConfig {
            socket: helper.socket.clone(),
            clients: 4,
            stop: Stop::Count(300),
            max_duration: Duration::from_secs(60),
            mix: "read-keys:3,read-reservation:1,register:1,reserve:1"
                .parse()
                .unwrap(),
            io_timeout: Duration::from_secs(10),
            server_pid: Some(helper.pid()),
            generator,
        };
        let r = load::run(&cfg, &device.file, &device.description);
        assert_eq!(r.generator, generator);
        assert_eq!(r.errors, 0, "{generator}: {:?}", r.first_errors);
        assert_eq!(r.connected, 4, "{generator}");
        assert_eq!(r.requests, 300, "{generator}");
        assert_eq!(r.latency.samples, 300, "{generator}");
        assert_eq!(r.statuses.values().sum::<u64>(), 300, "{generator}");
        // Our daemon refuses a regular file with CHECK CONDITION before any ioctl.
        assert_eq!(r.statuses.get("CHECK CONDITION"), Some(&300), "{generator}");
        let (before, after) = (r.server.before.unwrap(), r.server.after.unwrap());
        assert_eq!(
            before.fds, after.fds,
            "{generator}: the daemon leaked descriptors"
        );
        before_fds = Some(before.fds);
    }
    let before_fds = before_fds.unwrap();

    let idle = pr_bench::idle::run(
        &pr_bench::idle::IdleConfig {
            socket: helper.socket.clone(),
            connections: 50,
            io_timeout: Duration::from_secs(10),
            max_duration: Duration::from_secs(60),
            server_pid: Some(helper.pid()),
        },
        &device.file,
    );
    assert!(idle.all_held(), "{}", idle.to_text());
    assert_eq!(idle.holding.unwrap().fds, before_fds + 50);
    drop(helper);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn command_line_run_reports_json() {
    let dir = scratch("cli");
    let helper = HelperProcess::start(
        "pr-helper",
        &daemon(),
        &[],
        &[],
        &dir.join("s.sock"),
        &dir.join("log"),
    )
    .expect("the daemon starts");
    let out = Command::new(env!("CARGO_BIN_EXE_pr-bench"))
        .args([
            "run",
            "--clients",
            "2",
            "--count",
            "200",
            "--json",
            "--socket",
        ])
        .arg(&helper.socket)
        .arg("--scratch-dir")
        .arg(&dir)
        .output()
        .unwrap();
    drop(helper);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requests"], 200);
    assert_eq!(v["errors"], 0);
    // The server's pid was found from the socket.
    assert!(v["server"]["pid"].as_u64().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `pr-bench emulate` end to end (as root: it attaches a loop device): four daemons on one
/// loop device (the fourth on an etcd cluster on loopback), every point measured, every emulated reply GOOD (the run fails otherwise),
/// the passthrough path's replies the loop driver's refusal, the summary and the verdicts
/// written. No timing assertions.
#[test]
fn emulate_sweep_measures_every_point() {
    let dir = scratch("emulate");
    let out = Command::new(env!("CARGO_BIN_EXE_pr-bench"))
        .args([
            "emulate",
            "--clients",
            "1,4",
            "--duration",
            "0.3",
            "--rounds",
            "1",
            "--store",
            "sqlite,etcd",
        ])
        .arg("--ours")
        .arg(daemon())
        .arg("--scratch-dir")
        .arg(&dir)
        .arg("--results")
        .arg(dir.join("results"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join("results/results.json")).unwrap();
    let r: pr_bench::emulate::EmulateResults = serde_json::from_str(&text).unwrap();
    use pr_bench::emulate::{EMULATE, EMULATE_ETCD, FSYNC_EACH, PASSTHROUGH, PR_IN, PR_OUT};
    for (helper, workload) in [
        (PASSTHROUGH, PR_IN),
        (PASSTHROUGH, PR_OUT),
        (EMULATE, PR_IN),
        (EMULATE, PR_OUT),
        (FSYNC_EACH, PR_OUT),
        (EMULATE_ETCD, PR_IN),
        (EMULATE_ETCD, PR_OUT),
    ] {
        for clients in [1, 4] {
            let p = r
                .point(helper, workload, clients)
                .unwrap_or_else(|| panic!("{helper} {workload} {clients} not measured"));
            assert!(p.replies > 0 && p.errors == 0, "{p:?}");
            if helper == PASSTHROUGH {
                assert_eq!(p.good, 0, "the loop driver refuses SG_IO: {p:?}");
            } else {
                assert_eq!(p.good, p.replies, "{p:?}");
            }
        }
    }
    assert!(r.group_commit_gain(4).is_some());
    assert!(r.etcd_ratio(PR_OUT, 4).is_some() && r.etcd_ratio(PR_IN, 1).is_some());
    assert_eq!(r.etcd_endpoints.len(), 3, "{:?}", r.etcd_endpoints);
    let summary = std::fs::read_to_string(dir.join("results/summary.md")).unwrap();
    assert!(summary.contains("group-commit gain"), "{summary}");
    assert!(
        summary.contains("| PR IN etcd req/s | etcd ÷ SQLite |"),
        "{summary}"
    );
    // The scratch directory (loop image, stores, configurations) is removed.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "results")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
