//! [`EtcdStore`]: `pr_store::Store` over etcd v3, one compare-and-swap transaction per command.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KvClient,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use pr_engine::{EngineConfig, LogicalUnit, Nexus, Outcome};
use pr_store::{LuId, Store, StoreError};

use crate::config::{EtcdConfig, TlsFiles, TlsPem};
use crate::record::{Stored, FORMAT};

/// Most bytes accepted in one stored value (etcd's own default request limit is 1.5 MiB).
pub const MAX_VALUE_LEN: usize = 1 << 20;

/// A logical unit's value as last seen by this store: a guess for the next compare-and-swap,
/// never an answer by itself (see docs/etcd.md).
#[derive(Debug, Clone)]
struct Seen {
    /// The key's mod_revision (0: no key).
    revision: i64,
    value: Stored,
}

/// Counters of one store, since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EtcdStatistics {
    /// Transactions sent (each one round trip).
    pub transactions: u64,
    /// Transactions whose compare failed because another client had written first.
    pub conflicts: u64,
    /// Requests that failed or timed out and were retried.
    pub retries: u64,
    /// Commands answered from the record of an earlier attempt that had committed.
    pub deduplicated: u64,
}

#[derive(Debug, Default)]
struct Counters {
    transactions: AtomicU64,
    conflicts: AtomicU64,
    retries: AtomicU64,
    deduplicated: AtomicU64,
}

/// Most hosts [`EtcdStore::host_leases`] lists.
pub const MAX_LISTED_HOSTS: usize = 1024;

/// A host's lease fence as etcd reports it ([`EtcdStore::host_leases`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLease {
    /// The host's identity in the keys (`HOST#INCARNATION`).
    pub host: String,
    /// Its lease's id.
    pub lease: i64,
    /// The TTL etcd granted the lease (`None`: it expired meanwhile).
    pub granted_ttl: Option<Duration>,
    /// The time it has left (`None`: it expired meanwhile).
    pub remaining: Option<Duration>,
}

/// The etcd store (see the crate documentation and docs/etcd.md).
pub struct EtcdStore {
    runtime: tokio::runtime::Runtime,
    inner: Arc<Inner>,
}

/// What the store's futures share with it.
struct Inner {
    client: Client,
    config: EtcdConfig,
    /// `etcd [endpoints] prefix`, for error messages.
    describe: String,
    /// `HOST#INCARNATION`: this store instance, in the records of its commands.
    client_id: String,
    next_seq: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
    seen: Mutex<HashMap<LuId, Seen>>,
    /// Per logical unit: the commands of this process waiting for their transaction.
    lanes: Mutex<HashMap<LuId, Arc<Lane>>>,
    counters: Counters,
}

/// Group commit on one logical unit within this process: one transaction in flight at a time,
/// carrying every command queued behind it (so the hosts' clients contend in etcd as one
/// client per host, not one per thread).
#[derive(Default)]
struct Lane {
    queue: Mutex<Vec<Job>>,
    turn: tokio::sync::Mutex<()>,
}

/// One command waiting in a lane.
struct Job {
    seq: u64,
    nexus: Nexus,
    cdb: Vec<u8>,
    params: Vec<u8>,
    config: EngineConfig,
    deadline: Instant,
    answer: tokio::sync::oneshot::Sender<Result<Committed, StoreError>>,
}

/// A command's outcome with where it stands in etcd's order ([`EtcdStore::execute_committed`]).
#[derive(Debug, Clone)]
pub struct Committed {
    /// The engine's outcome.
    pub outcome: Outcome,
    /// The logical unit key's mod_revision after the transaction that carried the command (or
    /// that confirmed the state it ran on): the revision other hosts acknowledge.
    pub revision: i64,
    /// The state the command ran on; `None` when the command was answered from the record of
    /// an earlier attempt (its prior state is not known any more).
    pub before: Option<LogicalUnit>,
    /// The state at `revision` (after every command of the transaction).
    pub after: LogicalUnit,
}

/// Most commands in one transaction.
pub const MAX_BATCH: usize = 128;

/// Most logical units [`Store::import_all`] writes in its one transaction: etcd refuses a
/// transaction with more than 128 compares or operations (its default `--max-txn-ops`).
pub const MAX_IMPORT: usize = 128;

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("store", &self.inner.describe)
            .field("client_id", &self.inner.client_id)
            .finish_non_exhaustive()
    }
}

fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// A number unlikely to repeat across restarts of this host's store: wall-clock nanoseconds
/// mixed with the process id.
fn incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(rustix::process::getpid().as_raw_nonzero().get() as u32) << 40)
}

