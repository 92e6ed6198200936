//! pr-etcd-cluster: an etcd cluster on loopback for scripts (the VM lab's multi-host test):
//! starts the members (Debian's etcd-server, `$PR_ETCD_BIN` else /usr/bin/etcd) with
//! pr-store-etcd's test harness, a TCP proxy in front of each member that the script can cut
//! (a network partition for the clients that use the proxies), and takes commands on stdin.
//!
//! Prints on stdout, once every member is healthy:
//!
//! ```text
//! endpoints http://127.64.1.2:2379,http://127.90.3.4:2379,http://127.77.5.6:2379
//! proxied http://127.0.0.1:40001,http://127.0.0.1:40002,http://127.0.0.1:40003
//! pids 1234 1235 1236
//! logs /tmp/pr-etcd-XXXX/m0.log /tmp/pr-etcd-XXXX/m1.log /tmp/pr-etcd-XXXX/m2.log
//! ready
//! ```
//!
//! Commands, one a line, each answered with one line:
//!
//! - `cut`: the proxies forward nothing and close nothing (packets lost), answer `ok cut`;
//! - `heal`: they forward again (connections that lived through the cut are closed), `ok heal`;
//! - `keys PREFIX`: the keys under PREFIX, read on the members directly:
//!   `keys K1 K2 …` (non-printable bytes as `\xNN`), or `error …`;
//! - `quit`: stops.
//!
//! End of input, `quit`, SIGTERM, SIGINT and SIGHUP all stop every etcd member started here
//! and remove their data; nothing else is ever killed.

use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use etcd_client::{Client, GetOptions};
use pr_store_etcd::cluster::{Cluster, Timing};
use pr_store_etcd::proxy::Proxy;

/// Starts an etcd cluster on loopback with a cuttable proxy in front of each member, and
/// takes commands (cut, heal, keys PREFIX, quit) on stdin until it ends.
///
/// Example (bash): coproc ETCD { pr-etcd-cluster --members 3; }; read -r line <&"${ETCD[0]}"
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Number of members (1-7).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=7))]
    members: u8,
    /// etcd's --heartbeat-interval, ms.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=5000))]
    heartbeat_ms: u64,
    /// etcd's --election-timeout, ms (at least 5 heartbeats).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=50000))]
    election_ms: u64,
}

enum Event {
    Line(String),
    End(&'static str),
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("pr-etcd-cluster: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    if args.election_ms < 5 * args.heartbeat_ms {
        return Err(format!(
            "--election-ms {} is below 5 × --heartbeat-ms {}: etcd needs elections well above \
             heartbeats",
            args.election_ms, args.heartbeat_ms
        ));
    }
    let (tx, rx) = mpsc::channel::<Event>();
    let signals = tx.clone();
    // Registered before the members start, so that a signal during the start-up still stops
    // them (the start returns first, then the event is seen).
    let (registered_tx, registered) = mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            use tokio::signal::unix::{signal, SignalKind};
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = registered_tx.send(Err(format!("signal runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let (mut term, mut int, mut hup) = match (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::hangup()),
                ) {
                    (Ok(t), Ok(i), Ok(h)) => (t, i, h),
                    _ => {
                        let _ = registered_tx.send(Err("cannot handle signals".into()));
                        return;
                    }
                };
                let _ = registered_tx.send(Ok(()));
                let which = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                    _ = hup.recv() => "SIGHUP",
                };
                let _ = signals.send(Event::End(which));
            });
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    registered
        .recv()
        .map_err(|_| "the signal thread ended".to_owned())??;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let timing = Timing {
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        election: Duration::from_millis(args.election_ms),
    };
    let cluster = Cluster::start(usize::from(args.members), timing)?;
    let proxies = cluster
        .members
        .iter()
        .map(|m| Proxy::start(m.client_addr()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot start a proxy: {e}"))?;
    let mut out = std::io::stdout().lock();
    let pids: Vec<String> = cluster
        .members
        .iter()
        .filter_map(|m| m.pid().map(|p| p.to_string()))
        .collect();
    let logs: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.log_path().display().to_string())
        .collect();
    let urls: Vec<String> = proxies.iter().map(Proxy::url).collect();
    say(
        &mut out,
        &format!("endpoints {}", cluster.endpoints().join(",")),
    )?;
    say(&mut out, &format!("proxied {}", urls.join(",")))?;
    say(&mut out, &format!("pids {}", pids.join(" ")))?;
    say(&mut out, &format!("logs {}", logs.join(" ")))?;
    say(&mut out, "ready")?;
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(l) => {
                        if tx.send(Event::Line(l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(Event::End("end of input"));
        })
        .map_err(|e| format!("cannot start the input thread: {e}"))?;
    let endpoints = cluster.endpoints();
    let why = loop {
        let Ok(event) = rx.recv() else {
            break "no more events";
        };
        let line = match event {
            Event::End(why) => break why,
            Event::Line(l) => l,
        };
        let (cmd, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let answer = match cmd {
            "cut" => {
                proxies.iter().for_each(Proxy::cut);
                "ok cut".to_owned()
            }
            "heal" => {
                proxies.iter().for_each(Proxy::heal);
                "ok heal".to_owned()
            }
            "keys" if !rest.trim().is_empty() => {
                match runtime.block_on(keys(&endpoints, rest.trim())) {
                    Ok(k) => format!("keys {}", k.join(" ")).trim_end().to_owned(),
                    Err(e) => format!("error keys {}: {e}", rest.trim()),
                }
            }
            "quit" => break "quit",
            "" => continue,
            other => format!(
                "error unknown command {:?}: expected cut, heal, keys PREFIX or quit",
                other.chars().take(64).collect::<String>()
            ),
        };
        say(&mut out, &answer)?;
    };
    eprintln!("pr-etcd-cluster: stopping ({why})");
    drop(proxies);
    drop(cluster);
    Ok(())
}

/// One line on stdout, flushed (the script reads it at once).
fn say(out: &mut impl Write, line: &str) -> Result<(), String> {
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))
}

/// The keys under `prefix`, read within 5 s.
async fn keys(endpoints: &[String], prefix: &str) -> Result<Vec<String>, String> {
    let read = async {
        let mut c = Client::connect(endpoints, None)
            .await
            .map_err(|e| e.to_string())?;
        let r = c
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(
            r.kvs()
                .iter()
                .map(|kv| {
                    kv.key()
                        .iter()
                        .map(|&b| {
                            if b.is_ascii_graphic() && b != b'\\' {
                                char::from(b).to_string()
                            } else {
                                format!("\\x{b:02x}")
                            }
                        })
                        .collect()
                })
                .collect(),
        )
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| "no answer within 5 s".to_owned())?
}
