//! Node liveness, as the server runs it for hibernating groups: every node pings every other
//! once per leader heartbeat interval whatever its groups do, counts any message from a peer as
//! hearing from it, and declares a peer down after a leader timeout of silence. Each replica on
//! the declaring node is told (`Replica::peer_down`), so a sleeping group whose leader was on
//! the silent node wakes and elects. Only runs with groups that hibernate (more than one group:
//! group 0 never sleeps) ping, so a single-group run replays the seeds it always did.

use ballot_core::NodeId;

/// Ticks between two pings from a node to each peer (Raft's heartbeat interval here).
pub(crate) const PING_INTERVAL_TICKS: u64 = 3;
/// Silence after which a peer is declared down (Raft's minimum election timeout here).
pub(crate) const DOWN_AFTER_TICKS: u64 = 15;

/// What every node has heard from every other.
pub(crate) struct NodeLiveness {
    /// `last_heard[node][peer]`: the tick `node` last heard from `peer` (ids minus one).
    last_heard: Vec<Vec<u64>>,
    /// `down[node][peer]`: `node` has declared `peer` down and not heard from it since.
    down: Vec<Vec<bool>>,
}

impl NodeLiveness {
    pub(crate) fn new(nodes: usize) -> Self {
        Self {
            last_heard: vec![vec![0; nodes]; nodes],
            down: vec![vec![false; nodes]; nodes],
        }
    }

    /// `node` received something from `peer` at `now`.
    pub(crate) fn heard(&mut self, now: u64, node: NodeId, peer: NodeId) {
        let (node, peer) = (node as usize - 1, peer as usize - 1);
        self.last_heard[node][peer] = now;
        self.down[node][peer] = false;
    }

    /// `node` (re)started at `now`: it gives every peer a full timeout, as a new process does.
    pub(crate) fn started(&mut self, now: u64, node: NodeId) {
        let node = node as usize - 1;
        self.last_heard[node].fill(now);
        self.down[node].fill(false);
    }

    /// The `(node, peer)` pairs where `node` declares `peer` down at `now`, each once per
    /// silence; `up` says which nodes run.
    pub(crate) fn newly_down(
        &mut self,
        now: u64,
        up: impl Fn(NodeId) -> bool,
    ) -> Vec<(NodeId, NodeId)> {
        let mut declared = Vec::new();
        for node in 0..self.last_heard.len() {
            if !up(node as NodeId + 1) {
                continue;
            }
            for peer in 0..self.last_heard.len() {
                if peer == node || self.down[node][peer] {
                    continue;
                }
                if now.saturating_sub(self.last_heard[node][peer]) > DOWN_AFTER_TICKS {
                    self.down[node][peer] = true;
                    declared.push((node as NodeId + 1, peer as NodeId + 1));
                }
            }
        }
        declared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_is_declared_down_once_and_hearing_from_it_clears_that() {
        let mut liveness = NodeLiveness::new(3);
        liveness.started(0, 1);
        assert!(liveness.newly_down(DOWN_AFTER_TICKS, |_| true).is_empty());
        liveness.heard(10, 1, 2);
        let down = liveness.newly_down(DOWN_AFTER_TICKS + 1, |node| node == 1);
        assert_eq!(down, vec![(1, 3)], "n1 heard from n2 lately, not from n3");
        assert!(liveness
            .newly_down(DOWN_AFTER_TICKS + 2, |node| node == 1)
            .is_empty());
        liveness.heard(40, 1, 3);
        assert_eq!(
            liveness.newly_down(40 + DOWN_AFTER_TICKS, |node| node == 1),
            vec![(1, 2)],
            "n2 silent since 10; n3 heard at 40"
        );
        let again = liveness.newly_down(40 + DOWN_AFTER_TICKS + 1, |node| node == 1);
        assert_eq!(again, vec![(1, 3)], "a new silence, a new declaration");
    }
}
