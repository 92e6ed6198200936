//! The reader connection and its cache of committed states, for the PR IN fast path.
//!
//! A PR IN is answered from the committed state of its logical unit without the writer
//! thread. The states read are kept, parsed, with the `PRAGMA data_version` of the read
//! transaction they were read in. SQLite changes a connection's data version whenever another
//! connection — this process's writer, or any other process on the file — has committed since
//! the connection last looked; the pragma itself starts a read transaction, so it sees the
//! latest commit. Every use of the cache first asks for the data version: unchanged, nothing
//! was committed since the states were read and they are the committed states now; changed,
//! the cache is dropped and the state read again. So a PR IN sees every command acknowledged
//! before it started, by any process, as a PR IN through the writer would.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pr_engine::LogicalUnit;
use rusqlite::Connection;

use super::{read_state, sqlite_error};
use crate::error::StoreError;
use crate::lu_id::LuId;

/// Most logical units whose state is cached (a helper serves a few; beyond this the cache is
/// emptied, so it stays bounded whatever is asked).
const MAX_CACHED: usize = 256;

/// The reader connection with the states it read at `version`.
#[derive(Debug)]
pub(crate) struct Reader {
    conn: Connection,
    version: Option<i64>,
    states: HashMap<LuId, Option<Arc<LogicalUnit>>>,
}

impl Reader {
    pub(crate) fn new(conn: Connection) -> Reader {
        Reader {
            conn,
            version: None,
            states: HashMap::new(),
        }
    }

    /// The connection, for reads that do not use the cache.
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The committed state of `lu` now (`None`: the store has none).
    pub(crate) fn committed_state(
        &mut self,
        path: &Path,
        lu: &LuId,
        busy_timeout: Duration,
    ) -> Result<Option<Arc<LogicalUnit>>, StoreError> {
        let now = data_version(&self.conn, path, busy_timeout)?;
        if self.version != Some(now) {
            self.states.clear();
            self.version = None;
        } else if let Some(state) = self.states.get(lu) {
            return Ok(state.clone());
        }
        // The state and the version it belongs to, from one read transaction.
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sqlite_error(path, Some(lu), "beginning a read", busy_timeout, e))?;
        let version = data_version(&tx, path, busy_timeout)?;
        let state = read_state(&tx, path, lu, busy_timeout)?.map(Arc::new);
        tx.commit()
            .map_err(|e| sqlite_error(path, Some(lu), "ending a read", busy_timeout, e))?;
        if self.version != Some(version) {
            self.states.clear();
        }
        if self.states.len() >= MAX_CACHED {
            self.states.clear();
        }
        self.version = Some(version);
        self.states.insert(lu.clone(), state.clone());
        Ok(state)
    }
}

/// `PRAGMA data_version` on `conn`: changes when another connection committed since `conn`
/// last asked.
fn data_version(conn: &Connection, path: &Path, busy_timeout: Duration) -> Result<i64, StoreError> {
    conn.prepare_cached("PRAGMA data_version")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(|e| sqlite_error(path, None, "reading the data version", busy_timeout, e))
}
