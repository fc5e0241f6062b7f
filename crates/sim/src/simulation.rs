//! The simulation loop: configuration, phases (chaos, heal, leader stability, probe, drain), one
//! tick at a time, and the report.
//!
//! It owns virtual time and the wiring between nodes, network, clients, nemesis and checkers. One
//! tick: deliver every message due, tick every running replica, let clients and the nemesis act,
//! drain every node's `Ready`s, run the incremental checks. It never reads a wall clock and never
//! draws randomness except from child generators of one `ChaCha8Rng` seeded with the run's seed,
//! each consumer with its own, so a seed reproduces a run exactly.

use crate::checkers::{leader_stability, liveness, StateMachineSafety, Violation};
use crate::client::{Clients, OpCounts};
use crate::faults::{self, FaultSet};
use crate::group::{GroupMessage, NodeMessage};
use crate::kv::{ApplyResult, Command, KvStore};
use crate::linearizability::{self, Outcome, Verdict};
use crate::liveness::{NodeLiveness, PING_INTERVAL_TICKS};
use crate::nemesis::Nemesis;
use crate::network::{Arrival, Network, SendOutcome};
use crate::node::{DriverBreak, Liveness, Node, ReadyHandler, SnapshotPurpose};
use crate::trace::Trace;
use crate::trace_event;
use ballot_core::ReplicaStart;
use ballot_core::{
    Entry, EntryPayload, Finding, GroupId, LogIndex, LogPosition, Membership, NodeId,
    ProtocolMessage, ReadState, Replica, Role, SafetyChecker, SnapshotMeta, Term,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::ops::Range;

pub const NODES_MAX: usize = 9;
/// Groups a run may host on its nodes.
pub const GROUPS_MAX: usize = 64;

/// What to simulate. `Default` gives 3 nodes, 2,000 chaos ticks, no faults, 5 clients on 3 keys.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Cluster size, 1..=9; node ids are `1..=nodes`, all voters at the start.
    pub nodes: usize,
    /// Replicated groups, 1..=64, each with a replica on every node, sharing the nodes (a crash
    /// takes down every group's replica on the node) and the network. Each group has its own
    /// clients, keys and checkers.
    pub groups: usize,
    pub seed: u64,
    /// Ticks of the chaos phase.
    pub steps: u64,
    /// Liveness bound after the heal: a leader with a quorum, every operation invoked after the
    /// heal decided, and the probe committed, each within this many ticks.
    pub heal_ticks: u64,
    pub faults: FaultSet,
    pub clients: usize,
    pub keys: u64,
    pub op_timeout_ticks: u64,
    /// The protocol's maximum election timeout, used to size the leader-stability scenario.
    pub election_timeout_ticks: u64,
    /// A write becomes durable 0..=this many ticks after it is issued.
    pub fsync_ticks_max: u64,
    pub trace: bool,
    pub check_linearizability: bool,
    /// Stop at the first safety violation (the trace up to it is kept).
    pub stop_at_first_violation: bool,
    /// A deliberately broken driver (the protocol's own breaks are the factory's business).
    pub driver_break: Option<DriverBreak>,
}

impl Default for SimConfig {
    fn default() -> Self {
        let election_timeout_ticks = 30;
        Self {
            nodes: 3,
            groups: 1,
            seed: 0,
            steps: 2000,
            heal_ticks: 20 * election_timeout_ticks,
            faults: FaultSet::none(),
            clients: 5,
            keys: 3,
            op_timeout_ticks: 200,
            election_timeout_ticks,
            fsync_ticks_max: 2,
            trace: false,
            check_linearizability: true,
            stop_at_first_violation: true,
            driver_break: None,
        }
    }
}

