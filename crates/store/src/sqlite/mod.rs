//! The embedded store: one SQLite database file, one row per logical unit (its state as JSON
//! and its PR generation), shared by every helper process of the host.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a committed transaction is on disk
//! before the reply. Serialisation: each write transaction starts with `BEGIN IMMEDIATE`,
//! which takes the database's write lock before reading the state, so commands from several
//! processes never interleave between the read and the write. Group commit: the commands of
//! one process go to one writer thread, which applies everything queued (up to
//! [`SqliteOptions::max_batch`]) in one transaction and one fsync, then answers each.
//!
//! PR IN fast path: a PERSISTENT RESERVE IN is first run on the reader connection against the
//! committed state ([`reader`]), without the writer thread. Only when the engine says it
//! changes the state (it reports a pending unit attention, which clears it) is it handed to
//! the writer, which runs it again under the write lock.

mod reader;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use pr_engine::{EngineConfig, LogicalUnit, Nexus, Outcome};
use rusqlite::{Connection, ErrorCode, OptionalExtension};

pub use schema::SCHEMA_VERSION;
use writer::{Answer, Job, Op, Responder};

use crate::error::StoreError;
use crate::lu_id::LuId;
use crate::Store;

/// Tuning of a [`SqliteStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// How long a transaction waits for another process's write lock before failing with
    /// [`StoreError::Busy`].
    pub busy_timeout: Duration,
    /// Most commands applied in one transaction (one fsync). 1 commits every command alone.
    pub max_batch: usize,
}

impl Default for SqliteOptions {
    /// A 5 s busy timeout and batches of up to 256 commands.
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(5),
            max_batch: 256,
        }
    }
}

/// Counters of one [`SqliteStore`]'s writer, since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Statistics {
    /// State-changing operations (execute, power loss, clear, import) queued for the writer.
    pub queued: u64,
    /// Operations answered from a committed transaction.
    pub applied: u64,
    /// Write transactions committed (each one fsync of the WAL).
    pub transactions: u64,
    /// PR IN commands answered from the committed state without the writer (the fast path).
    pub read_only: u64,
}

/// The shared counters behind [`Statistics`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub queued: AtomicU64,
    pub applied: AtomicU64,
    pub transactions: AtomicU64,
    pub read_only: AtomicU64,
}

/// The SQLite store (see the module documentation). Dropping it lets the writer thread finish
/// the commands already queued and joins it.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    busy_timeout: Duration,
    /// Reads (`load`, `list`, the PR IN fast path); WAL readers never wait for the writer.
    reader: Mutex<reader::Reader>,
    jobs: Option<mpsc::Sender<Job>>,
    counters: Arc<Counters>,
    writer: Option<JoinHandle<()>>,
    /// Opened with [`SqliteStore::open_read_only`]: no writer.
    read_only: bool,
    /// Read-only on a database without our schema yet: it holds no logical unit.
    empty: bool,
}

