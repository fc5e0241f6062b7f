//! The nemesis: injects the faults of the enabled [`FaultSet`] during the chaos phase, undoes them
//! at the heal, and drives the membership change cycle (remove, re-add as learner, promote) to
//! completion. The fault model itself is written down in `faults.rs`.
//!
//! It owns when and where faults happen. It never injects anything after the heal (it only
//! restarts nodes and finishes an interrupted membership cycle), never reaches into a replica
//! except through the `Replica` calls an operator could make (`propose_membership_change`,
//! `transfer_leadership`), and draws all its randomness from its own child generator.

use crate::faults::{self, FaultKind, FaultSet};
use crate::network::LinkFaults;
use crate::node::Liveness;
use crate::simulation::{Group, Simulation, Who, World};
use crate::trace_event;
use ballot_core::ReplicaStart;
use ballot_core::{GroupId, MembershipChange, NodeId, ProtocolMessage, Replica};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Ticks between retries of a membership proposal that has not committed.
const MEMBERSHIP_RETRY_TICKS: u64 = 60;
/// Ticks a removed node stays out before it is re-added (during chaos).
const READD_DELAY_MIN_TICKS: u64 = 30;
const READD_DELAY_MAX_TICKS: u64 = 200;
/// A learner is promoted once it has applied within this many entries of the commit frontier.
const CATCH_UP_SLACK_ENTRIES: u64 = 20;

/// Where the remove / re-add / promote cycle stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipCycle {
    Idle,
    Removing { node: NodeId, retry_at: u64 },
    Removed { node: NodeId, readd_at: u64 },
    Adding { node: NodeId, retry_at: u64 },
    Promoting { node: NodeId, retry_at: u64 },
}