impl EtcdStore {
    /// Connects to the cluster in `config` and checks, within `connect_timeout`, that it
    /// answers a linearizable read. Bad settings are [`StoreError::Config`] (naming the
    /// setting), a TLS file that cannot be read too; a cluster that does not answer is
    /// [`StoreError::Unavailable`].
    pub fn open(config: EtcdConfig) -> Result<EtcdStore, StoreError> {
        config.validate()?;
        let tls = config.tls.as_ref().map(TlsFiles::read).transpose()?;
        EtcdStore::open_with_tls(config, tls.as_ref())
    }

    /// [`EtcdStore::open`] with the TLS files already read (`tls`; `config.tls` then only
    /// says that TLS is on, for the check of the endpoints' scheme): a daemon reads them
    /// before it drops the privileges that let it read a private key.
    pub fn open_with_tls(
        config: EtcdConfig,
        tls: Option<&TlsPem>,
    ) -> Result<EtcdStore, StoreError> {
        config.validate()?;
        if config.tls.is_some() != tls.is_some() {
            return Err(StoreError::Config {
                detail: "etcd tls: the files' contents must be given exactly when tls is \
                         configured"
                    .into(),
            });
        }
        let describe = format!("etcd [{}] {}", config.endpoints.join(","), config.prefix);
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(config.request_timeout / 2, config.request_timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(t) = tls {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(&t.ca));
            if let Some((cert, key)) = &t.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(d) = &t.domain {
                tls = tls.domain_name(d.clone());
            }
            options = options.with_tls(tls);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pr-store-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Config {
                detail: format!("cannot start the etcd client's threads: {e}"),
            })?;
        let endpoints = config.endpoints.clone();
        let connect_timeout = config.connect_timeout;
        let client = runtime
            .block_on(async {
                tokio::time::timeout(connect_timeout, Client::connect(endpoints, Some(options)))
                    .await
            })
            .map_err(|_| {
                StoreError::unavailable(&describe, None, "connecting", connect_timeout, "no answer")
            })?
            .map_err(|e| StoreError::Config {
                detail: format!("{describe}: {e}"),
            })?;
        let host = config.host_id.clone().unwrap_or_else(host_name);
        let store = EtcdStore {
            runtime,
            inner: Arc::new(Inner {
                client,
                describe,
                client_id: format!("{host}#{:016x}", incarnation()),
                config,
                next_seq: AtomicU64::new(1),
                in_flight: Mutex::new(BTreeSet::new()),
                seen: Mutex::new(HashMap::new()),
                lanes: Mutex::new(HashMap::new()),
                counters: Counters::default(),
            }),
        };
        // One linearizable read proves the cluster has a leader and answers.
        let mut kv = store.inner.client.kv_client();
        let prefix = store.inner.config.prefix.clone();
        let request = store.inner.config.request_timeout;
        let inner = Arc::clone(&store.inner);
        store.block(connect_timeout, async move {
            let deadline = Instant::now() + connect_timeout;
            let mut last = String::from("no answer");
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(StoreError::unavailable(
                        &inner.describe,
                        None,
                        "connecting",
                        connect_timeout,
                        last,
                    ));
                }
                let get = kv.get(prefix.clone(), Some(GetOptions::new().with_count_only()));
                match tokio::time::timeout(left.min(request), get).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = format!("no answer within {:?}", left.min(request)),
                }
                backoff(deadline).await;
            }
        })?;
        Ok(store)
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    /// This store instance's identity in the records of its commands (`HOST#INCARNATION`).
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The store's counters.
    pub fn statistics(&self) -> EtcdStatistics {
        let c = &self.inner.counters;
        EtcdStatistics {
            transactions: c.transactions.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            deduplicated: c.deduplicated.load(Ordering::Relaxed),
        }
    }

    /// The etcd key of `lu`.
    pub fn key(&self, lu: &LuId) -> String {
        self.inner.key(lu)
    }

    /// The whole stored value of `lu` (its state and the command records), by a linearizable
    /// read; `None` when there is none.
    pub fn load_stored(&self, lu: &LuId) -> Result<Option<Stored>, StoreError> {
        let ctx = Ctx::new(&self.inner, lu);
        self.block(self.inner.config.command_timeout, async move {
            let deadline = Instant::now() + ctx.inner.config.command_timeout;
            let mut last = String::from("no answer");
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ctx.unavailable("reading the state", last));
                }
                match ctx.read(left).await? {
                    Ok(s) if s.revision == 0 => return Ok(None),
                    Ok(s) => return Ok(Some(s.value)),
                    Err(e) => last = e,
                }
                backoff(deadline).await;
            }
        })
    }

    /// A fresh command sequence number for [`EtcdStore::execute_as`].
    pub fn new_sequence(&self) -> u64 {
        self.inner.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// [`Store::execute`] with the caller's sequence number: a second call with the same `seq`
    /// (a retry by the caller after an error) answers the first call's outcome if that one
    /// was committed and its record is still kept, and never applies the command twice.
    pub fn execute_as(
        &self,
        seq: u64,
        lu: &LuId,
        nexus: &Nexus,
        cdb: &[u8],
        params: &[u8],
        config: &EngineConfig,
    ) -> Result<Outcome, StoreError> {
        self.execute_committed(seq, lu, nexus, cdb, params, config)
            .map(|c| c.outcome)
    }

    /// [`EtcdStore::execute_as`], also answering the revision the command committed at (or
    /// was confirmed current at) and the states around it: what a host needs to fence other
    /// hosts' media access ([`crate::fence`]).
    pub fn execute_committed(
        &self,
        seq: u64,
        lu: &LuId,
        nexus: &Nexus,
        cdb: &[u8],
        params: &[u8],
        config: &EngineConfig,
    ) -> Result<Committed, StoreError> {
        self.inner.lock_in_flight().insert(seq);
        let ctx = Ctx::new(&self.inner, lu);
        let lane = self.inner.lane(lu);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            seq,
            nexus: nexus.clone(),
            cdb: cdb.to_vec(),
            params: params.to_vec(),
            config: config.clone(),
            deadline: Instant::now() + self.inner.config.command_timeout,
            answer: tx,
        };
        let describe = self.inner.describe.clone();
        let lu_id = lu.clone();
        let r = self.block_for(Some(lu), self.inner.config.command_timeout, async move {
            lane.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(job);
            // Whoever holds the lane runs everything queued on it as one transaction; our job
            // is in that batch or in the next one, which we run ourselves.
            {
                let _turn = lane.turn.lock().await;
                let batch =
                    std::mem::take(&mut *lane.queue.lock().unwrap_or_else(PoisonError::into_inner));
                if !batch.is_empty() {
                    ctx.execute(batch).await;
                }
            }
            rx.await.unwrap_or_else(|_| {
                Err(StoreError::outcome_unknown(
                    describe,
                    &lu_id,
                    "the batch carrying the command was dropped",
                ))
            })
        });
        self.inner.lock_in_flight().remove(&seq);
        r
    }

    /// Runs `fut` on the store's runtime and waits for it from this (any) thread, at most
    /// `timeout` and a second (the future bounds itself by `timeout`; this is a backstop, and
    /// since the future may still be writing then, its error for a write is
    /// [`StoreError::OutcomeUnknown`]).
    fn block<T: Send + 'static>(
        &self,
        timeout: Duration,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.block_for(None, timeout, fut)
    }

    fn block_for<T: Send + 'static>(
        &self,
        writing: Option<&LuId>,
        timeout: Duration,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| {
                let detail = "the etcd client did not answer".to_string();
                Err(match writing {
                    Some(lu) => StoreError::outcome_unknown(&self.inner.describe, lu, detail),
                    None => StoreError::unavailable(
                        &self.inner.describe,
                        None,
                        "waiting for the etcd client",
                        timeout,
                        detail,
                    ),
                })
            })
    }

    /// Reports the first unit attention pending for `nexus` on `lu` (as a command of `class`
    /// would) and clears it, by compare-and-swap on the current state, not on a cached copy:
    /// the access decision and the state that results, as etcd holds it now.
    pub fn admit(
        &self,
        lu: &LuId,
        nexus: &Nexus,
        class: pr_engine::CommandClass,
    ) -> Result<(pr_engine::Access, LogicalUnit), StoreError> {
        let last: Arc<Mutex<Option<(pr_engine::Access, LogicalUnit)>>> = Arc::default();
        let l = Arc::clone(&last);
        let nexus = nexus.clone();
        self.modify(lu, "reporting a unit attention", move |v, _| {
            let a = v.state.admit(&nexus, class);
            let after = a.state.clone().unwrap_or_else(|| v.state.clone());
            *l.lock().unwrap_or_else(PoisonError::into_inner) = Some((a.access, after));
            a.state.map(Some)
        })?;
        let r = last.lock().unwrap_or_else(PoisonError::into_inner).take();
        r.ok_or_else(|| {
            StoreError::server(
                &self.inner.describe,
                Some(lu),
                "reporting a unit attention",
                "no state was read",
            )
        })
    }

    /// The time a lease has left in etcd (`None`: it expired or was revoked), by etcd's own
    /// answer; for operators and tests watching a host's lease from elsewhere.
    pub fn lease_remaining(&self, id: i64) -> Result<Option<Duration>, StoreError> {
        let mut lease = self.inner.client.lease_client();
        let inner = Arc::clone(&self.inner);
        let wait = self.inner.config.request_timeout;
        self.block(wait, async move {
            match tokio::time::timeout(wait, lease.time_to_live(id, None)).await {
                Ok(Ok(r)) if r.ttl() >= 0 => Ok(Some(Duration::from_secs(r.ttl() as u64))),
                Ok(Ok(_)) => Ok(None),
                Ok(Err(e)) => Err(StoreError::server(
                    &inner.describe,
                    None,
                    "reading a lease",
                    e.to_string(),
                )),
                Err(_) => Err(StoreError::unavailable(
                    &inner.describe,
                    None,
                    "reading a lease",
                    wait,
                    "no answer",
                )),
            }
        })
    }

    /// The hosts whose lease fence runs on this store's prefix (the `PREFIX hosts/` keys), each
    /// with its lease as etcd reports it: for operators and tests checking from elsewhere which
    /// TTL a host's lease was granted. At most [`MAX_LISTED_HOSTS`] are listed.
    pub fn host_leases(&self) -> Result<Vec<HostLease>, StoreError> {
        let mut kv = self.inner.client.kv_client();
        let mut lease = self.inner.client.lease_client();
        let inner = Arc::clone(&self.inner);
        let prefix = format!("{}hosts/", self.inner.config.prefix);
        let wait = self.inner.config.request_timeout;
        let unavailable = move |inner: &Inner| {
            StoreError::unavailable(
                &inner.describe,
                None,
                "reading host leases",
                wait,
                "no answer",
            )
        };
        let server = |inner: &Inner, e: etcd_client::Error| {
            StoreError::server(&inner.describe, None, "reading host leases", e.to_string())
        };
        self.block(wait * 2, async move {
            let options = GetOptions::new()
                .with_prefix()
                .with_limit(MAX_LISTED_HOSTS as i64);
            let r = tokio::time::timeout(wait, kv.get(prefix.clone(), Some(options)))
                .await
                .map_err(|_| unavailable(&inner))?
                .map_err(|e| server(&inner, e))?;
            let mut hosts = Vec::new();
            for kv in r.kvs() {
                let host = String::from_utf8_lossy(kv.key().get(prefix.len()..).unwrap_or(&[]))
                    .into_owned();
                let t = tokio::time::timeout(wait, lease.time_to_live(kv.lease(), None))
                    .await
                    .map_err(|_| unavailable(&inner))?
                    .map_err(|e| server(&inner, e))?;
                let secs = |v: i64| (v >= 0).then(|| Duration::from_secs(v as u64));
                hosts.push(HostLease {
                    host,
                    lease: kv.lease(),
                    granted_ttl: secs(t.granted_ttl()),
                    remaining: secs(t.ttl()),
                });
            }
            Ok(hosts)
        })
    }

    /// What [`crate::fence`] needs of the store: its client, runtime, key prefix, identity and
    /// request bound.
    pub(crate) fn parts(&self) -> crate::fence::StoreParts {
        crate::fence::StoreParts {
            client: self.inner.client.clone(),
            runtime: self.runtime.handle().clone(),
            prefix: self.inner.config.prefix.clone(),
            describe: self.inner.describe.clone(),
            client_id: self.inner.client_id.clone(),
            request_timeout: self.inner.config.request_timeout,
        }
    }

    /// The state-changing operations other than execute: read-modify-write by compare-and-swap.
    fn modify(
        &self,
        lu: &LuId,
        operation: &'static str,
        f: impl Fn(&Stored, bool) -> Option<Option<LogicalUnit>> + Send + Sync + 'static,
    ) -> Result<(), StoreError> {
        let ctx = Ctx::new(&self.inner, lu);
        self.block_for(Some(lu), self.inner.config.command_timeout, async move {
            ctx.modify(operation, f).await
        })
    }
}