impl SqliteStore {
    /// Opens (or creates) the store at `path` with the default options.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, SqliteOptions::default())
    }

    /// Opens (or creates) the store at `path`. A corrupt file, another application's
    /// database or a newer schema is an error naming `path`, and the file is left untouched;
    /// an older schema is migrated.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_owned();
        let write = schema::open(&path, &options)?;
        let reader = schema::open(&path, &options)?;
        let busy_timeout = options.busy_timeout;
        let (jobs, queue) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let ctx = writer::Context {
            path: path.clone(),
            options,
            counters: Arc::clone(&counters),
        };
        let writer = std::thread::Builder::new()
            .name("pr-store-writer".into())
            .spawn(move || writer::run(write, queue, ctx))
            .map_err(|_| StoreError::Closed { path: path.clone() })?;
        Ok(SqliteStore {
            path,
            busy_timeout,
            reader: Mutex::new(reader::Reader::new(reader)),
            jobs: Some(jobs),
            counters,
            writer: Some(writer),
            read_only: false,
            empty: false,
        })
    }

    /// Opens the existing store at `path` read-only, for a caller that only reads (`load`,
    /// `list`, PR IN) and may not be able to write the file: nothing is written, no writer
    /// thread is started, and every operation that would write fails with
    /// [`StoreError::ReadOnly`]. A corrupt, foreign or newer file is refused as by
    /// [`SqliteStore::open`]; an older schema too (it needs migrating, read-write).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_owned();
        let options = SqliteOptions::default();
        let (conn, empty) = schema::open_read_only(&path, &options)?;
        Ok(SqliteStore {
            path,
            busy_timeout: options.busy_timeout,
            reader: Mutex::new(reader::Reader::new(conn)),
            jobs: None,
            counters: Arc::new(Counters::default()),
            writer: None,
            read_only: true,
            empty,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer's counters: `applied / transactions` is the mean group-commit batch.
    pub fn statistics(&self) -> Statistics {
        let c = &self.counters;
        Statistics {
            queued: c.queued.load(Ordering::Relaxed),
            applied: c.applied.load(Ordering::Relaxed),
            transactions: c.transactions.load(Ordering::Relaxed),
            read_only: c.read_only.load(Ordering::Relaxed),
        }
    }

    fn submit(&self, lu: &LuId, op: Op) -> Result<Answer, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.enqueue(lu, op, Responder::Waiting(reply))?;
        answer.recv().map_err(|_| self.closed())?
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            path: self.path.clone(),
        }
    }

    /// Queues `op` for the writer, which answers `reply` once its batch is durable. When it
    /// cannot be queued the error goes to `reply` as well: a completion is always answered
    /// exactly once.
    fn enqueue(&self, lu: &LuId, op: Op, reply: Responder) -> Result<(), StoreError> {
        let refused = if self.read_only {
            Some(StoreError::ReadOnly {
                path: self.path.clone(),
                operation: match op {
                    Op::Execute { .. } => "execute a command that changes the state",
                    Op::PowerLoss => "power-cycle a logical unit",
                    Op::Clear => "clear a logical unit",
                    Op::Import(_) | Op::ImportAll(_) => "import",
                },
            })
        } else {
            let job = Job {
                lu: lu.clone(),
                op,
                reply,
            };
            // Counted first: the writer may answer (and its caller read the counters) before
            // send returns.
            self.counters.queued.fetch_add(1, Ordering::Relaxed);
            let jobs = self
                .jobs
                .as_ref()
                .expect("a store that is not read-only has a writer");
            match jobs.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(job)) => {
                    self.counters.queued.fetch_sub(1, Ordering::Relaxed);
                    return job.reply.fail(self.closed());
                }
            }
        };
        let e = refused.expect("set above");
        reply.fail(e)
    }

    /// The PR IN fast path: the outcome of a PERSISTENT RESERVE IN that leaves the state as it
    /// is, run on the reader connection against the committed state; `None` when the command
    /// is a PR OUT, or a PR IN that changes the state (it reports a pending unit attention).
    fn read_only_outcome(
        &self,
        lu: &LuId,
        nexus: &Nexus,
        cdb: &[u8],
        params: &[u8],
        config: &EngineConfig,
    ) -> Result<Option<Outcome>, StoreError> {
        if cdb.first() != Some(&pr_scsi::PERSISTENT_RESERVE_IN) {
            return Ok(None);
        }
        let state = if self.empty {
            None
        } else {
            self.reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .committed_state(&self.path, lu, self.busy_timeout)?
        };
        let outcome = match state.as_deref() {
            Some(s) => s.execute(nexus, cdb, params, config),
            None => LogicalUnit::default().execute(nexus, cdb, params, config),
        };
        if outcome.changed() {
            // It reports (and so clears) a unit attention: a write, decided again under the
            // write lock on the state then current.
            return Ok(None);
        }
        self.counters.read_only.fetch_add(1, Ordering::Relaxed);
        Ok(Some(outcome))
    }
}

