//! The writer thread: group commit of the state-changing operations of one process.
//!
//! It takes the first queued job, then everything else already queued (up to
//! [`SqliteOptions::max_batch`]), and applies the batch in one `BEGIN IMMEDIATE` transaction:
//! each job sees the state the previous one left, the changed states are written once at the
//! end, one COMMIT (one fsync) makes them durable, and only then is each job answered. When
//! the transaction fails, every job of the batch gets the error and nothing was written.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use pr_engine::{EngineConfig, LogicalUnit, Nexus, Outcome};
use rusqlite::{params, Connection, TransactionBehavior};

use super::{read_state, sqlite_error, Counters, SqliteOptions};
use crate::error::{ErrorKind, StoreError};
use crate::lu_id::LuId;

/// A state-changing operation on one logical unit.
pub(crate) enum Op {
    /// [`crate::Store::execute`].
    Execute {
        nexus: Nexus,
        cdb: Vec<u8>,
        params: Vec<u8>,
        config: EngineConfig,
    },
    /// [`crate::Store::power_loss`].
    PowerLoss,
    /// [`crate::Store::clear`].
    Clear,
    /// [`crate::Store::import`] (invariants already checked).
    Import(LogicalUnit),
    /// [`crate::Store::import_all`] (invariants checked, each logical unit once): the job's
    /// own `lu` is not used.
    ImportAll(Vec<(LuId, LogicalUnit)>),
}

/// What a job is answered with once its batch is durable.
pub(crate) enum Answer {
    Outcome(Box<Outcome>),
    Done,
}

/// Where a job's answer goes.
pub(crate) enum Responder {
    /// A caller blocked in [`crate::Store::execute`] and the other synchronous methods.
    Waiting(mpsc::SyncSender<Result<Answer, StoreError>>),
    /// [`crate::Store::execute_later`]'s completion, called on this thread.
    Later(crate::Completion),
}

impl Responder {
    /// Answers a job that was never queued: a waiting caller gets `e` back, a completion is
    /// called with it.
    pub(crate) fn fail(self, e: StoreError) -> Result<(), StoreError> {
        match self {
            Responder::Waiting(_) => Err(e),
            later @ Responder::Later(_) => {
                later.answer(Err(e));
                Ok(())
            }
        }
    }

    fn answer(self, answer: Result<Answer, StoreError>) {
        match self {
            // A caller that went away no longer needs its answer.
            Responder::Waiting(reply) => drop(reply.send(answer)),
            Responder::Later(done) => {
                let outcome = answer.map(|a| match a {
                    Answer::Outcome(o) => *o,
                    Answer::Done => unreachable!("only execute is answered later"),
                });
                // The completion is the caller's code: a panic in it must not end the writer,
                // which the other commands need.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| done(outcome)));
            }
        }
    }
}

/// One queued operation and where to send its answer.
pub(crate) struct Job {
    pub lu: LuId,
    pub op: Op,
    pub reply: Responder,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("lu", &self.lu).finish()
    }
}

pub(crate) struct Context {
    pub path: PathBuf,
    pub options: SqliteOptions,
    pub counters: Arc<Counters>,
}

/// Serves jobs until every sender is gone.
pub(crate) fn run(mut conn: Connection, queue: mpsc::Receiver<Job>, ctx: Context) {
    let max = ctx.options.max_batch.max(1);
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < max {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let answers = match apply(&mut conn, &ctx, &batch) {
            Ok(answers) => answers,
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        };
        for (job, answer) in batch.into_iter().zip(answers) {
            job.reply.answer(answer);
        }
    }
}

/// The state of one logical unit during a batch.
struct Slot {
    state: Option<LogicalUnit>,
    dirty: bool,
}

/// Applies `batch` in one transaction; `Err` when the transaction itself failed.
fn apply(
    conn: &mut Connection,
    ctx: &Context,
    batch: &[Job],
) -> Result<Vec<Result<Answer, StoreError>>, StoreError> {
    let timeout = ctx.options.busy_timeout;
    fn err<'a>(
        ctx: &'a Context,
        lu: Option<&'a LuId>,
        op: &'static str,
    ) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
        move |e| sqlite_error(&ctx.path, lu, op, ctx.options.busy_timeout, e)
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err(ctx, None, "beginning a write transaction"))?;
    let mut slots: HashMap<&LuId, Slot> = HashMap::new();
    let mut answers = Vec::with_capacity(batch.len());
    for job in batch {
        if let Op::ImportAll(states) = &job.op {
            // Replaces whatever is stored, readable or not: nothing to read first.
            for (lu, state) in states {
                slots.insert(
                    lu,
                    Slot {
                        state: Some(state.clone()),
                        dirty: true,
                    },
                );
            }
            answers.push(Ok(Answer::Done));
            continue;
        }
        let slot = match slots.get_mut(&job.lu) {
            Some(slot) => slot,
            None => match read_state(&tx, &ctx.path, &job.lu, timeout) {
                Ok(state) => slots.entry(&job.lu).or_insert(Slot {
                    state,
                    dirty: false,
                }),
                // An unreadable state fails the commands on that logical unit only.
                Err(e) if e.kind() == ErrorKind::CorruptState => {
                    answers.push(Err(e));
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        answers.push(Ok(step(slot, &job.op)));
    }
    for (lu, slot) in slots.iter().filter(|(_, s)| s.dirty) {
        match &slot.state {
            Some(state) => {
                let json = serde_json::to_string(state).expect("a LogicalUnit serializes");
                tx.prepare_cached(
                    "INSERT INTO logical_units (lu_id, generation, state) VALUES (?1, ?2, ?3)
                     ON CONFLICT (lu_id) DO UPDATE
                     SET generation = excluded.generation, state = excluded.state",
                )
                .and_then(|mut s| {
                    s.execute(params![lu.as_str(), i64::from(state.generation.0), json])
                })
                .map_err(err(ctx, Some(lu), "writing the state"))?;
            }
            None => {
                tx.prepare_cached("DELETE FROM logical_units WHERE lu_id = ?1")
                    .and_then(|mut s| s.execute([lu.as_str()]))
                    .map_err(err(ctx, Some(lu), "removing the state"))?;
            }
        }
    }
    tx.commit().map_err(err(ctx, None, "committing"))?;
    let c = &ctx.counters;
    c.transactions.fetch_add(1, Ordering::Relaxed);
    c.applied.fetch_add(batch.len() as u64, Ordering::Relaxed);
    Ok(answers)
}

/// Applies one operation to the batch's view of its logical unit.
fn step(slot: &mut Slot, op: &Op) -> Answer {
    match op {
        Op::Execute {
            nexus,
            cdb,
            params,
            config,
        } => {
            let outcome = match &slot.state {
                Some(s) => s.execute(nexus, cdb, params, config),
                None => LogicalUnit::default().execute(nexus, cdb, params, config),
            };
            if let Some(next) = &outcome.state {
                slot.state = Some(next.clone());
                slot.dirty = true;
            }
            Answer::Outcome(Box::new(outcome))
        }
        Op::PowerLoss => {
            if let Some(s) = &slot.state {
                slot.state = Some(s.power_loss());
                slot.dirty = true;
            }
            Answer::Done
        }
        Op::Clear => {
            slot.dirty |= slot.state.is_some();
            slot.state = None;
            Answer::Done
        }
        Op::Import(state) => {
            slot.state = Some(state.clone());
            slot.dirty = true;
            Answer::Done
        }
        Op::ImportAll(_) => unreachable!("applied by apply"),
    }
}
