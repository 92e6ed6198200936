//! A fenced logical unit: the disk's device server behind the persistent-reservation engine.
//!
//! Every command that touches the medium is admitted under the LU's *gate* (a mutex over the
//! cached engine state): the access check ([`pr_engine::LogicalUnit::access`]) and the
//! increment of the nexus's in-flight counter happen under the one lock, and the I/O starts
//! only after. A PERSISTENT RESERVE OUT holds the same lock from before it runs in the store
//! until it returns, and before returning waits for the in-flight commands of every nexus
//! that lost access. So no command of a nexus starts after the PR OUT that took its access
//! away has returned, and none of its commands is still running then (docs/target.md).
//!
//! With a local store (SQLite) the cached state is authoritative because the process holds an
//! exclusive lock on the backing ([`crate::backing::Backing::open`]): no other pr-target serves
//! this LU, and every change (PR OUT, a reported unit attention) is written to the store before
//! the gate opens.
//!
//! A *shared* LU ([`FencedLu::new_shared`], on the etcd store) is served by several pr-targets
//! on several hosts at once (a shared lock, [`crate::backing::Backing::open_shared`]). Its
//! cached state is kept current by the host's [`pr_store_etcd::fence::HostFence`], which calls
//! [`SharedLu::apply`] for every change another host commits (the gate is taken and the I/O
//! the new state refuses drained before the change is acknowledged in etcd). Media I/O runs
//! only while the host's lease is known valid (one atomic load under the gate, no etcd round
//! trip), and a PR OUT that takes access away returns only once every other host serving the
//! LU has acknowledged it or lost its lease (docs/etcd.md).

use std::sync::atomic::{fence, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use pr_engine::{Access, CommandClass, EngineConfig, Nexus, Reply, SenseData};
use pr_scsi::SenseCode;
use pr_store::{LuId, Store, StoreError};
use pr_store_etcd::fence::{takes_access_away, HostFence, LuFence, SharedLu};
use pr_store_etcd::EtcdStore;
use tracing::{error, warn};

use crate::scsi::cdb::Command;
use crate::scsi::{BlockDevice, DiskServer, Prepared};

/// The index of an I_T nexus attached to a logical unit ([`FencedLu::attach`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotId(usize);

/// Commands of one nexus that passed the access check and have not finished, by class.
#[derive(Debug)]
struct NexusSlot {
    nexus: Nexus,
    in_flight: [AtomicUsize; 3],
}

fn class_index(c: CommandClass) -> Option<usize> {
    match c {
        CommandClass::Read => Some(0),
        CommandClass::Write => Some(1),
        CommandClass::Other => Some(2),
        CommandClass::Allowed | CommandClass::Exempt => None,
    }
}
const CLASSES: [CommandClass; 3] = [CommandClass::Read, CommandClass::Write, CommandClass::Other];

impl NexusSlot {
    fn busy(&self) -> bool {
        self.in_flight.iter().any(|c| c.load(Ordering::Acquire) > 0)
    }
}

/// Counts a thread waiting for a drain while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A logical unit whose every command obeys its persistent reservations.
pub struct FencedLu<D> {
    name: LuId,
    disk: DiskServer<D>,
    store: Arc<dyn Store>,
    engine: EngineConfig,
    gate: Mutex<pr_engine::LogicalUnit>,
    slots: Vec<NexusSlot>,
    drain: Mutex<()>,
    drained: Condvar,
    /// Threads waiting on `drained`: a command that ends its nexus's last one in flight
    /// notifies only when there is one (a notification is a system call).
    draining: AtomicUsize,
    /// Shared across hosts (etcd): media I/O needs `fence` and a valid lease.
    shared: bool,
    fence: OnceLock<LuFence>,
    /// The etcd revision of the gate's state (shared LUs; changed only under the gate).
    revision: AtomicI64,
    /// The latest revision whose state the gate holds *and* whose refused I/O has drained:
    /// what this host acknowledges ([`SharedLu::revision`]), never ahead of the drain.
    settled: AtomicI64,
}

impl<D> std::fmt::Debug for FencedLu<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FencedLu")
            .field("name", &self.name)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

/// How long a PR OUT or shutdown waits before logging that commands are still in flight.
const DRAIN_LOG_INTERVAL: Duration = Duration::from_secs(5);

fn store_failure() -> Reply {
    Reply::check(SenseData::new(
        SenseCode::LOGICAL_UNIT_COMMUNICATION_FAILURE,
    ))
}

/// Holds an LU's gate closed: no command is admitted while it lives.
#[derive(Debug)]
pub struct Closed<'a> {
    _gate: MutexGuard<'a, pr_engine::LogicalUnit>,
}