/// The writer's job for one command.
fn execute_op(nexus: &Nexus, cdb: &[u8], params: &[u8], config: &EngineConfig) -> Op {
    Op::Execute {
        nexus: nexus.clone(),
        cdb: cdb.to_vec(),
        params: params.to_vec(),
        config: config.clone(),
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Store for SqliteStore {
    fn execute(
        &self,
        lu: &LuId,
        nexus: &Nexus,
        cdb: &[u8],
        params: &[u8],
        config: &EngineConfig,
    ) -> Result<Outcome, StoreError> {
        if let Some(outcome) = self.read_only_outcome(lu, nexus, cdb, params, config)? {
            return Ok(outcome);
        }
        match self.submit(lu, execute_op(nexus, cdb, params, config))? {
            Answer::Outcome(o) => Ok(*o),
            Answer::Done => unreachable!("execute is answered with an outcome"),
        }
    }

    /// A PR IN that leaves the state as it is is answered here (the fast path); every other
    /// command is queued for the writer, which calls `done` once its batch is durable.
    fn execute_later(
        &self,
        lu: &LuId,
        nexus: &Nexus,
        cdb: &[u8],
        params: &[u8],
        config: &EngineConfig,
        done: crate::Completion,
    ) {
        match self.read_only_outcome(lu, nexus, cdb, params, config) {
            Ok(Some(outcome)) => done(Ok(outcome)),
            Err(e) => done(Err(e)),
            Ok(None) => {
                let op = execute_op(nexus, cdb, params, config);
                // A completion that cannot be queued is answered by `enqueue` itself.
                let _ = self.enqueue(lu, op, Responder::Later(done));
            }
        }
    }

    fn answers_later(&self) -> bool {
        !self.read_only
    }

    fn load(&self, lu: &LuId) -> Result<Option<LogicalUnit>, StoreError> {
        if self.empty {
            return Ok(None);
        }
        let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        read_state(reader.connection(), &self.path, lu, self.busy_timeout)
    }

    fn list(&self) -> Result<Vec<LuId>, StoreError> {
        if self.empty {
            return Ok(Vec::new());
        }
        let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = reader.connection();
        let err = |e| {
            sqlite_error(
                &self.path,
                None,
                "listing logical units",
                self.busy_timeout,
                e,
            )
        };
        let mut stmt = conn
            .prepare_cached("SELECT lu_id FROM logical_units ORDER BY lu_id")
            .map_err(err)?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(err)?;
        ids.into_iter()
            .map(|id| {
                LuId::new(id).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("a stored {e}"),
                })
            })
            .collect()
    }

    fn power_loss(&self, lu: &LuId) -> Result<(), StoreError> {
        self.submit(lu, Op::PowerLoss).map(drop)
    }

    fn clear(&self, lu: &LuId) -> Result<(), StoreError> {
        self.submit(lu, Op::Clear).map(drop)
    }

    fn import(&self, lu: &LuId, state: &LogicalUnit) -> Result<(), StoreError> {
        crate::check_import(lu, state)?;
        self.submit(lu, Op::Import(state.clone())).map(drop)
    }

    fn import_all(&self, states: &[(LuId, LogicalUnit)]) -> Result<(), StoreError> {
        crate::check_import_all(states)?;
        let Some((first, _)) = states.first() else {
            return Ok(());
        };
        self.submit(first, Op::ImportAll(states.to_vec())).map(drop)
    }
}

/// The stored state of `lu`, read on `conn` (inside the caller's transaction, if any).
fn read_state(
    conn: &Connection,
    path: &Path,
    lu: &LuId,
    busy_timeout: Duration,
) -> Result<Option<LogicalUnit>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached("SELECT state FROM logical_units WHERE lu_id = ?1")
        .and_then(|mut s| s.query_row([lu.as_str()], |r| r.get(0)).optional())
        .map_err(|e| sqlite_error(path, Some(lu), "reading the state", busy_timeout, e))?;
    json.map(|j| {
        serde_json::from_str(&j).map_err(|e| StoreError::CorruptState {
            path: path.to_owned(),
            lu: lu.clone(),
            source: Arc::new(e),
        })
    })
    .transpose()
}

/// Whether SQLite refused `e` because another connection holds a lock on the file.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked)
    )
}

/// A SQLite failure as a [`StoreError`]: a lock held past the busy timeout is
/// [`StoreError::Busy`], a malformed file [`StoreError::Corrupt`].
pub(crate) fn sqlite_error(
    path: &Path,
    lu: Option<&LuId>,
    operation: &'static str,
    busy_timeout: Duration,
    e: rusqlite::Error,
) -> StoreError {
    if is_busy(&e) {
        return StoreError::Busy {
            path: path.to_owned(),
            timeout: busy_timeout,
        };
    }
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("{operation}: {e}"),
        },
        _ => StoreError::Database {
            path: path.to_owned(),
            lu: lu.cloned(),
            operation,
            source: Arc::new(e),
        },
    }
}