impl SimConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=NODES_MAX).contains(&self.nodes) {
            return Err(format!(
                "nodes must be in 1..={NODES_MAX}, got {}",
                self.nodes
            ));
        }
        if !(1..=GROUPS_MAX).contains(&self.groups) {
            return Err(format!(
                "groups must be in 1..={GROUPS_MAX}, got {}",
                self.groups
            ));
        }
        if self.keys == 0 {
            return Err("keys must be at least 1".into());
        }
        if self.op_timeout_ticks == 0 || self.election_timeout_ticks == 0 {
            return Err("op timeout and election timeout must be at least 1 tick".into());
        }
        if self.heal_ticks < self.op_timeout_ticks {
            return Err(format!(
                "heal_ticks ({}) must be at least op_timeout_ticks ({}) so operations after the heal can complete",
                self.heal_ticks, self.op_timeout_ticks
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    pub seed: u64,
    pub ops_invoked: u64,
    /// Successful writes and compare-and-swaps, and reads that returned.
    pub ops_committed: u64,
    pub ops_failed: u64,
    pub ops_unknown: u64,
    pub ticks: u64,
    pub messages_delivered: u64,
    pub violations: Vec<Violation>,
    /// Empty unless the trace was on.
    pub trace: Vec<String>,
    pub max_term: Term,
    /// Times any node became leader.
    pub leader_changes: u64,
    /// `None` when not checked (disabled, or the run stopped at a safety violation).
    pub linearizability: Option<Verdict>,
}

impl SimReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The last `status()` seen of a node, for diffs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed {
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    /// Tick at which `term` was first seen.
    pub term_since: u64,
}

/// What the groups share: virtual time, the network, the trace and the verdicts.
pub(crate) struct World<M> {
    pub now: u64,
    pub network: Network<NodeMessage<M>>,
    pub trace: Trace,
    pub violations: Vec<Violation>,
    pub max_term: Term,
    pub leader_changes: u64,
    /// Nodes whose disk failed a sync in the current drain: each stops after it.
    pub failed_disks: Vec<NodeId>,
}

impl<M> World<M> {
    pub fn violation(&mut self, violation: Violation) {
        trace_event!(self.trace, self.now, "VIOLATION {violation}");
        self.violations.push(violation);
    }

    pub fn has_safety_violation(&self) -> bool {
        self.violations.iter().any(Violation::is_safety)
    }

    /// Records a violation of `group`'s, naming the group when it is not group 0.
    pub fn group_violation(&mut self, group: GroupId, mut violation: Violation) {
        if group != 0 {
            violation.description = format!("group {group}: {}", violation.description);
        }
        self.violation(violation);
    }

    /// Records what one of `group`'s engine checkers found.
    pub fn found(&mut self, group: GroupId, now: u64, finding: Finding) {
        let violation = Violation::new(finding.checker, now, finding.description);
        self.group_violation(group, violation);
    }
}

/// One group's clients and checkers: every property is checked per group.
pub(crate) struct Checks {
    pub clients: Clients,
    /// The engine's own (`Replica::safety_checkers`), fed every observation below.
    pub engine: Vec<Box<dyn SafetyChecker>>,
    pub state_machine_safety: StateMachineSafety,
    pub observed: Vec<Observed>,
    /// Membership after every membership entry committed so far.
    pub committed_membership: Membership,
    committed_membership_index: LogIndex,
    /// Indexes first applied during the current drain, to check against current leaders.
    new_commits: Vec<LogIndex>,
}

/// One replicated group: a slot for its replica on every node (a node that is not one of its
/// members keeps the slot empty, as `Liveness::Removed`), and its checks.
pub(crate) struct Group<R: Replica> {
    pub id: GroupId,
    pub nodes: Vec<Node<R>>,
    pub checks: Checks,
    /// When the `groups` fault removed the group; its history is still judged.
    pub removed_at: Option<u64>,
}

impl<R: Replica> Group<R> {
    /// A group whose replicas are on `members` (all voters), bootstrapped on their disks.
    pub(crate) fn new(
        id: GroupId,
        members: &[NodeId],
        config: &SimConfig,
        clients_rng: ChaCha8Rng,
    ) -> Self {
        let node_count = config.nodes;
        let membership = Membership::with_voters(members.iter().copied());
        let nodes = (1..=node_count as NodeId)
            .map(|node| {
                let mut slot = Node::new(node, id, membership.clone(), config.driver_break);
                if !members.contains(&node) {
                    slot.remove();
                }
                slot
            })
            .collect();
        let idle = Observed {
            role: Role::Follower,
            term: 0,
            leader: None,
            term_since: 0,
        };
        Self {
            id,
            nodes,
            checks: Checks {
                clients: Clients::new(
                    config.clients,
                    node_count,
                    config.keys,
                    config.op_timeout_ticks,
                    clients_rng,
                )
                .in_group(id),
                engine: R::safety_checkers(),
                state_machine_safety: StateMachineSafety::default(),
                observed: vec![idle; node_count],
                committed_membership: membership,
                committed_membership_index: 0,
                new_commits: Vec::new(),
            },
            removed_at: None,
        }
    }

    pub(crate) fn is_live(&self) -> bool {
        self.removed_at.is_none()
    }

    /// Whether node `id` holds (or should hold) a replica of this group.
    pub(crate) fn has_member(&self, id: NodeId) -> bool {
        self.nodes[id as usize - 1].liveness != Liveness::Removed
    }

    /// The running leader with the highest term, if any.
    pub(crate) fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .zip(&self.checks.observed)
            .filter(|(n, o)| n.is_running() && o.role == Role::Leader)
            .max_by_key(|(_, o)| o.term)
            .map(|(n, _)| n.id)
    }

    fn leader_with_quorum(&self) -> Option<(NodeId, Term)> {
        let views: Vec<liveness::NodeView> = self
            .nodes
            .iter()
            .zip(&self.checks.observed)
            .filter(|(n, _)| n.is_running() && n.liveness == Liveness::Running)
            .map(|(n, o)| liveness::NodeView {
                id: n.id,
                role: o.role,
                term: o.term,
                leader: o.leader,
            })
            .collect();
        liveness::leader_with_quorum(&views, &self.checks.committed_membership)
    }
}

/// A node's name in the trace and in violations: `n2` in group 0, `g3/n2` in group 3.
pub(crate) struct Who {
    pub group: GroupId,
    pub node: NodeId,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group != 0 {
            write!(f, "g{}/", self.group)?;
        }
        write!(f, "n{}", self.node)
    }
}

