//! The store's one error type. A SCSI refusal is never an error: it is an `Ok` outcome.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::lu_id::LuId;

/// What kind of failure a [`StoreError`] is: stable, for callers to match on (the daemon maps
/// every kind to sense data; pr-ctl to an exit status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A logical-unit identifier was refused.
    InvalidLuId,
    /// The database file could not be opened or created.
    Open,
    /// The database file is not a well-formed SQLite database.
    Corrupt,
    /// The database belongs to something else (another application's tables).
    Foreign,
    /// The database was written by a newer version of the store.
    NewerSchema,
    /// Another process held the database lock for longer than the busy timeout.
    Busy,
    /// A database operation failed.
    Database,
    /// A stored state could not be read back as a logical unit.
    CorruptState,
    /// A state offered for import breaks an invariant.
    InvalidState,
    /// The store was shut down (its writer thread is gone).
    Closed,
    /// The store was opened read-only and the operation would write.
    ReadOnly,
    /// The store cannot do the operation as one atomic transaction.
    Unsupported,
    /// A networked store's servers (etcd) did not answer within the configured timeout:
    /// nothing was applied by this call.
    Unavailable,
    /// A networked store lost contact while a write was in flight and could not find out, within
    /// the timeout, whether it was applied; it will not be applied later by this call.
    OutcomeUnknown,
    /// A store's configuration (endpoints, TLS files, prefix, timeouts) was refused.
    Config,
}

/// Why a store operation failed. Each variant names the input that was wrong: the database
/// path, the logical unit, the underlying SQLite or JSON error. Cloneable, so one failed group
/// commit can answer every command of its batch.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A logical-unit identifier was refused ([`crate::LuId::new`]).
    #[error("logical unit identifier {id:?} {reason}")]
    InvalidLuId {
        /// The refused identifier, escaped.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The database file could not be opened or created.
    #[error("cannot open the store database {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// The file is not a well-formed SQLite database; it is left untouched.
    #[error("the store database {} is corrupt ({detail}); it was left untouched", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite found.
        detail: String,
    },
    /// The file is another application's SQLite database; it is left untouched.
    #[error("{} is not a pr-helper store database ({detail}); it was left untouched", path.display())]
    Foreign {
        /// The database file.
        path: PathBuf,
        /// What gave it away.
        detail: String,
    },
    /// The database has a schema newer than this version of the store understands.
    #[error(
        "the store database {} has schema version {found}, newer than {supported} which this \
         pr-helper understands; upgrade pr-helper",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
        /// The newest version this build supports.
        supported: i64,
    },
    /// Another process held the database's write lock for longer than the busy timeout.
    #[error(
        "the store database {} stayed locked by another process for more than {timeout:?}",
        path.display()
    )]
    Busy {
        /// The database file.
        path: PathBuf,
        /// The busy timeout that expired.
        timeout: Duration,
    },
    /// A database operation failed.
    #[error("store database {}: {operation} failed{}", path.display(), for_lu(lu))]
    Database {
        /// The database file.
        path: PathBuf,
        /// The logical unit the operation was for, if any.
        lu: Option<LuId>,
        /// What the store was doing.
        operation: &'static str,
        /// The SQLite error.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// The stored state of a logical unit is not a valid logical-unit state.
    #[error("store database {}: the state of {lu} cannot be read back", path.display())]
    CorruptState {
        /// The database file.
        path: PathBuf,
        /// The logical unit.
        lu: LuId,
        /// The JSON error.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// A state offered for [`crate::Store::import`] breaks an invariant.
    #[error("refused to import the state of {lu}: {reason}")]
    InvalidState {
        /// The logical unit.
        lu: LuId,
        /// The broken invariant ([`pr_engine::LogicalUnit::check_invariants`]).
        reason: String,
    },
    /// The store's writer thread is gone (the store is being dropped).
    #[error("the store on {} is shut down", path.display())]
    Closed {
        /// The database file.
        path: PathBuf,
    },
    /// The store was opened read-only ([`crate::SqliteStore::open_read_only`]).
    #[error("the store database {} is open read-only: cannot {operation}", path.display())]
    ReadOnly {
        /// The database file.
        path: PathBuf,
        /// What would have written.
        operation: &'static str,
    },
    /// The store cannot do the operation atomically, so it did nothing.
    #[error("this store cannot {operation} in one atomic transaction; nothing was written")]
    Unsupported {
        /// The operation.
        operation: &'static str,
    },
    /// A networked store's servers did not answer within the timeout; nothing was applied.
    #[error(
        "{}: {}{} got no answer within {:?} ({})",
        .0.store, .0.operation, for_lu(&.0.lu), .0.timeout, .0.detail
    )]
    Unavailable(Box<RemoteFailure>),
    /// A write was in flight when contact was lost, and whether it was applied could not be
    /// found out within the timeout (it is never applied later by this call).
    #[error(
        "{}: whether the command{} was applied is unknown ({}); read the reservation state \
         before retrying",
        .0.store, for_lu(&.0.lu), .0.detail
    )]
    OutcomeUnknown(Box<RemoteFailure>),
    /// A server of a networked store refused an operation.
    #[error("{}: {} failed{}: {}", .0.store, .0.operation, for_lu(&.0.lu), .0.detail)]
    Server(Box<RemoteFailure>),
    /// A store's configuration was refused.
    #[error("invalid store configuration: {detail}")]
    Config {
        /// What is wrong, naming the setting and what was expected.
        detail: String,
    },
}

