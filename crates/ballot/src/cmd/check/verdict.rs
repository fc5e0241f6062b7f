//! Judges a finished history: linearizability of every key's sub-history with the project's
//! checker (`ballot_sim::linearizability`, Wing & Gong / Lowe), and lost acknowledged writes.
//! Reads nothing but the history; decides nothing about exit codes.
//!
//! A **lost acknowledged write** is a put or a swapped compare-and-swap that the cluster
//! acknowledged, on a key whose final read (made after the heal, once every operation had ended)
//! returned no value, or a value written by an operation that had completed before the
//! acknowledged one was invoked. Real-time order puts the acknowledged write after that value's
//! write, and every value is written once, so the value cannot have come back: the write was
//! lost. Such a history is also not linearizable; the lost write is reported on its own because it
//! is the most damaging kind of violation and the easiest to read.

use super::history::{HistoryFile, OperationRecord, Outcome, FINAL_READ_WORKER};
use ballot_sim::linearizability::{check, Operation, Verdict};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct KeyVerdict {
    pub key: u64,
    /// Operations on the key, the final read included.
    pub operations: usize,
    pub verdict: Verdict,
}

#[derive(Debug, Clone)]
pub struct LostWrite {
    pub write: OperationRecord,
    pub final_read: OperationRecord,
    /// The operation that wrote what the final read saw (`None`: the key was absent).
    pub final_writer: Option<OperationRecord>,
}

impl LostWrite {
    pub fn describe(&self) -> String {
        let saw = match &self.final_writer {
            Some(writer) => format!(
                "the final read saw the value of {}, which had completed before it began",
                writer.describe()
            ),
            None => "the final read found the key absent".to_string(),
        };
        format!(
            "lost acknowledged write on k{}: {}; {saw} (final read: {})",
            self.write.key,
            self.write.describe(),
            self.final_read.describe()
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Judgement {
    pub keys: Vec<KeyVerdict>,
    pub lost_writes: Vec<LostWrite>,
}

impl Judgement {
    pub fn not_linearizable(&self) -> impl Iterator<Item = &KeyVerdict> {
        self.keys
            .iter()
            .filter(|k| matches!(k.verdict, Verdict::NotLinearizable { .. }))
    }

    pub fn inconclusive(&self) -> impl Iterator<Item = &KeyVerdict> {
        self.keys
            .iter()
            .filter(|k| matches!(k.verdict, Verdict::Inconclusive { .. }))
    }

    #[cfg(test)]
    pub fn is_clean(&self) -> bool {
        self.lost_writes.is_empty() && self.keys.iter().all(|k| k.verdict == Verdict::Linearizable)
    }
}

/// Checks every key (on all cores) and looks for lost writes. An error means the history itself
/// is malformed, which is a bug of the recorder, not of the cluster.
pub fn judge(history: &HistoryFile) -> Result<Judgement, String> {
    let mut by_key: BTreeMap<u64, Vec<&OperationRecord>> = BTreeMap::new();
    for operation in &history.operations {
        by_key.entry(operation.key).or_default().push(operation);
    }
    let keys: Vec<(u64, Vec<&OperationRecord>)> = by_key.into_iter().collect();
    let threads = ballot::cpus();
    let chunk = keys.len().div_ceil(threads).max(1);
    let verdicts: Vec<Result<KeyVerdict, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = keys
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(k, ops)| check_key(*k, ops))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("a checker thread panicked"))
            .collect()
    });
    let mut judgement = Judgement {
        keys: verdicts.into_iter().collect::<Result<Vec<_>, _>>()?,
        lost_writes: Vec::new(),
    };
    for (_, operations) in &keys {
        judgement.lost_writes.extend(lost_writes(operations));
    }
    Ok(judgement)
}

fn check_key(key: u64, operations: &[&OperationRecord]) -> Result<KeyVerdict, String> {
    let history: Vec<Operation> = operations.iter().map(|op| op.to_checker()).collect();
    let verdict = check(&history).map_err(|error| format!("malformed history: {error}"))?;
    Ok(KeyVerdict {
        key,
        operations: operations.len(),
        verdict,
    })
}

