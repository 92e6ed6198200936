//! A linearizability checker for histories of persistent-reservation commands on one logical
//! unit, with the engine itself as the sequential model: a history is linearizable when its
//! commands can be put in one order, consistent with real time (a command that returned
//! before another was sent comes first), in which [`LogicalUnit::execute`], run one after the
//! other from the empty state, gives every answer the clients saw.
//!
//! The search is Wing and Gong's, with Lowe's memoization (as in Porcupine): walk the history's
//! calls and returns in time order; at a call, try to linearize the command now (the model's
//! answer must equal the recorded one, and the pair (set of linearized commands, state) must
//! not have been tried before); at a return whose command is not linearized yet, undo the
//! last choice. A command whose outcome is unknown may take effect at any time after it was
//! sent, or never: its return is at infinity and any answer is accepted. A command that
//! failed without being applied is left out.

use std::collections::HashSet;

use pr_engine::{EngineConfig, LogicalUnit};

use crate::history::{Answer, Ending, Event};

/// The checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Linearizable: one order that explains every answer (indices into the history).
    Linearizable(Vec<usize>),
    /// Not linearizable: the longest prefix of the history that could be linearized, and the
    /// index of a command whose answer nothing explains after it.
    Violation {
        /// Most commands linearized in any attempt.
        longest: Vec<usize>,
        /// A command that could not be placed after `longest`.
        stuck_at: Option<usize>,
    },
    /// The search visited more than the given number of configurations.
    GaveUp(usize),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Index of the event.
    op: usize,
    is_call: bool,
    /// For a call: the index of its return entry.
    partner: usize,
    prev: usize,
    next: usize,
}

const HEAD: usize = usize::MAX;

fn answers_match(model: &Answer, recorded: &Ending) -> bool {
    match recorded {
        Ending::Ok(a) => a == model,
        Ending::Unknown(_) => true,
        Ending::NotApplied(_) => false,
    }
}

/// Checks `history` (commands on one logical unit, from an empty state) against the engine
/// with `config`, visiting at most `budget` configurations.
pub fn check(history: &[Event], config: &EngineConfig, budget: usize) -> Verdict {
    check_from(history, &LogicalUnit::default(), config, budget)
}