impl Inner {
    fn key(&self, lu: &LuId) -> String {
        format!("{}lu/{}", self.config.prefix, lu)
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn seen(&self, lu: &LuId) -> Option<Seen> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(lu).cloned()
    }

    /// Keeps `seen` as the guess for the next command on `lu`, unless a newer one is kept.
    fn remember(&self, lu: &LuId, seen: Seen) {
        let mut map = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(lu) {
            Some(s) if s.revision > seen.revision => {}
            _ => {
                map.insert(lu.clone(), seen);
            }
        }
    }

    fn lane(&self, lu: &LuId) -> Arc<Lane> {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        if lanes.len() > 4096 {
            // Bound the map: lanes nobody holds go.
            lanes.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(lanes.entry(lu.clone()).or_default())
    }

    fn forget(&self, lu: &LuId) {
        let mut map = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(lu);
    }
}

/// One operation on one logical unit, as a `'static` future's context.
struct Ctx {
    inner: Arc<Inner>,
    kv: KvClient,
    key: String,
    lu: LuId,
}

/// The answer of one compare-and-swap.
enum Cas {
    /// The compare held (and the write, if any, was applied at this revision).
    Done(i64),
    /// Another client wrote first: the current value.
    Conflict(Seen),
    /// No answer: the request may have reached etcd (and a write may have been applied).
    Failed(String),
}

impl Ctx {
    fn new(inner: &Arc<Inner>, lu: &LuId) -> Ctx {
        Ctx {
            inner: Arc::clone(inner),
            kv: inner.client.kv_client(),
            key: inner.key(lu),
            lu: lu.clone(),
        }
    }

