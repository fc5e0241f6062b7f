//! The record of a run: every operation (invoke, completion, outcome), every fault, every leader
//! change and every node that died on its own, timed in nanoseconds since the run began on one
//! monotonic clock. Owns `history.json` and the conversion to the checker's operations; never
//! judges anything (that is `verdict.rs`).

use ballot_sim::linearizability::{OpKind, Operation, Outcome as CheckerOutcome};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The lane of the final read in the report and in `worker` fields.
pub const FINAL_READ_WORKER: usize = usize::MAX;

/// Nanoseconds since the run began.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// `[  12.3s]`: the prefix of progress lines.
pub fn stamp(time_ns: u64) -> String {
    format!("[{:>7.1}s]", time_ns as f64 / 1e9)
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Kind {
    Read,
    Write {
        value: u64,
    },
    /// `expected: null`: the key must be absent.
    Cas {
        expected: Option<u64>,
        new: u64,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Outcome {
    /// A completed read; `value: null` is an absent key.
    Read {
        value: Option<u64>,
    },
    Written,
    Swapped,
    NotSwapped,
    /// Definitely not applied (refused before it was proposed). Ignored by the checker.
    Failed,
    /// Indeterminate: timed out or cut off; may take effect at any later time, or never.
    Unknown,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OperationRecord {
    pub id: u64,
    /// The client worker (a lane of the report), or [`FINAL_READ_WORKER`].
    pub worker: usize,
    /// A worker gets a new client id when its client is retired after an indeterminate result.
    pub client: u64,
    /// The node the client is pinned to.
    pub node: String,
    pub key: u64,
    pub kind: Kind,
    pub invoke_ns: u64,
    /// `None` iff the result is unknown.
    pub complete_ns: Option<u64>,
    /// When the client gave up on an indeterminate operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned_ns: Option<u64>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl OperationRecord {
    /// When the lane is free again: the completion, or the moment the client gave up.
    pub fn end_ns(&self) -> u64 {
        self.complete_ns
            .or(self.abandoned_ns)
            .unwrap_or(self.invoke_ns)
    }

    /// An acknowledged put or swapped compare-and-swap: the value it wrote.
    pub fn acknowledged_value(&self) -> Option<u64> {
        match (self.kind, self.outcome) {
            (Kind::Write { value }, Outcome::Written) => Some(value),
            (Kind::Cas { new, .. }, Outcome::Swapped) => Some(new),
            _ => None,
        }
    }

    /// The value this operation writes if it takes effect (acknowledged or not).
    pub fn written_value(&self) -> Option<u64> {
        match self.kind {
            Kind::Write { value } => Some(value),
            Kind::Cas { new, .. } => Some(new),
            Kind::Read => None,
        }
    }

    pub fn to_checker(&self) -> Operation {
        let kind = match self.kind {
            Kind::Read => OpKind::Read,
            Kind::Write { value } => OpKind::Write { value },
            Kind::Cas { expected, new } => OpKind::Cas { expected, new },
        };
        let outcome = match self.outcome {
            Outcome::Read { value } => CheckerOutcome::Read { value },
            Outcome::Written => CheckerOutcome::Written,
            Outcome::Swapped => CheckerOutcome::Cas { swapped: true },
            Outcome::NotSwapped => CheckerOutcome::Cas { swapped: false },
            Outcome::Failed => CheckerOutcome::Failed,
            Outcome::Unknown => CheckerOutcome::Unknown,
        };
        Operation {
            id: self.id,
            client: self.client,
            key: self.key,
            kind,
            invoke_time: self.invoke_ns,
            complete_time: self.complete_ns,
            outcome,
        }
    }

    /// `w3 c17 n2 k4 cas(5->9) [1.203s, 1.240s] swapped`, for explanations.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            Kind::Read => "read".to_string(),
            Kind::Write { value } => format!("write({value})"),
            Kind::Cas { expected, new } => format!("cas({}->{new})", shown(expected)),
        };
        let end = match self.complete_ns {
            Some(complete) => format!("{:.3}s", complete as f64 / 1e9),
            None => "?".to_string(),
        };
        let result = match self.outcome {
            Outcome::Read { value } => format!("-> {}", shown(value)),
            Outcome::Written => "ok".into(),
            Outcome::Swapped => "swapped".into(),
            Outcome::NotSwapped => "not swapped".into(),
            Outcome::Failed => "failed".into(),
            Outcome::Unknown => "indeterminate".into(),
        };
        let worker = if self.worker == FINAL_READ_WORKER {
            "final".to_string()
        } else {
            format!("w{}", self.worker)
        };
        format!(
            "{worker} c{} {} k{} {kind} [{:.3}s, {end}] {result}",
            self.client,
            self.node,
            self.key,
            self.invoke_ns as f64 / 1e9
        )
    }
}

pub fn shown(value: Option<u64>) -> String {
    value.map_or("absent".to_string(), |v| v.to_string())
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FaultRecord {
    pub kind: String,
    /// The nodes the fault acts on (cut off, killed, paused, removed; the transfer's target).
    pub targets: Vec<String>,
    pub description: String,
    pub start_ns: u64,
    /// When it was healed; `None` for an instant fault (transfer) or one never healed.
    pub end_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healed: Option<String>,
    /// What went wrong injecting or healing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LeaderRecord {
    pub time_ns: u64,
    pub term: u64,
    pub leader: String,
}

/// Something the nodes did that nobody asked for (a node exiting on its own).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub time_ns: u64,
    pub node: String,
    pub description: String,
}

fn one_group() -> u32 {
    1
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Meta {
    pub command: String,
    pub seed: u64,
    pub nodes: usize,
    pub clients: usize,
    pub keys: usize,
    /// Groups the keys were spread over (key k in group k mod `groups`); 1 in histories from
    /// before `--groups`.
    #[serde(default = "one_group")]
    pub groups: u32,
    pub duration_s: f64,
    pub faults: String,
    pub serializable: bool,
    /// When the chaos phase ended and the heal began.
    pub heal_ns: u64,
    pub end_ns: u64,
}

/// `history.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HistoryFile {
    pub meta: Meta,
    pub operations: Vec<OperationRecord>,
    pub faults: Vec<FaultRecord>,
    pub leaders: Vec<LeaderRecord>,
    pub incidents: Vec<Incident>,
}

impl HistoryFile {
    /// JSON with one operation, fault or leader change per line, so that the file can be
    /// searched with grep as well as parsed.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        fn lines<T: Serialize>(items: &[T]) -> String {
            let lines: Vec<String> = items
                .iter()
                .map(|item| serde_json::to_string(item).expect("a record serializes"))
                .collect();
            if lines.is_empty() {
                "[]".to_string()
            } else {
                format!("[\n{}\n]", lines.join(",\n"))
            }
        }
        let text = format!(
            "{{\"meta\":{},\n\"operations\":{},\n\"faults\":{},\n\"leaders\":{},\n\"incidents\":{}}}\n",
            serde_json::to_string(&self.meta).expect("meta serializes"),
            lines(&self.operations),
            lines(&self.faults),
            lines(&self.leaders),
            lines(&self.incidents),
        );
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Operation counts for progress lines, by result.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.ok + self.failed + self.unknown
    }

    pub fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Failed => self.failed += 1,
            Outcome::Unknown => self.unknown += 1,
            _ => self.ok += 1,
        }
    }
}