/// A group's view of the world while one of its nodes is drained: what the node reports goes
/// to the shared network and trace and to this group's checks.
struct GroupWorld<'a, M> {
    world: &'a mut World<M>,
    checks: &'a mut Checks,
    group: GroupId,
}

impl<M> GroupWorld<'_, M> {
    fn who(&self, node: NodeId) -> Who {
        Who {
            group: self.group,
            node,
        }
    }

    fn violation(&mut self, violation: Violation) {
        self.world.group_violation(self.group, violation);
    }
}

impl<R: Replica> ReadyHandler<R> for GroupWorld<'_, R::Message> {
    fn send(&mut self, now: u64, message: R::Message) {
        let message = NodeMessage::Group(GroupMessage {
            group: self.group,
            message,
        });
        let world = &mut *self.world;
        if !world.trace.is_enabled() {
            world.network.send(now, message);
            return;
        }
        let line = message.to_string();
        match world.network.send(now, message) {
            SendOutcome::Queued {
                deliver_at,
                duplicated: false,
            } => {
                trace_event!(world.trace, now, "send {line} (due {deliver_at})")
            }
            SendOutcome::Queued {
                deliver_at,
                duplicated: true,
            } => {
                trace_event!(
                    world.trace,
                    now,
                    "send {line} (due {deliver_at}, duplicated)"
                )
            }
            SendOutcome::Dropped(reason) => {
                trace_event!(world.trace, now, "drop {line} ({reason:?})")
            }
        }
    }

    fn entries_written(&mut self, now: u64, node: NodeId, replica: &R, entries: &[Entry]) {
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            trace_event!(
                self.world.trace,
                now,
                "{} writes {}..={} (last {})",
                self.who(node),
                first.index,
                last.index,
                last.position()
            );
        }
        for entry in entries {
            for checker in &mut self.checks.engine {
                if let Some(finding) = checker.entry_written(node, entry, replica) {
                    self.world.found(self.group, now, finding);
                }
            }
        }
    }

    fn snapshot_restored(&mut self, now: u64, node: NodeId, meta: &SnapshotMeta) {
        trace_event!(
            self.world.trace,
            now,
            "{} restores snapshot at {} ({})",
            self.who(node),
            meta.last_included,
            meta.membership
        );
    }

    fn applied(
        &mut self,
        now: u64,
        node: NodeId,
        previous_applied: LogIndex,
        entry: &Entry,
        result: Option<ApplyResult>,
    ) {
        trace_event!(self.world.trace, now, "{} applies {entry}", self.who(node));
        let digest = entry.payload.digest();
        let check = self.checks.state_machine_safety.observe_apply(
            now,
            node,
            previous_applied,
            entry.index,
            entry.term,
            digest,
        );
        if let Some(v) = check.violation {
            self.violation(v);
        }
        if !check.first {
            return;
        }
        trace_event!(
            self.world.trace,
            now,
            "commit {entry} (first applied by {})",
            self.who(node)
        );
        let checks = &mut *self.checks;
        let node_term = checks.observed[node as usize - 1].term;
        for checker in &mut checks.engine {
            checker.entry_committed(node, node_term, entry);
        }
        checks.new_commits.push(entry.index);
        let op_id = match &entry.payload {
            EntryPayload::Command(data) => Command::decode(data).ok().map(|c| c.op_id()),
            // The checker keeps its own account of the membership from the changes alone, as
            // an oracle independent of what the entry says the result is.
            EntryPayload::Membership(change, _) => {
                if entry.index > checks.committed_membership_index {
                    checks.committed_membership_index = entry.index;
                    if let Ok(next) = checks.committed_membership.apply(*change) {
                        trace_event!(self.world.trace, now, "membership committed: {next}");
                        checks.committed_membership = next;
                    }
                }
                None
            }
            EntryPayload::Noop => None,
        };
        checks.clients.on_first_apply(
            now,
            entry.index,
            entry.term,
            op_id,
            result,
            &mut self.world.trace,
        );
    }

    fn read_served(&mut self, now: u64, node: NodeId, read: ReadState, kv: &KvStore) {
        trace_event!(
            self.world.trace,
            now,
            "{} serves read {} at index {}",
            self.who(node),
            read.request_id,
            read.index
        );
        self.checks
            .clients
            .on_read_served(now, node, read, kv, &mut self.world.trace);
    }

    fn read_dropped(&mut self, now: u64, node: NodeId, request_id: u64) {
        trace_event!(
            self.world.trace,
            now,
            "{} drops read {request_id}",
            self.who(node)
        );
        self.checks.clients.on_read_dropped(now, node, request_id);
    }

    fn snapshot_taken(
        &mut self,
        now: u64,
        node: NodeId,
        at: LogPosition,
        purpose: SnapshotPurpose,
        outcome: Result<(), String>,
    ) {
        let what = match purpose {
            SnapshotPurpose::Compaction => "compacts",
            SnapshotPurpose::Image => "builds an image",
        };
        match outcome {
            Ok(()) => trace_event!(self.world.trace, now, "{} {what} at {at}", self.who(node)),
            Err(error) => {
                trace_event!(
                    self.world.trace,
                    now,
                    "{} {what} at {at}, refused: {error}",
                    self.who(node)
                )
            }
        }
    }

    fn contract_broken(&mut self, now: u64, node: NodeId, description: String) {
        self.violation(Violation::new(
            "replica-contract",
            now,
            format!("n{node}: {description}"),
        ));
    }

    fn sync_failed(&mut self, now: u64, node: NodeId) {
        trace_event!(
            self.world.trace,
            now,
            "{} fsync fails: its unsynced writes are lost and the node stops",
            self.who(node)
        );
        if !self.world.failed_disks.contains(&node) {
            self.world.failed_disks.push(node);
        }
    }
}

