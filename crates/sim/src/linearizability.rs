//! Linearizability checker for key-value register histories.
//!
//! Owns: deciding whether a recorded history of client operations (read, write, compare-and-swap,
//! each with the virtual-time interval the client saw and the result it got) could have come from
//! one atomic register per key, every operation taking effect at one instant inside its interval.
//! Never: drives a cluster, reads a clock or records the history. The simulator and `ballot check`
//! record it and hand it over whole; this module only judges it.
//!
//! # Algorithm
//!
//! The search is Wing and Gong's (J. M. Wing, C. Gong, "Testing and verifying concurrent objects",
//! Journal of Parallel and Distributed Computing 17, 1993) as refined by Lowe (G. Lowe, "Testing
//! for linearizability", Concurrency and Computation: Practice and Experience 29(4), 2017). The
//! history becomes a doubly linked list of call and return events in time order. The search
//! repeatedly picks a call that comes before the first remaining return, applies the operation to a
//! model register and lifts the operation's call and return out of the list; meeting a return first
//! means that operation should already have taken effect, so the search backtracks. It succeeds
//! when no return is left. The search is iterative (an explicit stack), so long histories cannot
//! overflow the thread stack. Following Lowe, every configuration reached, the set of linearized
//! operations (a bitset) together with the register value, is remembered, and a configuration seen
//! before is not explored again: it failed the first time and will fail again. A budget on the
//! number of configurations turns a pathological history into [`Verdict::Inconclusive`] instead of
//! a hang.
//!
//! # Per-key decomposition
//!
//! Registers on different keys are independent objects, and linearizability is local (Herlihy and
//! Wing 1990, Theorem 1; "P-compositionality" in Horn and Kroening 2015): a history is linearizable
//! iff each key's sub-history is. So each key is checked alone, which turns one search exponential
//! in the whole history into many small ones, and a violation is reported with its key.
//!
//! # Time
//!
//! Operation A precedes B iff `A.complete_time < B.invoke_time`, strictly. When A completes at the
//! tick at which B is invoked, the two are concurrent and may take effect in either order: a tick
//! is too coarse to say which came first. In the event list that means calls sort before returns at
//! equal time, so B's call is reachable before A's return.
//!
//! # Outcomes
//!
//! - [`Outcome::Failed`] operations definitely did not happen and are dropped.
//! - [`Outcome::Unknown`] operations may take effect at any instant after their invoke, or never:
//!   their completion is at +infinity, so they have no return event and the search never has to
//!   place them. An unknown read constrains nothing and is dropped. An unknown compare-and-swap is
//!   placed only where it would swap; placing it where it would not swap changes nothing, which is
//!   the same as not placing it.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

pub type Key = u64;
pub type Value = u64;

/// Configurations (linearized set, register value) the search may visit per key before it gives
/// up with [`Verdict::Inconclusive`]. A configuration costs some 80 bytes at a few hundred
/// operations per key, so this caps the memory of one key's search near 100 MB.
pub const STATES_MAX_DEFAULT: u64 = 1_000_000;

/// How many operations an explanation lists per section, so that a failure in a long history
/// stays readable.
const EXPLANATION_OPERATIONS_MAX: usize = 20;

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Read,
    Write {
        value: Value,
    },
    /// Swap in `new` iff the key currently holds `expected` (`None`: the key is absent).
    Cas {
        expected: Option<Value>,
        new: Value,
    },
}

/// How the operation ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A completed read and the value it saw (`None`: the key was absent).
    Read { value: Option<Value> },
    /// A completed write.
    Written,
    /// A completed compare-and-swap and whether it swapped.
    Cas { swapped: bool },
    /// The system said it definitely did not happen (e.g. the proposal was rejected). Ignored.
    Failed,
    /// Timed out or crashed: it may or may not have taken effect, at any time after invoke.
    Unknown,
}

/// One client operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Unique within a history.
    pub id: u64,
    pub client: u64,
    pub key: Key,
    pub kind: OpKind,
    pub invoke_time: u64,
    /// `None` iff the outcome is [`Outcome::Unknown`].
    pub complete_time: Option<u64>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists for this key's operations; `explanation` says where the search got stuck.
    NotLinearizable {
        key: Key,
        explanation: String,
    },
    /// The search on `key` spent its budget of `explored` configurations without an answer.
    Inconclusive {
        key: Key,
        explored: u64,
    },
}

/// A history that cannot be judged because it is malformed. Nothing is checked when one is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryError {
    DuplicateId {
        id: u64,
    },
    CompletesBeforeInvoke {
        id: u64,
        invoke_time: u64,
        complete_time: u64,
    },
    /// The outcome says the client got an answer, but no completion time was recorded.
    CompleteTimeMissing {
        id: u64,
        outcome: Outcome,
    },
    /// The outcome is unknown, yet a completion time was recorded.
    CompleteTimeUnexpected {
        id: u64,
        complete_time: u64,
    },
    OutcomeDoesNotFitKind {
        id: u64,
        kind: OpKind,
        outcome: Outcome,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::DuplicateId { id } => {
                write!(
                    formatter,
                    "operation id {id} appears more than once in the history"
                )
            }
            HistoryError::CompletesBeforeInvoke {
                id,
                invoke_time,
                complete_time,
            } => write!(
                formatter,
                "operation {id} completes at {complete_time}, before its invoke at {invoke_time}"
            ),
            HistoryError::CompleteTimeMissing { id, outcome } => write!(
                formatter,
                "operation {id} has outcome {outcome:?} but no complete_time; \
                 only Unknown operations may lack one"
            ),
            HistoryError::CompleteTimeUnexpected { id, complete_time } => write!(
                formatter,
                "operation {id} has outcome Unknown but complete_time {complete_time}; \
                 Unknown operations must have none"
            ),
            HistoryError::OutcomeDoesNotFitKind { id, kind, outcome } => {
                write!(
                    formatter,
                    "operation {id} of kind {kind:?} cannot end with outcome {outcome:?}"
                )
            }
        }
    }
}

