//! Cross-host fencing of media I/O with an etcd lease (docs/etcd.md, "Cross-host fencing with
//! leases"): the host side that a target serving a shared logical unit calls.
//!
//! - [`HostFence`]: this host's lease, kept alive by a task of the store's runtime. Media I/O
//!   is allowed only until (monotonic instant before the keep-alive was sent) + TTL × (1 −
//!   drift) − margin, and only while this host's view of every logical unit it serves is
//!   current: each renewal round also reads the served units' keys (in one transaction that
//!   re-writes this host's acknowledgements if they are missing) and applies what the watch has
//!   not delivered yet. A host that cannot renew stops by itself, before etcd can expire its
//!   lease. [`HostFence::media_allowed`] reads one atomic and the clock: no etcd round trip.
//! - A watch on `PREFIX lu/` applies every change of a served unit to the target
//!   ([`SharedLu::apply`], which returns once the I/O the new state refuses has drained), then
//!   writes the acknowledgement `PREFIX ack/LU/HOST = revision`, attached to the lease.
//! - [`LuFence::wait_acks`]: after a command that takes media access away commits at revision
//!   R, wait until every other host serving the unit has acknowledged R, or its
//!   acknowledgement key is gone (its lease expired or was revoked), watching the keys.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use pr_engine::{Access, CommandClass, EngineConfig, LogicalUnit, Nexus};
use pr_store::{LuId, StoreError};
use serde::{Deserialize, Serialize};

use crate::record::{Stored, FORMAT};
use crate::store::{Committed, EtcdStore, MAX_VALUE_LEN};

/// Timing assumptions of the lease (docs/etcd.md gives the argument). Configured in the etcd
/// `store` table of pr-target as `lease_ttl_s`, `lease_renew_ms`, `lease_margin_ms` and
/// `clock_drift_ppm` (pr-store-config), or in [`crate::EtcdConfig::lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseTiming {
    /// The lease's TTL in etcd (whole seconds; etcd raises a shorter one to its minimum,
    /// 1.5 × its election timeout, and the granted TTL is what counts).
    #[serde(with = "crate::config::millis")]
    pub ttl: Duration,
    /// How often a renewal round starts (the pause after one round ends).
    #[serde(with = "crate::config::millis")]
    pub renew_every: Duration,
    /// Safety margin `M`: media I/O stops this long before the earliest instant the lease can
    /// expire in etcd; it must cover the longest medium write in flight (the drain).
    #[serde(with = "crate::config::millis")]
    pub margin: Duration,
    /// Bound `ρ` on how much slower this host's monotonic clock may run than the etcd
    /// leader's, in parts per million (10 000 = 1 %).
    pub drift_ppm: u32,
}

/// Longest lease TTL accepted.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);
/// Shortest renewal period accepted (a round is a keep-alive and a transaction).
pub const MIN_RENEW: Duration = Duration::from_millis(100);
/// Shortest margin accepted: it bounds a medium write in flight, never nothing.
pub const MIN_MARGIN: Duration = Duration::from_millis(100);
/// Largest clock drift bound accepted, in ppm (below 50 %).
pub const MAX_DRIFT_PPM: u32 = 499_999;

impl Default for LeaseTiming {
    /// TTL 6 s, renewal every 2 s, margin 1 s, drift 1 % (10 000 ppm).
    fn default() -> Self {
        LeaseTiming {
            ttl: Duration::from_secs(6),
            renew_every: Duration::from_secs(2),
            margin: Duration::from_secs(1),
            drift_ppm: 10_000,
        }
    }
}

impl LeaseTiming {
    /// `ρ` as a fraction.
    pub fn drift(&self) -> f64 {
        f64::from(self.drift_ppm) / 1e6
    }

    /// `d × (1 − ρ)`, in whole nanoseconds rounded down (integer arithmetic: exact).
    pub fn shrink(&self, d: Duration) -> Duration {
        let keep = 1_000_000 - u128::from(self.drift_ppm.min(1_000_000));
        let n = d.as_nanos() * keep / 1_000_000;
        Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
    }

    /// How long media I/O stays allowed after the start of a successful renewal round that
    /// etcd granted the configured TTL: `ttl × (1 − ρ) − margin` (zero if nothing is left).
    pub fn validity(&self) -> Duration {
        self.shrink(self.ttl).saturating_sub(self.margin)
    }