pub(crate) struct Simulation<R: Replica, F> {
    pub config: SimConfig,
    pub groups: Vec<Group<R>>,
    pub world: World<R::Message>,
    pub nemesis: Nemesis,
    factory: F,
    seed_rng: ChaCha8Rng,
    fsync_rng: ChaCha8Rng,
    /// What each node has heard from each other (runs with hibernating groups only).
    liveness: NodeLiveness,
}

/// Run one simulation. `factory` builds a replica for every (re)start of a node in every group;
/// it owns the protocol configuration and gets the node id, the durable state (which holds the
/// starting membership from the first start on) and a per-incarnation seed in [`ReplicaStart`].
/// A factory error (the replica refuses its durable state) is reported as a `restart` violation
/// and the replica stays down.
///
/// Panics if `config` is invalid (see [`SimConfig::validate`]).
pub fn run<R, F>(config: &SimConfig, factory: F) -> SimReport
where
    R: Replica,
    F: FnMut(ReplicaStart) -> Result<R, String>,
{
    if let Err(error) = config.validate() {
        panic!("invalid simulation config: {error}");
    }
    Simulation::new(config.clone(), factory).run()
}

/// Run `run` for every seed in `seeds` on all cores; reports come back ordered by seed.
/// `progress` is called once per finished seed, from the worker threads.
pub fn run_many<R, F>(
    config: &SimConfig,
    seeds: Range<u64>,
    factory: F,
    progress: Option<&(dyn Fn(&SimReport) + Sync)>,
) -> Vec<SimReport>
where
    R: Replica,
    F: Fn(ReplicaStart) -> Result<R, String> + Sync,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicU64::new(seeds.start);
    let mut reports: Vec<SimReport> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let seed = next.fetch_add(1, Ordering::Relaxed);
                        if seed >= seeds.end {
                            return done;
                        }
                        let report = run(
                            &SimConfig {
                                seed,
                                ..config.clone()
                            },
                            &factory,
                        );
                        if let Some(progress) = progress {
                            progress(&report);
                        }
                        done.push(report);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("simulation thread panicked"))
            .collect()
    });
    reports.sort_by_key(|r| r.seed);
    reports
}

impl<R: Replica, F: FnMut(ReplicaStart) -> Result<R, String>> Simulation<R, F> {
    fn new(config: SimConfig, factory: F) -> Self {
        // The generators are drawn in the order a single group always drew them, and the other
        // groups' clients after, so `groups: 1` replays the seeds of runs before groups existed.
        let mut master = ChaCha8Rng::seed_from_u64(config.seed);
        let mut child = || ChaCha8Rng::seed_from_u64(master.next_u64());
        let network = Network::new(config.nodes as NodeId, child());
        let first_clients = child();
        let nemesis = Nemesis::new(config.faults, child());
        let seed_rng = child();
        let fsync_rng = child();
        let everyone: Vec<NodeId> = (1..=config.nodes as NodeId).collect();
        let mut groups = vec![Group::new(0, &everyone, &config, first_clients)];
        for id in 1..config.groups as GroupId {
            groups.push(Group::new(id, &everyone, &config, child()));
        }
        let liveness = NodeLiveness::new(config.nodes);
        let world = World {
            now: 0,
            network,
            trace: Trace::new(config.trace),
            violations: Vec::new(),
            max_term: 0,
            leader_changes: 0,
            failed_disks: Vec::new(),
        };
        Self {
            config,
            groups,
            world,
            nemesis,
            factory,
            seed_rng,
            fsync_rng,
            liveness,
        }
    }

