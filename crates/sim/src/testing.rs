//! A tiny fake replica for testing the simulator loop before a real protocol exists: node 1 is
//! always the leader; it commits an entry as soon as it has made it durable itself (no quorum) and
//! replicates durable entries to followers, which apply what the leader says is committed. Only
//! the leader serves reads. Each restart of the leader starts a new term.
//!
//! It is deliberately simple and only "correct" for what the simulator needs to observe: one
//! leader, consistent logs, linearizable reads. [`FakeBreak`] switches turn it into a broken
//! protocol so the tests can show that the checkers catch it.

use ballot_core::{
    Entry, EntryPayload, Finding, HardState, LogIndex, LogPosition, LogView, Membership,
    MembershipChange, NodeId, ProtocolMessage, ReadMode, ReadState, Ready, Replica, ReplicaError,
    Role, SafetyChecker, Snapshot, Status, Term,
};
use bytes::Bytes;
use std::fmt;

use ballot_core::ReplicaStart;

pub const LEADER: NodeId = 1;
const SNAPSHOT_EVERY_ENTRIES: u64 = 40;
const ENTRIES_PER_MESSAGE_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeBreak {
    /// Node 2 also claims to lead the leader's term (Election Safety).
    TwoLeaders,
    /// Followers serve reads at once from their own state (linearizability).
    StaleReads,
    /// The leader forgets its last durable entry when it restarts (Leader Completeness, State
    /// Machine Safety).
    LoseEntriesOnRestart,
}

#[derive(Debug, Clone)]
pub enum Body {
    Append {
        prev: LogPosition,
        entries: Vec<Entry>,
        commit: LogIndex,
    },
    Ack {
        match_index: LogIndex,
    },
    Nack {
        hint: LogIndex,
    },
    Install {
        snapshot: Snapshot,
    },
}

#[derive(Debug, Clone)]
pub struct FakeMessage {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: Body,
}

impl fmt::Display for FakeMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}->n{} t{} ", self.from, self.to, self.term)?;
        match &self.body {
            Body::Append {
                prev,
                entries,
                commit,
            } => {
                write!(f, "Append prev={prev} n={} commit={commit}", entries.len())
            }
            Body::Ack { match_index } => write!(f, "Ack match={match_index}"),
            Body::Nack { hint } => write!(f, "Nack hint={hint}"),
            Body::Install { snapshot } => write!(f, "Install upto={}", snapshot.meta.last_included),
        }
    }
}

impl ProtocolMessage for FakeMessage {
    fn from(&self) -> NodeId {
        self.from
    }
    fn to(&self) -> NodeId {
        self.to
    }
    fn size_bytes(&self) -> usize {
        32
    }
}

pub struct Fake {
    id: NodeId,
    broken: Option<FakeBreak>,
    membership: Membership,
    term: Term,
    snapshot: Option<Snapshot>,
    log: Vec<Entry>,
    log_start: LogPosition,
    commit: LogIndex,
    handed_out: LogIndex,
    /// Leader: durable up to here. Only durable entries are replicated and committed.
    persisted: LogIndex,
    /// Leader: the new term is durable, so it may accept proposals and replicate.
    leading: bool,
    ticks: u64,
    next_index: Vec<LogIndex>,
    out: Ready<FakeMessage>,
    out_last_index: LogIndex,
    snapshot_asked: bool,
}

impl Fake {
    pub fn new(start: ReplicaStart, broken: Option<FakeBreak>) -> Fake {
        let persisted = start.persisted;
        let log_start = persisted
            .compacted
            .as_ref()
            .map_or(LogPosition::default(), |meta| meta.last_included);
        let mut fake = Fake {
            id: start.node_id,
            broken,
            membership: persisted.base_membership(),
            term: persisted.hard_state.term,
            snapshot: None,
            log: persisted.entries,
            log_start,
            commit: log_start.index,
            handed_out: log_start.index,
            persisted: 0,
            leading: false,
            ticks: 0,
            next_index: vec![1; 16],
            out: Ready::default(),
            out_last_index: 0,
            snapshot_asked: false,
        };
        if fake.id == LEADER {
            if broken == Some(FakeBreak::LoseEntriesOnRestart) && start.incarnation > 0 {
                fake.log.pop();
            }
            fake.persisted = fake.last_index();
            fake.commit = fake.persisted;
            fake.term += 1;
            fake.out.hard_state = Some(HardState {
                term: fake.term,
                voted_for: None,
                commit_index: 0,
            });
            fake.out.hard_state_needs_sync = true;
        }
        fake
    }

