//! Model check: random command sequences from four I_T nexuses get the same replies (status,
//! sense key/ASC/ASCQ, READ KEYS and READ RESERVATION data) from the engine as from a small
//! reference model written here from docs/pr-semantics.md (REGISTER, REGISTER AND IGNORE EXISTING
//! KEY, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT AND ABORT, REGISTER AND MOVE, READ KEYS, READ
//! RESERVATION), independently of the engine: a Vec of (nexus, key), an Option reservation, a
//! generation and per-nexus unit attention queues.

mod common;

use std::collections::VecDeque;

use common::*;
use pr_engine::{EngineConfig, LogicalUnit};
use proptest::prelude::*;

/// Reply as compared: status, sense key, ASC, ASCQ, data.
type Answer = (u8, u8, u8, u8, Vec<u8>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Nexus(u8),
    All,
}

#[derive(Debug, Default)]
struct Model {
    regs: Vec<(u8, u64)>,
    res: Option<(Holder, u8)>,
    generation: u32,
    uas: Vec<(u8, VecDeque<u8>)>,
}

const UA_DEPTH: usize = 8;
const RELEASED: u8 = 0x04;
const RES_PREEMPTED: u8 = 0x03;
const REG_PREEMPTED: u8 = 0x05;

fn good() -> Answer {
    (0, 0, 0, 0, vec![])
}
fn conflict() -> Answer {
    (0x18, 0, 0, 0, vec![])
}
fn illegal(asc: u8, ascq: u8) -> Answer {
    (0x02, 0x05, asc, ascq, vec![])
}

impl Model {
    fn key_of(&self, n: u8) -> Option<u64> {
        self.regs.iter().find(|r| r.0 == n).map(|r| r.1)
    }

    fn is_holder(&self, n: u8) -> bool {
        match self.res {
            Some((Holder::All, _)) => self.key_of(n).is_some(),
            Some((Holder::Nexus(h), _)) => h == n,
            None => false,
        }
    }

    fn ua(&mut self, n: u8, ascq: u8) {
        match self.uas.iter_mut().find(|q| q.0 == n) {
            Some(q) => {
                if !q.1.contains(&ascq) && q.1.len() < UA_DEPTH {
                    q.1.push_back(ascq);
                }
            }
            None => self.uas.push((n, VecDeque::from([ascq]))),
        }
    }

    fn take_ua(&mut self, n: u8) -> Option<u8> {
        let i = self.uas.iter().position(|q| q.0 == n)?;
        let a = self.uas[i].1.pop_front();
        if self.uas[i].1.is_empty() {
            self.uas.remove(i);
        }
        a
    }

    fn holder_for(t: u8, n: u8) -> Holder {
        if t == 7 || t == 8 {
            Holder::All
        } else {
            Holder::Nexus(n)
        }
    }

    fn unregister(&mut self, n: u8) {
        self.regs.retain(|r| r.0 != n);
        match self.res {
            Some((Holder::Nexus(h), t)) if h == n => {
                self.res = None;
                if t == 5 || t == 6 {
                    for m in self.regs.iter().map(|r| r.0).collect::<Vec<_>>() {
                        self.ua(m, RELEASED);
                    }
                }
            }
            Some((Holder::All, _)) if self.regs.is_empty() => self.res = None,
            _ => {}
        }
    }

