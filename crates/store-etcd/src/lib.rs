//! An etcd v3 store of emulated logical units' persistent-reservation state, shared by every
//! host that serves the logical unit ([`EtcdStore`], a [`pr_store::Store`]).
//!
//! Each logical unit is one key, `PREFIX lu/ID`, whose value is the engine's state as JSON
//! with, per client, the outcomes of its commands still being answered. A command is one
//! compare-and-swap transaction on the key's mod_revision: the engine runs on the last value
//! this store saw, and the transaction writes the new value only if nobody wrote since (else
//! it returns the current value and the engine runs again). Commands from different hosts thus
//! serialize in etcd's order; the command's sequence number is recorded in the same
//! transaction, so a retry after a lost answer finds it instead of applying it twice. Every
//! answer comes from a value etcd confirmed current (a linearizable transaction), never from
//! the cached guess alone. See docs/etcd.md.
//!
//! [`fence`] is the host side of cross-host fencing: a lease kept alive, media I/O allowed
//! only while it is known valid by this host's monotonic clock, a watch that keeps served
//! units current, and acknowledgements other hosts wait for.
//!
//! Also here, for tests and benchmarks: [`cluster`] (etcd members on loopback), [`proxy`] (a
//! TCP proxy a test can cut, as a network partition), [`history`] (recorded concurrent
//! commands) and [`linearizability`] (a checker with the engine as the model).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster;
mod config;
pub mod fence;
pub mod history;
pub mod linearizability;
pub mod proxy;
mod record;
mod store;
pub mod workload;

pub use config::{EtcdConfig, TlsFiles, TlsPem, MAX_ENDPOINTS, MAX_PREFIX_LEN};
pub use record::{ClientEntry, RecordedOutcome, Stored, FORMAT, MAX_CLIENTS};
pub use store::{
    Committed, EtcdStatistics, EtcdStore, HostLease, MAX_IMPORT, MAX_LISTED_HOSTS, MAX_VALUE_LEN,
};