    fn run(mut self) -> SimReport {
        for group in 0..self.groups.len() {
            for id in 1..=self.config.nodes as NodeId {
                self.restart(group, id);
            }
        }
        self.nemesis.start_chaos(&mut self.world);
        let finished = self.chaos()
            && self.heal_and_check_liveness()
            && self.leader_stability()
            && self.probe();
        let mut verdict = None;
        if finished {
            self.drain_clients();
            if self.config.check_linearizability {
                verdict = Some(self.check_linearizability());
            }
        }
        self.report(verdict)
    }

    /// Whether the run may go on: false once a safety violation stops it.
    fn may_continue(&self) -> bool {
        !(self.config.stop_at_first_violation && self.world.has_safety_violation())
    }

    /// Records a violation of `group`'s, naming the group when it is not group 0.
    fn group_violation(&mut self, group: usize, violation: Violation) {
        self.world.group_violation(group as GroupId, violation);
    }

    /// Lets the clients of every live group start operations, or stops them.
    fn set_invoking(&mut self, invoking: bool) {
        for group in self.groups.iter_mut().filter(|g| g.is_live()) {
            group.checks.clients.invoking = invoking;
        }
    }

    fn chaos(&mut self) -> bool {
        for _ in 0..self.config.steps {
            self.tick();
            if !self.may_continue() {
                return false;
            }
        }
        true
    }

    fn heal_and_check_liveness(&mut self) -> bool {
        let heal_at = self.world.now;
        trace_event!(
            self.world.trace,
            heal_at,
            "HEAL: faults off, partitions lifted, crashed nodes restart"
        );
        self.nemesis.heal(&mut self.world);
        for node in self.groups.iter_mut().flat_map(|group| &mut group.nodes) {
            node.disk.repair();
        }
        let end = heal_at + self.config.heal_ticks;
        let quiesce_at = end - self.config.op_timeout_ticks;
        let mut leaders_seen = vec![None; self.groups.len()];
        while self.world.now < end {
            self.set_invoking(self.world.now < quiesce_at);
            self.tick();
            if !self.may_continue() {
                return false;
            }
            for (group, seen) in self.groups.iter().zip(&mut leaders_seen) {
                *seen = seen.or_else(|| group.leader_with_quorum());
            }
        }
        self.set_invoking(false);
        let now = self.world.now;
        for (index, leader_seen) in leaders_seen.into_iter().enumerate() {
            if !self.groups[index].is_live() {
                continue;
            }
            if let Some(v) = liveness::check_leader(now, leader_seen, self.config.heal_ticks) {
                self.group_violation(index, v);
            }
            let (undecided, first) = self.groups[index].checks.clients.undecided_since(heal_at);
            if let Some(v) = liveness::check_operations(now, undecided, first) {
                self.group_violation(index, v);
            }
        }
        if !self.nemesis.membership_restored() {
            let description = format!(
                "membership not restored to all voters within {} ticks of the heal",
                self.config.heal_ticks
            );
            let group = self.nemesis.cycle_group;
            self.group_violation(group, Violation::new(liveness::NAME, now, description));
        }
        true
    }