impl std::error::Error for HistoryError {}

/// Renders a register value; `None` is an absent key.
struct Shown(Option<Value>);

impl fmt::Display for Shown {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(formatter, "{value}"),
            None => formatter.write_str("absent"),
        }
    }
}

/// One line, e.g. `c3 k2 cas(5->7) [120,140] swapped` or `c1 k2 write(4) [7,?] unknown`.
impl fmt::Display for Operation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "c{} k{} ", self.client, self.key)?;
        match self.kind {
            OpKind::Read => formatter.write_str("read")?,
            OpKind::Write { value } => write!(formatter, "write({value})")?,
            OpKind::Cas { expected, new } => write!(formatter, "cas({}->{new})", Shown(expected))?,
        }
        match self.complete_time {
            Some(complete_time) => write!(formatter, " [{},{complete_time}] ", self.invoke_time)?,
            None => write!(formatter, " [{},?] ", self.invoke_time)?,
        }
        match self.outcome {
            Outcome::Read { value } => write!(formatter, "-> {}", Shown(value)),
            Outcome::Written => formatter.write_str("ok"),
            Outcome::Cas { swapped: true } => formatter.write_str("swapped"),
            Outcome::Cas { swapped: false } => formatter.write_str("not swapped"),
            Outcome::Failed => formatter.write_str("failed"),
            Outcome::Unknown => formatter.write_str("unknown"),
        }
    }
}

/// Checks `history` with [`STATES_MAX_DEFAULT`] configurations per key.
pub fn check(history: &[Operation]) -> Result<Verdict, HistoryError> {
    check_with_budget(history, STATES_MAX_DEFAULT)
}

/// Checks `history`, letting each key's search visit at most `states_max` configurations.
///
/// Returns an error, and checks nothing, if the history is malformed. A definite violation on
/// any key wins over an inconclusive key, because it is the more useful answer.
pub fn check_with_budget(history: &[Operation], states_max: u64) -> Result<Verdict, HistoryError> {
    let sub_histories = sub_histories(history)?;
    let mut inconclusive = None;
    for (key, operations) in &sub_histories {
        match check_key(*key, operations, states_max) {
            Verdict::Linearizable => {}
            verdict @ Verdict::NotLinearizable { .. } => return Ok(verdict),
            verdict @ Verdict::Inconclusive { .. } => {
                inconclusive.get_or_insert(verdict);
            }
        }
    }
    Ok(inconclusive.unwrap_or(Verdict::Linearizable))
}

/// Validates every operation, then groups the ones that constrain the history by key, each
/// group in call order (so bitset indices follow time, which keeps configurations compact).
fn sub_histories(
    history: &[Operation],
) -> Result<BTreeMap<Key, Vec<KeyOperation<'_>>>, HistoryError> {
    let mut ids = HashSet::with_capacity(history.len());
    let mut sub_histories: BTreeMap<Key, Vec<KeyOperation<'_>>> = BTreeMap::new();
    for operation in history {
        if !ids.insert(operation.id) {
            return Err(HistoryError::DuplicateId { id: operation.id });
        }
        validate_times(operation)?;
        if let Some(effect) = Effect::of(operation)? {
            sub_histories
                .entry(operation.key)
                .or_default()
                .push(KeyOperation { operation, effect });
        }
    }
    for operations in sub_histories.values_mut() {
        operations.sort_by_key(|entry| (entry.operation.invoke_time, entry.operation.id));
    }
    Ok(sub_histories)
}

fn validate_times(operation: &Operation) -> Result<(), HistoryError> {
    let id = operation.id;
    match (operation.outcome, operation.complete_time) {
        (Outcome::Unknown, None) => Ok(()),
        (Outcome::Unknown, Some(complete_time)) => {
            Err(HistoryError::CompleteTimeUnexpected { id, complete_time })
        }
        (outcome, None) => Err(HistoryError::CompleteTimeMissing { id, outcome }),
        (_, Some(complete_time)) if complete_time < operation.invoke_time => {
            Err(HistoryError::CompletesBeforeInvoke {
                id,
                invoke_time: operation.invoke_time,
                complete_time,
            })
        }
        (_, Some(_)) => Ok(()),
    }
}

/// What an operation does to its register, as far as the history tells.
#[derive(Debug, Clone, Copy)]
enum Effect {
    Read {
        value: Option<Value>,
    },
    Write {
        value: Value,
    },
    CasSwapped {
        expected: Option<Value>,
        new: Value,
    },
    CasNotSwapped {
        expected: Option<Value>,
    },
    /// A compare-and-swap whose outcome is unknown; the module doc says why only a swap is placed.
    CasUnknown {
        expected: Option<Value>,
        new: Value,
    },
}

impl Effect {
    /// `None` for operations that constrain nothing (failed ones, unknown reads); an error if
    /// the outcome does not fit the kind.
    fn of(operation: &Operation) -> Result<Option<Effect>, HistoryError> {
        let effect = match (operation.kind, operation.outcome) {
            (_, Outcome::Failed) | (OpKind::Read, Outcome::Unknown) => None,
            (OpKind::Read, Outcome::Read { value }) => Some(Effect::Read { value }),
            (OpKind::Write { value }, Outcome::Written | Outcome::Unknown) => {
                Some(Effect::Write { value })
            }
            (OpKind::Cas { expected, new }, Outcome::Cas { swapped: true }) => {
                Some(Effect::CasSwapped { expected, new })
            }
            (OpKind::Cas { expected, .. }, Outcome::Cas { swapped: false }) => {
                Some(Effect::CasNotSwapped { expected })
            }
            (OpKind::Cas { expected, new }, Outcome::Unknown) => {
                Some(Effect::CasUnknown { expected, new })
            }
            (kind, outcome) => {
                return Err(HistoryError::OutcomeDoesNotFitKind {
                    id: operation.id,
                    kind,
                    outcome,
                })
            }
        };
        Ok(effect)
    }

