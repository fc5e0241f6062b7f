//! A tiny synchronous cluster for rule tests: persistence is instant, messages are delivered in
//! order unless a link is cut, and every step is explicit so a test reads like the paper's rule.

#![allow(dead_code)]

use ballot_core::{
    Entry, EntryPayload, HardState, Membership, NodeId, PersistedState, ReadState, Replica, Role,
    Snapshot, SnapshotMeta,
};
use ballot_raft::{Config, Message, Raft};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Default, Clone)]
pub struct Disk {
    pub hard_state: HardState,
    /// The last compaction point (from `compact` or an installed snapshot).
    pub compacted: Option<SnapshotMeta>,
    /// The last snapshot image installed from a leader.
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
}

impl Disk {
    fn write(&mut self, entries: &[Entry]) {
        if let Some(first) = entries.first() {
            let keep = self.entries.partition_point(|e| e.index < first.index);
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
    }

    pub fn to_persisted(&self) -> PersistedState {
        PersistedState {
            hard_state: self.hard_state,
            compacted: self.compacted.clone(),
            entries: self.entries.clone(),
        }
    }
}

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Raft>,
    pub disks: BTreeMap<NodeId, Disk>,
    pub applied: BTreeMap<NodeId, Vec<Entry>>,
    pub reads: BTreeMap<NodeId, Vec<ReadState>>,
    pub dropped_reads: BTreeMap<NodeId, Vec<u64>>,
    pub queue: VecDeque<Message>,
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Every message delivered, for assertions on what was said.
    pub delivered: Vec<Message>,
    pub configure: fn(&mut Config),
    /// Compact whenever the replica asks (the applied index counts as durable) and hand it an
    /// (empty) image whenever it asks for one, as a long-running server would.
    pub auto_snapshot: bool,
    /// Keep a copy of every delivered message in `delivered` (off in benchmarks).
    pub record_delivered: bool,
}

pub fn config_for(id: NodeId) -> Config {
    let mut config = Config::new(id);
    config.rng_seed = 7 * id;
    config
}

/// The storage of a brand-new member of a cluster of `voters`.
pub fn bootstrap(voters: &[NodeId]) -> PersistedState {
    PersistedState::bootstrap(Membership::with_voters(voters.iter().copied()))
}

impl Cluster {
    pub fn new(size: u64) -> Self {
        Self::with_config(size, |_| {})
    }

    pub fn with_config(size: u64, configure: fn(&mut Config)) -> Self {
        let voters: Vec<NodeId> = (1..=size).collect();
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            dropped_reads: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            delivered: Vec::new(),
            configure,
            auto_snapshot: false,
            record_delivered: true,
        };
        for &id in &voters {
            let mut config = config_for(id);
            configure(&mut config);
            let disk = Disk {
                compacted: bootstrap(&voters).compacted,
                ..Disk::default()
            };
            cluster
                .nodes
                .insert(id, Raft::new(config, disk.to_persisted()).unwrap());
            cluster.disks.insert(id, disk);
        }
        cluster
    }

    pub fn node(&self, id: NodeId) -> &Raft {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Raft {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Handles every pending Ready (instant fsync) and delivers messages until quiet.
    pub fn settle(&mut self) {
        self.settle_leaving(None);
    }

    /// As [`Cluster::settle`], but `by_hand`'s Readies are left to the test (messages to it are
    /// still delivered).
    pub fn settle_except(&mut self, by_hand: NodeId) {
        self.settle_leaving(Some(by_hand));
    }

    fn settle_leaving(&mut self, by_hand: Option<NodeId>) {
        for _ in 0..10_000 {
            let mut progressed = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids.into_iter().filter(|&id| Some(id) != by_hand) {
                progressed |= self.handle_ready(id);
            }
            if let Some(message) = self.queue.pop_front() {
                progressed = true;
                if !self.cut.contains(&(message.from, message.to)) {
                    if let Some(node) = self.nodes.get_mut(&message.to) {
                        if self.record_delivered {
                            self.delivered.push(message.clone());
                        }
                        node.step(message);
                    }
                }
            }
            if !progressed {
                return;
            }
        }
        for m in self.delivered.iter().rev().take(12) {
            eprintln!("{m}");
        }
        panic!("cluster did not settle");
    }

    pub fn handle_ready(&mut self, id: NodeId) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        if !node.has_ready() {
            return false;
        }
        let ready = node.ready();
        let disk = self.disks.get_mut(&id).unwrap();
        self.queue.extend(ready.messages);
        if let Some(snapshot) = ready.snapshot {
            disk.entries.clear();
            self.applied.insert(id, Vec::new());
            disk.compacted = Some(snapshot.meta.clone());
            disk.snapshot = Some(snapshot);
        }
        disk.write(&ready.entries);
        if let Some(hard_state) = ready.hard_state {
            disk.hard_state = hard_state;
        }
        self.queue.extend(ready.messages_after_persist);
        self.applied
            .entry(id)
            .or_default()
            .extend(ready.committed_entries);
        self.reads.entry(id).or_default().extend(ready.read_states);
        self.dropped_reads
            .entry(id)
            .or_default()
            .extend(ready.dropped_reads);
        node.advance();
        if ready.compaction_wanted && self.auto_snapshot {
            let applied = node.status().applied_index;
            if let Some(meta) = node.compact(applied).unwrap() {
                disk.compacted = Some(meta);
            }
            let first = node.status().first_log_index;
            disk.entries.retain(|e| e.index >= first);
            self.applied.insert(id, Vec::new());
        }
        if ready.snapshot_wanted && self.auto_snapshot {
            let status = node.status();
            let last_included = ballot_core::LogPosition::new(status.applied_index, 0);
            let meta = SnapshotMeta {
                last_included,
                membership: status.membership,
            };
            node.snapshot_taken(Snapshot {
                meta,
                data: Bytes::new(),
            })
            .unwrap();
        }
        true
    }

    pub fn tick(&mut self, id: NodeId, times: u32) {
        for _ in 0..times {
            self.node_mut(id).tick();
        }
    }

    /// Ticks every node `times` times, settling after each round.
    pub fn tick_all(&mut self, times: u32) {
        for _ in 0..times {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.node_mut(id).tick();
            }
            self.settle();
        }
    }

    /// Makes `id` campaign by running its election timer out, then settles.
    pub fn elect(&mut self, id: NodeId) {
        for _ in 0..100 {
            self.node_mut(id).tick();
            self.settle();
            if self.node(id).status().role == Role::Leader {
                return;
            }
        }
        panic!("n{id} did not become leader");
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .find(|n| n.status().role == Role::Leader)
            .map(|n| n.id())
    }

    pub fn isolate(&mut self, id: NodeId) {
        for &other in self.nodes.keys() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn propose(&mut self, leader: NodeId, data: &'static [u8]) -> ballot_core::LogPosition {
        self.node_mut(leader)
            .propose(Bytes::from_static(data))
            .unwrap()
    }

    pub fn commands_applied(&self, id: NodeId) -> Vec<Bytes> {
        self.applied
            .get(&id)
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| match &e.payload {
                        EntryPayload::Command(data) => Some(data.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Crashes `id` and restarts it from its disk (volatile state lost).
    pub fn restart(&mut self, id: NodeId) {
        let mut config = config_for(id);
        (self.configure)(&mut config);
        config.rng_seed += 1000;
        let persisted = self.disks[&id].to_persisted();
        self.nodes.insert(id, Raft::new(config, persisted).unwrap());
        self.applied.insert(id, Vec::new());
        self.queue.retain(|m| m.to != id && m.from != id);
    }
}
