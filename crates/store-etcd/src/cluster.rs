//! etcd members on loopback, for tests and benchmarks: each member on its own address in
//! 127.0.0.0/8 (chosen so that no other process listens there), data in a temporary
//! directory, and only the processes started here are ever killed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Timing of a test cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// etcd's `--heartbeat-interval`.
    pub heartbeat: Duration,
    /// etcd's `--election-timeout`.
    pub election: Duration,
}

impl Timing {
    /// 50 ms heartbeats and a 500 ms election timeout: the tests' clusters, which elect a new
    /// leader quickly after a member is killed.
    pub const FAST: Timing = Timing {
        heartbeat: Duration::from_millis(50),
        election: Duration::from_millis(500),
    };
}

impl Default for Timing {
    /// 100 ms heartbeats and a 1 s election timeout (etcd's defaults).
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(100),
            election: Duration::from_millis(1000),
        }
    }
}

/// The server side of TLS for a test cluster (PEM files): each member then also serves
/// `https://IP:2381` with this certificate and requires client certificates signed by `ca`
/// there, while `http://IP:2379` stays for the harness's own health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The members' certificate (every member uses it: give it a DNS name as subject
    /// alternative name, for the clients' `server_name`).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that client certificates must be signed by.
    pub ca: PathBuf,
}

/// The port of the TLS client URL of a member started with [`ServerTls`].
pub const TLS_CLIENT_PORT: u16 = 2381;

/// One member.
#[derive(Debug)]
pub struct Member {
    /// Its name (`m0`, `m1`, …).
    pub name: String,
    /// Its loopback address.
    pub ip: Ipv4Addr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    /// Its client URL.
    pub fn client_url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }
    /// Its TLS client URL (members started with [`ServerTls`]).
    pub fn tls_client_url(&self) -> String {
        format!("https://{}:{TLS_CLIENT_PORT}", self.ip)
    }
    /// Its client address.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, 2379))
    }
    fn peer_url(&self) -> String {
        format!("http://{}:2380", self.ip)
    }
    /// Whether its process is running (started here and not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
    /// The process id of its etcd, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// A cluster of etcd members started by this process.
#[derive(Debug)]
pub struct Cluster {
    /// The members.
    pub members: Vec<Member>,
    timing: Timing,
    token: String,
    tls: Option<ServerTls>,
    _dir: tempfile::TempDir,
}

/// The etcd binary: `$PR_ETCD_BIN`, else `/usr/bin/etcd` (Debian's etcd-server).
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("PR_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// A loopback address whose etcd ports nobody uses, drawn from 127.64.0.0/10 by process id and
/// a counter; both ports are checked by binding them.
fn free_ip(taken: &[Ipv4Addr]) -> Result<Ipv4Addr, String> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let pid = std::process::id();
    for _ in 0..4096 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let x = pid
            .wrapping_mul(2654435761)
            .wrapping_add(n.wrapping_mul(40503));
        let ip = Ipv4Addr::new(
            127,
            64 + ((x >> 16) % 64) as u8,
            (x >> 8) as u8,
            1 + (x % 254) as u8,
        );
        if taken.contains(&ip) {
            continue;
        }
        let free = [2379u16, 2380, TLS_CLIENT_PORT]
            .iter()
            .all(|&p| TcpListener::bind((ip, p)).is_ok());
        if free {
            return Ok(ip);
        }
    }
    Err("no free loopback address for an etcd member".into())
}

impl Cluster {
    /// Starts `n` members with `timing` and waits (at most 30 s) until every one reports
    /// healthy.
    pub fn start(n: usize, timing: Timing) -> Result<Cluster, String> {
        Cluster::start_with(n, timing, None)
    }

    /// [`Cluster::start`], the members also serving TLS clients (see [`ServerTls`]).
    pub fn start_tls(n: usize, timing: Timing, tls: ServerTls) -> Result<Cluster, String> {
        Cluster::start_with(n, timing, Some(tls))
    }