impl<D: BlockDevice> FencedLu<D> {
    /// An LU named `name` in `store`, starting from its stored state.
    pub fn new(
        name: LuId,
        disk: DiskServer<D>,
        store: Arc<dyn Store>,
        engine: EngineConfig,
    ) -> Result<FencedLu<D>, StoreError> {
        let state = store.load(&name)?.unwrap_or_default();
        Ok(FencedLu {
            name,
            disk,
            store,
            engine,
            gate: Mutex::new(state),
            slots: Vec::new(),
            drain: Mutex::new(()),
            drained: Condvar::new(),
            draining: AtomicUsize::new(0),
            shared: false,
            fence: OnceLock::new(),
            revision: AtomicI64::new(0),
            settled: AtomicI64::new(0),
        })
    }

    /// An LU named `name` in the etcd `store`, shared with pr-targets on other hosts. It serves
    /// no media I/O until [`FencedLu::share`] has put it under the host's fence.
    pub fn new_shared(
        name: LuId,
        disk: DiskServer<D>,
        store: Arc<EtcdStore>,
        engine: EngineConfig,
    ) -> Result<FencedLu<D>, StoreError> {
        let mut lu = FencedLu::new(name, disk, store, engine)?;
        lu.shared = true;
        Ok(lu)
    }

    /// Makes `nexus` known to the LU (before it is shared); the same nexus twice is one slot.
    pub fn attach(&mut self, nexus: Nexus) -> SlotId {
        if let Some(i) = self.slots.iter().position(|s| s.nexus == nexus) {
            return SlotId(i);
        }
        self.slots.push(NexusSlot {
            nexus,
            in_flight: Default::default(),
        });
        SlotId(self.slots.len() - 1)
    }

    /// The LU's name in the store.
    pub fn name(&self) -> &LuId {
        &self.name
    }

    /// The device server.
    pub fn disk(&self) -> &DiskServer<D> {
        &self.disk
    }

    fn lock_gate(&self) -> MutexGuard<'_, pr_engine::LogicalUnit> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks a CDB against the disk (see [`DiskServer::prepare`]).
    pub fn prepare(&self, cdb: &[u8]) -> Result<Prepared, Reply> {
        self.disk.prepare(cdb)
    }