    fn corrupt(&self, e: serde_json::Error) -> StoreError {
        StoreError::CorruptState {
            path: format!("{} {}", self.inner.describe, self.key).into(),
            lu: self.lu.clone(),
            source: Arc::new(e),
        }
    }

    fn decode(&self, kv: Option<&etcd_client::KeyValue>) -> Result<Seen, StoreError> {
        let Some(kv) = kv else {
            return Ok(Seen {
                revision: 0,
                value: Stored::default(),
            });
        };
        if kv.value().len() > MAX_VALUE_LEN {
            return Err(self.server(
                "reading the state",
                format!(
                    "the stored value has {} bytes, more than {MAX_VALUE_LEN}",
                    kv.value().len()
                ),
            ));
        }
        let value: Stored = serde_json::from_slice(kv.value()).map_err(|e| self.corrupt(e))?;
        if value.format > FORMAT {
            return Err(self.server(
                "reading the state",
                format!(
                    "stored format {} is newer than {FORMAT}, which this pr-helper understands; \
                     upgrade pr-helper",
                    value.format
                ),
            ));
        }
        Ok(Seen {
            revision: kv.mod_revision(),
            value,
        })
    }

    fn server(&self, operation: &'static str, detail: String) -> StoreError {
        StoreError::server(&self.inner.describe, Some(&self.lu), operation, detail)
    }