    /// Checks the timings on their own and against each other, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |detail: String| Err(StoreError::Config { detail });
        if self.ttl < Duration::from_secs(1) || self.ttl.subsec_nanos() != 0 {
            return bad(format!(
                "lease ttl {:?}: expected whole seconds, at least 1 (etcd grants whole seconds)",
                self.ttl
            ));
        }
        if self.ttl > MAX_LEASE_TTL {
            return bad(format!(
                "lease ttl {:?}: expected at most {} s",
                self.ttl,
                MAX_LEASE_TTL.as_secs()
            ));
        }
        if self.drift_ppm > MAX_DRIFT_PPM {
            return bad(format!(
                "lease drift {} ppm: expected 0 to {MAX_DRIFT_PPM} ppm (10000 = 1 %)",
                self.drift_ppm
            ));
        }
        if self.renew_every < MIN_RENEW {
            return bad(format!(
                "lease renew_every {:?}: expected at least {MIN_RENEW:?}",
                self.renew_every
            ));
        }
        if self.margin < MIN_MARGIN {
            return bad(format!(
                "lease margin {:?}: expected at least {MIN_MARGIN:?} (it must cover the \
                 longest medium write in flight)",
                self.margin
            ));
        }
        if self.margin + self.renew_every >= self.shrink(self.ttl) {
            return bad(format!(
                "lease margin {:?} + renew_every {:?} leave nothing of ttl {:?} × (1 − drift): \
                 renew more often or lengthen the ttl",
                self.margin, self.renew_every, self.ttl
            ));
        }
        Ok(())
    }

    /// [`LeaseTiming::validate`], and the relation with the store's `request_timeout` (which
    /// bounds a renewal round): `renew_every + request_timeout < ttl × (1 − ρ) − margin`, so
    /// that a round that starts on time and takes up to the whole request timeout still ends
    /// before the validity of the round before it runs out (else one slow round stops media
    /// I/O on a healthy host).
    pub fn validate_with(&self, request_timeout: Duration) -> Result<(), StoreError> {
        self.validate()?;
        if self.renew_every + request_timeout >= self.validity() {
            return Err(StoreError::Config {
                detail: format!(
                    "lease renew_every {:?} + request_timeout {:?} must be shorter than ttl \
                     {:?} × (1 − drift) − margin {:?} = {:?}: a renewal round taking the whole \
                     request timeout would let media I/O stop on a healthy host; renew more \
                     often, shorten the request timeout or lengthen the ttl",
                    self.renew_every,
                    request_timeout,
                    self.ttl,
                    self.margin,
                    self.validity()
                ),
            });
        }
        Ok(())
    }

    /// The instant until which media I/O is allowed after a renewal that was sent at `sent`
    /// and granted `granted` (etcd's answer): `sent + granted × (1 − drift) − margin`.
    pub fn valid_until(&self, sent: Instant, granted: Duration) -> Option<Instant> {
        (sent + self.shrink(granted)).checked_sub(self.margin)
    }

    /// How long a command that takes access away waits for other hosts' acknowledgements: a
    /// partitioned host's lease expires in etcd at most one TTL after its last renewal, and a
    /// leader change restarts every TTL once; one more second covers etcd's lazy expiry.
    pub fn ack_wait(&self) -> Duration {
        self.ttl * 2 + Duration::from_secs(1)
    }
}

/// A logical unit served by this host, as the fence sees it (implemented by the target).
pub trait SharedLu: Send + Sync {
    /// The latest etcd revision whose state the target runs on *with* every command that state
    /// refuses drained (0: none yet). It is what the fence acknowledges, so it must not move
    /// ahead of the drain (a revision being applied but not drained yet does not count).
    fn revision(&self) -> i64;
    /// Runs on `state`, the unit's value at etcd revision `revision`, from now on (ignored if
    /// not newer than [`SharedLu::revision`]). Returns once no command admitted under the
    /// earlier state that the new one refuses is in flight any more.
    fn apply(&self, revision: i64, state: LogicalUnit);
}

/// What the fence needs of an [`EtcdStore`].
#[derive(Clone)]
pub(crate) struct StoreParts {
    pub client: Client,
    pub runtime: tokio::runtime::Handle,
    pub prefix: String,
    pub describe: String,
    pub client_id: String,
    pub request_timeout: Duration,
}

#[derive(Debug, Default)]
struct LeaseState {
    id: i64,
    /// The TTL etcd granted the lease.
    ttl: Duration,
    renewals: u64,
    /// Renewal rounds started and ended (successful or not).
    rounds_started: u64,
    rounds_ended: u64,
    grants: u64,
    last_error: Option<String>,
}