    /// The register value after this effect, or `None` if it cannot take effect on `state`.
    fn apply(self, state: Option<Value>) -> Option<Option<Value>> {
        match self {
            Effect::Read { value } => (state == value).then_some(state),
            Effect::Write { value } => Some(Some(value)),
            Effect::CasSwapped { expected, new } | Effect::CasUnknown { expected, new } => {
                (state == expected).then_some(Some(new))
            }
            Effect::CasNotSwapped { expected } => (state != expected).then_some(state),
        }
    }

    /// Why `apply(state)` fails, in the client's terms.
    fn conflict(self, state: Option<Value>) -> String {
        let held = Shown(state);
        match self {
            Effect::Read { value } => {
                format!("returned {} but the register holds {held}", Shown(value))
            }
            Effect::Write { .. } => "a write always fits".to_owned(),
            Effect::CasSwapped { expected, .. } => {
                format!(
                    "swapped, so it saw {}, but the register holds {held}",
                    Shown(expected)
                )
            }
            Effect::CasNotSwapped { expected } => {
                format!(
                    "did not swap, so it did not see {held}, but the register holds {}",
                    Shown(expected)
                )
            }
            Effect::CasUnknown { expected, .. } => {
                format!(
                    "unknown; it could only swap on {}, but the register holds {held}",
                    Shown(expected)
                )
            }
        }
    }
}

struct KeyOperation<'a> {
    operation: &'a Operation,
    effect: Effect,
}

impl KeyOperation<'_> {
    /// Completed operations must be placed; unknown ones may never have happened.
    fn required(&self) -> bool {
        self.operation.complete_time.is_some()
    }
}