/// Where and why a networked store's operation failed (boxed in [`StoreError`], which stays
/// small).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFailure {
    /// The store (its kind and endpoints).
    pub store: String,
    /// The logical unit the operation was for, if any.
    pub lu: Option<LuId>,
    /// What the store was doing.
    pub operation: &'static str,
    /// The timeout that expired (zero when none did).
    pub timeout: Duration,
    /// The last error seen, or the server's answer.
    pub detail: String,
}

impl StoreError {
    /// [`StoreError::Unavailable`].
    pub fn unavailable(
        store: impl Into<String>,
        lu: Option<&LuId>,
        operation: &'static str,
        timeout: Duration,
        detail: impl Into<String>,
    ) -> StoreError {
        StoreError::Unavailable(Box::new(RemoteFailure {
            store: store.into(),
            lu: lu.cloned(),
            operation,
            timeout,
            detail: detail.into(),
        }))
    }

    /// [`StoreError::OutcomeUnknown`] for a command on `lu`.
    pub fn outcome_unknown(
        store: impl Into<String>,
        lu: &LuId,
        detail: impl Into<String>,
    ) -> StoreError {
        StoreError::OutcomeUnknown(Box::new(RemoteFailure {
            store: store.into(),
            lu: Some(lu.clone()),
            operation: "running the command",
            timeout: Duration::ZERO,
            detail: detail.into(),
        }))
    }

    /// [`StoreError::Server`].
    pub fn server(
        store: impl Into<String>,
        lu: Option<&LuId>,
        operation: &'static str,
        detail: impl Into<String>,
    ) -> StoreError {
        StoreError::Server(Box::new(RemoteFailure {
            store: store.into(),
            lu: lu.cloned(),
            operation,
            timeout: Duration::ZERO,
            detail: detail.into(),
        }))
    }
}

fn for_lu(lu: &Option<LuId>) -> String {
    lu.as_ref().map(|l| format!(" for {l}")).unwrap_or_default()
}

impl StoreError {
    /// The stable kind of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::InvalidLuId { .. } => ErrorKind::InvalidLuId,
            StoreError::Open { .. } => ErrorKind::Open,
            StoreError::Corrupt { .. } => ErrorKind::Corrupt,
            StoreError::Foreign { .. } => ErrorKind::Foreign,
            StoreError::NewerSchema { .. } => ErrorKind::NewerSchema,
            StoreError::Busy { .. } => ErrorKind::Busy,
            StoreError::Database { .. } => ErrorKind::Database,
            StoreError::CorruptState { .. } => ErrorKind::CorruptState,
            StoreError::InvalidState { .. } => ErrorKind::InvalidState,
            StoreError::Closed { .. } => ErrorKind::Closed,
            StoreError::ReadOnly { .. } => ErrorKind::ReadOnly,
            StoreError::Unsupported { .. } => ErrorKind::Unsupported,
            StoreError::Unavailable(_) => ErrorKind::Unavailable,
            StoreError::OutcomeUnknown(_) => ErrorKind::OutcomeUnknown,
            StoreError::Server(_) => ErrorKind::Database,
            StoreError::Config { .. } => ErrorKind::Config,
        }
    }
}