    fn outcome_unknown(&self, detail: String) -> StoreError {
        StoreError::outcome_unknown(&self.inner.describe, &self.lu, detail)
    }

    fn unavailable(&self, operation: &'static str, detail: String) -> StoreError {
        StoreError::unavailable(
            &self.inner.describe,
            Some(&self.lu),
            operation,
            self.inner.config.command_timeout,
            detail,
        )
    }

    /// A linearizable read of the current value (`Err(text)`: no answer).
    async fn read(&self, left: Duration) -> Result<Result<Seen, String>, StoreError> {
        let mut kv = self.kv.clone();
        let wait = left.min(self.inner.config.request_timeout);
        match tokio::time::timeout(wait, kv.get(self.key.clone(), None)).await {
            Ok(Ok(r)) => Ok(Ok(self.decode(r.kvs().first())?)),
            Ok(Err(e)) => Ok(Err(e.to_string())),
            Err(_) => Ok(Err(format!("no answer within {wait:?}"))),
        }
    }

    /// One transaction: if the key's mod_revision is still `revision`, write `value`
    /// (`None`: nothing, a linearizable check that `revision` is current; `Some(None)`: delete
    /// the key); else read the current value.
    async fn cas(
        &self,
        revision: i64,
        value: Option<Option<&Stored>>,
        left: Duration,
    ) -> Result<Cas, StoreError> {
        let then = match value {
            None => vec![],
            Some(None) => vec![TxnOp::delete(self.key.clone(), None)],
            Some(Some(v)) => {
                let json = serde_json::to_vec(v).expect("a stored value serializes");
                if json.len() > MAX_VALUE_LEN {
                    return Err(self.server(
                        "writing the state",
                        format!(
                            "the state would take {} bytes, more than {MAX_VALUE_LEN}",
                            json.len()
                        ),
                    ));
                }
                vec![TxnOp::put(self.key.clone(), json, None)]
            }
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then(then)
            .or_else([TxnOp::get(self.key.clone(), None)]);
        let mut kv = self.kv.clone();
        let wait = left.min(self.inner.config.request_timeout);
        let c = &self.inner.counters;
        c.transactions.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(wait, kv.txn(txn)).await {
            Ok(Ok(r)) if r.succeeded() => Ok(Cas::Done(match value {
                Some(_) => r.header().map(|h| h.revision()).unwrap_or(0),
                None => revision,
            })),
            Ok(Ok(r)) => {
                c.conflicts.fetch_add(1, Ordering::Relaxed);
                let current = r.op_responses().into_iter().find_map(|op| match op {
                    TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                    _ => None,
                });
                Ok(Cas::Conflict(self.decode(current.as_ref())?))
            }
            Ok(Err(e)) => {
                c.retries.fetch_add(1, Ordering::Relaxed);
                Ok(Cas::Failed(e.to_string()))
            }
            Err(_) => {
                c.retries.fetch_add(1, Ordering::Relaxed);
                Ok(Cas::Failed(format!("no answer within {wait:?}")))
            }
        }
    }

    /// The command loop for a batch of this process's commands on one logical unit: run the
    /// engine on the latest known value for each command in turn, then one compare-and-swap
    /// carrying the final state and every command's record; on a conflict run them all again
    /// on the value the transaction returned, until the earliest deadline. Each job is
    /// answered through its channel.
    async fn execute(self, mut batch: Vec<Job>) {
        while !batch.is_empty() {
            let rest = if batch.len() > MAX_BATCH {
                batch.split_off(MAX_BATCH)
            } else {
                Vec::new()
            };
            let answers = self.execute_batch(&batch).await;
            for (job, answer) in batch.drain(..).zip(answers) {
                let _ = job.answer.send(answer);
            }
            batch = rest;
        }
    }

    async fn execute_batch(&self, batch: &[Job]) -> Vec<Result<Committed, StoreError>> {
        let deadline = batch
            .iter()
            .map(|j| j.deadline)
            .min()
            .unwrap_or_else(Instant::now);
        let mut current = self.inner.seen(&self.lu);
        // A write of this batch may have been applied without our hearing of it.
        let mut ambiguous = false;
        let mut last = String::from("no answer");
        let all = |e: StoreError| batch.iter().map(|_| Err(e.clone())).collect();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.inner.forget(&self.lu);
                return all(if ambiguous {
                    self.outcome_unknown(last)
                } else {
                    self.unavailable("running the command", last)
                });
            }
            let seen = match current.take() {
                Some(s) => s,
                None => match self.read(left).await {
                    Err(e) => return all(e),
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        last = e;
                        backoff(deadline).await;
                        continue;
                    }
                },
            };
            if ambiguous && !seen.value.clients.contains_key(&self.inner.client_id) {
                self.inner.forget(&self.lu);
                return all(self.outcome_unknown(format!(
                    "{last}; this client's record is not in the current state, so the earlier \
                     attempt cannot be ruled in or out"
                )));
            }
            // Each command sees the state the one before it left.
            let mut state = seen.value.state.clone();
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut befores = Vec::with_capacity(batch.len());
            let mut records = Vec::new();
            let mut deduplicated = 0;
            for job in batch {
                if let Some(r) = seen.value.recorded(&self.inner.client_id, job.seq) {
                    // An earlier attempt of this very command committed: its outcome, not a
                    // second application.
                    deduplicated += 1;
                    outcomes.push(r.outcome(seen.value.state.clone()));
                    befores.push(None);
                    continue;
                }
                befores.push(Some(state.clone()));
                let o = state.execute(&job.nexus, &job.cdb, &job.params, &job.config);
                if let Some(next) = &o.state {
                    state = next.clone();
                    records.push(outcomes.len());
                }
                outcomes.push(o);
            }
            let next = (!records.is_empty()).then(|| {
                // The snapshot of the calls in flight is taken after the value was read: a
                // call whose command is recorded in it is still in this set unless it returned.
                let in_flight: Vec<u64> = self.inner.lock_in_flight().iter().copied().collect();
                let mut v = seen
                    .value
                    .next(state.clone(), &self.inner.client_id, None, &in_flight);
                let entry = v.clients.entry(self.inner.client_id.clone()).or_default();
                for &i in &records {
                    entry.done.insert(
                        batch[i].seq,
                        crate::record::RecordedOutcome::of(&outcomes[i]),
                    );
                }
                v
            });
            match self.cas(seen.revision, next.as_ref().map(Some), left).await {
                Err(e) => return all(e),
                Ok(Cas::Done(revision)) => {
                    let c = &self.inner.counters;
                    c.deduplicated.fetch_add(deduplicated, Ordering::Relaxed);
                    let value = next.unwrap_or(seen.value);
                    let after = value.state.clone();
                    self.inner.remember(&self.lu, Seen { revision, value });
                    return outcomes
                        .into_iter()
                        .zip(befores)
                        .map(|(outcome, before)| {
                            Ok(Committed {
                                outcome,
                                revision,
                                before,
                                after: after.clone(),
                            })
                        })
                        .collect();
                }
                Ok(Cas::Conflict(now)) => current = Some(now),
                Ok(Cas::Failed(e)) => {
                    ambiguous |= next.is_some();
                    last = e;
                    backoff(deadline).await;
                }
            }
        }
    }

    /// Read-modify-write for power loss, clear and import: `f(value, exists)` gives the new
    /// state (`Some(None)`: delete the key) or `None` (nothing to do). After a write whose
    /// answer was lost, only a current state equal to the intended one counts as done;
    /// anything else is [`StoreError::OutcomeUnknown`], never a second application.
    async fn modify(
        self,
        operation: &'static str,
        f: impl Fn(&Stored, bool) -> Option<Option<LogicalUnit>>,
    ) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.inner.config.command_timeout;
        let mut current = None;
        let mut last = String::from("no answer");
        let mut intended: Option<Option<LogicalUnit>> = None;
        self.inner.forget(&self.lu);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(match intended {
                    Some(_) => self.outcome_unknown(last),
                    None => self.unavailable(operation, last),
                });
            }
            let seen = match current.take() {
                Some(s) => s,
                None => match self.read(left).await? {
                    Ok(s) => s,
                    Err(e) => {
                        last = e;
                        backoff(deadline).await;
                        continue;
                    }
                },
            };
            let exists = seen.revision != 0;
            if let Some(want) = &intended {
                let now = exists.then_some(&seen.value.state);
                return if now == want.as_ref() {
                    Ok(())
                } else {
                    Err(self.outcome_unknown(format!(
                        "{last}; the state now is neither the one before nor the one intended"
                    )))
                };
            }
            let Some(change) = f(&seen.value, exists) else {
                return Ok(());
            };
            let next = change
                .as_ref()
                .map(|s| seen.value.next(s.clone(), &self.inner.client_id, None, &[]));
            match self.cas(seen.revision, Some(next.as_ref()), left).await? {
                Cas::Done(_) => return Ok(()),
                Cas::Conflict(now) => current = Some(now),
                Cas::Failed(e) => {
                    intended = Some(change);
                    last = e;
                    backoff(deadline).await;
                }
            }
        }
    }
}

