//! Recorded histories of concurrent persistent-reservation commands: what each client sent,
//! when (on the host's monotonic clock, shared by every process of the host), and what it got
//! back. [`crate::linearizability`] checks them; the load driver (`pr-etcd-load`) writes them
//! as JSON lines.

use std::io::{BufRead, Write};
use std::time::Duration;

use pr_engine::{Nexus, Reply};
use pr_store::{ErrorKind, StoreError};
use serde::{Deserialize, Serialize};

/// Nanoseconds on `CLOCK_MONOTONIC`: comparable between processes of one host.
pub fn now() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// The SCSI reply a client saw: status, sense (key, ASC, ASCQ) and data-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// SCSI status.
    pub status: u8,
    /// Sense key, ASC, ASCQ.
    #[serde(default)]
    pub sense: Option<(u8, u8, u8)>,
    /// Data-in, hex.
    #[serde(default, with = "hex")]
    pub data: Vec<u8>,
}

impl Answer {
    /// The observable part of `reply`.
    pub fn of(reply: &Reply) -> Answer {
        Answer {
            status: reply.status.0,
            sense: reply.sense.map(|s| (s.code.key.0, s.code.asc, s.code.ascq)),
            data: reply.data.clone(),
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// The store answered (a SCSI refusal included).
    Ok(Answer),
    /// The store failed and nothing was applied ([`ErrorKind::Unavailable`] and the like).
    NotApplied(String),
    /// The store failed and the command may or may not have been applied, at any time after
    /// it was sent ([`ErrorKind::OutcomeUnknown`]).
    Unknown(String),
}

impl Ending {
    /// The record of a store call's result.
    pub fn of(r: &Result<pr_engine::Outcome, StoreError>) -> Ending {
        match r {
            Ok(o) => Ending::Ok(Answer::of(&o.reply)),
            Err(e) if e.kind() == ErrorKind::Unavailable => Ending::NotApplied(e.to_string()),
            Err(e) => Ending::Unknown(e.to_string()),
        }
    }
}

/// One command of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Which client (host and thread) sent it.
    pub client: String,
    /// The I_T nexus it came from.
    pub nexus: Nexus,
    /// The CDB, hex.
    #[serde(with = "hex")]
    pub cdb: Vec<u8>,
    /// The parameter list, hex.
    #[serde(with = "hex")]
    pub params: Vec<u8>,
    /// When the call began ([`now`]).
    pub invoke: u64,
    /// When it returned ([`now`]).
    pub ret: u64,
    /// What it returned.
    pub result: Ending,
}

impl Event {
    /// How long the call took.
    pub fn latency(&self) -> Duration {
        Duration::from_nanos(self.ret.saturating_sub(self.invoke))
    }
}

/// Writes `events` as JSON lines.
pub fn write(mut out: impl Write, events: &[Event]) -> std::io::Result<()> {
    for e in events {
        serde_json::to_writer(&mut out, e)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads JSON lines written by [`write`]; a bad line is an error naming it.
pub fn read(input: impl BufRead) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    Ok(events)
}

mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b.iter().map(|x| format!("{x:02x}")).collect::<String>())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 || s.len() > 1 << 20 {
            return Err(serde::de::Error::custom(
                "expected an even number of hex digits",
            ));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16)
                    .map_err(|_| serde::de::Error::custom("expected hex digits"))
            })
            .collect()
    }
}