    /// Runs a prepared command from the nexus of `slot`: PR IN/OUT through the store, every
    /// other command after the access check (see the module documentation).
    pub fn run(&self, slot: SlotId, cdb: &[u8], p: &Prepared, data_out: &[u8]) -> Reply {
        let Some(s) = self.slots.get(slot.0) else {
            return store_failure();
        };
        let port = s.nexus.relative_target_port;
        match p.command {
            Command::PersistentReserveIn | Command::PersistentReserveOut { .. } => {
                return self.persistent_reserve(s, cdb, data_out)
            }
            _ => {}
        }
        let class = p.command.class();
        // `bench-no-check` (a benchmark-only build, Cargo.toml): no access check, no
        // in-flight accounting; the constant condition removes the rest at compile time.
        if cfg!(feature = "bench-no-check") || class == CommandClass::Exempt {
            return self.disk.execute(p, data_out, port);
        }
        let counter = {
            let mut gate = self.lock_gate();
            // A shared LU touches the medium only while the host's lease is known valid (its
            // view of the LU is current then too): a local check, no etcd round trip.
            if self.shared
                && class_index(class).is_some()
                && !self.fence.get().is_some_and(LuFence::media_allowed)
            {
                return store_failure();
            }
            loop {
                match gate.access(&s.nexus, class) {
                    Access::Allowed => break,
                    Access::ReservationConflict => return Reply::conflict(),
                    Access::UnitAttention(_) if self.shared => {
                        // Cleared by compare-and-swap on etcd's current state, never by
                        // overwriting it with this host's copy.
                        let Some(f) = self.fence.get() else {
                            return store_failure();
                        };
                        match f.admit(&s.nexus, class) {
                            Ok((access, now)) => {
                                *gate = now;
                                if let Some(r) = access.reply() {
                                    return r;
                                }
                                // Reported meanwhile: decide again on the current state.
                            }
                            Err(e) => {
                                error!("{}: cannot report a unit attention: {e}", self.name);
                                return store_failure();
                            }
                        }
                    }
                    Access::UnitAttention(_) => {
                        let admission = gate.admit(&s.nexus, class);
                        if let Some(next) = admission.state {
                            if let Err(e) = self.store.import(&self.name, &next) {
                                error!(
                                    "{}: cannot record a reported unit attention: {e}",
                                    self.name
                                );
                                return store_failure();
                            }
                            *gate = next;
                        }
                        return admission.access.reply().unwrap_or_else(store_failure);
                    }
                }
            }
            class_index(class).map(|i| {
                s.in_flight[i].fetch_add(1, Ordering::AcqRel);
                &s.in_flight[i]
            })
        };
        let reply = self.disk.execute(p, data_out, port);
        if let Some(c) = counter {
            if c.fetch_sub(1, Ordering::AcqRel) == 1 {
                // Pairs with the fence in `wait_idle`: either the waiter sees the count at 0
                // or this sees the waiter (and its lock orders the notification after its
                // check).
                fence(Ordering::SeqCst);
                if self.draining.load(Ordering::Relaxed) > 0 {
                    let _g = self.drain.lock().unwrap_or_else(PoisonError::into_inner);
                    self.drained.notify_all();
                }
            }
        }
        reply
    }

    fn persistent_reserve(&self, s: &NexusSlot, cdb: &[u8], params: &[u8]) -> Reply {
        if self.shared {
            return self.persistent_reserve_shared(s, cdb, params);
        }
        let mut gate = self.lock_gate();
        let outcome = match self
            .store
            .execute(&self.name, &s.nexus, cdb, params, &self.engine)
        {
            Ok(o) => o,
            Err(e) => {
                error!("{}: the store cannot run the command: {e}", self.name);
                return store_failure();
            }
        };
        match &outcome.state {
            Some(next) => *gate = next.clone(),
            // Nothing changed here; pick up what an operator may have changed with pr-ctl.
            None => match self.store.load(&self.name) {
                Ok(Some(stored)) => *gate = stored,
                Ok(None) => *gate = pr_engine::LogicalUnit::default(),
                Err(e) => warn!("{}: cannot reload the state: {e}", self.name),
            },
        }
        self.drain_local(&gate, &outcome);
        outcome.reply
    }

    /// Before a PR OUT answers, every local nexus that lost access, or whose commands in
    /// flight the new state would refuse, must have none running. The gate stays closed
    /// meanwhile (`gate` is its guard), so none can start.
    fn drain_local(&self, gate: &pr_engine::LogicalUnit, outcome: &pr_engine::Outcome) {
        for slot in &self.slots {
            let named = outcome.access_lost.contains(&slot.nexus)
                || outcome.tasks_to_abort.contains(&slot.nexus);
            let refused = CLASSES.iter().enumerate().any(|(i, &c)| {
                slot.in_flight[i].load(Ordering::Acquire) > 0
                    && !gate.reservation_allows(&slot.nexus, c)
            });
            if named || refused {
                self.wait_idle(slot);
            }
        }
    }