/// [`Store::import_all`] on the store's runtime.
async fn import_all(inner: Arc<Inner>, states: Vec<(LuId, LogicalUnit)>) -> Result<(), StoreError> {
    let ctxs: Vec<Ctx> = states.iter().map(|(lu, _)| Ctx::new(&inner, lu)).collect();
    let first = &ctxs[0];
    let deadline = Instant::now() + inner.config.command_timeout;
    let mut kv = inner.client.kv_client();
    let mut last = String::from("no answer");
    // A transaction of this import may have been applied without our hearing of it.
    let mut ambiguous = false;
    for c in &ctxs {
        inner.forget(&c.lu);
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(if ambiguous {
                first.outcome_unknown(last)
            } else {
                first.unavailable("importing", last)
            });
        }
        let wait = left.min(inner.config.request_timeout);
        // Every key in one linearizable read.
        let read = Txn::new().and_then(
            ctxs.iter()
                .map(|c| TxnOp::get(c.key.clone(), None))
                .collect::<Vec<_>>(),
        );
        let seen = match tokio::time::timeout(wait, kv.txn(read)).await {
            Ok(Ok(r)) => {
                let mut seen = Vec::with_capacity(ctxs.len());
                for (c, op) in ctxs.iter().zip(r.op_responses()) {
                    let kv = match op {
                        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                        _ => None,
                    };
                    seen.push(c.decode(kv.as_ref())?);
                }
                seen
            }
            Ok(Err(e)) => {
                last = e.to_string();
                backoff(deadline).await;
                continue;
            }
            Err(_) => {
                last = format!("no answer within {wait:?}");
                backoff(deadline).await;
                continue;
            }
        };
        let done = seen
            .iter()
            .zip(&states)
            .all(|(s, (_, state))| s.revision != 0 && &s.value.state == state);
        if done {
            return Ok(());
        }
        if ambiguous {
            return Err(first.outcome_unknown(format!(
                "{last}; the states now are neither the ones before nor the ones imported"
            )));
        }
        let mut puts = Vec::new();
        for ((c, s), (_, state)) in ctxs.iter().zip(&seen).zip(&states) {
            if s.revision == 0 || &s.value.state != state {
                let v = s.value.next(state.clone(), &inner.client_id, None, &[]);
                let json = serde_json::to_vec(&v).expect("a stored value serializes");
                if json.len() > MAX_VALUE_LEN {
                    return Err(c.server(
                        "importing",
                        format!(
                            "the state would take {} bytes, more than {MAX_VALUE_LEN}",
                            json.len()
                        ),
                    ));
                }
                puts.push(TxnOp::put(c.key.clone(), json, None));
            }
        }
        let txn = Txn::new()
            .when(
                ctxs.iter()
                    .zip(&seen)
                    .map(|(c, s)| {
                        Compare::mod_revision(c.key.clone(), CompareOp::Equal, s.revision)
                    })
                    .collect::<Vec<_>>(),
            )
            .and_then(puts);
        let counters = &inner.counters;
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(wait, kv.txn(txn)).await {
            Ok(Ok(r)) if r.succeeded() => return Ok(()),
            Ok(Ok(_)) => {
                counters.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                ambiguous = true;
                last = e.to_string();
                backoff(deadline).await;
            }
            Err(_) => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                ambiguous = true;
                last = format!("no answer within {wait:?}");
                backoff(deadline).await;
            }
        }
    }
}