enum Apply {
    State {
        lu: LuId,
        revision: i64,
        state: LogicalUnit,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    },
    Stop,
}

struct Shared {
    parts: StoreParts,
    timing: LeaseTiming,
    /// The origin of `valid_until`.
    base: Instant,
    /// Nanoseconds after `base` until which media I/O is allowed (0: not at all).
    valid_until: AtomicU64,
    lease: Mutex<LeaseState>,
    served: Mutex<BTreeMap<LuId, Weak<dyn SharedLu>>>,
    applier: Mutex<mpsc::Sender<Apply>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Most logical units in one renewal transaction (two compares and two operations each;
/// etcd's default limit is 128 operations per transaction).
const ROUND_CHUNK: usize = 40;

impl Shared {
    fn lu_key(&self, lu: &LuId) -> String {
        format!("{}lu/{lu}", self.parts.prefix)
    }
    fn ack_prefix(&self, lu: &LuId) -> String {
        format!("{}ack/{lu}/", self.parts.prefix)
    }
    fn ack_key(&self, lu: &LuId) -> String {
        format!("{}{}", self.ack_prefix(lu), self.parts.client_id)
    }
    fn host_key(&self) -> String {
        format!("{}hosts/{}", self.parts.prefix, self.parts.client_id)
    }
    fn lease_id(&self) -> i64 {
        lock(&self.lease).id
    }
    fn error(&self, e: String) {
        lock(&self.lease).last_error = Some(e);
    }

    fn media_allowed(&self) -> bool {
        let v = self.valid_until.load(Ordering::Acquire);
        v != 0 && (self.base.elapsed().as_nanos() as u64) < v
    }

    fn valid_until(&self) -> Option<Instant> {
        match self.valid_until.load(Ordering::Acquire) {
            0 => None,
            v => Some(self.base + Duration::from_nanos(v)),
        }
    }

    /// Extends the validity to `until` (never shortens it: an older round proved its own).
    fn extend(&self, until: Instant) {
        let n = until.saturating_duration_since(self.base).as_nanos() as u64;
        self.valid_until.fetch_max(n.max(1), Ordering::AcqRel);
    }

    fn served(&self) -> Vec<(LuId, Arc<dyn SharedLu>)> {
        let mut m = lock(&self.served);
        m.retain(|_, w| w.strong_count() > 0);
        m.iter()
            .filter_map(|(k, w)| w.upgrade().map(|l| (k.clone(), l)))
            .collect()
    }

    fn decode(&self, lu: &LuId, kv: &etcd_client::KeyValue) -> Result<LogicalUnit, String> {
        decode_state(kv.value()).map_err(|e| format!("{lu}: {e}"))
    }

    fn send(&self, job: Apply) {
        let _ = lock(&self.applier).send(job);
    }

    /// Writes this host's acknowledgement of `revision` for `lu` (bounded; a failure is left
    /// to the next renewal round, which writes missing acknowledgements again).
    fn put_ack(&self, lu: &LuId, revision: i64) {
        let mut kv = self.parts.client.kv_client();
        let key = self.ack_key(lu);
        let id = self.lease_id();
        let wait = self.parts.request_timeout;
        let r = self.parts.runtime.block_on(async move {
            let put = kv.put(
                key,
                revision.to_string(),
                Some(PutOptions::new().with_lease(id)),
            );
            tokio::time::timeout(wait, put).await
        });
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.error(format!("acknowledging {lu} revision {revision}: {e}")),
            Err(_) => self.error(format!(
                "acknowledging {lu} revision {revision}: no answer within {wait:?}"
            )),
        }
    }

    /// Grants a lease and writes this host's key under it (before any acknowledgement).
    async fn grant(&self) -> Result<(i64, Duration, Instant), String> {
        let sent = Instant::now();
        let wait = self.parts.request_timeout;
        let mut lease = self.parts.client.lease_client();
        let ttl = self.timing.ttl.as_secs() as i64;
        let g = tokio::time::timeout(wait, lease.grant(ttl, None))
            .await
            .map_err(|_| format!("granting the lease: no answer within {wait:?}"))?
            .map_err(|e| format!("granting the lease: {e}"))?;
        let mut kv = self.parts.client.kv_client();
        let put = kv.put(
            self.host_key(),
            self.parts.client_id.clone(),
            Some(PutOptions::new().with_lease(g.id())),
        );
        tokio::time::timeout(wait, put)
            .await
            .map_err(|_| format!("writing the host key: no answer within {wait:?}"))?
            .map_err(|e| format!("writing the host key: {e}"))?;
        let ttl = Duration::from_secs(g.ttl().max(0) as u64);
        let mut l = lock(&self.lease);
        l.id = g.id();
        l.ttl = ttl;
        l.grants += 1;
        Ok((g.id(), ttl, sent))
    }

    /// One keep-alive on a fresh stream: the TTL it restarted (the lease's granted TTL, which
    /// each keep-alive restarts in full), or zero when the lease is gone in etcd.
    async fn keep_alive(&self, id: i64) -> Result<Duration, String> {
        let wait = self.parts.request_timeout;
        let mut lease = self.parts.client.lease_client();
        // etcd-client's keep_alive sends the first keep-alive and reads its answer itself,
        // failing with "lease not found" when the answer's TTL is not positive.
        match tokio::time::timeout(wait, lease.keep_alive(id)).await {
            Ok(Ok(_)) => Ok(lock(&self.lease).ttl),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => {
                Ok(Duration::ZERO)
            }
            Ok(Err(e)) => Err(format!("keep-alive: {e}")),
            Err(_) => Err(format!("keep-alive: no answer within {wait:?}")),
        }
    }

    /// The view check of one renewal round: in one transaction per chunk of served units,
    /// (re)write this host's acknowledgements under lease `id` when they are not there as
    /// applied, and read the units' keys; then apply, and wait for, every newer value. Only if
    /// all of it succeeds before `deadline` is this host's view current as of the round.
    async fn view_round(self: &Arc<Self>, id: i64, deadline: Instant) -> Result<(), String> {
        let served = self.served();
        for chunk in served.chunks(ROUND_CHUNK) {
            let mut compares = Vec::new();
            let mut gets = Vec::new();
            let mut puts = Vec::new();
            for (lu, l) in chunk {
                let ack = self.ack_key(lu);
                let applied = l.revision().to_string();
                compares.push(Compare::value(
                    ack.clone(),
                    CompareOp::Equal,
                    applied.clone(),
                ));
                compares.push(Compare::lease(ack.clone(), CompareOp::Equal, id));
                gets.push(TxnOp::get(self.lu_key(lu), None));
                puts.push(TxnOp::put(
                    ack,
                    applied,
                    Some(PutOptions::new().with_lease(id)),
                ));
            }
            let mut otherwise = puts;
            otherwise.extend(gets.iter().cloned());
            let txn = Txn::new().when(compares).and_then(gets).or_else(otherwise);
            let left = deadline.saturating_duration_since(Instant::now());
            let mut kv = self.parts.client.kv_client();
            let r = tokio::time::timeout(left, kv.txn(txn))
                .await
                .map_err(|_| format!("reading the served units: no answer within {left:?}"))?
                .map_err(|e| format!("reading the served units: {e}"))?;
            let header = r.header().map(|h| h.revision()).unwrap_or(0);
            let values: Vec<Option<etcd_client::KeyValue>> = r
                .op_responses()
                .into_iter()
                .filter_map(|op| match op {
                    TxnOpResponse::Get(g) => Some(g.kvs().first().cloned()),
                    _ => None,
                })
                .collect();
            if values.len() != chunk.len() {
                return Err(format!(
                    "reading the served units: {} answers for {} units",
                    values.len(),
                    chunk.len()
                ));
            }
            for ((lu, l), kv) in chunk.iter().zip(values) {
                let (revision, state) = match &kv {
                    Some(kv) => (kv.mod_revision(), self.decode(lu, kv)?),
                    // No key (cleared by an operator): the empty state, as of this read.
                    None if l.revision() > 0 => (header, LogicalUnit::default()),
                    None => continue,
                };
                if revision <= l.revision() {
                    continue;
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.send(Apply::State {
                    lu: lu.clone(),
                    revision,
                    state,
                    done: Some(tx),
                });
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::timeout(left, rx)
                    .await
                    .map_err(|_| format!("{lu}: applying revision {revision} took over {left:?}"))?
                    .map_err(|_| format!("{lu}: the applier stopped"))?;
            }
        }
        Ok(())
    }

    /// The renewal loop (see the module documentation).
    async fn keep(self: Arc<Self>) {
        let mut first = true;
        loop {
            // The first round right away: media I/O is allowed once it succeeds.
            if !std::mem::take(&mut first) {
                tokio::time::sleep(self.timing.renew_every).await;
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            lock(&self.lease).rounds_started += 1;
            self.round().await;
            lock(&self.lease).rounds_ended += 1;
        }
    }

    /// One renewal round (see the module documentation).
    async fn round(self: &Arc<Self>) {
        // The validity is measured from before the keep-alive is sent.
        let mut sent = Instant::now();
        let mut id = self.lease_id();
        let mut granted = match self.keep_alive(id).await {
            Ok(t) => t,
            Err(e) => {
                self.error(e);
                return;
            }
        };
        if granted.is_zero() {
            // The lease is gone in etcd (this host was cut off longer than its TTL; it
            // stopped media I/O before). A new lease, then the view check as usual.
            self.valid_until.store(0, Ordering::Release);
            self.error("the lease expired in etcd; granting a new one".into());
            match self.grant().await {
                Ok((i, t, s)) => (id, granted, sent) = (i, t, s),
                Err(e) => {
                    self.error(e);
                    return;
                }
            }
        }
        let deadline = sent + self.parts.request_timeout;
        match self.view_round(id, deadline).await {
            Ok(()) => {
                if let Some(until) = self.timing.valid_until(sent, granted) {
                    self.extend(until);
                }
                let mut l = lock(&self.lease);
                l.renewals += 1;
                l.last_error = None;
            }
            Err(e) => self.error(e),
        }
    }

    /// The watch on `PREFIX lu/`: every change of a served unit goes to the applier. Reopened
    /// from the next revision when the stream ends; after a compaction, from the current one
    /// (the renewal rounds read the units anyway).
    async fn watch(self: Arc<Self>, mut next: i64) {
        let prefix = format!("{}lu/", self.parts.prefix);
        while !self.stop.load(Ordering::SeqCst) {
            let mut w = self.parts.client.watch_client();
            let mut options = WatchOptions::new().with_prefix();
            if next > 0 {
                options = options.with_start_revision(next);
            }
            let mut stream = match w.watch(prefix.clone(), Some(options)).await {
                Ok(s) => s,
                Err(e) => {
                    self.error(format!("watching the units: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            loop {
                let m = tokio::select! {
                    m = stream.message() => m,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if self.stop.load(Ordering::SeqCst) { return; }
                        continue;
                    }
                };
                let resp = match m {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        self.error(format!("watching the units: {e}"));
                        break;
                    }
                };
                if resp.canceled() {
                    next = if resp.compact_revision() > 0 { 0 } else { next };
                    break;
                }
                let served: BTreeMap<LuId, ()> =
                    lock(&self.served).keys().map(|k| (k.clone(), ())).collect();
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    next = next.max(kv.mod_revision() + 1);
                    let name = String::from_utf8_lossy(kv.key().get(prefix.len()..).unwrap_or(&[]))
                        .into_owned();
                    let Ok(lu) = LuId::new(name) else { continue };
                    if !served.contains_key(&lu) {
                        continue;
                    }
                    let state = match ev.event_type() {
                        EventType::Put => match self.decode(&lu, kv) {
                            Ok(s) => s,
                            Err(e) => {
                                self.error(e);
                                continue;
                            }
                        },
                        EventType::Delete => LogicalUnit::default(),
                    };
                    self.send(Apply::State {
                        lu,
                        revision: kv.mod_revision(),
                        state,
                        done: None,
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The applier thread: runs [`SharedLu::apply`] (which may block while I/O drains) off the
    /// runtime, then acknowledges.
    fn applier(self: Arc<Self>, jobs: mpsc::Receiver<Apply>) {
        while let Ok(Apply::State {
            lu,
            revision,
            state,
            done,
        }) = jobs.recv()
        {
            let l = lock(&self.served).get(&lu).and_then(Weak::upgrade);
            if let Some(l) = l {
                if revision > l.revision() {
                    l.apply(revision, state);
                }
                if self.stop.load(Ordering::SeqCst) {
                    return;
                }
                self.put_ack(&lu, l.revision());
            }
            if let Some(d) = done {
                let _ = d.send(());
            }
        }
    }
}

/// This host's lease and the watch that keeps its served units current (see the module
/// documentation). Dropped, it stops media I/O, stops renewing, waits the margin and revokes
/// the lease (a target should close its units, draining them, before).
pub struct HostFence {
    shared: Arc<Shared>,
    store: Arc<EtcdStore>,
    applier: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for HostFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostFence")
            .field("host", &self.shared.parts.client_id)
            .field("lease", &self.shared.lease_id())
            .field("timing", &self.shared.timing)
            .finish_non_exhaustive()
    }
}

impl HostFence {
    /// Grants this host's lease (bounded by the store's request timeout), starts renewing it,
    /// and watches the logical units. Media I/O is allowed from the first successful renewal
    /// round on (it starts at once).
    pub fn start(store: Arc<EtcdStore>, timing: LeaseTiming) -> Result<HostFence, StoreError> {
        let parts = store.parts();
        timing.validate_with(parts.request_timeout)?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            parts: parts.clone(),
            timing,
            base: Instant::now(),
            valid_until: AtomicU64::new(0),
            lease: Mutex::new(LeaseState::default()),
            served: Mutex::new(BTreeMap::new()),
            applier: Mutex::new(tx),
            stop: AtomicBool::new(false),
        });
        let describe = parts.describe.clone();
        let s = Arc::clone(&shared);
        let start = parts.runtime.block_on(async move {
            s.grant().await?;
            // Where the watch starts: after the current revision.
            let mut kv = s.parts.client.kv_client();
            let wait = s.parts.request_timeout;
            let r = tokio::time::timeout(
                wait,
                kv.get(
                    format!("{}lu/", s.parts.prefix),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                ),
            )
            .await
            .map_err(|_| format!("reading the revision: no answer within {wait:?}"))?
            .map_err(|e| format!("reading the revision: {e}"))?;
            Ok::<i64, String>(r.header().map(|h| h.revision()).unwrap_or(0))
        });
        let revision = start.map_err(|detail| {
            StoreError::unavailable(
                describe,
                None,
                "starting the host's lease",
                parts.request_timeout,
                detail,
            )
        })?;
        let s = Arc::clone(&shared);
        let applier = std::thread::Builder::new()
            .name("pr-fence-apply".into())
            .spawn(move || s.applier(rx))
            .map_err(|e| StoreError::Config {
                detail: format!("cannot start the fence's thread: {e}"),
            })?;
        parts.runtime.spawn(Arc::clone(&shared).keep());
        parts.runtime.spawn(Arc::clone(&shared).watch(revision + 1));
        Ok(HostFence {
            shared,
            store,
            applier: Some(applier),
        })
    }

    /// Starts fencing `lu` for `target`: its current value is read and applied, this host's
    /// acknowledgement written, and from then on every change is applied and acknowledged.
    pub fn serve(&self, lu: &LuId, target: Weak<dyn SharedLu>) -> Result<LuFence, StoreError> {
        lock(&self.shared.served).insert(lu.clone(), target);
        let s = Arc::clone(&self.shared);
        let id = s.lease_id();
        let wait = s.parts.request_timeout * 2;
        let r = self.shared.parts.runtime.block_on(async move {
            let deadline = Instant::now() + wait;
            s.view_round(id, deadline).await
        });
        r.map_err(|detail| {
            StoreError::unavailable(
                &self.shared.parts.describe,
                Some(lu),
                "starting to serve a shared logical unit",
                wait,
                detail,
            )
        })?;
        Ok(LuFence {
            shared: Arc::clone(&self.shared),
            store: Arc::clone(&self.store),
            lu: lu.clone(),
        })
    }

    /// Whether this host may run media I/O on shared logical units now (see the module
    /// documentation); turns false by itself when renewals fail.
    pub fn media_allowed(&self) -> bool {
        self.shared.media_allowed()
    }

    /// Until when media I/O is allowed (`None`: not at all).
    pub fn valid_until(&self) -> Option<Instant> {
        self.shared.valid_until()
    }

    /// The lease's id in etcd (it changes when the lease had expired and a new one was
    /// granted).
    pub fn lease_id(&self) -> i64 {
        self.shared.lease_id()
    }

    /// Successful renewal rounds so far.
    pub fn renewals(&self) -> u64 {
        lock(&self.shared.lease).renewals
    }

    /// Renewal rounds started and ended so far (successful or not): equal when no round is in
    /// flight.
    pub fn rounds(&self) -> (u64, u64) {
        let l = lock(&self.shared.lease);
        (l.rounds_started, l.rounds_ended)
    }

    /// The TTL etcd granted this host's current lease (zero before the first grant).
    pub fn granted_ttl(&self) -> Duration {
        lock(&self.shared.lease).ttl
    }

    /// Leases granted so far (1, plus one per expiry lived through).
    pub fn grants(&self) -> u64 {
        lock(&self.shared.lease).grants
    }

    /// Why the last renewal round failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.lease).last_error.clone()
    }

    /// The timing it runs with.
    pub fn timing(&self) -> LeaseTiming {
        self.shared.timing
    }

    /// This host's identity in the acknowledgement keys (the store's client id).
    pub fn host(&self) -> &str {
        &self.shared.parts.client_id
    }
}

impl Drop for HostFence {
    fn drop(&mut self) {
        self.shared.valid_until.store(0, Ordering::Release);
        self.shared.stop.store(true, Ordering::SeqCst);
        // The applier is not joined: it may be waiting for I/O that never ends (a medium
        // that hangs); stopped, it writes no acknowledgement any more.
        self.shared.send(Apply::Stop);
        drop(self.applier.take());
        // Revoked, other hosts need not wait for its expiry (bounded; it expires anyway).
        // Not before the margin has passed: a command admitted just before media I/O stopped
        // may still be writing, and the margin is the bound on that, as for an expiry.
        std::thread::sleep(self.shared.timing.margin);
        let mut lease = self.shared.parts.client.lease_client();
        let id = self.shared.lease_id();
        let wait = self.shared.parts.request_timeout;
        let _ = self
            .shared
            .parts
            .runtime
            .block_on(async move { tokio::time::timeout(wait, lease.revoke(id)).await });
    }
}

/// One shared logical unit served under a [`HostFence`]: what the target calls.
pub struct LuFence {
    shared: Arc<Shared>,
    store: Arc<EtcdStore>,
    lu: LuId,
}

impl std::fmt::Debug for LuFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuFence")
            .field("lu", &self.lu)
            .field("host", &self.shared.parts.client_id)
            .finish_non_exhaustive()
    }
}

impl LuFence {
    /// Whether this host may run media I/O now ([`HostFence::media_allowed`]).
    pub fn media_allowed(&self) -> bool {
        self.shared.media_allowed()
    }

    /// Runs a PR command in the store ([`EtcdStore::execute_committed`]).
    pub fn execute(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        params: &[u8],
        config: &EngineConfig,
    ) -> Result<Committed, StoreError> {
        let seq = self.store.new_sequence();
        self.store
            .execute_committed(seq, &self.lu, nexus, cdb, params, config)
    }

    /// Reports and clears a pending unit attention on the current state ([`EtcdStore::admit`]).
    pub fn admit(
        &self,
        nexus: &Nexus,
        class: CommandClass,
    ) -> Result<(Access, LogicalUnit), StoreError> {
        self.store.admit(&self.lu, nexus, class)
    }

    /// The other hosts serving the unit and the revision each acknowledged (a linearizable
    /// read).
    pub fn acknowledgements(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let s = Arc::clone(&self.shared);
        let prefix = s.ack_prefix(&self.lu);
        let wait = s.parts.request_timeout;
        let r = self
            .shared
            .parts
            .runtime
            .block_on(async move { read_acks(&s, &prefix, wait).await });
        r.map(|(m, _)| m).map_err(|detail| {
            StoreError::unavailable(
                &self.shared.parts.describe,
                Some(&self.lu),
                "reading acknowledgements",
                wait,
                detail,
            )
        })
    }

    /// Waits until every other host serving the unit has acknowledged `revision` (applied it
    /// and drained the I/O it refuses) or its acknowledgement is gone with its lease, at most
    /// [`LeaseTiming::ack_wait`]. The error names the hosts that did neither.
    pub fn wait_acks(&self, revision: i64) -> Result<(), StoreError> {
        // etcd may have granted more than the configured TTL (its minimum is 1.5 × the
        // election timeout); other hosts of the same cluster get as much.
        let granted = lock(&self.shared.lease).ttl;
        let timeout = self
            .shared
            .timing
            .ack_wait()
            .max(granted * 2 + Duration::from_secs(1));
        let s = Arc::clone(&self.shared);
        let prefix = s.ack_prefix(&self.lu);
        let r = self.shared.parts.runtime.block_on(async move {
            let deadline = Instant::now() + timeout;
            let mut last = String::from("no answer");
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(last);
                }
                match wait_round(&s, &prefix, revision, deadline).await {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(20).min(left)).await;
            }
        });
        r.map_err(|detail| {
            StoreError::unavailable(
                &self.shared.parts.describe,
                Some(&self.lu),
                "waiting for other hosts to acknowledge",
                timeout,
                format!("revision {revision}: {detail}"),
            )
        })
    }
}

/// The acknowledgements under `prefix` of hosts other than this one, and the read's revision.
async fn read_acks(
    s: &Shared,
    prefix: &str,
    wait: Duration,
) -> Result<(BTreeMap<String, i64>, i64), String> {
    let mut kv = s.parts.client.kv_client();
    let r = tokio::time::timeout(
        wait,
        kv.get(prefix.to_owned(), Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|_| format!("reading acknowledgements: no answer within {wait:?}"))?
    .map_err(|e| format!("reading acknowledgements: {e}"))?;
    let mut m = BTreeMap::new();
    for kv in r.kvs() {
        let host =
            String::from_utf8_lossy(kv.key().get(prefix.len()..).unwrap_or(&[])).into_owned();
        if host == s.parts.client_id {
            continue;
        }
        // A value that is not a revision acknowledges nothing.
        m.insert(host, parse_ack(kv.value()).unwrap_or(-1));
    }
    Ok((m, r.header().map(|h| h.revision()).unwrap_or(0)))
}

/// One attempt of [`LuFence::wait_acks`]: read the acknowledgements, then watch them from the
/// read's revision until none is pending (`Ok(true)`), the stream ends (`Ok(false)`), or the
/// deadline (`Err`).
async fn wait_round(
    s: &Shared,
    prefix: &str,
    revision: i64,
    deadline: Instant,
) -> Result<bool, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let (acks, read_at) = read_acks(s, prefix, left.min(s.parts.request_timeout)).await?;
    let mut pending: BTreeMap<String, i64> =
        acks.into_iter().filter(|(_, r)| *r < revision).collect();
    if pending.is_empty() {
        return Ok(true);
    }
    let mut w = s.parts.client.watch_client();
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(read_at + 1);
    let left = deadline.saturating_duration_since(Instant::now());
    let mut stream = tokio::time::timeout(left, w.watch(prefix.to_owned(), Some(options)))
        .await
        .map_err(|_| format!("hosts {:?} did not acknowledge in time", pending.keys()))?
        .map_err(|e| format!("watching acknowledgements: {e}"))?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, stream.message())
            .await
            .map_err(|_| {
                format!(
                    "hosts {:?} neither acknowledged nor lost their lease in time",
                    pending
                )
            })?;
        let resp = match m {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return Ok(false),
        };
        if resp.canceled() {
            return Ok(false);
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let host =
                String::from_utf8_lossy(kv.key().get(prefix.len()..).unwrap_or(&[])).into_owned();
            match ev.event_type() {
                // Deleted: the host's lease expired or was revoked; it stopped before that.
                EventType::Delete => {
                    pending.remove(&host);
                }
                EventType::Put => {
                    let rev = parse_ack(kv.value()).unwrap_or(-1);
                    if rev >= revision {
                        pending.remove(&host);
                    }
                }
            }
        }
        if pending.is_empty() {
            return Ok(true);
        }
    }
}