    /// PR IN/OUT on a shared LU: one compare-and-swap in etcd, the local drain under the gate,
    /// then, with the gate open again (other hosts' acknowledgements go through their gates,
    /// and this host's applier through this one), the wait for every other host serving the
    /// LU when the command took access away.
    fn persistent_reserve_shared(&self, s: &NexusSlot, cdb: &[u8], params: &[u8]) -> Reply {
        let Some(f) = self.fence.get() else {
            error!("{}: not under the host's fence yet", self.name);
            return store_failure();
        };
        let mut gate = self.lock_gate();
        let c = match f.execute(&s.nexus, cdb, params, &self.engine) {
            Ok(c) => c,
            Err(e) => {
                error!("{}: the store cannot run the command: {e}", self.name);
                return store_failure();
            }
        };
        let newer = c.revision > self.revision.load(Ordering::Acquire);
        if newer {
            *gate = c.after.clone();
            self.revision.store(c.revision, Ordering::Release);
        }
        self.drain_local(&gate, &c.outcome);
        if newer {
            self.settled.fetch_max(c.revision, Ordering::AcqRel);
        }
        drop(gate);
        // A command answered from the record of an earlier attempt (no `before`) waits too.
        let took = c.outcome.state.as_ref().is_some_and(|after| {
            c.before
                .as_ref()
                .is_none_or(|before| takes_access_away(before, after))
        });
        if took {
            if let Err(e) = f.wait_acks(c.revision) {
                // The change stands in etcd; the initiator learns that it is not confirmed
                // (a retry finds it applied and waits again).
                error!("{}: {e}", self.name);
                return store_failure();
            }
        }
        c.outcome.reply
    }

    /// Puts a shared LU under the host's fence: its current state is read from etcd and
    /// applied, and media I/O is served from then on while the host's lease is valid.
    pub fn share(self: &Arc<Self>, host: &HostFence) -> Result<(), StoreError>
    where
        D: 'static,
    {
        let me: Weak<dyn SharedLu> = Arc::downgrade(self) as Weak<dyn SharedLu>;
        let f = host.serve(&self.name, me)?;
        if self.fence.set(f).is_err() {
            warn!("{}: already shared; keeping the first fence", self.name);
        }
        Ok(())
    }

    fn wait_idle(&self, slot: &NexusSlot) {
        let mut g = self.drain.lock().unwrap_or_else(PoisonError::into_inner);
        self.draining.fetch_add(1, Ordering::Relaxed);
        // Pairs with the fence after a command's count goes down (see `run`).
        fence(Ordering::SeqCst);
        let _waiting = Waiting(&self.draining);
        while slot.busy() {
            let (next, timeout) = self
                .drained
                .wait_timeout(g, DRAIN_LOG_INTERVAL)
                .unwrap_or_else(PoisonError::into_inner);
            g = next;
            if timeout.timed_out() && slot.busy() {
                warn!(
                    "{}: still waiting for commands in flight of {:?}",
                    self.name, slot.nexus
                );
            }
        }
    }

    /// Closes the gate for good and waits until no command is in flight, then flushes the
    /// medium: what SIGTERM does before the process exits.
    pub fn close(&self) -> (Closed<'_>, std::io::Result<()>) {
        let gate = self.lock_gate();
        for slot in &self.slots {
            self.wait_idle(slot);
        }
        (Closed { _gate: gate }, self.disk.device().flush())
    }

    /// The cached engine state (for tests and logs).
    pub fn state(&self) -> pr_engine::LogicalUnit {
        self.lock_gate().clone()
    }
}

