//! The value stored under a logical unit's key: its state and, per client, the outcomes of the
//! commands that client has committed but not yet answered (so that a retry after a timeout
//! finds its first attempt instead of applying the command twice).

use std::collections::BTreeMap;

use pr_engine::{FieldPointer, LogicalUnit, Nexus, Outcome, Reply, SenseData};
use pr_scsi::sense::SenseKey;
use pr_scsi::{SenseCode, Status};
use serde::{Deserialize, Serialize};

/// Version of the stored value's format.
pub const FORMAT: u32 = 1;

/// Most client entries kept per logical unit; beyond it the oldest go, those without a
/// pending outcome first.
pub const MAX_CLIENTS: usize = 64;

/// The value under `PREFIX lu/ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Stored {
    /// [`FORMAT`].
    pub format: u32,
    /// The persistent-reservation state.
    pub state: LogicalUnit,
    /// Per client (`HOST#INCARNATION`): the commands it committed whose calls may not have
    /// returned yet.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientEntry>,
    /// Incremented by every write: orders client entries by age.
    #[serde(default)]
    pub writes: u64,
}

/// One client's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClientEntry {
    /// [`Stored::writes`] when this client last wrote.
    pub written: u64,
    /// Outcomes of committed commands by sequence number, kept while the client's call for
    /// them may still be running.
    pub done: BTreeMap<u64, RecordedOutcome>,
}

/// Recorded sense: key, ASC, ASCQ and the field pointer (C/D, byte, bit).
pub type RecordedSense = (u8, u8, u8, Option<(bool, u16, Option<u8>)>);

/// An [`Outcome`] without its state, as recorded for a retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedOutcome {
    /// SCSI status.
    pub status: u8,
    /// Sense key, ASC, ASCQ and the field pointer (C/D, byte, bit), with CHECK CONDITION.
    #[serde(default)]
    pub sense: Option<RecordedSense>,
    /// Data-in.
    #[serde(default)]
    pub data: Vec<u8>,
    /// [`Outcome::tasks_to_abort`].
    #[serde(default)]
    pub tasks_to_abort: Vec<Nexus>,
    /// [`Outcome::access_lost`].
    #[serde(default)]
    pub access_lost: Vec<Nexus>,
}

impl RecordedOutcome {
    /// Records `o` (its state is the stored one).
    pub fn of(o: &Outcome) -> RecordedOutcome {
        RecordedOutcome {
            status: o.reply.status.0,
            sense: o.reply.sense.map(|s| {
                (
                    s.code.key.0,
                    s.code.asc,
                    s.code.ascq,
                    s.field.map(|f| (f.in_cdb, f.byte, f.bit)),
                )
            }),
            data: o.reply.data.clone(),
            tasks_to_abort: o.tasks_to_abort.clone(),
            access_lost: o.access_lost.clone(),
        }
    }

    /// The outcome again, with `state` (the state the command left).
    pub fn outcome(&self, state: LogicalUnit) -> Outcome {
        Outcome {
            reply: Reply {
                status: Status(self.status),
                sense: self.sense.map(|(key, asc, ascq, field)| SenseData {
                    code: SenseCode {
                        key: SenseKey(key),
                        asc,
                        ascq,
                    },
                    field: field.map(|(in_cdb, byte, bit)| FieldPointer { in_cdb, byte, bit }),
                }),
                data: self.data.clone(),
            },
            state: Some(state),
            tasks_to_abort: self.tasks_to_abort.clone(),
            access_lost: self.access_lost.clone(),
        }
    }
}

impl Stored {
    /// The recorded outcome of `client`'s command `seq`, if it was committed.
    pub fn recorded(&self, client: &str, seq: u64) -> Option<&RecordedOutcome> {
        self.clients.get(client)?.done.get(&seq)
    }

    /// The value after `client`'s command `seq` left `state` with `outcome`: the client's entry
    /// keeps only the outcomes of its commands still in flight (`in_flight`) plus this one.
    pub fn next(
        &self,
        state: LogicalUnit,
        client: &str,
        command: Option<(u64, &Outcome)>,
        in_flight: &[u64],
    ) -> Stored {
        let mut next = Stored {
            format: FORMAT,
            state,
            clients: self.clients.clone(),
            writes: self.writes.wrapping_add(1),
        };
        let entry = next.clients.entry(client.to_owned()).or_default();
        entry.written = next.writes;
        entry.done.retain(|seq, _| in_flight.contains(seq));
        if let Some((seq, o)) = command {
            entry.done.insert(seq, RecordedOutcome::of(o));
        }
        while next.clients.len() > MAX_CLIENTS {
            let victim = next
                .clients
                .iter()
                .filter(|(c, _)| c.as_str() != client)
                .min_by_key(|(_, e)| (!e.done.is_empty(), e.written))
                .map(|(c, _)| c.clone());
            match victim {
                Some(v) => next.clients.remove(&v),
                None => break,
            };
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pr_engine::EngineConfig;
    use pr_scsi::transport_id::TransportId;
    use pr_scsi::RelativeTargetPort;

    fn nexus(n: u8) -> Nexus {
        Nexus {
            initiator: TransportId::Sas {
                sas_address: [0x50, 0, 0, 0, 0, 0, 0, n],
            },
            relative_target_port: RelativeTargetPort(1),
        }
    }

    #[test]
    fn outcome_round_trips_through_json() {
        let cfg = EngineConfig::default();
        // REGISTER with a 23-byte list: PARAMETER LIST LENGTH ERROR, a refusal with sense.
        let o = LogicalUnit::default().execute(
            &nexus(1),
            &[0x5f, 0, 0, 0, 0, 0, 0, 0, 23, 0],
            &[0; 23],
            &cfg,
        );
        assert!(o.reply.sense.is_some());
        let r = RecordedOutcome::of(&o);
        let back: RecordedOutcome =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        let again = back.outcome(LogicalUnit::default());
        assert_eq!(again.reply, o.reply);
        assert_eq!(again.tasks_to_abort, o.tasks_to_abort);
    }

    #[test]
    fn entries_keep_only_commands_in_flight_and_stay_bounded() {
        let o = Outcome::unchanged(Reply::good(Vec::new()));
        let s = Stored::default().next(LogicalUnit::default(), "a#1", Some((1, &o)), &[1]);
        let s = s.next(LogicalUnit::default(), "a#1", Some((2, &o)), &[1, 2]);
        assert!(s.recorded("a#1", 1).is_some() && s.recorded("a#1", 2).is_some());
        // Call 1 returned: the next write drops its record.
        let s = s.next(LogicalUnit::default(), "a#1", Some((3, &o)), &[2, 3]);
        assert!(s.recorded("a#1", 1).is_none());
        assert!(s.recorded("a#1", 2).is_some());
        let mut s = s;
        for c in 0..(MAX_CLIENTS as u64 + 10) {
            s = s.next(LogicalUnit::default(), &format!("c#{c}"), None, &[]);
        }
        assert_eq!(s.clients.len(), MAX_CLIENTS);
        // The entry with a pending outcome outlives empty ones.
        assert!(s.recorded("a#1", 2).is_some());
    }
}