/// [`check`] from `initial` instead of the empty state.
pub fn check_from(
    history: &[Event],
    initial: &LogicalUnit,
    config: &EngineConfig,
    budget: usize,
) -> Verdict {
    // Calls and returns in time order; calls first at equal times (the more permissive order).
    let ops: Vec<usize> = (0..history.len())
        .filter(|&i| !matches!(history[i].result, Ending::NotApplied(_)))
        .collect();
    let mut points: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for &i in &ops {
        let e = &history[i];
        let ret = match e.result {
            Ending::Unknown(_) => u64::MAX,
            _ => e.ret.max(e.invoke),
        };
        points.push((e.invoke, true, i));
        points.push((ret, false, i));
    }
    points.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    let n = points.len();
    let mut entries: Vec<Entry> = points
        .iter()
        .enumerate()
        .map(|(k, &(_, is_call, op))| Entry {
            op,
            is_call,
            partner: usize::MAX,
            prev: if k == 0 { HEAD } else { k - 1 },
            next: if k + 1 == n { HEAD } else { k + 1 },
        })
        .collect();
    {
        let mut call_of = std::collections::HashMap::new();
        for (k, e) in entries.iter().enumerate() {
            if e.is_call {
                call_of.insert(e.op, k);
            }
        }
        for k in 0..n {
            if !entries[k].is_call {
                let c = call_of[&entries[k].op];
                entries[c].partner = k;
            }
        }
    }
    let mut head = if n == 0 { HEAD } else { 0 };
    // Unlinks entry k.
    fn lift(entries: &mut [Entry], head: &mut usize, k: usize) {
        let (p, nx) = (entries[k].prev, entries[k].next);
        if p == HEAD {
            *head = nx;
        } else {
            entries[p].next = nx;
        }
        if nx != HEAD {
            entries[nx].prev = p;
        }
    }
    // Relinks entry k where it was (entries are relinked in the reverse order of lifting).
    fn unlift(entries: &mut [Entry], head: &mut usize, k: usize) {
        let (p, nx) = (entries[k].prev, entries[k].next);
        if p == HEAD {
            *head = k;
        } else {
            entries[p].next = k;
        }
        if nx != HEAD {
            entries[nx].prev = k;
        }
    }

    let words = history.len().div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, String)> = HashSet::new();
    // (call entry, state before it)
    let mut stack: Vec<(usize, LogicalUnit)> = Vec::new();
    let mut state = initial.clone();
    let mut longest: Vec<usize> = Vec::new();
    let mut stuck_at = None;
    let mut visited = 0usize;
    let mut cursor = head;
    while head != HEAD {
        visited += 1;
        if visited > budget {
            return Verdict::GaveUp(budget);
        }
        if cursor == HEAD {
            // Cannot happen: a return always precedes the end while calls are pending.
            break;
        }
        let e = entries[cursor];
        if e.is_call {
            let ev = &history[e.op];
            let outcome = state.execute(&ev.nexus, &ev.cdb, &ev.params, config);
            let mut placed = false;
            if answers_match(&Answer::of(&outcome.reply), &ev.result) {
                let next = outcome.state.clone().unwrap_or_else(|| state.clone());
                let mut bits = linearized.clone();
                bits[e.op / 64] |= 1 << (e.op % 64);
                let key = (
                    bits.clone(),
                    serde_json::to_string(&next).unwrap_or_default(),
                );
                if seen.insert(key) {
                    stack.push((cursor, std::mem::replace(&mut state, next)));
                    linearized = bits;
                    lift(&mut entries, &mut head, cursor);
                    lift(&mut entries, &mut head, e.partner);
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|&(k, _)| entries[k].op).collect();
                    }
                    cursor = head;
                    placed = true;
                }
            }
            if !placed {
                cursor = e.next;
            }
        } else {
            // A return whose call is not linearized: undo the last choice.
            let Some((k, before)) = stack.pop() else {
                stuck_at = Some(e.op);
                return Verdict::Violation { longest, stuck_at };
            };
            let op = entries[k].op;
            if stuck_at.is_none() || stack.len() + 1 >= longest.len() {
                stuck_at = Some(e.op);
            }
            state = before;
            linearized[op / 64] &= !(1 << (op % 64));
            let partner = entries[k].partner;
            unlift(&mut entries, &mut head, partner);
            unlift(&mut entries, &mut head, k);
            cursor = entries[k].next;
        }
    }
    Verdict::Linearizable(stack.into_iter().map(|(k, _)| entries[k].op).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Answer;
    use crate::workload::{key, nexus, pr_in, pr_out};

    /// A client number and its command (CDB, parameter list).
    type Cmd = (u16, (Vec<u8>, Vec<u8>));

    /// A history of `cmds` run one after the other through the engine, each call taking 10
    /// time units, with `overlap` units of overlap between neighbours.
    fn sequential(cmds: &[Cmd], overlap: u64) -> Vec<Event> {
        let cfg = EngineConfig::default();
        let mut lu = LogicalUnit::default();
        cmds.iter()
            .enumerate()
            .map(|(i, (who, (cdb, params)))| {
                let o = lu.execute(&nexus(*who), cdb, params, &cfg);
                let answer = Answer::of(&o.reply);
                o.commit(&mut lu);
                let t = i as u64 * 10;
                Event {
                    client: format!("h/{who}"),
                    nexus: nexus(*who),
                    cdb: cdb.clone(),
                    params: params.clone(),
                    invoke: t,
                    ret: t + 10 + overlap,
                    result: Ending::Ok(answer),
                }
            })
            .collect()
    }

    fn cmds() -> Vec<Cmd> {
        vec![
            (1, pr_in(0)),
            (1, pr_out(6, 0, 0, key(1))),
            (2, pr_out(6, 0, 0, key(2))),
            (2, pr_out(1, 5, key(2), 0)),
            (1, pr_out(4, 5, key(1), key(2))),
            (2, pr_in(0)),
            (2, pr_in(0)),
            (1, pr_in(1)),
        ]
    }

    #[test]
    fn accepts_what_the_engine_answers_in_order() {
        let h = sequential(&cmds(), 0);
        let cfg = EngineConfig::default();
        assert_eq!(
            check(&h, &cfg, 100_000),
            Verdict::Linearizable((0..h.len()).collect())
        );
    }

    #[test]
    fn rejects_a_stale_read_and_accepts_it_when_the_calls_overlap() {
        let cfg = EngineConfig::default();
        // READ KEYS (event 0, before any registration) answered again after both REGISTERs
        // returned: a stale answer.
        let mut h = sequential(&cmds(), 0);
        h[7] = Event {
            cdb: h[0].cdb.clone(),
            result: h[0].result.clone(),
            ..h[7].clone()
        };
        assert!(matches!(
            check(&h, &cfg, 100_000),
            Verdict::Violation { .. }
        ));
        // The same answer from a call that overlapped the first REGISTER is fine.
        let mut h = sequential(&cmds(), 0);
        h[1].ret = 100;
        h.push(Event {
            invoke: h[1].invoke + 1,
            ret: h[1].invoke + 2,
            ..h[0].clone()
        });
        assert!(matches!(check(&h, &cfg, 100_000), Verdict::Linearizable(_)));
    }

    #[test]
    fn a_command_applied_twice_is_caught_and_unknown_outcomes_may_apply_or_not() {
        let cfg = EngineConfig::default();
        // REGISTER once, but READ KEYS reports generation 2: only a second application explains
        // it, and there was none.
        let mut h = sequential(&[(1, pr_out(6, 0, 0, key(1))), (1, pr_in(0))], 0);
        let twice = sequential(
            &[
                (1, pr_out(6, 0, 0, key(1))),
                (1, pr_out(6, 0, 0, key(1) + 1)),
                (1, pr_in(0)),
            ],
            0,
        );
        let Ending::Ok(mut a) = twice[2].result.clone() else {
            unreachable!()
        };
        a.data[15] = 0x01; // the key of the first REGISTER, with generation 2
        h[1].result = Ending::Ok(a);
        assert!(matches!(
            check(&h, &cfg, 100_000),
            Verdict::Violation { .. }
        ));
        // A REGISTER whose outcome is unknown may or may not have happened.
        let mut h = sequential(&[(1, pr_out(6, 0, 0, key(1))), (1, pr_in(0))], 0);
        h[0].result = Ending::Unknown("lost".into());
        assert!(matches!(check(&h, &cfg, 100_000), Verdict::Linearizable(_)));
        let mut h0 = sequential(&[(1, pr_in(0))], 0);
        h0.insert(
            0,
            Event {
                result: Ending::Unknown("lost".into()),
                ..h[0].clone()
            },
        );
        h0[1].invoke = 20;
        h0[1].ret = 30;
        assert!(matches!(
            check(&h0, &cfg, 100_000),
            Verdict::Linearizable(_)
        ));
        // One that was not applied must not have happened.
        h[0].result = Ending::NotApplied("down".into());
        assert!(matches!(
            check(&h, &cfg, 100_000),
            Verdict::Violation { .. }
        ));
    }
}