pub(crate) struct Nemesis {
    pub rng: ChaCha8Rng,
    faults: FaultSet,
    chaos: bool,
    next_episode_at: u64,
    partition_heal_at: Option<u64>,
    slow: Option<(u64, u64)>,
    /// The node whose clock runs at another rate (`clock-skew`), and until when.
    skew: Option<Skew>,
    /// Per node, the thousandths of a tick its clock has run beyond the ticks it was given.
    clock_debt_per_mille: Vec<u32>,
    pub cycle: MembershipCycle,
    /// The group whose membership the cycle changes (one cycle at a time, in one group).
    pub cycle_group: usize,
    /// The replica (group, node) whose disk the `bit-flip` fault damaged and that is not yet
    /// being rebuilt; while there is one, no other membership cycle starts (the rebuild is
    /// one, and the group must keep enough voters to remove the damaged one).
    damaged: Option<Damaged>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Skew {
    /// Index of the node (its id minus one).
    node: usize,
    rate_per_mille: u32,
    until: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Damaged {
    group: usize,
    node: NodeId,
    /// It refused to start: the operator's rebuild is due.
    refused: bool,
    /// When to propose its removal (again: a group without a leader, or one in the middle of
    /// another change, refuses it for now).
    retry_at: u64,
}

impl Nemesis {
    pub fn new(faults: FaultSet, rng: ChaCha8Rng) -> Self {
        Self {
            rng,
            faults,
            chaos: false,
            next_episode_at: 0,
            partition_heal_at: None,
            slow: None,
            skew: None,
            clock_debt_per_mille: Vec::new(),
            cycle: MembershipCycle::Idle,
            cycle_group: 0,
            damaged: None,
        }
    }

    /// Replica `node` of `group` refused to start from a damaged disk: rebuild it (remove it,
    /// wipe it, add it back) as soon as no other membership cycle runs.
    pub fn rebuild_when_idle(&mut self, group: usize, node: NodeId) {
        match &mut self.damaged {
            Some(damaged) if damaged.group == group && damaged.node == node => {
                damaged.refused = true;
            }
            _ => panic!("n{node} of group {group} refused a damage the nemesis did not make"),
        }
    }

    pub fn start_chaos<M: ballot_core::ProtocolMessage>(&mut self, world: &mut World<M>) {
        self.chaos = true;
        self.next_episode_at = world.now + self.interval();
        world.network.faults = self.link_faults();
    }

    /// End of chaos: no more faults; crashed nodes restart on the next tick.
    pub fn heal<M: ballot_core::ProtocolMessage>(&mut self, world: &mut World<M>) {
        self.chaos = false;
        self.partition_heal_at = None;
        self.slow = None;
        self.skew = None;
        world.network.heal();
        world.network.faults = LinkFaults::RELIABLE;
        if let MembershipCycle::Removed { node, .. } = self.cycle {
            self.cycle = MembershipCycle::Removed {
                node,
                readd_at: world.now,
            };
        }
    }

    pub fn membership_restored(&self) -> bool {
        self.cycle == MembershipCycle::Idle
    }

    fn interval(&mut self) -> u64 {
        self.rng
            .random_range(faults::NEMESIS_INTERVAL_MIN_TICKS..=faults::NEMESIS_INTERVAL_MAX_TICKS)
    }

    fn episode(&mut self) -> u64 {
        self.rng
            .random_range(faults::EPISODE_MIN_TICKS..=faults::EPISODE_MAX_TICKS)
    }

    /// How many ticks node `index`'s clock runs while one tick of true time passes: 1, or 0 or
    /// 2 now and then for the node whose clock is skewed.
    pub fn clock_ticks(&mut self, index: usize) -> u32 {
        let Some(skew) = self.skew.filter(|skew| skew.node == index) else {
            return 1;
        };
        if self.clock_debt_per_mille.len() <= index {
            self.clock_debt_per_mille.resize(index + 1, 0);
        }
        let debt = &mut self.clock_debt_per_mille[index];
        *debt += skew.rate_per_mille;
        let ticks = *debt / 1000;
        *debt %= 1000;
        ticks
    }

    /// Per-message faults for the current moment of the chaos phase.
    fn link_faults(&self) -> LinkFaults {
        let mut link = LinkFaults::RELIABLE;
        if self.faults.contains(FaultKind::Reorder) {
            link.latency_max_ticks = faults::REORDER_LATENCY_MAX_TICKS;
        }
        if let Some((_, extra)) = self.slow {
            link.latency_min_ticks += extra;
            link.latency_max_ticks += extra;
        }
        if self.faults.contains(FaultKind::Drop) {
            link.drop_probability = faults::DROP_PROBABILITY;
        }
        if self.faults.contains(FaultKind::Duplicate) {
            link.duplicate_probability = faults::DUPLICATE_PROBABILITY;
        }
        link
    }
}

impl<R: Replica, F: FnMut(ReplicaStart) -> Result<R, String>> Simulation<R, F> {
    /// The nemesis's turn in a tick.
    pub(crate) fn nemesis_act(&mut self) {
        let now = self.world.now;
        self.restart_due();
        self.advance_membership_cycle();
        if !self.nemesis.chaos {
            return;
        }
        self.crash_during_elections();
        if self.nemesis.partition_heal_at.is_some_and(|at| now >= at) {
            self.nemesis.partition_heal_at = None;
            self.world.network.heal();
            trace_event!(self.world.trace, now, "FAULT healed: partition");
        }
        if self.nemesis.slow.is_some_and(|(until, _)| now >= until) {
            self.nemesis.slow = None;
            self.world.network.faults = self.nemesis.link_faults();
            trace_event!(self.world.trace, now, "FAULT healed: slow network");
        }
        if self.nemesis.skew.is_some_and(|skew| now >= skew.until) {
            self.nemesis.skew = None;
            trace_event!(self.world.trace, now, "FAULT healed: clock skew");
        }
        if now < self.nemesis.next_episode_at {
            return;
        }
        self.nemesis.next_episode_at = now + self.nemesis.interval();
        // Group churn needs more than one group; leaving it out of a single group's draw keeps
        // those runs' seeds as they were before it existed.
        let several_groups = self.groups.len() > 1;
        let enabled =
            |kind: &FaultKind| kind.is_episode() && (*kind != FaultKind::Groups || several_groups);
        let episodes = self.nemesis.faults.iter().filter(enabled).count();
        if episodes == 0 {
            return;
        }
        let pick = self.nemesis.rng.random_range(0..episodes);
        let kind = self
            .nemesis
            .faults
            .iter()
            .filter(enabled)
            .nth(pick)
            .expect("in range");
        self.inject(kind);
    }

    /// A node drawn among those up (in any group), from the nemesis's generator.
    fn random_up_node(&mut self, ids: &[NodeId]) -> Option<NodeId> {
        let up: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|&id| self.node_is_up(id))
            .collect();
        if up.is_empty() {
            return None;
        }
        Some(up[self.nemesis.rng.random_range(0..up.len())])
    }

    /// Crash, with a small probability, each node whose term changed 1 to 3 ticks ago: late
    /// enough that its vote (or campaign) has left, early enough to be in the same election.
    fn crash_during_elections(&mut self) {
        let faults = self.nemesis.faults;
        let torn = faults.contains(FaultKind::TornTail);
        if !(faults.contains(FaultKind::Crash) || torn) {
            return;
        }
        let now = self.world.now;
        for index in 0..self.config.nodes {
            // A node that just voted or campaigned in any of its groups.
            let changed = self.groups.iter().any(|group| {
                let observed = group.checks.observed[index];
                observed.term > 0 && (1..=3).contains(&(now - observed.term_since.min(now)))
            });
            if !changed
                || !self.node_is_up(index as NodeId + 1)
                || !self
                    .nemesis
                    .rng
                    .random_bool(faults::ELECTION_CRASH_PROBABILITY / 3.0)
            {
                continue;
            }
            let down = self
                .nemesis
                .rng
                .random_range(faults::QUICK_REBOOT_MIN_TICKS..=faults::QUICK_REBOOT_MAX_TICKS);
            self.crash(index as NodeId + 1, now + down, torn);
        }
    }

    fn restart_due(&mut self) {
        let now = self.world.now;
        let chaos = self.nemesis.chaos;
        for group in 0..self.groups.len() {
            for index in 0..self.config.nodes {
                if let Liveness::Crashed { restart_at } = self.groups[group].nodes[index].liveness {
                    if !chaos || now >= restart_at {
                        self.restart(group, index as NodeId + 1);
                    }
                }
            }
        }
    }

    fn inject(&mut self, kind: FaultKind) {
        let now = self.world.now;
        let ids: Vec<NodeId> = (1..=self.config.nodes as NodeId).collect();
        let count = ids.len();
        match kind {
            FaultKind::Delay => {
                let until = now + self.nemesis.episode();
                let extra = self
                    .nemesis
                    .rng
                    .random_range(faults::DELAY_EXTRA_MIN_TICKS..=faults::DELAY_EXTRA_MAX_TICKS);
                self.nemesis.slow = Some((until, extra));
                self.world.network.faults = self.nemesis.link_faults();
                trace_event!(
                    self.world.trace,
                    now,
                    "FAULT delay: +{extra} ticks per message until {until}"
                );
            }
            FaultKind::ClockSkew => {
                let node = self.nemesis.rng.random_range(0..count);
                let rate_per_mille = self.nemesis.rng.random_range(
                    faults::CLOCK_RATE_MIN_PER_MILLE..=faults::CLOCK_RATE_MAX_PER_MILLE,
                );
                let until = now + self.nemesis.episode();
                self.nemesis.skew = Some(Skew {
                    node,
                    rate_per_mille,
                    until,
                });
                trace_event!(
                    self.world.trace,
                    now,
                    "FAULT clock-skew: n{}'s clock runs at {}.{:03}x until {until}",
                    node + 1,
                    rate_per_mille / 1000,
                    rate_per_mille % 1000
                );
            }
            kind if kind.is_partition() => {
                if count < 2 {
                    return;
                }
                self.world.network.heal();
                let victim = match kind {
                    FaultKind::IsolateLeader => {
                        let group = self.pick_group();
                        self.groups[group].current_leader()
                    }
                    _ => None,
                }
                .unwrap_or_else(|| ids[self.nemesis.rng.random_range(0..count)]);
                let network = &mut self.world.network;
                let mut shuffled = ids.clone();
                shuffled.shuffle(&mut self.nemesis.rng);
                match kind {
                    FaultKind::Partition | FaultKind::IsolateLeader => {
                        network.isolate(victim);
                        trace_event!(self.world.trace, now, "FAULT {kind}: n{victim} isolated");
                    }
                    FaultKind::Asymmetric => {
                        let inbound = self.nemesis.rng.random_bool(0.5);
                        for &other in ids.iter().filter(|&&o| o != victim) {
                            if inbound {
                                network.block(other, victim);
                            } else {
                                network.block(victim, other);
                            }
                        }
                        let direction = if inbound {
                            "cannot receive"
                        } else {
                            "cannot send"
                        };
                        trace_event!(
                            self.world.trace,
                            now,
                            "FAULT asymmetric: n{victim} {direction}"
                        );
                    }
                    FaultKind::Majority => {
                        let (majority, minority) = shuffled.split_at(count / 2 + 1);
                        network.split(majority, minority);
                        trace_event!(
                            self.world.trace,
                            now,
                            "FAULT majority: {majority:?} | {minority:?}"
                        );
                    }
                    _ => {
                        // Bridge: the first shuffled node connects two halves of the rest.
                        let (bridge, rest) = shuffled.split_first().expect("at least 2 nodes");
                        let (left, right) = rest.split_at(rest.len() / 2);
                        network.bridge(left, right);
                        trace_event!(
                            self.world.trace,
                            now,
                            "FAULT bridge: {left:?} -n{bridge}- {right:?}"
                        );
                    }
                }
                self.nemesis.partition_heal_at = Some(now + self.nemesis.episode());
            }
            FaultKind::Crash | FaultKind::TornTail => {
                let Some(victim) = self.random_up_node(&ids) else {
                    return;
                };
                let down = if self.nemesis.rng.random_bool(0.5) {
                    self.nemesis.rng.random_range(
                        faults::QUICK_REBOOT_MIN_TICKS..=faults::QUICK_REBOOT_MAX_TICKS,
                    )
                } else {
                    self.nemesis
                        .rng
                        .random_range(faults::CRASH_DOWN_MIN_TICKS..=faults::CRASH_DOWN_MAX_TICKS)
                };
                self.crash(victim, now + down, kind == FaultKind::TornTail);
            }
            FaultKind::SyncFail => {
                let Some(victim) = self.random_up_node(&ids) else {
                    return;
                };
                trace_event!(
                    self.world.trace,
                    now,
                    "FAULT sync-fail: n{victim}'s next fsync fails"
                );
                for group in &mut self.groups {
                    let node = &mut group.nodes[victim as usize - 1];
                    if node.is_running() {
                        node.disk.fail_next_sync();
                    }
                }
            }
            FaultKind::CrashAll => {
                trace_event!(
                    self.world.trace,
                    now,
                    "FAULT crash-all: every node loses power"
                );
                let torn = self.nemesis.faults.contains(FaultKind::TornTail);
                for id in ids {
                    if !self.node_is_up(id) {
                        continue;
                    }
                    let down = self.nemesis.rng.random_range(
                        faults::QUICK_REBOOT_MIN_TICKS..=faults::CRASH_DOWN_MAX_TICKS,
                    );
                    self.crash(id, now + down, torn);
                }
            }
            FaultKind::Membership => self.start_membership_cycle(),
            FaultKind::BitFlip => self.flip_bit(&ids),
            FaultKind::Groups => {
                if self.nemesis.rng.random_bool(0.5) {
                    self.create_group();
                } else {
                    self.remove_group();
                }
            }
            FaultKind::Transfer => {
                let group = self.pick_group();
                let Some(leader) = self.groups[group].current_leader() else {
                    return;
                };
                let voters: Vec<NodeId> = self.groups[group]
                    .checks
                    .committed_membership
                    .voters
                    .iter()
                    .copied()
                    .filter(|&v| v != leader)
                    .collect();
                if voters.is_empty() {
                    return;
                }
                let target = voters[self.nemesis.rng.random_range(0..voters.len())];
                let replica = self.groups[group].nodes[leader as usize - 1]
                    .replica
                    .as_mut()
                    .expect("leader runs");
                let result = replica.transfer_leadership(target);
                let leader = Who {
                    group: group as GroupId,
                    node: leader,
                };
                trace_event!(
                    self.world.trace,
                    now,
                    "FAULT transfer: {leader} -> n{target}: {result:?}"
                );
            }
            _ => {}
        }
    }

    /// Propose `change` on the current leader; `true` if it was accepted.
    /// A group for a fault that hits one group: group 0 when it is the only one (no draw, so a
    /// single group's runs replay as before), else a random live one.
    fn pick_group(&mut self) -> usize {
        if self.groups.len() == 1 {
            return 0;
        }
        let live: Vec<usize> = (0..self.groups.len())
            .filter(|&g| self.groups[g].is_live())
            .collect();
        live[self.nemesis.rng.random_range(0..live.len())]
    }

    /// A new group with replicas on `GROUP_REPLICAS` random nodes, as `ballot group create`
    /// makes one: their disks are bootstrapped with its membership at once, and each replica
    /// starts with its node (now, or when a node that is down comes back).
    fn create_group(&mut self) {
        if self.groups.len() >= crate::simulation::GROUPS_MAX {
            return;
        }
        let now = self.world.now;
        let mut nodes: Vec<NodeId> = (1..=self.config.nodes as NodeId).collect();
        nodes.shuffle(&mut self.nemesis.rng);
        nodes.truncate(faults::GROUP_REPLICAS.min(self.config.nodes));
        nodes.sort_unstable();
        let id = self.groups.len() as GroupId;
        let clients_rng = ChaCha8Rng::seed_from_u64(self.nemesis.rng.next_u64());
        let mut group = Group::new(id, &nodes, &self.config, clients_rng);
        group.checks.clients.invoking = self.groups[0].checks.clients.invoking;
        for &node in &nodes {
            // A node that is down starts this replica when it restarts, like its others.
            if let Some(restart_at) = self.node_restart_at(node) {
                group.nodes[node as usize - 1].liveness = Liveness::Crashed { restart_at };
            }
        }
        trace_event!(
            self.world.trace,
            now,
            "FAULT groups: group {id} created on {nodes:?}"
        );
        self.groups.push(group);
    }

    /// Removes a group the `groups` fault created (not one the run started with, and not one in
    /// the middle of a membership cycle): every replica stopped and wiped, its messages dropped.
    fn remove_group(&mut self) {
        let now = self.world.now;
        let cycling = self.nemesis.cycle != MembershipCycle::Idle;
        let removable: Vec<usize> = (self.config.groups..self.groups.len())
            .filter(|&g| self.groups[g].is_live())
            .filter(|&g| !(cycling && self.nemesis.cycle_group == g))
            .collect();
        if removable.is_empty() {
            return;
        }
        let index = removable[self.nemesis.rng.random_range(0..removable.len())];
        let group = &mut self.groups[index];
        for slot in &mut group.nodes {
            if slot.liveness != Liveness::Removed {
                slot.remove();
            }
        }
        group.removed_at = Some(now);
        group.checks.clients.invoking = false;
        let id = group.id;
        self.world
            .network
            .purge(|message| message.group() == Some(id));
        trace_event!(self.world.trace, now, "FAULT groups: group {id} removed");
    }

    /// When node `id`, down now, restarts: the restart time its replicas share.
    fn node_restart_at(&self, id: NodeId) -> Option<u64> {
        if self.node_is_up(id) {
            return None;
        }
        self.groups
            .iter()
            .find_map(|group| match group.nodes[id as usize - 1].liveness {
                Liveness::Crashed { restart_at } => Some(restart_at),
                _ => None,
            })
    }

    fn propose_change(&mut self, change: MembershipChange) -> bool {
        let now = self.world.now;
        let group = self.nemesis.cycle_group;
        let Some(leader) = self.groups[group].current_leader() else {
            return false;
        };
        let replica = self.groups[group].nodes[leader as usize - 1]
            .replica
            .as_mut()
            .expect("leader runs");
        let result = replica.propose_membership_change(change);
        let leader = Who {
            group: group as GroupId,
            node: leader,
        };
        trace_event!(
            self.world.trace,
            now,
            "FAULT membership: {change} on {leader}: {result:?}"
        );
        result.is_ok()
    }

    fn start_membership_cycle(&mut self) {
        if self.nemesis.cycle != MembershipCycle::Idle || self.nemesis.damaged.is_some() {
            return;
        }
        self.nemesis.cycle_group = self.pick_group();
        let group = &self.groups[self.nemesis.cycle_group];
        let Some(leader) = group.current_leader() else {
            return;
        };
        let membership = &group.checks.committed_membership;
        if membership.voters.len() < 3 || !membership.learners.is_empty() {
            return;
        }
        let candidates: Vec<NodeId> = membership
            .voters
            .iter()
            .copied()
            .filter(|&v| v != leader)
            .collect();
        let node = candidates[self.nemesis.rng.random_range(0..candidates.len())];
        if self.propose_change(MembershipChange::Remove(node)) {
            self.nemesis.cycle = MembershipCycle::Removing {
                node,
                retry_at: self.world.now + MEMBERSHIP_RETRY_TICKS,
            };
        }
    }

    fn advance_membership_cycle(&mut self) {
        let now = self.world.now;
        let group = self.nemesis.cycle_group;
        let membership = &self.groups[group].checks.committed_membership;
        match self.nemesis.cycle {
            MembershipCycle::Idle => self.start_rebuild(),
            MembershipCycle::Removing { node, retry_at } => {
                if !membership.contains(node) {
                    self.stop_removed(node);
                } else if now >= retry_at {
                    self.nemesis.cycle = MembershipCycle::Removing {
                        node,
                        retry_at: now + MEMBERSHIP_RETRY_TICKS,
                    };
                    if self.leader_membership_has(node, |m, n| m.contains(n)) {
                        self.propose_change(MembershipChange::Remove(node));
                    }
                }
            }
            MembershipCycle::Removed { node, readd_at } => {
                if now >= readd_at {
                    self.readd(node);
                }
            }
            MembershipCycle::Adding { node, retry_at } => {
                if membership.is_voter(node) {
                    self.nemesis.cycle = MembershipCycle::Idle;
                } else if membership.is_learner(node) {
                    let applied = self.groups[group].nodes[node as usize - 1].applied_index();
                    let frontier = self.groups[group]
                        .checks
                        .state_machine_safety
                        .highest_applied();
                    if applied + CATCH_UP_SLACK_ENTRIES >= frontier
                        && self.propose_change(MembershipChange::PromoteLearner(node))
                    {
                        self.nemesis.cycle = MembershipCycle::Promoting {
                            node,
                            retry_at: now + MEMBERSHIP_RETRY_TICKS,
                        };
                    }
                } else if now >= retry_at {
                    self.nemesis.cycle = MembershipCycle::Adding {
                        node,
                        retry_at: now + MEMBERSHIP_RETRY_TICKS,
                    };
                    if !self.leader_membership_has(node, |m, n| m.contains(n)) {
                        self.propose_change(MembershipChange::AddLearner(node));
                    }
                }
            }
            MembershipCycle::Promoting { node, retry_at } => {
                if membership.is_voter(node) {
                    let node = Who {
                        group: group as GroupId,
                        node,
                    };
                    trace_event!(
                        self.world.trace,
                        now,
                        "FAULT healed: {node} is a voter again"
                    );
                    self.nemesis.cycle = MembershipCycle::Idle;
                } else if now >= retry_at {
                    self.nemesis.cycle = MembershipCycle::Promoting {
                        node,
                        retry_at: now + MEMBERSHIP_RETRY_TICKS,
                    };
                    if self.leader_membership_has(node, |m, n| m.is_learner(n)) {
                        self.propose_change(MembershipChange::PromoteLearner(node));
                    }
                }
            }
        }
    }

    /// Crashes a running node with a bit flipped in one of its groups' synced entries, one that
    /// later entries follow: at its restart that replica refuses its log, as the WAL's open
    /// refuses a damaged record that valid ones follow, and the operator rebuilds it.
    fn flip_bit(&mut self, ids: &[NodeId]) {
        if self.nemesis.cycle != MembershipCycle::Idle || self.nemesis.damaged.is_some() {
            return;
        }
        let Some(victim) = self.random_up_node(ids) else {
            return;
        };
        // A group the others can remove the victim from: at least three voters, no learners.
        let candidates: Vec<usize> = (0..self.groups.len())
            .filter(|&g| {
                let group = &self.groups[g];
                let membership = &group.checks.committed_membership;
                group.is_live()
                    && membership.voters.len() >= 3
                    && membership.learners.is_empty()
                    && membership.is_voter(victim)
                    && group.nodes[victim as usize - 1].is_running()
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let group = candidates[self.nemesis.rng.random_range(0..candidates.len())];
        let now = self.world.now;
        let restart_at = now
            + self
                .nemesis
                .rng
                .random_range(faults::QUICK_REBOOT_MIN_TICKS..=faults::CRASH_DOWN_MAX_TICKS);
        self.crash(victim, restart_at, false);
        let disk = &mut self.groups[group].nodes[victim as usize - 1].disk;
        let (floor, last) = (disk.floor_index(), disk.last_index());
        let who = Who {
            group: group as GroupId,
            node: victim,
        };
        if last < floor + 2 {
            trace_event!(
                self.world.trace,
                now,
                "FAULT bit-flip: {who} crashed with no entry that a later one follows"
            );
            return;
        }
        // One of the last eight synced entries (what the node acknowledged lately), never
        // the last one.
        let lowest = (floor + 1).max(last.saturating_sub(8));
        let index = self.nemesis.rng.random_range(lowest..last);
        disk.damage_entry(index);
        self.nemesis.damaged = Some(Damaged {
            group,
            node: victim,
            refused: false,
            retry_at: 0,
        });
        trace_event!(
            self.world.trace,
            now,
            "FAULT bit-flip: {who} crashed; a bit of its synced entry {index} flipped (restart \
             at {restart_at})"
        );
    }

    /// The rebuild of a replica that refused its damaged disk, once no cycle runs: its removal
    /// proposed, then the membership cycle from there (the wipe, the re-add, the promotion). An
    /// engine that takes no membership changes keeps the replica down for the rest of the run.
    fn start_rebuild(&mut self) {
        let Some(damaged) = self.nemesis.damaged else {
            return;
        };
        let slot = &self.groups[damaged.group].nodes[damaged.node as usize - 1];
        if slot.liveness == Liveness::Removed {
            // Its group was removed (the `groups` fault) with it.
            self.nemesis.damaged = None;
            return;
        }
        let now = self.world.now;
        if !damaged.refused || now < damaged.retry_at {
            return;
        }
        self.nemesis.cycle_group = damaged.group;
        if !self.propose_change(MembershipChange::Remove(damaged.node)) {
            self.nemesis.damaged = Some(Damaged {
                retry_at: now + MEMBERSHIP_RETRY_TICKS,
                ..damaged
            });
            return;
        }
        self.nemesis.damaged = None;
        self.nemesis.cycle = MembershipCycle::Removing {
            node: damaged.node,
            retry_at: now + MEMBERSHIP_RETRY_TICKS,
        };
        let who = Who {
            group: damaged.group as GroupId,
            node: damaged.node,
        };
        trace_event!(
            self.world.trace,
            now,
            "FAULT bit-flip: the operator rebuilds {who} (remove, wipe, add back)"
        );
    }

    fn leader_membership_has(
        &self,
        node: NodeId,
        test: impl Fn(&ballot_core::Membership, NodeId) -> bool,
    ) -> bool {
        let group = &self.groups[self.nemesis.cycle_group];
        group
            .current_leader()
            .and_then(|leader| group.nodes[leader as usize - 1].replica.as_ref())
            .is_some_and(|replica| test(&replica.status().membership, node))
    }

    /// The removal committed: stop the node, wipe its disk, forget messages meant for it and
    /// those it sent that are still in flight (they died with its process).
    fn stop_removed(&mut self, node: NodeId) {
        let now = self.world.now;
        let group = self.nemesis.cycle_group;
        let who = Who {
            group: group as GroupId,
            node,
        };
        trace_event!(
            self.world.trace,
            now,
            "FAULT membership: {who} removed, stopped and wiped"
        );
        self.groups[group].nodes[node as usize - 1].remove();
        // Only this group's replica is gone: the node's other groups keep their messages.
        let group_id = group as GroupId;
        self.world.network.purge(|message| {
            message.group() == Some(group_id) && (message.to() == node || message.from() == node)
        });
        self.groups[group].checks.clients.on_node_down(now, node);
        let delay = self
            .nemesis
            .rng
            .random_range(READD_DELAY_MIN_TICKS..=READD_DELAY_MAX_TICKS);
        let readd_at = if self.nemesis.chaos { now + delay } else { now };
        self.nemesis.cycle = MembershipCycle::Removed { node, readd_at };
    }

    /// Propose the node back as a learner and start a fresh, empty incarnation of it that boots
    /// with the leader's membership (which now lists it as a learner).
    fn readd(&mut self, node: NodeId) {
        let now = self.world.now;
        if !self.propose_change(MembershipChange::AddLearner(node)) {
            self.nemesis.cycle = MembershipCycle::Removed {
                node,
                readd_at: now + 5,
            };
            return;
        }
        let group = self.nemesis.cycle_group;
        let leader = self.groups[group]
            .current_leader()
            .expect("just proposed on it");
        let membership = self.groups[group].nodes[leader as usize - 1]
            .replica
            .as_ref()
            .expect("leader runs")
            .status()
            .membership;
        let broken = self.config.driver_break;
        self.groups[group].nodes[node as usize - 1].bootstrap(membership, broken);
        self.restart(group, node);
        self.nemesis.cycle = MembershipCycle::Adding {
            node,
            retry_at: now + MEMBERSHIP_RETRY_TICKS,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skewed(rate_per_mille: u32) -> Nemesis {
        let mut nemesis = Nemesis::new(FaultSet::default(), ChaCha8Rng::seed_from_u64(1));
        nemesis.skew = Some(Skew {
            node: 1,
            rate_per_mille,
            until: u64::MAX,
        });
        nemesis
    }

    #[test]
    fn a_skewed_clock_runs_at_its_rate_and_the_others_keep_true_time() {
        for rate in [
            faults::CLOCK_RATE_MIN_PER_MILLE,
            1000,
            faults::CLOCK_RATE_MAX_PER_MILLE,
        ] {
            let mut nemesis = skewed(rate);
            let skewed_ticks: u32 = (0..1000).map(|_| nemesis.clock_ticks(1)).sum();
            let true_ticks: u32 = (0..1000).map(|_| nemesis.clock_ticks(0)).sum();
            assert_eq!(skewed_ticks, rate, "1000 true ticks at {rate} per mille");
            assert_eq!(true_ticks, 1000);
        }
        let mut slow = skewed(faults::CLOCK_RATE_MIN_PER_MILLE);
        assert!(
            (0..1000)
                .map(|_| slow.clock_ticks(1))
                .all(|ticks| ticks <= 1),
            "a slow clock skips ticks, never bunches them"
        );
    }
}