    /// The PreVote scenario of `checkers::leader_stability`, when a partition fault is enabled:
    /// a node that leads no group is isolated, and every group's healthy leader must keep its
    /// term.
    fn leader_stability(&mut self) -> bool {
        if !self.config.faults.has_partition() || self.config.nodes < 3 {
            return true;
        }
        let mut leaders: Vec<Option<(NodeId, Term)>> =
            self.groups.iter().map(Group::leader_with_quorum).collect();
        if leaders.iter().all(Option::is_none) {
            return true;
        }
        // Best a node that leads no group; with many groups on few nodes every node may lead
        // one, and then a node that does not lead group 0: the groups it leads are left out of
        // the check (losing their leader is what isolating it must do to them).
        let leads = |id: NodeId| leaders.iter().flatten().any(|&(leader, _)| leader == id);
        let group_zero_leader = leaders[0].map(|(leader, _)| leader);
        let runs_everywhere = |id: NodeId| {
            self.groups
                .iter()
                .filter(|group| group.has_member(id))
                .all(|group| group.nodes[id as usize - 1].is_running())
        };
        let voters = &self.groups[0].checks.committed_membership.voters;
        let Some(follower) = voters
            .iter()
            .copied()
            .find(|&id| !leads(id) && runs_everywhere(id))
            .or_else(|| {
                voters
                    .iter()
                    .copied()
                    .find(|&id| Some(id) != group_zero_leader && runs_everywhere(id))
            })
        else {
            return true;
        };
        for leader in &mut leaders {
            if leader.is_some_and(|(id, _)| id == follower) {
                *leader = None;
            }
        }
        let phase =
            leader_stability::ISOLATION_ELECTION_TIMEOUTS * self.config.election_timeout_ticks;
        for (group, (leader, term)) in leaders
            .iter()
            .enumerate()
            .filter_map(|(g, l)| l.map(|l| (g, l)))
        {
            trace_event!(
                self.world.trace,
                self.world.now,
                "STABILITY: leader {} term {term}; isolating n{follower} for {phase} ticks",
                Who {
                    group: group as GroupId,
                    node: leader
                }
            );
        }
        self.world.network.isolate(follower);
        'rounds: for round in 0..2 * phase {
            if round == phase {
                trace_event!(
                    self.world.trace,
                    self.world.now,
                    "STABILITY: n{follower} rejoins"
                );
                self.world.network.heal();
            }
            self.tick();
            if !self.may_continue() {
                return false;
            }
            for (index, group) in self.groups.iter().enumerate() {
                let Some((leader, term)) = leaders[index] else {
                    continue;
                };
                let views = group
                    .nodes
                    .iter()
                    .zip(&group.checks.observed)
                    .filter(|(n, _)| n.is_running())
                    .map(|(n, o)| (n.id, o.role, o.term));
                if let Some(v) = leader_stability::check_tick(self.world.now, leader, term, views) {
                    self.group_violation(index, v);
                    break 'rounds;
                }
            }
        }
        self.world.network.heal();
        true
    }

    /// A final write in every group must commit within the liveness bound.
    fn probe(&mut self) -> bool {
        for group in self.groups.iter_mut().filter(|g| g.is_live()) {
            group.checks.clients.request_probe();
        }
        let end = self.world.now + self.config.heal_ticks;
        let mut decided: Vec<bool> = self.groups.iter().map(|g| !g.is_live()).collect();
        while self.world.now < end {
            self.tick();
            if !self.may_continue() {
                return false;
            }
            let undecided: Vec<usize> = (0..self.groups.len()).filter(|&g| !decided[g]).collect();
            for index in undecided {
                if let Some(outcome) = self.groups[index].checks.clients.probe_outcome() {
                    decided[index] = true;
                    if outcome != Outcome::Written {
                        let description = format!("the probe write ended {outcome:?}");
                        let v = Violation::new(liveness::NAME, self.world.now, description);
                        self.group_violation(index, v);
                    }
                }
            }
            if decided.iter().all(|&d| d) {
                return true;
            }
        }
        for index in (0..self.groups.len()).filter(|&g| !decided[g]) {
            let description = format!(
                "the probe write did not commit within {} ticks",
                self.config.heal_ticks
            );
            let v = Violation::new(liveness::NAME, self.world.now, description);
            self.group_violation(index, v);
        }
        true
    }

    /// Let outstanding operations finish (or time out) before the histories are judged.
    fn drain_clients(&mut self) {
        self.set_invoking(false);
        let end = self.world.now + self.config.op_timeout_ticks + 1;
        let outstanding = |groups: &[Group<R>]| -> usize {
            groups.iter().map(|g| g.checks.clients.outstanding()).sum()
        };
        while outstanding(&self.groups) > 0 && self.world.now < end && self.may_continue() {
            self.tick();
        }
    }

    /// Each group's history on its own (their keys are their own): the first verdict that is
    /// not linearizable is the run's.
    fn check_linearizability(&mut self) -> Verdict {
        let now = self.world.now;
        let mut run_verdict = Verdict::Linearizable;
        for index in 0..self.groups.len() {
            let verdict = match linearizability::check(self.groups[index].checks.clients.history())
            {
                Ok(Verdict::NotLinearizable { key, explanation }) => {
                    // The explanation already names the key.
                    let v = Violation::new("linearizability", now, explanation.clone());
                    self.group_violation(index, v);
                    Verdict::NotLinearizable { key, explanation }
                }
                Ok(verdict) => verdict,
                Err(error) => {
                    // The simulator recorded the history, so a malformed one is its own bug.
                    let description = format!("malformed history: {error}");
                    self.group_violation(
                        index,
                        Violation::new("linearizability", now, description),
                    );
                    Verdict::Inconclusive {
                        key: 0,
                        explored: 0,
                    }
                }
            };
            if matches!(run_verdict, Verdict::Linearizable) {
                run_verdict = verdict;
            }
        }
        run_verdict
    }

    fn report(self, linearizability: Option<Verdict>) -> SimReport {
        let mut counts = OpCounts::default();
        for group in &self.groups {
            let group = group.checks.clients.counts();
            counts.invoked += group.invoked;
            counts.committed += group.committed;
            counts.failed += group.failed;
            counts.unknown += group.unknown;
        }
        SimReport {
            seed: self.config.seed,
            ops_invoked: counts.invoked,
            ops_committed: counts.committed,
            ops_failed: counts.failed,
            ops_unknown: counts.unknown,
            ticks: self.world.now,
            messages_delivered: self.world.network.stats.delivered,
            violations: self.world.violations,
            trace: self.world.trace.into_lines(),
            max_term: self.world.max_term,
            leader_changes: self.world.leader_changes,
            linearizability,
        }
    }

    /// One tick of virtual time.
    pub(crate) fn tick(&mut self) {
        let now = self.world.now;
        while let Some(arrival) = self.world.network.pop_due(now) {
            match arrival {
                Arrival::Deliver(message) => self.deliver(message),
                Arrival::Dropped(message) => {
                    trace_event!(
                        self.world.trace,
                        now,
                        "drop {message} (partitioned in flight)"
                    )
                }
            }
        }
        // One clock per node, shared by its groups (`clock-skew` makes one run fast or slow).
        let ticks: Vec<u32> = (0..self.config.nodes)
            .map(|index| self.nemesis.clock_ticks(index))
            .collect();
        for group in 0..self.groups.len() {
            for (index, &node_ticks) in ticks.iter().enumerate() {
                if let Some(replica) = self.groups[group].nodes[index].replica.as_mut() {
                    for _ in 0..node_ticks {
                        replica.tick();
                    }
                    self.observe(group, index);
                }
            }
        }
        if self.groups.len() > 1 {
            self.run_node_liveness();
        }
        for group in &mut self.groups {
            group.checks.clients.act(
                now,
                &mut group.nodes,
                &group.checks.state_machine_safety,
                &mut self.world.trace,
            );
        }
        self.nemesis_act();
        self.drain_all();
        self.world.now += 1;
    }

    fn deliver(&mut self, message: NodeMessage<R::Message>) {
        let (from, to) = (message.from(), message.to());
        if self.node_is_up(to) {
            self.liveness.heard(self.world.now, to, from);
        }
        let message = match message {
            NodeMessage::Group(message) => message,
            NodeMessage::Ping { .. } => return,
        };
        let group = message.group as usize;
        let index = message.to() as usize - 1;
        let node = self
            .groups
            .get_mut(group)
            .and_then(|g| g.nodes.get_mut(index))
            .and_then(|n| n.replica.as_mut());
        match node {
            Some(replica) => {
                trace_event!(self.world.trace, self.world.now, "deliver {message}");
                replica.step(message.message);
                self.observe(group, index);
            }
            None => trace_event!(
                self.world.trace,
                self.world.now,
                "drop {message} ({} is down)",
                Who {
                    group: group as GroupId,
                    node: index as NodeId + 1
                }
            ),
        }
    }

    /// Every running node pings the others, and declares down the peers it has not heard from
    /// for a leader timeout: each of its replicas is told (see `liveness`).
    fn run_node_liveness(&mut self) {
        let now = self.world.now;
        let nodes = self.config.nodes as NodeId;
        let up: Vec<bool> = (1..=nodes).map(|id| self.node_is_up(id)).collect();
        if now.is_multiple_of(PING_INTERVAL_TICKS) {
            for from in (1..=nodes).filter(|&id| up[id as usize - 1]) {
                for to in (1..=nodes).filter(|&to| to != from) {
                    self.world.network.send(now, NodeMessage::Ping { from, to });
                }
            }
        }
        for (node, peer) in self.liveness.newly_down(now, |id| up[id as usize - 1]) {
            trace_event!(
                self.world.trace,
                now,
                "n{node} declares n{peer} down (node liveness)"
            );
            for group in 0..self.groups.len() {
                if let Some(replica) = self.groups[group].nodes[node as usize - 1].replica.as_mut()
                {
                    replica.peer_down(peer);
                    self.observe(group, node as usize - 1);
                }
            }
        }
    }

    pub(crate) fn drain_all(&mut self) {
        let fsync_max = self.config.fsync_ticks_max;
        for group in 0..self.groups.len() {
            for index in 0..self.config.nodes {
                let rng = &mut self.fsync_rng;
                let mut fsync_ticks = || rng.random_range(0..=fsync_max);
                let now = self.world.now;
                let Group {
                    id, nodes, checks, ..
                } = &mut self.groups[group];
                let mut handler = GroupWorld {
                    world: &mut self.world,
                    checks,
                    group: *id,
                };
                nodes[index].drain(now, &mut fsync_ticks, &mut handler);
                if !self.groups[group].checks.new_commits.is_empty() {
                    self.check_new_commits(group);
                }
                self.observe(group, index);
                self.stop_failed_disks();
            }
        }
    }

    /// A node whose disk failed a sync stops at once, every group on it, as a server's node
    /// loop does on a WAL error; it restarts after a reboot, from what its disks hold.
    fn stop_failed_disks(&mut self) {
        for id in std::mem::take(&mut self.world.failed_disks) {
            let down = self
                .nemesis
                .rng
                .random_range(faults::QUICK_REBOOT_MIN_TICKS..=faults::CRASH_DOWN_MAX_TICKS);
            self.crash(id, self.world.now + down, false);
        }
    }

    /// Entries first committed in the last drain must be in every leader of a later term.
    fn check_new_commits(&mut self, group: usize) {
        let Group { nodes, checks, .. } = &mut self.groups[group];
        let commits = std::mem::take(&mut checks.new_commits);
        let mut findings = Vec::new();
        for (slot, node) in nodes.iter().enumerate() {
            let observed = checks.observed[slot];
            let Some(replica) = node
                .replica
                .as_ref()
                .filter(|_| observed.role == Role::Leader)
            else {
                continue;
            };
            for checker in &mut checks.engine {
                findings.extend(checker.leading_after_commits(
                    node.id,
                    observed.term,
                    &commits,
                    replica,
                ));
            }
        }
        checks.new_commits = commits;
        checks.new_commits.clear();
        let now = self.world.now;
        for finding in findings {
            self.world.found(self.groups[group].id, now, finding);
        }
    }

    /// Diff the node's status against the last one seen: trace role and term changes, and run the
    /// checks that fire when a node becomes leader.
    pub(crate) fn observe(&mut self, group: usize, index: usize) {
        let Group {
            id, nodes, checks, ..
        } = &mut self.groups[group];
        let Some(replica) = nodes[index].replica.as_ref() else {
            return;
        };
        let status = replica.status();
        let before = checks.observed[index];
        let now = self.world.now;
        let term_since = if status.term == before.term {
            before.term_since
        } else {
            now
        };
        checks.observed[index] = Observed {
            role: status.role,
            term: status.term,
            leader: status.leader,
            term_since,
        };
        if status.role == before.role && status.term == before.term {
            return;
        }
        trace_event!(
            self.world.trace,
            now,
            "{} is {} in term {} (was {} in term {})",
            Who {
                group: *id,
                node: status.id
            },
            status.role,
            status.term,
            before.role,
            before.term
        );
        self.world.max_term = self.world.max_term.max(status.term);
        if status.role == Role::Leader {
            self.world.leader_changes += 1;
        }
        let findings: Vec<Finding> = checks
            .engine
            .iter_mut()
            .filter_map(|checker| checker.role_changed(&status, replica))
            .collect();
        let group = *id;
        for finding in findings {
            self.world.found(group, now, finding);
        }
    }

    /// Start (or restart) node `id` of `group` from its disk. A replica that refuses to start
    /// from what its disk durably holds is a violation: every state the disk can be in after a
    /// crash is one the `Ready` contract allows.
    pub(crate) fn restart(&mut self, group: usize, id: NodeId) {
        let now = self.world.now;
        let seed = self.seed_rng.next_u64();
        let group_id = self.groups[group].id;
        let node = &mut self.groups[group].nodes[id as usize - 1];
        let who = Who {
            group: group_id,
            node: id,
        };
        if let Err(index) = node.recover_damage() {
            node.liveness = Liveness::Damaged;
            trace_event!(
                self.world.trace,
                now,
                "{who} refuses to start: the record of entry {index} is damaged and later records \
                 follow it; the operator rebuilds it"
            );
            self.nemesis.rebuild_when_idle(group, id);
            return;
        }
        let start = node.prepare_start(seed);
        trace_event!(
            self.world.trace,
            now,
            "{who} starts (incarnation {}, {} entries, snapshot at {}, {:?})",
            start.incarnation,
            start.persisted.entries.len(),
            node.disk.snapshot_index(),
            start.persisted.hard_state
        );
        self.liveness.started(now, id);
        match (self.factory)(start) {
            Ok(replica) => node.start(replica),
            Err(error) => {
                node.liveness = Liveness::Refused;
                let description =
                    format!("n{id} refuses to restart from its durable state: {error}");
                self.group_violation(group, Violation::new("restart", now, description));
                return;
            }
        }
        self.groups[group].checks.observed[id as usize - 1] = Observed {
            role: Role::Follower,
            term: 0,
            leader: None,
            term_since: now,
        };
        self.observe(group, id as usize - 1);
    }

    /// Whether node `id` runs in any group (its process is up).
    pub(crate) fn node_is_up(&self, id: NodeId) -> bool {
        self.groups
            .iter()
            .any(|group| group.nodes[id as usize - 1].is_running())
    }

    /// Crash node `id`, every group's replica on it; with `torn`, a random prefix of each
    /// replica's unsynced records survives (torn tail), drawn from the nemesis's generator.
    pub(crate) fn crash(&mut self, id: NodeId, restart_at: u64, torn: bool) {
        let now = self.world.now;
        for group in 0..self.groups.len() {
            let node = &mut self.groups[group].nodes[id as usize - 1];
            if !node.is_running() {
                continue;
            }
            let torn_items = torn.then(|| {
                self.nemesis
                    .rng
                    .random_range(0..=node.disk.unsynced_items())
            });
            let who = Who {
                group: group as GroupId,
                node: id,
            };
            match torn_items {
                Some(kept) => trace_event!(
                    self.world.trace,
                    now,
                    "CRASH {who} (restart at {restart_at}, torn tail keeps {kept} unsynced items)"
                ),
                None => trace_event!(
                    self.world.trace,
                    now,
                    "CRASH {who} (restart at {restart_at})"
                ),
            }
            node.crash(restart_at, torn_items);
            self.groups[group].checks.clients.on_node_down(now, id);
        }
    }
}