impl<D: BlockDevice + 'static> SharedLu for FencedLu<D> {
    fn revision(&self) -> i64 {
        self.settled.load(Ordering::Acquire)
    }

    /// Another host's change (or this host's own, seen again through the watch): the gate
    /// is taken, the state replaced, and every local nexus that lost its registration or
    /// whose commands in flight the new state refuses is drained before this returns (and the
    /// fence acknowledges).
    fn apply(&self, revision: i64, state: pr_engine::LogicalUnit) {
        let mut gate = self.lock_gate();
        if revision <= self.revision.load(Ordering::Acquire) {
            return;
        }
        let old = std::mem::replace(&mut *gate, state);
        self.revision.store(revision, Ordering::Release);
        for slot in &self.slots {
            let lost =
                old.registration(&slot.nexus).is_some() && gate.registration(&slot.nexus).is_none();
            let refused = CLASSES.iter().enumerate().any(|(i, &c)| {
                slot.in_flight[i].load(Ordering::Acquire) > 0
                    && !gate.reservation_allows(&slot.nexus, c)
            });
            if lost || refused {
                self.wait_idle(slot);
            }
        }
        // Only now may the fence acknowledge it.
        self.settled.fetch_max(revision, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use pr_scsi::transport_id::TransportId;
    use pr_scsi::{RelativeTargetPort, Status};
    use pr_store::SqliteStore;

    use super::*;
    use crate::scsi::tests::{identity, MemDisk};

    /// A disk whose writes can be held: armed, the next write reports that it started and
    /// waits to be released.
    struct GatedDisk {
        mem: MemDisk,
        armed: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    }

    impl BlockDevice for GatedDisk {
        fn size_bytes(&self) -> u64 {
            self.mem.size_bytes()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.mem.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            if let Some((started, release)) = self.armed.lock().unwrap().take() {
                started.send(()).unwrap();
                release.recv_timeout(Duration::from_secs(30)).unwrap();
            }
            self.mem.write_at(buf, offset)
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn can_discard(&self) -> bool {
            false
        }
        fn discard(&self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn nexus(name: &str, port: u16) -> Nexus {
        Nexus {
            initiator: TransportId::Iscsi {
                name: format!("iqn.2026-12.org.test:{name}"),
                isid: None,
            },
            relative_target_port: RelativeTargetPort(port),
        }
    }

    fn params(key: u64, sa_key: u64) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        p[..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p
    }

    fn cmd<D: BlockDevice>(lu: &FencedLu<D>, slot: SlotId, cdb: &[u8], data: &[u8]) -> Reply {
        match lu.prepare(cdb) {
            Ok(p) => lu.run(slot, cdb, &p, data),
            Err(r) => r,
        }
    }

    // SPC-4 PERSISTENT RESERVE OUT CDBs: REGISTER (00h), RESERVE (01h) and PREEMPT AND ABORT
    // (05h) with TYPE 5 (WRITE EXCLUSIVE - REGISTRANTS ONLY), PARAMETER LIST LENGTH 24.
    const REGISTER: [u8; 10] = [0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0];
    const RESERVE_WE_RO: [u8; 10] = [0x5f, 0x01, 0x05, 0, 0, 0, 0, 0, 24, 0];
    const PREEMPT_ABORT_WE_RO: [u8; 10] = [0x5f, 0x05, 0x05, 0, 0, 0, 0, 0, 24, 0];
    // WRITE (10), LBA 0, one block; TEST UNIT READY.
    const WRITE_LBA0: [u8; 10] = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    const TUR: [u8; 6] = [0; 6];

    #[test]
    fn preempt_and_abort_returns_only_after_the_victims_write_in_flight_and_fences_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("r.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
        let disk = GatedDisk {
            mem: MemDisk::new(64 * 1024, false),
            armed: Mutex::new(None),
        };
        let name = LuId::new("lu0").unwrap();
        let mut lu = FencedLu::new(
            name.clone(),
            DiskServer::new(disk, identity(), 512, false),
            store,
            EngineConfig::default(),
        )
        .unwrap();
        let (a, b) = (lu.attach(nexus("a", 1)), lu.attach(nexus("b", 2)));
        let lu = Arc::new(lu);
        for (slot, key) in [(a, 0xa), (b, 0xb)] {
            assert_eq!(
                cmd(&lu, slot, &REGISTER, &params(0, key)).status,
                Status::GOOD
            );
        }
        assert_eq!(
            cmd(&lu, a, &RESERVE_WE_RO, &params(0xa, 0)).status,
            Status::GOOD
        );

        // Node a's write starts and is held inside the medium.
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        *lu.disk().device().armed.lock().unwrap() = Some((started_tx, release_rx));
        let writer = {
            let lu = lu.clone();
            std::thread::spawn(move || cmd(&lu, a, &WRITE_LBA0, &[0xaa; 512]))
        };
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("the write started");
        // Node b preempts a: PREEMPT AND ABORT must not return while a's write runs.
        let (returned_tx, returned) = mpsc::channel();
        let preempt = {
            let lu = lu.clone();
            std::thread::spawn(move || {
                let r = cmd(&lu, b, &PREEMPT_ABORT_WE_RO, &params(0xb, 0xa));
                returned_tx.send(()).unwrap();
                r
            })
        };
        assert_eq!(
            returned.recv_timeout(Duration::from_millis(300)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "PREEMPT AND ABORT returned while the victim's write was in flight"
        );
        // The store already holds the preemption; the gate is closed, so nothing else runs.
        release.send(()).unwrap();
        returned
            .recv_timeout(Duration::from_secs(10))
            .expect("PREEMPT AND ABORT returned once the write finished");
        assert_eq!(preempt.join().unwrap().status, Status::GOOD);
        // The write admitted before the preemption completed.
        assert_eq!(writer.join().unwrap().status, Status::GOOD);
        let before = lu.disk().device().mem.data.lock().unwrap().clone();
        assert_eq!(&before[..512], &[0xaa; 512]);

        // a's next command: CHECK CONDITION, UNIT ATTENTION, REGISTRATIONS PREEMPTED (06h/2Ah/05h);
        // then its writes are RESERVATION CONFLICT and the medium is unchanged.
        let r = cmd(&lu, a, &WRITE_LBA0, &[0xbb; 512]);
        let s = r.sense.unwrap().code;
        assert_eq!(
            (r.status, s.key.0, s.asc, s.ascq),
            (Status::CHECK_CONDITION, 6, 0x2a, 5)
        );
        assert_eq!(
            cmd(&lu, a, &WRITE_LBA0, &[0xbb; 512]).status,
            Status::RESERVATION_CONFLICT
        );
        assert_eq!(*lu.disk().device().mem.data.lock().unwrap(), before);
        // b, the holder now, writes.
        assert_eq!(cmd(&lu, b, &WRITE_LBA0, &[0xcc; 512]).status, Status::GOOD);
        // The reported unit attention is gone from the store too (a fresh open sees none).
        drop(lu);
        let reopened = SqliteStore::open(&db).unwrap();
        let state = reopened.load(&name).unwrap().unwrap();
        assert!(state.pending_unit_attentions(&nexus("a", 1)).is_empty());
        assert_eq!(state.registrants.len(), 1);
    }

    #[test]
    fn unit_attention_is_reported_once_on_any_non_exempt_command() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("r.db")).unwrap());
        let mut lu = FencedLu::new(
            LuId::new("lu0").unwrap(),
            DiskServer::new(MemDisk::new(64 * 1024, false), identity(), 512, false),
            store,
            EngineConfig::default(),
        )
        .unwrap();
        let (a, b) = (lu.attach(nexus("a", 1)), lu.attach(nexus("b", 2)));
        for (slot, key) in [(a, 0xa), (b, 0xb)] {
            cmd(&lu, slot, &REGISTER, &params(0, key));
        }
        cmd(&lu, a, &RESERVE_WE_RO, &params(0xa, 0));
        cmd(&lu, b, &PREEMPT_ABORT_WE_RO, &params(0xb, 0xa));
        // INQUIRY is exempt: no unit attention (SAM-5).
        assert_eq!(
            cmd(&lu, a, &[0x12, 0, 0, 0, 36, 0], &[]).status,
            Status::GOOD
        );
        // TEST UNIT READY reports it, then is GOOD (allowed through every reservation).
        assert_eq!(cmd(&lu, a, &TUR, &[]).status, Status::CHECK_CONDITION);
        assert_eq!(cmd(&lu, a, &TUR, &[]).status, Status::GOOD);
        // Reads pass WRITE EXCLUSIVE - REGISTRANTS ONLY for the unregistered a.
        let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(cmd(&lu, a, &read, &[]).status, Status::GOOD);
        // MODE SENSE is blocked like a write (pr-engine's Other).
        assert_eq!(
            cmd(&lu, a, &[0x1a, 0, 0x08, 0, 0xff, 0], &[]).status,
            Status::RESERVATION_CONFLICT
        );
    }
}