    fn is_leader(&self) -> bool {
        self.id == LEADER
    }

    fn last_index(&self) -> LogIndex {
        self.log.last().map_or(self.log_start.index, |e| e.index)
    }

    fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let offset = index.checked_sub(self.log_start.index + 1)?;
        self.log.get(offset as usize)
    }

    fn send(&mut self, to: NodeId, body: Body, after_persist: bool) {
        let message = FakeMessage {
            from: self.id,
            to,
            term: self.term,
            body,
        };
        if after_persist {
            self.out.messages_after_persist.push(message);
        } else {
            self.out.messages.push(message);
        }
    }

    /// Append (or replace from their first index) entries in the log and the pending write.
    fn write(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.index) else {
            return;
        };
        self.log
            .truncate((first - self.log_start.index - 1) as usize);
        self.log.extend(entries.iter().cloned());
        let keep = self
            .out
            .entries
            .iter()
            .take_while(|e| e.index < first)
            .count();
        self.out.entries.truncate(keep);
        self.out.entries.extend(entries);
    }

    fn replicate(&mut self, peer: NodeId) {
        let next = self.next_index[peer as usize];
        if next <= self.log_start.index {
            match self.snapshot.clone() {
                Some(snapshot) if snapshot.meta.last_included.index >= self.log_start.index => {
                    self.send(peer, Body::Install { snapshot }, false)
                }
                _ => self.out.snapshot_wanted = true,
            }
            return;
        }
        let prev_term = if next - 1 == self.log_start.index {
            self.log_start.term
        } else {
            self.entry(next - 1).map_or(0, |e| e.term)
        };
        let entries: Vec<Entry> = (next..=self.persisted)
            .take(ENTRIES_PER_MESSAGE_MAX)
            .filter_map(|i| self.entry(i).cloned())
            .collect();
        let body = Body::Append {
            prev: LogPosition::new(next - 1, prev_term),
            entries,
            commit: self.commit,
        };
        self.send(peer, body, false);
    }

    fn on_append(
        &mut self,
        from: NodeId,
        prev: LogPosition,
        entries: Vec<Entry>,
        commit: LogIndex,
    ) {
        let matches =
            prev.index <= self.log_start.index || self.entry_term(prev.index) == Some(prev.term);
        if !matches {
            let hint = self.last_index().min(prev.index - 1);
            self.send(from, Body::Nack { hint }, false);
            return;
        }
        let match_index = prev.index + entries.len() as u64;
        let fresh: Vec<Entry> = entries
            .into_iter()
            .filter(|e| e.index > self.log_start.index)
            .skip_while(|e| self.entry_term(e.index) == Some(e.term))
            .collect();
        self.write(fresh);
        self.commit = self.commit.max(commit.min(match_index));
        self.send(from, Body::Ack { match_index }, true);
    }

    fn on_install(&mut self, from: NodeId, snapshot: Snapshot) {
        let at = snapshot.meta.last_included;
        if at.index <= self.commit {
            self.send(
                from,
                Body::Ack {
                    match_index: self.commit,
                },
                false,
            );
            return;
        }
        self.log.clear();
        self.out.entries.clear();
        self.log_start = at;
        self.commit = at.index;
        self.handed_out = at.index;
        self.snapshot = Some(snapshot.clone());
        self.out.snapshot = Some(snapshot);
        self.send(
            from,
            Body::Ack {
                match_index: at.index,
            },
            true,
        );
    }
}