/// The acknowledged writes of one key that its final read proves lost (see the module doc).
fn lost_writes(operations: &[&OperationRecord]) -> Vec<LostWrite> {
    let Some(final_read) = operations.iter().find(|op| op.worker == FINAL_READ_WORKER) else {
        return Vec::new();
    };
    let Outcome::Read { value: final_value } = final_read.outcome else {
        return Vec::new();
    };
    let final_writer = final_value.and_then(|value| {
        operations.iter().find(|op| {
            op.acknowledged_value() == Some(value)
                || (op.outcome == Outcome::Unknown && op.written_value() == Some(value))
        })
    });
    if final_value.is_some() && final_writer.is_none() {
        return Vec::new(); // a value nobody wrote: the linearizability check names it
    }
    let overwritten_before = |write: &OperationRecord| match final_writer {
        None => true,
        Some(writer) => writer
            .complete_ns
            .is_some_and(|done| done < write.invoke_ns),
    };
    operations
        .iter()
        .filter(|op| op.acknowledged_value().is_some())
        .filter(|op| op.acknowledged_value() != final_value && overwritten_before(op))
        .map(|write| LostWrite {
            write: (*write).clone(),
            final_read: (*final_read).clone(),
            final_writer: final_writer.map(|w| (*w).clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::history::{Kind, Meta};
    use super::*;

    fn op(id: u64, kind: Kind, times: (u64, u64), outcome: Outcome) -> OperationRecord {
        OperationRecord {
            id,
            worker: id as usize,
            client: id,
            node: "n1".into(),
            key: 1,
            kind,
            invoke_ns: times.0,
            complete_ns: (outcome != Outcome::Unknown).then_some(times.1),
            abandoned_ns: (outcome == Outcome::Unknown).then_some(times.1),
            outcome,
            error: None,
        }
    }

    fn final_read(value: Option<u64>) -> OperationRecord {
        OperationRecord {
            worker: FINAL_READ_WORKER,
            ..op(99, Kind::Read, (1000, 1001), Outcome::Read { value })
        }
    }

    fn history(operations: Vec<OperationRecord>) -> HistoryFile {
        HistoryFile {
            meta: Meta {
                command: String::new(),
                seed: 0,
                nodes: 3,
                clients: 2,
                keys: 1,
                groups: 1,
                duration_s: 1.0,
                faults: "none".into(),
                serializable: false,
                heal_ns: 0,
                end_ns: 0,
            },
            operations,
            faults: Vec::new(),
            leaders: Vec::new(),
            incidents: Vec::new(),
        }
    }

    #[test]
    fn a_final_read_of_an_older_value_is_a_lost_write() {
        let judgement = judge(&history(vec![
            op(1, Kind::Write { value: 1 }, (0, 10), Outcome::Written),
            op(2, Kind::Write { value: 2 }, (20, 30), Outcome::Written),
            final_read(Some(1)),
        ]))
        .unwrap();
        assert_eq!(judgement.lost_writes.len(), 1);
        assert_eq!(judgement.lost_writes[0].write.id, 2);
        assert!(judgement.lost_writes[0].describe().contains("write(2)"));
        assert_eq!(judgement.not_linearizable().count(), 1);
        assert!(!judgement.is_clean());
    }

    #[test]
    fn concurrent_writes_may_end_in_either_order() {
        let judgement = judge(&history(vec![
            op(1, Kind::Write { value: 1 }, (0, 30), Outcome::Written),
            op(2, Kind::Write { value: 2 }, (10, 20), Outcome::Written),
            op(3, Kind::Write { value: 3 }, (40, 50), Outcome::Unknown),
            final_read(Some(1)),
        ]))
        .unwrap();
        assert!(judgement.is_clean(), "{judgement:?}");
    }

    #[test]
    fn an_absent_key_after_an_acknowledged_write_is_a_lost_write() {
        let judgement = judge(&history(vec![
            op(
                1,
                Kind::Cas {
                    expected: None,
                    new: 5,
                },
                (0, 10),
                Outcome::Swapped,
            ),
            final_read(None),
        ]))
        .unwrap();
        assert_eq!(judgement.lost_writes.len(), 1);
        assert!(judgement.lost_writes[0].describe().contains("absent"));
    }
}
