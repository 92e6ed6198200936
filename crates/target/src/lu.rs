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
//! The cached state is authoritative because the process holds an exclusive lock on the
//! backing ([`crate::backing::Backing::open`]): no other pr-target serves this LU, and every
//! change (PR OUT, a reported unit attention) is written to the store before the gate opens.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pr_engine::{Access, CommandClass, EngineConfig, Nexus, Reply, SenseData};
use pr_scsi::SenseCode;
use pr_store::{LuId, Store, StoreError};
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
        })
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
        if class == CommandClass::Exempt {
            return self.disk.execute(p, data_out, port);
        }
        let counter = {
            let mut gate = self.lock_gate();
            match gate.access(&s.nexus, class) {
                Access::Allowed => {}
                Access::ReservationConflict => return Reply::conflict(),
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
            class_index(class).map(|i| {
                s.in_flight[i].fetch_add(1, Ordering::AcqRel);
                &s.in_flight[i]
            })
        };
        let reply = self.disk.execute(p, data_out, port);
        if let Some(c) = counter {
            if c.fetch_sub(1, Ordering::AcqRel) == 1 {
                let _g = self.drain.lock().unwrap_or_else(PoisonError::into_inner);
                self.drained.notify_all();
            }
        }
        reply
    }

    fn persistent_reserve(&self, s: &NexusSlot, cdb: &[u8], params: &[u8]) -> Reply {
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
        match outcome.state {
            Some(next) => *gate = next,
            // Nothing changed here; pick up what an operator may have changed with pr-ctl.
            None => match self.store.load(&self.name) {
                Ok(Some(stored)) => *gate = stored,
                Ok(None) => *gate = pr_engine::LogicalUnit::default(),
                Err(e) => warn!("{}: cannot reload the state: {e}", self.name),
            },
        }
        // Before answering, every nexus that lost access, or whose commands in flight the new
        // state would refuse, must have none running. The gate stays closed meanwhile, so
        // none can start.
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
        outcome.reply
    }

    fn wait_idle(&self, slot: &NexusSlot) {
        let mut g = self.drain.lock().unwrap_or_else(PoisonError::into_inner);
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