impl Replica for Fake {
    type Message = FakeMessage;

    fn id(&self) -> NodeId {
        self.id
    }

    fn tick(&mut self) {
        self.ticks += 1;
        // Replicate every other tick (`is_multiple_of` is newer than the workspace's MSRV).
        if self.is_leader() && self.leading && self.ticks & 1 == 0 {
            let peers: Vec<NodeId> = self
                .membership
                .members()
                .filter(|&p| p != self.id)
                .collect();
            for peer in peers {
                self.replicate(peer);
            }
        }
    }

    fn step(&mut self, message: FakeMessage) {
        if message.term < self.term {
            return;
        }
        if message.term > self.term && !self.is_leader() {
            self.term = message.term;
            self.out.hard_state = Some(HardState {
                term: self.term,
                voted_for: None,
                commit_index: self.commit,
            });
            self.out.hard_state_needs_sync = true;
        }
        match message.body {
            Body::Append {
                prev,
                entries,
                commit,
            } => self.on_append(message.from, prev, entries, commit),
            Body::Install { snapshot } => self.on_install(message.from, snapshot),
            Body::Ack { match_index } => {
                let next = &mut self.next_index[message.from as usize];
                *next = (*next).max(match_index + 1);
            }
            Body::Nack { hint } => {
                let next = &mut self.next_index[message.from as usize];
                *next = (*next).min(hint + 1).max(1);
            }
        }
    }

    /// The fake does not forward: only the leader takes proposals.
    fn propose_or_forward(&mut self, command: Bytes) -> Result<(), ReplicaError> {
        self.propose(command).map(|_| ())
    }

    fn propose(&mut self, command: Bytes) -> Result<LogPosition, ReplicaError> {
        if !self.is_leader() {
            return Err(ReplicaError::NotLeader {
                leader_hint: Some(LEADER),
            });
        }
        if !self.leading {
            return Err(ReplicaError::LeaderNotReady);
        }
        let entry = Entry {
            index: self.last_index() + 1,
            term: self.term,
            payload: EntryPayload::Command(command),
        };
        let position = entry.position();
        self.write(vec![entry]);
        Ok(position)
    }

    fn propose_membership_change(
        &mut self,
        change: MembershipChange,
    ) -> Result<LogPosition, ReplicaError> {
        Err(ReplicaError::InvalidMembershipChange {
            reason: format!("the fake does not do {change}"),
        })
    }

    fn read(&mut self, request_id: u64, _mode: ReadMode) -> Result<(), ReplicaError> {
        if self.is_leader() && self.leading {
            self.out.read_states.push(ReadState {
                request_id,
                index: self.commit,
            });
            Ok(())
        } else if !self.is_leader() && self.broken == Some(FakeBreak::StaleReads) {
            self.out.read_states.push(ReadState {
                request_id,
                index: 0,
            });
            Ok(())
        } else if self.is_leader() {
            Err(ReplicaError::LeaderNotReady)
        } else {
            Err(ReplicaError::NotLeader {
                leader_hint: Some(LEADER),
            })
        }
    }

    /// The fake's leader is fixed.
    fn campaign(&mut self) {}

    fn transfer_leadership(&mut self, _target: NodeId) -> Result<(), ReplicaError> {
        Err(ReplicaError::NotLeader {
            leader_hint: Some(LEADER),
        })
    }

    fn has_ready(&self) -> bool {
        !self.out.is_empty() || self.commit > self.handed_out
    }

    fn ready(&mut self) -> Ready<FakeMessage> {
        let mut ready = std::mem::take(&mut self.out);
        self.out_last_index = ready.entries.last().map_or(0, |e| e.index);
        let upto = self.commit.min(self.last_index());
        ready.committed_entries = (self.handed_out + 1..=upto)
            .filter_map(|i| self.entry(i).cloned())
            .collect();
        self.handed_out = self.handed_out.max(upto);
        // The leader commits only what it persisted (advance).
        ready.apply_early = self.is_leader();
        if !self.snapshot_asked && self.handed_out >= self.log_start.index + SNAPSHOT_EVERY_ENTRIES
        {
            self.snapshot_asked = true;
            ready.compaction_wanted = true;
        }
        ready
    }