    fn step(&mut self, c: &Op) -> Answer {
        let n = c.n;
        if let Some(ascq) = self.take_ua(n) {
            return (0x02, 0x06, 0x2a, ascq, vec![]);
        }
        let valid_type = [1, 3, 5, 6, 7, 8].contains(&c.t);
        match c.sa {
            Sa::ReadKeys => {
                let mut d = self.generation.to_be_bytes().to_vec();
                d.extend_from_slice(&(8 * self.regs.len() as u32).to_be_bytes());
                for r in &self.regs {
                    d.extend_from_slice(&r.1.to_be_bytes());
                }
                (0, 0, 0, 0, d)
            }
            Sa::ReadReservation => {
                let mut d = self.generation.to_be_bytes().to_vec();
                match self.res {
                    None => d.extend_from_slice(&[0, 0, 0, 0]),
                    Some((h, t)) => {
                        d.extend_from_slice(&[0, 0, 0, 16]);
                        let k = match h {
                            Holder::All => 0,
                            Holder::Nexus(m) => self.key_of(m).unwrap(),
                        };
                        d.extend_from_slice(&k.to_be_bytes());
                        d.extend_from_slice(&[0, 0, 0, 0, 0, t, 0, 0]);
                    }
                }
                (0, 0, 0, 0, d)
            }
            Sa::Register | Sa::RegisterIgnore => {
                let ignore = c.sa == Sa::RegisterIgnore;
                match self.key_of(n) {
                    None => {
                        if !ignore && c.key != 0 {
                            return conflict();
                        }
                        if c.sa_key == 0 {
                            return good();
                        }
                        self.regs.push((n, c.sa_key));
                    }
                    Some(k) => {
                        if !ignore && c.key != k {
                            return conflict();
                        }
                        if c.sa_key == 0 {
                            self.unregister(n);
                        } else {
                            self.regs.iter_mut().find(|r| r.0 == n).unwrap().1 = c.sa_key;
                        }
                    }
                }
                self.generation += 1;
                good()
            }
            Sa::Reserve => {
                if !valid_type {
                    return illegal(0x24, 0x00);
                }
                if self.key_of(n) != Some(c.key) {
                    return conflict();
                }
                match self.res {
                    Some((_, t)) if self.is_holder(n) && t == c.t => good(),
                    Some(_) => conflict(),
                    None => {
                        self.res = Some((Self::holder_for(c.t, n), c.t));
                        good()
                    }
                }
            }
            Sa::Release => {
                if self.key_of(n) != Some(c.key) {
                    return conflict();
                }
                let Some((_, t)) = self.res else {
                    return good();
                };
                if !self.is_holder(n) {
                    return good();
                }
                if t != c.t {
                    return illegal(0x26, 0x04);
                }
                self.res = None;
                if t >= 5 {
                    for m in self
                        .regs
                        .iter()
                        .map(|r| r.0)
                        .filter(|m| *m != n)
                        .collect::<Vec<_>>()
                    {
                        self.ua(m, RELEASED);
                    }
                }
                good()
            }
            Sa::Clear => {
                if self.key_of(n) != Some(c.key) {
                    return conflict();
                }
                for m in self
                    .regs
                    .iter()
                    .map(|r| r.0)
                    .filter(|m| *m != n)
                    .collect::<Vec<_>>()
                {
                    self.ua(m, RES_PREEMPTED);
                }
                self.regs.clear();
                self.res = None;
                self.generation += 1;
                good()
            }
            Sa::RegisterAndMove => {
                // Destination: nexus `t % 4 + 1`; `abort` stands for UNREG.
                let dest = c.t % 4 + 1;
                if self.key_of(n) != Some(c.key) {
                    return conflict();
                }
                match self.res {
                    Some((Holder::Nexus(h), _)) if h == n => {}
                    _ => return conflict(),
                }
                if c.sa_key == 0 || dest == n {
                    return illegal(0x26, 0x00);
                }
                if self.key_of(dest).is_none() {
                    self.regs.push((dest, c.sa_key));
                }
                if let Some((h, _)) = self.res.as_mut() {
                    *h = Holder::Nexus(dest);
                }
                if c.abort {
                    self.regs.retain(|r| r.0 != n);
                }
                self.generation += 1;
                good()
            }
            Sa::Preempt => {
                if !valid_type {
                    return illegal(0x24, 0x00);
                }
                if self.key_of(n) != Some(c.key) {
                    return conflict();
                }
                let removed: Vec<u8>;
                match self.res {
                    Some((Holder::All, _)) if c.sa_key == 0 => {
                        removed = self.regs.iter().map(|r| r.0).filter(|m| *m != n).collect();
                        self.regs.retain(|r| r.0 == n);
                        self.res = Some((Self::holder_for(c.t, n), c.t));
                    }
                    Some((Holder::Nexus(h), old)) if self.key_of(h) == Some(c.sa_key) => {
                        removed = self
                            .regs
                            .iter()
                            .filter(|r| r.1 == c.sa_key && r.0 != n)
                            .map(|r| r.0)
                            .collect();
                        self.regs.retain(|r| !removed.contains(&r.0));
                        self.res = Some((Self::holder_for(c.t, n), c.t));
                        if old != c.t {
                            for m in self
                                .regs
                                .iter()
                                .map(|r| r.0)
                                .filter(|m| *m != n)
                                .collect::<Vec<_>>()
                            {
                                self.ua(m, RELEASED);
                            }
                        }
                    }
                    _ => {
                        if c.sa_key == 0 {
                            return illegal(0x26, 0x00);
                        }
                        removed = self
                            .regs
                            .iter()
                            .filter(|r| r.1 == c.sa_key)
                            .map(|r| r.0)
                            .collect();
                        if removed.is_empty() {
                            return conflict();
                        }
                        self.regs.retain(|r| r.1 != c.sa_key);
                        if matches!(self.res, Some((Holder::All, _))) && self.regs.is_empty() {
                            self.res = None;
                        }
                    }
                }
                for m in removed.into_iter().filter(|m| *m != n) {
                    self.ua(m, REG_PREEMPTED);
                }
                self.generation += 1;
                good()
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sa {
    ReadKeys,
    ReadReservation,
    Register,
    RegisterIgnore,
    Reserve,
    Release,
    Clear,
    Preempt,
    RegisterAndMove,
}

#[derive(Debug, Clone)]
struct Op {
    n: u8,
    sa: Sa,
    t: u8,
    key: u64,
    sa_key: u64,
    abort: bool,
}

fn op() -> impl Strategy<Value = Op> {
    (
        1u8..=4,
        prop_oneof![
            Just(Sa::ReadKeys),
            Just(Sa::ReadReservation),
            Just(Sa::Register),
            Just(Sa::Register),
            Just(Sa::RegisterIgnore),
            Just(Sa::Reserve),
            Just(Sa::Reserve),
            Just(Sa::Release),
            Just(Sa::Clear),
            Just(Sa::Preempt),
            Just(Sa::Preempt),
            Just(Sa::RegisterAndMove),
        ],
        prop_oneof![6 => prop::sample::select(vec![1u8, 3, 5, 6, 7, 8]), 1 => Just(2u8)],
        0u64..=3,
        0u64..=3,
        any::<bool>(),
    )
        .prop_map(|(n, sa, t, key, sa_key, abort)| Op {
            n,
            sa,
            t,
            key,
            sa_key,
            abort,
        })
}

fn engine(lu: &mut LogicalUnit, c: &Op) -> Answer {
    let cfg = EngineConfig::default();
    let n = nexus(c.n);
    let o = match c.sa {
        Sa::ReadKeys => lu.execute(&n, &pr_in(0x00, 8192), &[], &cfg),
        Sa::ReadReservation => lu.execute(&n, &pr_in(0x01, 8192), &[], &cfg),
        Sa::RegisterAndMove => {
            // SPC-4 table 186: UNREG byte 17 bit 1, port at 18–19, TransportID length at 20–23.
            let mut p = basic(c.key, c.sa_key, 0);
            p[17] = if c.abort { 0x02 } else { 0 };
            p[18..20].copy_from_slice(&[0, 1]);
            p[20..24].copy_from_slice(&[0, 0, 0, 24]);
            p.extend_from_slice(&sas_tid(c.t % 4 + 1));
            lu.execute(&n, &pr_out(0x07, c.t, p.len() as u32), &p, &cfg)
        }
        _ => {
            let sa = match c.sa {
                Sa::Register => 0x00,
                Sa::Reserve => 0x01,
                Sa::Release => 0x02,
                Sa::Clear => 0x03,
                Sa::Preempt if c.abort => 0x05,
                Sa::Preempt => 0x04,
                _ => 0x06,
            };
            out(lu, &n, sa, c.t, c.key, c.sa_key, 0, &cfg)
        }
    };
    let r = o.commit(lu);
    let (s, k, asc, ascq) = code(&r);
    (s, k, asc, ascq, r.data)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_reference_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut model = Model::default();
        let mut lu = LogicalUnit::default();
        for (i, c) in ops.iter().enumerate() {
            let want = model.step(c);
            let got = engine(&mut lu, c);
            prop_assert_eq!(got, want, "step {} {:?}", i, c);
        }
    }
}