async fn backoff(deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(Duration::from_millis(25).min(left)).await;
}

impl Store for EtcdStore {
    fn execute(
        &self,
        lu: &LuId,
        nexus: &Nexus,
        cdb: &[u8],
        params: &[u8],
        config: &EngineConfig,
    ) -> Result<Outcome, StoreError> {
        let seq = self.new_sequence();
        self.execute_as(seq, lu, nexus, cdb, params, config)
    }

    fn load(&self, lu: &LuId) -> Result<Option<LogicalUnit>, StoreError> {
        Ok(self.load_stored(lu)?.map(|s| s.state))
    }

    fn list(&self) -> Result<Vec<LuId>, StoreError> {
        let prefix = format!("{}lu/", self.inner.config.prefix);
        let inner = Arc::clone(&self.inner);
        let strip = prefix.len();
        let keys = self.block(self.inner.config.command_timeout, async move {
            let mut kv = inner.client.kv_client();
            let deadline = Instant::now() + inner.config.command_timeout;
            let mut last = String::from("no answer");
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(StoreError::unavailable(
                        &inner.describe,
                        None,
                        "listing logical units",
                        inner.config.command_timeout,
                        last,
                    ));
                }
                let wait = left.min(inner.config.request_timeout);
                let get = kv.get(
                    prefix.clone(),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                );
                match tokio::time::timeout(wait, get).await {
                    Ok(Ok(r)) => {
                        return Ok(r
                            .kvs()
                            .iter()
                            .map(|kv| kv.key().to_vec())
                            .collect::<Vec<_>>())
                    }
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = format!("no answer within {wait:?}"),
                }
                backoff(deadline).await;
            }
        })?;
        let mut ids = keys
            .into_iter()
            .map(|k| {
                let id = String::from_utf8_lossy(k.get(strip..).unwrap_or_default()).into_owned();
                LuId::new(id).map_err(|e| {
                    StoreError::server(
                        &self.inner.describe,
                        None,
                        "listing logical units",
                        format!("a stored key is not a logical unit: {e}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort();
        Ok(ids)
    }

    fn power_loss(&self, lu: &LuId) -> Result<(), StoreError> {
        self.modify(lu, "power loss", |v, exists| {
            exists.then(|| Some(v.state.power_loss()))
        })
    }

    fn clear(&self, lu: &LuId) -> Result<(), StoreError> {
        self.modify(lu, "clearing", |_, exists| exists.then_some(None))
    }

    /// One etcd transaction for all of them: a compare of every key's mod_revision against
    /// the value read, then every put; after a lost answer only states equal to the imported
    /// ones count as done (else [`StoreError::OutcomeUnknown`]).
    fn import_all(&self, states: &[(LuId, LogicalUnit)]) -> Result<(), StoreError> {
        pr_store::check_import_all(states)?;
        match states {
            [] => return Ok(()),
            [(lu, state)] => return self.import(lu, state),
            _ if states.len() > MAX_IMPORT => {
                return Err(StoreError::Unsupported {
                    operation: "importing more than 128 logical units in one etcd transaction",
                })
            }
            _ => {}
        }
        let inner = Arc::clone(&self.inner);
        let states = states.to_vec();
        let first = states[0].0.clone();
        self.block_for(
            Some(&first),
            self.inner.config.command_timeout,
            async move { import_all(inner, states).await },
        )
    }

    fn import(&self, lu: &LuId, state: &LogicalUnit) -> Result<(), StoreError> {
        pr_store::check_import(lu, state)?;
        let state = state.clone();
        self.modify(lu, "importing", move |v, _| {
            (v.state != state).then(|| Some(state.clone()))
        })
    }
}