/// A logical unit's state from its etcd value (written by any host: hostile bytes): at most
/// [`MAX_VALUE_LEN`] bytes of JSON in a format this build understands, whose state keeps the
/// engine's invariants.
pub fn decode_state(value: &[u8]) -> Result<LogicalUnit, String> {
    if value.len() > MAX_VALUE_LEN {
        return Err(format!(
            "the stored value has {} bytes, more than {MAX_VALUE_LEN}",
            value.len()
        ));
    }
    let v: Stored = serde_json::from_slice(value).map_err(|e| format!("corrupt value: {e}"))?;
    if v.format > FORMAT {
        return Err(format!(
            "stored format {} is newer than {FORMAT}, which this pr-helper understands",
            v.format
        ));
    }
    v.state
        .check_invariants()
        .map_err(|e| format!("the stored state is inconsistent: {e}"))?;
    Ok(v.state)
}

/// An acknowledgement's value: a revision in decimal, at most 20 bytes; anything else is
/// `None` (it acknowledges nothing).
pub fn parse_ack(value: &[u8]) -> Option<i64> {
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Whether going from `before` to `after` can take media access away from some I_T nexus:
/// a registration gone (unregistration, PREEMPT, PREEMPT AND ABORT, CLEAR) or narrowed to one
/// target port, or a reservation that is new or differs (RESERVE, PREEMPT, REGISTER AND MOVE).
/// A new registration, a changed key or a released reservation only adds access.
pub fn takes_access_away(before: &LogicalUnit, after: &LogicalUnit) -> bool {
    let registration_gone = before.registrants.iter().any(|r| {
        !after
            .registrants
            .iter()
            .any(|a| a.nexus == r.nexus && (a.all_tg_pt || !r.all_tg_pt))
    });
    let reservation_new = match (&before.reservation, &after.reservation) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(b), Some(a)) => b != a,
    };
    registration_gone || reservation_new
}
