//! Durable stores of the persistent-reservation state of emulated logical units.
//!
//! A [`Store`] keeps one [`LogicalUnit`] per [`LuId`] and applies each command as one atomic
//! transaction: read the state, run the pure engine ([`LogicalUnit::execute`]), and, when the
//! state changed, write it durably *before* the reply is returned. A missing logical unit is an
//! empty state ([`LogicalUnit::default`]). [`SqliteStore`] is the embedded implementation (one
//! database file shared by every helper process of the host); an etcd store is to follow behind
//! the same trait.
//!
//! The store knows the engine's state only as a serializable value with a generation: it knows
//! nothing of SCSI beyond calling the engine, nothing of sockets, QEMU or the daemon.
//!
//! An export is [`Store::load`] followed by `serde_json`; an import is [`Store::import`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
mod error;
mod lu_id;
mod sqlite;

pub use error::{ErrorKind, RemoteFailure, StoreError};
pub use lu_id::{LuId, MAX_LU_ID_LEN};
pub use sqlite::{SqliteOptions, SqliteStore, Statistics, SCHEMA_VERSION};

use pr_engine::{EngineConfig, LogicalUnit, Nexus, Outcome};

/// Where [`Store::execute_later`] sends its answer.
pub type Completion = Box<dyn FnOnce(Result<Outcome, StoreError>) + Send>;

/// Where the persistent-reservation state of emulated logical units lives. Every method is one
/// atomic transaction on the store; implementations serialise the commands of one logical
/// unit across threads and processes.
pub trait Store: Send + Sync {
    /// Runs one PERSISTENT RESERVE IN or OUT from `nexus` on `lu`: reads its state (empty when
    /// the logical unit is unknown), runs [`LogicalUnit::execute`], and when the outcome
    /// carries a new state writes it durably, as one atomic transaction, before returning.
    /// A SCSI refusal is an `Ok` outcome; `Err` means the store could not execute the command
    /// (and then nothing was written).
    fn execute(
        &self,
        lu: &LuId,
        nexus: &Nexus,
        cdb: &[u8],
        params: &[u8],
        config: &EngineConfig,
    ) -> Result<Outcome, StoreError>;

    /// [`Store::execute`], answered through `done` rather than returned. A store that commits
    /// in the background ([`Store::answers_later`]) queues the command and returns at once;
    /// `done` is then called exactly once, on a thread of the store, when the outcome is
    /// durable (or the command failed), and must neither block nor panic: it holds up the
    /// commands committed with it. The default runs [`Store::execute`] here and calls `done`
    /// before returning.
    fn execute_later(
        &self,
        lu: &LuId,
        nexus: &Nexus,
        cdb: &[u8],
        params: &[u8],
        config: &EngineConfig,
        done: Completion,
    ) {
        done(self.execute(lu, nexus, cdb, params, config));
    }

    /// Whether [`Store::execute_later`] returns before the command is answered. False by
    /// default.
    fn answers_later(&self) -> bool {
        false
    }

    /// The stored state of `lu`, or `None` when the store has none.
    fn load(&self, lu: &LuId) -> Result<Option<LogicalUnit>, StoreError>;

    /// Every logical unit with a stored state, in ascending order.
    fn list(&self) -> Result<Vec<LuId>, StoreError>;

    /// Applies [`LogicalUnit::power_loss`] to the stored state of `lu` atomically (nothing to
    /// do for a logical unit without a state).
    fn power_loss(&self, lu: &LuId) -> Result<(), StoreError>;

    /// Removes the stored state of `lu` (no error when there is none).
    fn clear(&self, lu: &LuId) -> Result<(), StoreError>;

    /// Replaces the state of `lu` by `state`, after [`LogicalUnit::check_invariants`].
    fn import(&self, lu: &LuId, state: &LogicalUnit) -> Result<(), StoreError>;

    /// Replaces the states of several logical units as one atomic transaction: all of them
    /// or, on any error, none (every state is checked with [`LogicalUnit::check_invariants`]
    /// first). A logical unit named twice is [`StoreError::InvalidState`].
    ///
    /// The default imports zero or one logical unit with [`Store::import`] and refuses more
    /// with [`StoreError::Unsupported`] (writing nothing); a store that can write several
    /// keys in one transaction overrides it.
    fn import_all(&self, states: &[(LuId, LogicalUnit)]) -> Result<(), StoreError> {
        match states {
            [] => Ok(()),
            [(lu, state)] => self.import(lu, state),
            _ => Err(StoreError::Unsupported {
                operation: "import several logical units",
            }),
        }
    }
}

/// What every [`Store::import`] checks before it writes: the state's invariants
/// ([`LogicalUnit::check_invariants`]), a violation being [`StoreError::InvalidState`] for `lu`.
pub fn check_import(lu: &LuId, state: &LogicalUnit) -> Result<(), StoreError> {
    state
        .check_invariants()
        .map_err(|reason| StoreError::InvalidState {
            lu: lu.clone(),
            reason,
        })
}

/// What every [`Store::import_all`] checks before it writes: [`check_import`] for each state,
/// and no logical unit named twice.
pub fn check_import_all(states: &[(LuId, LogicalUnit)]) -> Result<(), StoreError> {
    let mut named = std::collections::HashSet::new();
    for (lu, state) in states {
        if !named.insert(lu) {
            return Err(StoreError::InvalidState {
                lu: lu.clone(),
                reason: "the logical unit is named twice".into(),
            });
        }
        check_import(lu, state)?;
    }
    Ok(())
}
