//! Node liveness, for hibernating groups: a sleeping group's followers run no election timer,
//! so a dead leader of such a group is noticed here instead. While this node hosts a group other
//! than 0, it sends every peer a liveness frame each heartbeat interval whatever its groups do;
//! anything read from a peer counts as hearing from it; a peer not heard from for an election
//! timeout is declared down, once per silence, and the node loop tells every replica it hosts
//! (`Replica::peer_down`), so the sleeping groups that peer led wake and elect. CockroachDB's
//! node liveness is the model; the simulator runs the same rules (`ballot_sim`'s `liveness`).

use crate::config::{ServerConfig, TICK_MILLIS};
use crate::transport::Transport;
use ballot_core::NodeId;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub(crate) struct NodeLiveness {
    /// Silence after which a peer is declared down: the election timeout.
    down_after: Duration,
    ping_every_ticks: u64,
    /// A peer never heard from counts from here (this process's start).
    since: Instant,
    declared: BTreeSet<NodeId>,
    /// Declarations since the start, for `/metrics`.
    pub(crate) declared_total: u64,
}

impl NodeLiveness {
    pub(crate) fn new(config: &ServerConfig) -> Self {
        Self {
            down_after: Duration::from_millis(config.election_timeout_ms),
            ping_every_ticks: (config.heartbeat_interval_ms / TICK_MILLIS).max(1),
            since: Instant::now(),
            declared: BTreeSet::new(),
            declared_total: 0,
        }
    }

    /// Once per tick (`ticks` counts them): pings the peers when `ping` (this node hosts
    /// hibernating groups) and the interval is up, and returns the peers newly declared down.
    pub(crate) fn tick(
        &mut self,
        ticks: u64,
        peers: &[NodeId],
        last_heard: impl Fn(NodeId) -> Option<Instant>,
        transport: &Transport,
        ping: bool,
    ) -> Vec<NodeId> {
        if ping && ticks.is_multiple_of(self.ping_every_ticks) {
            for &peer in peers {
                transport.hold_liveness(peer);
            }
        }
        let now = Instant::now();
        let mut newly_down = Vec::new();
        for &peer in peers {
            let heard = last_heard(peer).unwrap_or(self.since).max(self.since);
            if now.duration_since(heard) <= self.down_after {
                self.declared.remove(&peer);
            } else if self.declared.insert(peer) {
                newly_down.push(peer);
            }
        }
        self.declared_total += newly_down.len() as u64;
        newly_down
    }
}