/// Collects the run while it happens; shared by the clients, the nemesis and the monitor.
pub struct Recorder {
    pub clock: Clock,
    next_operation_id: AtomicU64,
    next_client_id: AtomicU64,
    operations: Mutex<Vec<OperationRecord>>,
    counts: Mutex<Counts>,
    faults: Mutex<Vec<FaultRecord>>,
    leaders: Mutex<Vec<LeaderRecord>>,
    incidents: Mutex<Vec<Incident>>,
}

impl Recorder {
    pub fn new(clock: Clock) -> Recorder {
        Recorder {
            clock,
            next_operation_id: AtomicU64::new(1),
            next_client_id: AtomicU64::new(1),
            operations: Mutex::new(Vec::new()),
            counts: Mutex::new(Counts::default()),
            faults: Mutex::new(Vec::new()),
            leaders: Mutex::new(Vec::new()),
            incidents: Mutex::new(Vec::new()),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    pub fn new_operation_id(&self) -> u64 {
        self.next_operation_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn new_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn operation(&self, record: OperationRecord) {
        self.counts.lock().expect("counts lock").add(record.outcome);
        self.operations
            .lock()
            .expect("operations lock")
            .push(record);
    }

    pub fn counts(&self) -> Counts {
        *self.counts.lock().expect("counts lock")
    }

    /// Records a fault as started now; returns its index for [`Recorder::fault_healed`].
    pub fn fault_started(&self, kind: &str, targets: &[String], description: &str) -> usize {
        let mut faults = self.faults.lock().expect("faults lock");
        faults.push(FaultRecord {
            kind: kind.to_string(),
            targets: targets.to_vec(),
            description: description.to_string(),
            start_ns: self.now_ns(),
            end_ns: None,
            healed: None,
            error: None,
        });
        faults.len() - 1
    }

    pub fn fault_healed(&self, index: usize, healed: &str) {
        let now = self.now_ns();
        let mut faults = self.faults.lock().expect("faults lock");
        faults[index].end_ns = Some(now);
        faults[index].healed = Some(healed.to_string());
    }

    /// The kind of fault record `index`.
    pub fn fault_kind(&self, index: usize) -> String {
        self.faults.lock().expect("faults lock")[index].kind.clone()
    }

    pub fn fault_error(&self, index: usize, error: &str) {
        let mut faults = self.faults.lock().expect("faults lock");
        let record = &mut faults[index];
        record.error = Some(match record.error.take() {
            Some(earlier) => format!("{earlier}; {error}"),
            None => error.to_string(),
        });
    }

    pub fn leader(&self, term: u64, leader: &str) {
        let time_ns = self.now_ns();
        self.leaders
            .lock()
            .expect("leaders lock")
            .push(LeaderRecord {
                time_ns,
                term,
                leader: leader.to_string(),
            });
    }

    pub fn incident(&self, node: &str, description: &str) {
        let time_ns = self.now_ns();
        self.incidents
            .lock()
            .expect("incidents lock")
            .push(Incident {
                time_ns,
                node: node.to_string(),
                description: description.to_string(),
            });
    }

    /// Everything recorded, operations in invoke order.
    pub fn finish(&self, meta: Meta) -> HistoryFile {
        let mut operations = std::mem::take(&mut *self.operations.lock().expect("operations lock"));
        operations.sort_by_key(|op| (op.invoke_ns, op.id));
        HistoryFile {
            meta,
            operations,
            faults: self.faults.lock().expect("faults lock").clone(),
            leaders: self.leaders.lock().expect("leaders lock").clone(),
            incidents: self.incidents.lock().expect("incidents lock").clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_json_and_convert_for_the_checker() {
        let record = OperationRecord {
            id: 3,
            worker: 1,
            client: 2,
            node: "n2".into(),
            key: 7,
            kind: Kind::Cas {
                expected: None,
                new: 9,
            },
            invoke_ns: 100,
            complete_ns: None,
            abandoned_ns: Some(3_000_100),
            outcome: Outcome::Unknown,
            error: Some("timed out".into()),
        };
        let text = serde_json::to_string(&record).unwrap();
        assert!(
            text.contains(r#""kind":{"type":"cas","expected":null,"new":9}"#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<OperationRecord>(&text).unwrap(),
            record
        );
        let file = HistoryFile {
            meta: Meta {
                command: "ballot check".into(),
                seed: 1,
                nodes: 3,
                clients: 1,
                keys: 1,
                groups: 1,
                duration_s: 5.0,
                faults: "all".into(),
                serializable: false,
                heal_ns: 5,
                end_ns: 6,
            },
            operations: vec![record.clone(), record.clone()],
            faults: Vec::new(),
            leaders: vec![LeaderRecord {
                time_ns: 1,
                term: 2,
                leader: "n1".into(),
            }],
            incidents: Vec::new(),
        };
        let path = std::env::temp_dir().join(format!("ballot-history-{}.json", std::process::id()));
        file.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(serde_json::from_str::<HistoryFile>(&text).unwrap(), file);
        assert_eq!(text.lines().count(), 10, "one record per line:\n{text}");
        let operation = record.to_checker();
        assert_eq!(operation.outcome, CheckerOutcome::Unknown);
        assert_eq!(operation.complete_time, None);
        assert_eq!(record.end_ns(), 3_000_100);
        assert_eq!(record.acknowledged_value(), None);
        assert_eq!(record.written_value(), Some(9));
    }
}