    fn advance(&mut self) {
        if self.is_leader() {
            self.leading = true;
            self.persisted = self.persisted.max(self.out_last_index);
            self.commit = self.persisted;
        }
    }

    fn compact(
        &mut self,
        durable_index: LogIndex,
    ) -> Result<Option<ballot_core::SnapshotMeta>, ReplicaError> {
        self.snapshot_asked = false;
        if durable_index <= self.log_start.index {
            return Ok(None);
        }
        let term = self.entry(durable_index).map_or(0, |e| e.term);
        self.log.retain(|e| e.index > durable_index);
        self.log_start = LogPosition::new(durable_index, term);
        Ok(Some(ballot_core::SnapshotMeta {
            last_included: self.log_start,
            membership: self.membership.clone(),
        }))
    }

    fn snapshot_taken(
        &mut self,
        snapshot: Snapshot,
    ) -> Result<ballot_core::SnapshotMeta, ReplicaError> {
        let meta = snapshot.meta.clone();
        self.snapshot = Some(snapshot);
        Ok(meta)
    }

    fn status(&self) -> Status {
        let claims_lead =
            self.is_leader() || (self.broken == Some(FakeBreak::TwoLeaders) && self.id == 2);
        Status {
            id: self.id,
            role: if claims_lead {
                Role::Leader
            } else {
                Role::Follower
            },
            term: self.term,
            leader: Some(LEADER),
            commit_index: self.commit,
            applied_index: self.handed_out,
            last_log: LogPosition::new(
                self.last_index(),
                self.entry_term(self.last_index()).unwrap_or(0),
            ),
            first_log_index: self.log_start.index + 1,
            membership: self.membership.clone(),
        }
    }

    fn entry_term(&self, index: LogIndex) -> Option<Term> {
        if index == self.log_start.index {
            return Some(self.log_start.term);
        }
        self.entry(index).map(|e| e.term)
    }

    fn safety_checkers() -> Vec<Box<dyn SafetyChecker>> {
        vec![Box::<OneLeaderPerTerm>::default()]
    }
}

/// The one property the fake brings as its own (as an engine's crate brings its checkers): no
/// two nodes lead one term.
#[derive(Default)]
pub struct OneLeaderPerTerm {
    leaders: std::collections::HashMap<Term, NodeId>,
}

pub const ONE_LEADER_PER_TERM: &str = "one-leader-per-term";

impl SafetyChecker for OneLeaderPerTerm {
    fn role_changed(&mut self, status: &Status, _log: &dyn LogView) -> Option<Finding> {
        if status.role != Role::Leader {
            return None;
        }
        let first = *self.leaders.entry(status.term).or_insert(status.id);
        (first != status.id).then(|| {
            Finding::new(
                ONE_LEADER_PER_TERM,
                format!("n{} and n{first} lead term {}", status.id, status.term),
            )
        })
    }
}