fn check_key(key: Key, operations: &[KeyOperation<'_>], states_max: u64) -> Verdict {
    let mut search = Search::new(operations);
    match search.run(states_max) {
        SearchEnd::Linearized => Verdict::Linearizable,
        SearchEnd::BudgetSpent => Verdict::Inconclusive {
            key,
            explored: search.explored(),
        },
        SearchEnd::Exhausted => Verdict::NotLinearizable {
            key,
            explanation: search.explain(key),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Head,
    Tail,
    Call { operation: usize },
    Return { operation: usize },
}

#[derive(Debug, Clone, Copy)]
struct EventNode {
    previous: usize,
    next: usize,
    event: Event,
}

/// Call and return events in time order, with sentinels at both ends. Lifting and unlifting are
/// O(1) and undo each other exactly when done in stack order (Knuth's dancing links), which is
/// what lets the search backtrack without copying the list. Node indices never change, so an
/// index is also the event's position in time order.
struct EventList {
    nodes: Vec<EventNode>,
    call_node: Vec<usize>,
    return_node: Vec<Option<usize>>,
}

const HEAD_NODE: usize = 0;

impl EventList {
    fn new(operations: &[KeyOperation<'_>]) -> EventList {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * operations.len());
        for (index, entry) in operations.iter().enumerate() {
            events.push((entry.operation.invoke_time, false, index));
            if let Some(complete_time) = entry.operation.complete_time {
                events.push((complete_time, true, index));
            }
        }
        // `false < true`: at equal time calls come first, so touching intervals are concurrent.
        events.sort_unstable();
        let mut list = EventList {
            nodes: Vec::with_capacity(events.len() + 2),
            call_node: vec![0; operations.len()],
            return_node: vec![None; operations.len()],
        };
        list.push(Event::Head);
        for (_, is_return, operation) in events {
            let node = list.nodes.len();
            if is_return {
                list.return_node[operation] = Some(node);
                list.push(Event::Return { operation });
            } else {
                list.call_node[operation] = node;
                list.push(Event::Call { operation });
            }
        }
        list.push(Event::Tail);
        list
    }

    fn push(&mut self, event: Event) {
        let node = self.nodes.len();
        self.nodes.push(EventNode {
            previous: node.saturating_sub(1),
            next: node + 1,
            event,
        });
    }

    fn first(&self) -> usize {
        self.nodes[HEAD_NODE].next
    }

    fn next(&self, node: usize) -> usize {
        self.nodes[node].next
    }

    fn event(&self, node: usize) -> Event {
        self.nodes[node].event
    }

    fn lift(&mut self, operation: usize) {
        self.unlink(self.call_node[operation]);
        if let Some(node) = self.return_node[operation] {
            self.unlink(node);
        }
    }

    fn unlift(&mut self, operation: usize) {
        if let Some(node) = self.return_node[operation] {
            self.relink(node);
        }
        self.relink(self.call_node[operation]);
    }

    fn unlink(&mut self, node: usize) {
        let EventNode { previous, next, .. } = self.nodes[node];
        self.nodes[previous].next = next;
        self.nodes[next].previous = previous;
    }

    fn relink(&mut self, node: usize) {
        let EventNode { previous, next, .. } = self.nodes[node];
        self.nodes[previous].next = node;
        self.nodes[next].previous = node;
    }
}

/// Bitset of linearized operations, indexed like the key's sub-history.
#[derive(Debug, Clone, Default)]
struct LinearizedSet {
    words: Vec<u64>,
}

impl LinearizedSet {
    fn new(operations_count: usize) -> LinearizedSet {
        LinearizedSet {
            words: vec![0; operations_count.div_ceil(64)],
        }
    }

    fn insert(&mut self, operation: usize) {
        self.words[operation / 64] |= 1 << (operation % 64);
    }

    fn remove(&mut self, operation: usize) {
        self.words[operation / 64] &= !(1 << (operation % 64));
    }

    fn contains(&self, operation: usize) -> bool {
        self.words[operation / 64] & (1 << (operation % 64)) != 0
    }

    /// Operations are numbered in call order and are linearized roughly in that order, so a set is
    /// mostly a run of full words and a short tail. Storing only the tail keeps memory per
    /// configuration near constant on long histories instead of linear in their length.
    fn configuration(&self, state: Option<Value>) -> Configuration {
        let full_words_count = self
            .words
            .iter()
            .take_while(|word| **word == u64::MAX)
            .count();
        let used_words_count = self
            .words
            .iter()
            .rposition(|word| *word != 0)
            .map_or(0, |index| index + 1);
        let tail_words =
            self.words[full_words_count..used_words_count.max(full_words_count)].into();
        Configuration {
            full_words_count,
            tail_words,
            state,
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Configuration {
    full_words_count: usize,
    tail_words: Box<[u64]>,
    state: Option<Value>,
}

/// One linearized operation on the search stack, with what is needed to undo it.
#[derive(Debug, Clone, Copy)]
struct Frame {
    operation: usize,
    state_before: Option<Value>,
}

/// The configuration with the most operations placed, kept to explain a failure.
#[derive(Debug, Clone, Default)]
struct Deepest {
    depth: usize,
    last_operations: Vec<usize>,
    linearized: LinearizedSet,
    state: Option<Value>,
}

enum SearchEnd {
    Linearized,
    Exhausted,
    BudgetSpent,
}

struct Search<'a> {
    operations: &'a [KeyOperation<'a>],
    list: EventList,
    linearized: LinearizedSet,
    state: Option<Value>,
    stack: Vec<Frame>,
    seen: HashSet<Configuration>,
    required_remaining: usize,
    deepest: Deepest,
}

impl<'a> Search<'a> {
    fn new(operations: &'a [KeyOperation<'a>]) -> Search<'a> {
        let linearized = LinearizedSet::new(operations.len());
        Search {
            operations,
            list: EventList::new(operations),
            deepest: Deepest {
                linearized: linearized.clone(),
                ..Deepest::default()
            },
            linearized,
            state: None,
            stack: Vec::with_capacity(operations.len()),
            seen: HashSet::new(),
            required_remaining: operations.iter().filter(|entry| entry.required()).count(),
        }
    }

    fn explored(&self) -> u64 {
        self.seen.len() as u64
    }

    fn run(&mut self, states_max: u64) -> SearchEnd {
        let mut node = self.list.first();
        loop {
            if self.required_remaining == 0 {
                return SearchEnd::Linearized;
            }
            match self.list.event(node) {
                Event::Call { operation } => {
                    if self.explored() >= states_max {
                        return SearchEnd::BudgetSpent;
                    }
                    node = if self.try_linearize(operation) {
                        self.list.first()
                    } else {
                        self.list.next(node)
                    };
                }
                Event::Return { .. } => match self.backtrack() {
                    Some(operation) => node = self.list.next(self.list.call_node[operation]),
                    None => return SearchEnd::Exhausted,
                },
                Event::Head | Event::Tail => {
                    unreachable!("a required operation remains, so its return lies before the tail")
                }
            }
        }
    }

    /// Places `operation` next if it fits the register and leads somewhere not yet explored.
    fn try_linearize(&mut self, operation: usize) -> bool {
        let entry = &self.operations[operation];
        let Some(state_after) = entry.effect.apply(self.state) else {
            return false;
        };
        self.linearized.insert(operation);
        if !self.seen.insert(self.linearized.configuration(state_after)) {
            self.linearized.remove(operation);
            return false;
        }
        self.stack.push(Frame {
            operation,
            state_before: self.state,
        });
        self.state = state_after;
        self.list.lift(operation);
        if entry.required() {
            self.required_remaining -= 1;
        }
        self.record_if_deepest();
        true
    }

    /// Undoes the last placement; returns the operation undone, or `None` if nothing is left.
    fn backtrack(&mut self) -> Option<usize> {
        let frame = self.stack.pop()?;
        self.list.unlift(frame.operation);
        self.linearized.remove(frame.operation);
        self.state = frame.state_before;
        if self.operations[frame.operation].required() {
            self.required_remaining += 1;
        }
        Some(frame.operation)
    }

    fn record_if_deepest(&mut self) {
        if self.stack.len() <= self.deepest.depth {
            return;
        }
        let tail_start = self.stack.len().saturating_sub(EXPLANATION_OPERATIONS_MAX);
        self.deepest.depth = self.stack.len();
        self.deepest.last_operations = self.stack[tail_start..]
            .iter()
            .map(|frame| frame.operation)
            .collect();
        self.deepest.linearized.clone_from(&self.linearized);
        self.deepest.state = self.state;
    }

    /// Describes the deepest configuration: the order that placed the most operations, the
    /// operation whose completion it could not get past, and why each candidate did not fit.
    fn explain(&self, key: Key) -> String {
        let deepest = &self.deepest;
        let mut text = format!(
            "key {key}: no linearization of its {} operations exists ({} configurations explored).\n",
            self.operations.len(),
            self.explored()
        );
        text += &format!(
            "The longest linearizable prefix found places {} operations and leaves the register at {}",
            deepest.depth,
            Shown(deepest.state)
        );
        text += &self.list_operations(&deepest.last_operations, deepest.depth);
        let Some(blocking) = self.blocking_operation() else {
            return text;
        };
        text += &format!(
            "Next, {} must take effect before it completes, but no pending operation can be placed:\n",
            self.operations[blocking].operation
        );
        for candidate in self
            .candidates(blocking)
            .into_iter()
            .take(EXPLANATION_OPERATIONS_MAX)
        {
            let entry = &self.operations[candidate];
            let reason = match entry.effect.apply(deepest.state) {
                None => {
                    entry.effect.conflict(deepest.state) + &self.never_written_note(entry.effect)
                }
                Some(_) => "fits here, but every order that places it here fails later".to_owned(),
            };
            text += &format!("  {}: {reason}\n", entry.operation);
        }
        text
    }

    /// A read of a value nobody wrote fails wherever it goes; saying so spares the reader the
    /// search for a better order.
    fn never_written_note(&self, effect: Effect) -> String {
        let Effect::Read { value: Some(value) } = effect else {
            return String::new();
        };
        let written = self.operations.iter().any(|entry| match entry.effect {
            Effect::Write { value: new }
            | Effect::CasSwapped { new, .. }
            | Effect::CasUnknown { new, .. } => new == value,
            Effect::Read { .. } | Effect::CasNotSwapped { .. } => false,
        });
        if written {
            return String::new();
        }
        format!(", and no operation that may have taken effect on this key writes {value}")
    }

    fn list_operations(&self, last_operations: &[usize], depth: usize) -> String {
        let mut text = match depth - last_operations.len() {
            0 if depth == 0 => return ".\n".to_owned(),
            0 => ":\n".to_owned(),
            elided => format!("; after {elided} earlier operations it places:\n"),
        };
        for operation in last_operations {
            text += &format!("  {}\n", self.operations[*operation].operation);
        }
        text
    }

    /// The unplaced completed operation whose return comes first in time order.
    fn blocking_operation(&self) -> Option<usize> {
        (0..self.operations.len())
            .filter(|operation| !self.deepest.linearized.contains(*operation))
            .filter_map(|operation| self.list.return_node[operation].map(|node| (node, operation)))
            .min()
            .map(|(_, operation)| operation)
    }

    /// Unplaced operations invoked before `blocking` returns: those that could have come next.
    /// Unknown operations that do not fit are left out: they may never have happened, so their
    /// not fitting explains nothing.
    fn candidates(&self, blocking: usize) -> Vec<usize> {
        let return_node =
            self.list.return_node[blocking].expect("the blocking operation completed");
        (0..self.operations.len())
            .filter(|operation| !self.deepest.linearized.contains(*operation))
            .filter(|operation| self.list.call_node[*operation] < return_node)
            .filter(|operation| {
                let entry = &self.operations[*operation];
                entry.required() || entry.effect.apply(self.deepest.state).is_some()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Builds histories tersely; ids are assigned in insertion order.
    #[derive(Default)]
    struct History {
        operations: Vec<Operation>,
    }

    impl History {
        fn push(
            &mut self,
            client: u64,
            key: Key,
            kind: OpKind,
            interval: (u64, Option<u64>),
            outcome: Outcome,
        ) -> &mut Self {
            let (invoke_time, complete_time) = interval;
            let id = self.operations.len() as u64;
            self.operations.push(Operation {
                id,
                client,
                key,
                kind,
                invoke_time,
                complete_time,
                outcome,
            });
            self
        }

        fn write(
            &mut self,
            client: u64,
            key: Key,
            value: Value,
            interval: (u64, u64),
        ) -> &mut Self {
            self.push(
                client,
                key,
                OpKind::Write { value },
                (interval.0, Some(interval.1)),
                Outcome::Written,
            )
        }

        fn read(
            &mut self,
            client: u64,
            key: Key,
            value: Option<Value>,
            interval: (u64, u64),
        ) -> &mut Self {
            self.push(
                client,
                key,
                OpKind::Read,
                (interval.0, Some(interval.1)),
                Outcome::Read { value },
            )
        }

        fn cas(
            &mut self,
            client: u64,
            key: Key,
            swap: (Option<Value>, Value),
            swapped: bool,
            interval: (u64, u64),
        ) -> &mut Self {
            let kind = OpKind::Cas {
                expected: swap.0,
                new: swap.1,
            };
            self.push(
                client,
                key,
                kind,
                (interval.0, Some(interval.1)),
                Outcome::Cas { swapped },
            )
        }

        fn unknown(&mut self, client: u64, key: Key, kind: OpKind, invoke_time: u64) -> &mut Self {
            self.push(client, key, kind, (invoke_time, None), Outcome::Unknown)
        }

        fn failed(
            &mut self,
            client: u64,
            key: Key,
            kind: OpKind,
            interval: (u64, u64),
        ) -> &mut Self {
            self.push(
                client,
                key,
                kind,
                (interval.0, Some(interval.1)),
                Outcome::Failed,
            )
        }

        fn verdict(&self) -> Verdict {
            check(&self.operations).expect("test histories are well formed")
        }
    }

    fn assert_linearizable(history: &History) {
        assert_eq!(
            history.verdict(),
            Verdict::Linearizable,
            "history: {:#?}",
            history.operations
        );
    }

    /// Returns the explanation so tests can look at it.
    fn assert_not_linearizable(history: &History, expected_key: Key) -> String {
        match history.verdict() {
            Verdict::NotLinearizable { key, explanation } => {
                assert_eq!(
                    key, expected_key,
                    "violation reported on the wrong key: {explanation}"
                );
                explanation
            }
            verdict => panic!("expected NotLinearizable on key {expected_key}, got {verdict:?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&History::default());
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let mut history = History::default();
        history
            .read(1, 1, None, (0, 1))
            .write(1, 1, 5, (2, 3))
            .read(2, 1, Some(5), (4, 5))
            .write(2, 1, 6, (6, 7))
            .read(1, 1, Some(6), (8, 9));
        assert_linearizable(&history);
    }

    #[test]
    fn concurrent_read_may_see_the_old_value() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .write(1, 1, 2, (20, 40))
            .read(2, 1, Some(1), (25, 30));
        assert_linearizable(&history);
    }

    #[test]
    fn concurrent_read_may_see_the_new_value() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .write(1, 1, 2, (20, 40))
            .read(2, 1, Some(2), (25, 30));
        assert_linearizable(&history);
    }

    #[test]
    fn search_backtracks_out_of_a_wrong_first_order() {
        // Call order suggests write 1 then write 2; only the reverse explains the read.
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .write(2, 1, 2, (1, 10))
            .read(3, 1, Some(1), (20, 30));
        assert_linearizable(&history);
    }

    #[test]
    fn cas_chain_is_linearizable() {
        let mut history = History::default();
        history
            .cas(1, 1, (None, 1), true, (0, 1))
            .cas(2, 1, (None, 9), false, (2, 3))
            .cas(1, 1, (Some(1), 2), true, (4, 5))
            .cas(2, 1, (Some(1), 3), false, (6, 7))
            .cas(3, 1, (Some(2), 3), true, (8, 9))
            .read(1, 1, Some(3), (10, 11));
        assert_linearizable(&history);
    }

    #[test]
    fn concurrent_cas_race_has_one_winner() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 1))
            .cas(2, 1, (Some(1), 2), true, (5, 20))
            .cas(3, 1, (Some(1), 3), false, (6, 21))
            .read(1, 1, Some(2), (30, 31));
        assert_linearizable(&history);
    }

    #[test]
    fn unknown_write_observed_later_is_linearizable() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .unknown(2, 1, OpKind::Write { value: 2 }, 15)
            .read(3, 1, Some(1), (20, 30))
            .read(3, 1, Some(2), (100, 110));
        assert_linearizable(&history);
    }

    #[test]
    fn unknown_write_never_observed_is_linearizable() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .unknown(2, 1, OpKind::Write { value: 2 }, 15)
            .read(3, 1, Some(1), (20, 30))
            .read(3, 1, Some(1), (100, 110));
        assert_linearizable(&history);
    }

    #[test]
    fn unknown_write_cannot_be_undone_once_observed() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .unknown(2, 1, OpKind::Write { value: 2 }, 15)
            .read(3, 1, Some(2), (20, 30))
            .read(3, 1, Some(1), (100, 110));
        assert_not_linearizable(&history, 1);
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_its_invoke() {
        let mut history = History::default();
        history
            .read(3, 1, Some(2), (0, 10))
            .unknown(2, 1, OpKind::Write { value: 2 }, 15);
        assert_not_linearizable(&history, 1);
    }

    #[test]
    fn unknown_cas_may_have_swapped() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .unknown(
                2,
                1,
                OpKind::Cas {
                    expected: Some(1),
                    new: 2,
                },
                15,
            )
            .read(3, 1, Some(2), (20, 30));
        assert_linearizable(&history);
    }

    #[test]
    fn unknown_cas_cannot_swap_on_a_value_it_did_not_expect() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .unknown(
                2,
                1,
                OpKind::Cas {
                    expected: Some(7),
                    new: 2,
                },
                15,
            )
            .read(3, 1, Some(2), (20, 30));
        assert_not_linearizable(&history, 1);
    }

    #[test]
    fn unknown_read_constrains_nothing() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .unknown(2, 1, OpKind::Read, 15)
            .read(3, 1, Some(1), (20, 30));
        assert_linearizable(&history);
    }

    #[test]
    fn stale_read_after_completed_write_is_not_linearizable() {
        let mut history = History::default();
        history.write(1, 1, 1, (0, 10)).read(2, 1, None, (20, 30));
        assert_not_linearizable(&history, 1);
    }

    #[test]
    fn reads_contradicting_real_time_order_are_not_linearizable() {
        // Both writes overlap, so either order is allowed, but read 2 starts after read 1 ended.
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .write(2, 1, 2, (0, 10))
            .read(3, 1, Some(2), (20, 30))
            .read(4, 1, Some(1), (40, 50));
        assert_not_linearizable(&history, 1);
    }

    #[test]
    fn cas_on_overwritten_value_is_not_linearizable() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .write(2, 1, 2, (20, 30))
            .cas(3, 1, (Some(1), 3), true, (40, 50));
        assert_not_linearizable(&history, 1);
    }

    #[test]
    fn cas_not_swapped_on_the_value_it_expected_is_not_linearizable() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .cas(2, 1, (Some(1), 3), false, (20, 30));
        assert_not_linearizable(&history, 1);
    }

    #[test]
    fn lost_acknowledged_write_is_not_linearizable() {
        // Write 2 is acknowledged, is seen by a concurrent reader, yet a later read sees write 1.
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .write(2, 1, 2, (20, 30))
            .read(3, 1, Some(2), (25, 35))
            .read(4, 1, Some(1), (40, 50));
        assert_not_linearizable(&history, 1);
    }

    #[test]
    fn failed_write_value_read_is_not_linearizable() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .failed(2, 1, OpKind::Write { value: 5 }, (20, 30))
            .read(3, 1, Some(5), (25, 40));
        let explanation = assert_not_linearizable(&history, 1);
        assert!(
            explanation.contains("no operation that may have taken effect on this key writes 5"),
            "{explanation}"
        );
    }

    #[test]
    fn failed_cas_that_would_have_swapped_changes_nothing() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .failed(
                2,
                1,
                OpKind::Cas {
                    expected: Some(1),
                    new: 5,
                },
                (20, 30),
            )
            .read(3, 1, Some(1), (40, 50));
        assert_linearizable(&history);
    }

    #[test]
    fn intervals_touching_at_one_tick_are_concurrent() {
        let mut history = History::default();
        history.write(1, 1, 1, (0, 10)).read(2, 1, None, (10, 20));
        assert_linearizable(&history);
        let mut history = History::default();
        history.write(1, 1, 1, (0, 10)).read(2, 1, None, (11, 20));
        assert_not_linearizable(&history, 1);
    }

    #[test]
    fn violation_is_reported_on_its_own_key() {
        let mut history = History::default();
        history
            .write(1, 1, 1, (0, 10))
            .write(2, 2, 7, (1, 11))
            .read(3, 1, Some(1), (20, 30))
            .read(4, 2, None, (21, 31))
            .write(1, 1, 2, (40, 50))
            .read(3, 1, Some(2), (60, 70));
        let explanation = assert_not_linearizable(&history, 2);
        assert!(explanation.starts_with("key 2:"), "{explanation}");
    }

    #[test]
    fn keys_are_independent_registers() {
        // On one register this is a stale read; on two keys each read is fine.
        let mut history = History::default();
        history.write(1, 1, 1, (0, 10)).read(2, 2, None, (20, 30));
        assert_linearizable(&history);
    }

    #[test]
    fn explanation_names_the_operation_that_cannot_be_placed() {
        let mut history = History::default();
        history
            .write(1, 2, 7, (100, 110))
            .read(3, 2, Some(5), (120, 140));
        let explanation = assert_not_linearizable(&history, 2);
        assert!(
            explanation.contains("c1 k2 write(7) [100,110] ok"),
            "{explanation}"
        );
        assert!(
            explanation.contains("c3 k2 read [120,140] -> 5: returned 5 but the register holds 7"),
            "{explanation}"
        );
    }

    #[test]
    fn display_is_one_compact_line() {
        let mut history = History::default();
        history
            .cas(3, 2, (Some(5), 7), true, (120, 140))
            .cas(3, 2, (None, 7), false, (1, 2))
            .read(1, 4, None, (3, 4))
            .unknown(1, 4, OpKind::Write { value: 9 }, 5)
            .failed(2, 4, OpKind::Read, (6, 8));
        let shown: Vec<String> = history.operations.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "c3 k2 cas(5->7) [120,140] swapped",
                "c3 k2 cas(absent->7) [1,2] not swapped",
                "c1 k4 read [3,4] -> absent",
                "c1 k4 write(9) [5,?] unknown",
                "c2 k4 read [6,8] failed",
            ]
        );
    }

    fn one_operation(
        kind: OpKind,
        interval: (u64, Option<u64>),
        outcome: Outcome,
    ) -> Vec<Operation> {
        let (invoke_time, complete_time) = interval;
        vec![Operation {
            id: 4,
            client: 1,
            key: 1,
            kind,
            invoke_time,
            complete_time,
            outcome,
        }]
    }

    #[test]
    fn malformed_histories_are_rejected() {
        let write = OpKind::Write { value: 1 };
        let cases = [
            (
                one_operation(write, (10, Some(9)), Outcome::Written),
                HistoryError::CompletesBeforeInvoke {
                    id: 4,
                    invoke_time: 10,
                    complete_time: 9,
                },
            ),
            (
                one_operation(write, (10, None), Outcome::Written),
                HistoryError::CompleteTimeMissing {
                    id: 4,
                    outcome: Outcome::Written,
                },
            ),
            (
                one_operation(write, (10, Some(11)), Outcome::Unknown),
                HistoryError::CompleteTimeUnexpected {
                    id: 4,
                    complete_time: 11,
                },
            ),
            (
                one_operation(OpKind::Read, (10, Some(11)), Outcome::Cas { swapped: true }),
                HistoryError::OutcomeDoesNotFitKind {
                    id: 4,
                    kind: OpKind::Read,
                    outcome: Outcome::Cas { swapped: true },
                },
            ),
            (
                one_operation(write, (10, Some(11)), Outcome::Read { value: None }),
                HistoryError::OutcomeDoesNotFitKind {
                    id: 4,
                    kind: write,
                    outcome: Outcome::Read { value: None },
                },
            ),
        ];
        for (history, expected) in cases {
            assert_eq!(check(&history), Err(expected));
        }
    }

    #[test]
    fn duplicate_id_is_rejected() {
        let mut history = one_operation(OpKind::Read, (1, Some(2)), Outcome::Read { value: None });
        history.push(history[0].clone());
        let error = check(&history).unwrap_err();
        assert_eq!(error, HistoryError::DuplicateId { id: 4 });
        assert_eq!(
            error.to_string(),
            "operation id 4 appears more than once in the history"
        );
    }

    /// Shape of a generated history.
    #[derive(Debug, Clone, Copy)]
    struct Shape {
        clients: u64,
        keys: u64,
        operations: usize,
        values: u64,
        gap_ticks_max: u64,
        duration_ticks_max: u64,
        unknown_percent: u64,
        failed_percent: u64,
    }

    /// A value the generator never writes.
    const NEVER_WRITTEN: Value = 1_000_000;

    fn random_kind(rng: &mut ChaCha8Rng, values: u64) -> OpKind {
        match rng.random_range(0..3) {
            0 => OpKind::Read,
            1 => OpKind::Write {
                value: rng.random_range(1..=values),
            },
            _ => {
                let expected = rng.random_bool(0.75).then(|| rng.random_range(1..=values));
                OpKind::Cas {
                    expected,
                    new: rng.random_range(1..=values),
                }
            }
        }
    }

    /// Applies `kind` to the register and returns what the client would see.
    fn apply_to_register(register: &mut Option<Value>, kind: OpKind) -> Outcome {
        match kind {
            OpKind::Read => Outcome::Read { value: *register },
            OpKind::Write { value } => {
                *register = Some(value);
                Outcome::Written
            }
            OpKind::Cas { expected, new } => {
                let swapped = *register == expected;
                if swapped {
                    *register = Some(new);
                }
                Outcome::Cas { swapped }
            }
        }
    }

    /// Generates a history that is linearizable by construction: every operation that takes
    /// effect gets a linearization point inside its interval (or, for unknown ones, any time
    /// after invoke), and results come from real registers applied in linearization-point order.
    fn generate(rng: &mut ChaCha8Rng, shape: Shape) -> Vec<Operation> {
        let mut client_free_tick = vec![0; shape.clients as usize];
        let mut operations = Vec::with_capacity(shape.operations);
        let mut points = Vec::with_capacity(shape.operations);
        for index in 0..shape.operations {
            let client = rng.random_range(0..shape.clients);
            let invoke_time =
                client_free_tick[client as usize] + rng.random_range(0..=shape.gap_ticks_max);
            let complete_time = invoke_time + rng.random_range(0..=shape.duration_ticks_max);
            client_free_tick[client as usize] = complete_time + 1;
            let fate = rng.random_range(0..100);
            let (complete_time, outcome, point) = if fate < shape.failed_percent {
                (Some(complete_time), Outcome::Failed, None)
            } else if fate < shape.failed_percent + shape.unknown_percent {
                let latest_tick = invoke_time + 3 * shape.duration_ticks_max;
                let point = rng
                    .random_bool(0.5)
                    .then(|| rng.random_range(invoke_time..=latest_tick));
                (None, Outcome::Unknown, point)
            } else {
                (
                    Some(complete_time),
                    Outcome::Written,
                    Some(rng.random_range(invoke_time..=complete_time)),
                )
            };
            if let Some(point) = point {
                points.push((point, index));
            }
            let key = rng.random_range(0..shape.keys);
            let kind = random_kind(rng, shape.values);
            operations.push(Operation {
                id: index as u64,
                client,
                key,
                kind,
                invoke_time,
                complete_time,
                outcome,
            });
        }
        points.sort_unstable();
        let mut registers = BTreeMap::new();
        for (_, index) in points {
            let operation: &mut Operation = &mut operations[index];
            let outcome =
                apply_to_register(registers.entry(operation.key).or_default(), operation.kind);
            if operation.outcome != Outcome::Unknown {
                operation.outcome = outcome;
            }
        }
        operations
    }

    fn random_shape(rng: &mut ChaCha8Rng) -> Shape {
        Shape {
            clients: rng.random_range(1..=4),
            keys: rng.random_range(1..=3),
            operations: rng.random_range(1..=30),
            values: rng.random_range(1..=3),
            gap_ticks_max: 3,
            duration_ticks_max: rng.random_range(0..=10),
            unknown_percent: 10,
            failed_percent: 10,
        }
    }

    #[test]
    fn generated_histories_are_linearizable_until_a_read_is_corrupted() {
        let mut corrupted_count = 0;
        for seed in 0..400 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let shape = random_shape(&mut rng);
            let mut history = generate(&mut rng, shape);
            let verdict = check(&history).unwrap();
            assert_eq!(
                verdict,
                Verdict::Linearizable,
                "seed {seed}, {shape:?}: {history:#?}"
            );

            let completed_reads: Vec<usize> = (0..history.len())
                .filter(|index| matches!(history[*index].outcome, Outcome::Read { .. }))
                .collect();
            if completed_reads.is_empty() {
                continue;
            }
            let corrupted = completed_reads[rng.random_range(0..completed_reads.len())];
            history[corrupted].outcome = Outcome::Read {
                value: Some(NEVER_WRITTEN),
            };
            corrupted_count += 1;
            match check(&history).unwrap() {
                Verdict::NotLinearizable { key, .. } => {
                    assert_eq!(key, history[corrupted].key, "seed {seed}")
                }
                verdict => panic!(
                    "seed {seed}: corrupted read {} gave {verdict:?}",
                    history[corrupted]
                ),
            }
        }
        assert!(
            corrupted_count > 200,
            "too few histories had a read to corrupt: {corrupted_count}"
        );
    }

    fn heavy_overlap_history() -> Vec<Operation> {
        let shape = Shape {
            clients: 6,
            keys: 1,
            operations: 300,
            values: 4,
            gap_ticks_max: 1,
            duration_ticks_max: 30,
            unknown_percent: 3,
            failed_percent: 3,
        };
        generate(&mut ChaCha8Rng::seed_from_u64(7), shape)
    }

    #[test]
    fn heavy_overlap_on_one_key_is_checked_within_the_default_budget() {
        assert_eq!(check(&heavy_overlap_history()), Ok(Verdict::Linearizable));
    }

    #[test]
    fn tiny_budget_on_large_concurrent_history_is_inconclusive() {
        let verdict = check_with_budget(&heavy_overlap_history(), 10);
        assert_eq!(
            verdict,
            Ok(Verdict::Inconclusive {
                key: 0,
                explored: 10
            })
        );
    }

    #[test]
    fn violation_on_one_key_wins_over_an_inconclusive_key() {
        let mut history = heavy_overlap_history();
        let next_id = history.len() as u64;
        history.push(Operation {
            id: next_id,
            client: 9,
            key: 5,
            kind: OpKind::Read,
            invoke_time: 0,
            complete_time: Some(1),
            outcome: Outcome::Read { value: Some(3) },
        });
        let verdict = check_with_budget(&history, 10).unwrap();
        assert!(
            matches!(verdict, Verdict::NotLinearizable { key: 5, .. }),
            "{verdict:?}"
        );
    }

    #[test]
    fn long_sequential_history_does_not_exhaust_the_stack() {
        let mut history = History::default();
        for step in 0..20_000 {
            history.write(1, 1, step, (4 * step, 4 * step + 1)).read(
                2,
                1,
                Some(step),
                (4 * step + 2, 4 * step + 3),
            );
        }
        assert_linearizable(&history);
        let last_read = history.operations.last_mut().unwrap();
        last_read.outcome = Outcome::Read { value: Some(0) };
        let explanation = assert_not_linearizable(&history, 1);
        assert!(
            explanation.contains("after 39979 earlier operations"),
            "{explanation}"
        );
    }
}