    fn start_with(n: usize, timing: Timing, tls: Option<ServerTls>) -> Result<Cluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("pr-etcd-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let mut ips = Vec::new();
        for _ in 0..n {
            ips.push(free_ip(&ips)?);
        }
        let members = ips
            .iter()
            .enumerate()
            .map(|(i, &ip)| Member {
                name: format!("m{i}"),
                ip,
                data_dir: dir.path().join(format!("m{i}")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let mut c = Cluster {
            members,
            timing,
            token: format!("pr-test-{}-{}", std::process::id(), ips[0]),
            tls,
            _dir: dir,
        };
        for i in 0..n {
            c.spawn(i, "new")?;
        }
        c.wait_healthy(&(0..n).collect::<Vec<_>>(), Duration::from_secs(30))?;
        Ok(c)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<(), String> {
        let initial = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let mut client_urls = m.client_url();
        let mut tls_args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(t) = &self.tls {
            client_urls = format!("{client_urls},{}", m.tls_client_url());
            for (flag, file) in [
                ("--cert-file", &t.cert),
                ("--key-file", &t.key),
                ("--trusted-ca-file", &t.ca),
            ] {
                tls_args.push(flag.into());
                tls_args.push(file.into());
            }
            tls_args.push("--client-cert-auth".into());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| format!("{}: {e}", m.log.display()))?;
        let child = Command::new(etcd_binary())
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&client_urls)
            .arg("--advertise-client-urls")
            .arg(&client_urls)
            .args(&tls_args)
            .arg("--listen-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-cluster")
            .arg(&initial)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--heartbeat-interval")
            .arg(self.timing.heartbeat.as_millis().to_string())
            .arg("--election-timeout")
            .arg(self.timing.election.as_millis().to_string())
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", etcd_binary().display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// A TCP proxy in front of each member's client port, in member order: a client given
    /// their URLs can be cut off from the cluster ([`crate::proxy::Proxy::cut`]) while the
    /// members go on.
    pub fn proxies(&self) -> std::io::Result<Vec<crate::proxy::Proxy>> {
        self.members
            .iter()
            .map(|m| crate::proxy::Proxy::start(m.client_addr()))
            .collect()
    }

    /// Kills member `i` (SIGKILL to the process started here) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory and waits until it is healthy.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.members[i].child.is_none() {
            self.spawn(i, "existing")?;
        }
        self.wait_healthy(&[i], Duration::from_secs(30))
    }

    /// Waits until members `which` answer `/health` with `true`, at most `timeout`.
    pub fn wait_healthy(&self, which: &[usize], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for &i in which {
            let m = &self.members[i];
            loop {
                match http(m.client_addr(), "GET", "/health", "") {
                    Ok(body) if body.contains("\"true\"") => break,
                    _ if Instant::now() >= deadline => {
                        return Err(format!(
                            "etcd member {} on {} not healthy within {timeout:?}; its log: {}",
                            m.name,
                            m.client_url(),
                            tail(&m.log)
                        ))
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(())
    }

    /// The index of the member the running members agree is the leader, waiting for one at
    /// most `timeout`.
    pub fn leader(&self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ids = Vec::new();
            for m in self.members.iter().filter(|m| m.is_running()) {
                let status = http(m.client_addr(), "POST", "/v3/maintenance/status", "{}")
                    .ok()
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok());
                let field = |v: &serde_json::Value, f: &str| {
                    v.pointer(f).and_then(|x| x.as_str()).map(str::to_owned)
                };
                if let Some(v) = status {
                    ids.push((field(&v, "/header/member_id"), field(&v, "/leader")));
                }
            }
            let leader = ids.first().and_then(|(_, l)| l.clone());
            if let Some(l) = leader.filter(|l| l != "0") {
                let agreed = ids.iter().all(|(_, x)| x.as_deref() == Some(&l));
                if agreed {
                    let names: Vec<_> = self.members.iter().filter(|m| m.is_running()).collect();
                    for (k, (id, _)) in ids.iter().enumerate() {
                        if id.as_deref() == Some(&l) {
                            let name = &names[k].name;
                            return Ok(self
                                .members
                                .iter()
                                .position(|m| &m.name == name)
                                .unwrap_or(0));
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("no agreed etcd leader within {timeout:?}: {ids:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log of member `i`, last lines.
    pub fn log_tail(&self, i: usize) -> String {
        tail(&self.members[i].log)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<_> = s.lines().rev().take(10).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// One HTTP/1.0 request to `addr` (etcd's /health and its JSON gateway), with 1 s timeouts.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.set_write_timeout(Some(Duration::from_secs(1)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    s.take(1 << 16).read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}