/// A factory for `run`.
pub fn fake(broken: Option<FakeBreak>) -> impl Fn(ReplicaStart) -> Result<Fake, String> + Sync {
    move |start| Ok(Fake::new(start, broken))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvStore;
    use crate::linearizability::Verdict;
    use crate::node::{Node, ReadyHandler};
    use crate::{run, run_many, FaultSet, SimConfig, SimReport};
    use ballot_core::SnapshotMeta;

    fn config(seed: u64, faults: &str) -> SimConfig {
        SimConfig {
            seed,
            faults: faults.parse().unwrap(),
            steps: 800,
            ..SimConfig::default()
        }
    }

    #[test]
    fn a_healthy_cluster_passes_every_check() {
        let report = run(&config(1, "none"), fake(None));
        assert!(report.passed(), "{:#?}", report.violations);
        assert!(report.ops_committed > 100, "{report:?}");
        assert_eq!(report.linearizability, Some(Verdict::Linearizable));
        assert!(report.trace.is_empty(), "the trace is off by default");
    }

    #[test]
    fn a_correct_replica_passes_under_every_fault() {
        // Every fault but `bit-flip`: the fake's leader is fixed (n1) and it makes no
        // membership changes, so a damaged n1 could never be rebuilt (seed 4 draws that).
        let faults: Vec<&str> = crate::faults::FaultKind::ALL
            .iter()
            .filter(|kind| **kind != crate::faults::FaultKind::BitFlip)
            .map(|kind| kind.name())
            .collect();
        for seed in 0..6 {
            let report = run(
                &SimConfig {
                    nodes: 5,
                    ..config(seed, &faults.join(","))
                },
                fake(None),
            );
            assert!(report.passed(), "seed {seed}: {:#?}", report.violations);
            assert!(report.ops_committed > 0 && report.messages_delivered > 0);
            assert!(
                matches!(report.linearizability, Some(Verdict::Linearizable)),
                "seed {seed}: {:?}",
                report.linearizability
            );
        }
    }

    #[test]
    fn a_seed_reproduces_the_run_exactly() {
        let config = SimConfig {
            trace: true,
            ..config(7, "all")
        };
        let first = run(&config, fake(None));
        let second = run(&config, fake(None));
        assert!(first.trace.len() > 1000);
        assert_eq!(first, second, "same seed, same report and trace");
        let other = run(&SimConfig { seed: 8, ..config }, fake(None));
        assert_ne!(first.trace, other.trace, "another seed, another run");
        let untraced = run(
            &SimConfig {
                trace: false,
                ..config.clone()
            },
            fake(None),
        );
        assert_eq!(
            SimReport {
                trace: Vec::new(),
                ..first
            },
            untraced,
            "tracing changes nothing else"
        );
    }

    #[test]
    fn two_leaders_in_a_term_are_caught() {
        let report = run(&config(1, "none"), fake(Some(FakeBreak::TwoLeaders)));
        assert_eq!(
            report.violations.len(),
            1,
            "the run stops at the first violation"
        );
        assert_eq!(report.violations[0].checker, ONE_LEADER_PER_TERM);
        assert!(report.ticks < 50, "stopped early: {}", report.ticks);
    }

    #[test]
    fn stale_reads_are_caught_by_linearizability() {
        let caught = (0..10).any(|seed| {
            let report = run(
                &config(seed, "delay,reorder"),
                fake(Some(FakeBreak::StaleReads)),
            );
            report
                .violations
                .iter()
                .any(|v| v.checker == "linearizability")
        });
        assert!(
            caught,
            "stale follower reads must break linearizability on some seed"
        );
    }

    #[test]
    fn a_leader_losing_committed_entries_is_caught() {
        let caught: Vec<&str> = (0..10)
            .filter_map(|seed| {
                let report = run(
                    &config(seed, "crash"),
                    fake(Some(FakeBreak::LoseEntriesOnRestart)),
                );
                report.violations.first().map(|v| v.checker)
            })
            .collect();
        // The simulator's own check catches it without help from the engine's checkers.
        assert!(
            caught.contains(&crate::checkers::state_machine_safety::NAME),
            "{caught:?}"
        );
    }

    #[test]
    fn run_many_orders_reports_by_seed_and_matches_single_runs() {
        let config = SimConfig {
            steps: 300,
            ..config(0, "drop,crash")
        };
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let progress = |_: &SimReport| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let reports = run_many(&config, 10..16, fake(None), Some(&progress));
        assert_eq!(
            reports.iter().map(|r| r.seed).collect::<Vec<_>>(),
            (10..16).collect::<Vec<_>>()
        );
        assert_eq!(calls.into_inner(), 6);
        assert_eq!(
            reports[3],
            run(&SimConfig { seed: 13, ..config }, fake(None))
        );
    }

    #[test]
    fn a_replica_refusing_its_durable_state_is_reported() {
        let picky = |start: ReplicaStart| {
            if start.incarnation > 0 {
                Err("cannot read my own disk".to_string())
            } else {
                Ok(Fake::new(start, None))
            }
        };
        let report = run(&config(2, "crash"), picky);
        assert_eq!(report.violations.len(), 1, "{:#?}", report.violations);
        assert_eq!(report.violations[0].checker, "restart");
    }

    #[test]
    fn a_broken_group_among_healthy_ones_is_caught_and_named() {
        let one_broken = |start: ReplicaStart| {
            let broken = (start.group == 2).then_some(FakeBreak::TwoLeaders);
            Ok(Fake::new(start, broken))
        };
        let report = run(
            &SimConfig {
                groups: 4,
                ..config(1, "none")
            },
            one_broken,
        );
        assert_eq!(report.violations.len(), 1, "{:#?}", report.violations);
        let violation = &report.violations[0];
        assert_eq!(violation.checker, ONE_LEADER_PER_TERM);
        assert!(
            violation.description.starts_with("group 2: "),
            "each group has its own checkers, and a violation names its group: {violation:?}"
        );
    }

    #[test]
    fn groups_share_their_nodes_crashes_and_each_is_linearizable() {
        let report = run(
            &SimConfig {
                groups: 3,
                trace: true,
                ..config(4, "crash,partition,drop")
            },
            fake(None),
        );
        assert!(report.passed(), "{:#?}", report.violations);
        assert_eq!(report.linearizability, Some(Verdict::Linearizable));
        let crashes: Vec<&String> = report
            .trace
            .iter()
            .filter(|line| line.contains("CRASH "))
            .collect();
        let group_zero: Vec<&&String> = crashes
            .iter()
            .filter(|line| line.contains("CRASH n"))
            .collect();
        assert!(!group_zero.is_empty(), "the seed crashes some node");
        for line in group_zero {
            // "  tick CRASH nK (restart at T...": every group's replica on nK goes down at once.
            let tick = line.split_whitespace().next().unwrap();
            let node = line.split_whitespace().nth(2).unwrap();
            for group in 1..3 {
                let expected = format!("CRASH g{group}/{node} ");
                assert!(
                    crashes.iter().any(|other| {
                        other.split_whitespace().next() == Some(tick) && other.contains(&expected)
                    }),
                    "{line}: no {expected} at the same tick"
                );
            }
        }
        let single = run(&config(4, "crash,partition,drop"), fake(None));
        assert!(
            report.ops_committed > 2 * single.ops_committed,
            "three groups' clients each commit their own work: {} against {} for one group",
            report.ops_committed,
            single.ops_committed
        );
    }

    #[test]
    fn groups_are_created_and_removed_under_faults_and_each_is_checked() {
        let mut created = 0;
        let mut removed = 0;
        let mut started_late = 0;
        for seed in 0..8 {
            let report = run(
                &SimConfig {
                    groups: 2,
                    trace: true,
                    ..config(seed, "groups,crash,crash-all,partition")
                },
                fake(None),
            );
            assert!(report.passed(), "seed {seed}: {:#?}", report.violations);
            assert_eq!(report.linearizability, Some(Verdict::Linearizable));
            let lines = |text: &str| report.trace.iter().filter(|l| l.contains(text)).count();
            created += lines("FAULT groups: group") - lines(" removed");
            removed += lines(" removed");
            // The first created group (id 2) starts its replicas from the disks its creation
            // bootstrapped: first incarnations, after tick 0.
            started_late += report
                .trace
                .iter()
                .filter(|l| l.contains("starts (incarnation 0") && l.contains("g2/"))
                .filter(|l| l.split_whitespace().next() != Some("0"))
                .count();
        }
        assert!(
            created > 0 && removed > 0,
            "{created} created, {removed} removed"
        );
        assert!(started_late > 0, "created groups start their replicas");
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert!(SimConfig {
            nodes: 0,
            ..SimConfig::default()
        }
        .validate()
        .is_err());
        assert!(SimConfig {
            nodes: 10,
            ..SimConfig::default()
        }
        .validate()
        .is_err());
        assert!(SimConfig {
            keys: 0,
            ..SimConfig::default()
        }
        .validate()
        .is_err());
        for groups in [0, crate::simulation::GROUPS_MAX + 1] {
            let error = SimConfig {
                groups,
                ..SimConfig::default()
            }
            .validate()
            .expect_err("groups out of range");
            assert!(error.contains("groups"), "{error}");
        }
        assert!(SimConfig {
            faults: FaultSet::all(),
            nodes: 9,
            ..SimConfig::default()
        }
        .validate()
        .is_ok());
    }

    #[derive(Default)]
    struct Recorder {
        sent: Vec<String>,
        applied: Vec<LogIndex>,
    }

    impl ReadyHandler<Fake> for Recorder {
        fn send(&mut self, _now: u64, message: FakeMessage) {
            self.sent.push(message.to_string());
        }
        fn entries_written(&mut self, _: u64, _: NodeId, _: &Fake, _: &[Entry]) {}
        fn snapshot_restored(&mut self, _: u64, _: NodeId, _: &SnapshotMeta) {}
        fn applied(
            &mut self,
            _: u64,
            _: NodeId,
            _: LogIndex,
            entry: &Entry,
            _: Option<crate::kv::ApplyResult>,
        ) {
            self.applied.push(entry.index);
        }
        fn read_served(&mut self, _: u64, _: NodeId, _: ReadState, _: &KvStore) {}
        fn read_dropped(&mut self, _: u64, _: NodeId, _: u64) {}
        fn snapshot_taken(
            &mut self,
            _: u64,
            _: NodeId,
            _: LogPosition,
            _: crate::node::SnapshotPurpose,
            _: Result<(), String>,
        ) {
        }
        fn contract_broken(&mut self, _: u64, _: NodeId, description: String) {
            panic!("{description}");
        }

        fn sync_failed(&mut self, _: u64, node: NodeId) {
            panic!("n{node}: no sync fails in these tests");
        }
    }

    #[test]
    fn acknowledgements_wait_for_the_fsync_and_crashes_lose_unsynced_entries() {
        let membership = Membership::with_voters([1, 2, 3]);
        let mut node: Node<Fake> = Node::new(2, 0, membership, None);
        let start = node.prepare_start(0);
        node.start(Fake::new(start, None));
        let noop = |index| Entry {
            index,
            term: 1,
            payload: EntryPayload::Noop,
        };
        let append = |entries: Vec<Entry>, commit| FakeMessage {
            from: 1,
            to: 2,
            term: 1,
            body: Body::Append {
                prev: LogPosition::default(),
                entries,
                commit,
            },
        };
        node.replica
            .as_mut()
            .unwrap()
            .step(append(vec![noop(1), noop(2)], 1));
        let mut recorder = Recorder::default();
        let mut fsync = || 3;
        node.drain(10, &mut fsync, &mut recorder);
        assert!(
            recorder.sent.is_empty(),
            "the ack waits for the write to be durable"
        );
        assert!(node.is_persisting() && node.disk.has_unsynced());
        node.drain(12, &mut fsync, &mut recorder);
        assert!(recorder.sent.is_empty() && recorder.applied.is_empty());
        node.drain(13, &mut fsync, &mut recorder);
        assert_eq!(recorder.sent, ["n2->n1 t1 Ack match=2"]);
        assert_eq!(
            recorder.applied,
            [1],
            "applied after the write is durable, up to the commit"
        );
        assert_eq!(node.disk.last_index(), 2);

        node.replica
            .as_mut()
            .unwrap()
            .step(append(vec![noop(1), noop(2), noop(3)], 1));
        node.drain(20, &mut fsync, &mut recorder);
        node.crash(30, None);
        assert_eq!(node.disk.last_index(), 2, "the unsynced entry 3 is lost");
        let restarted = node.prepare_start(1);
        assert_eq!(restarted.persisted.entries.len(), 2);
        assert_eq!(restarted.persisted.hard_state.term, 1);
    }
}
