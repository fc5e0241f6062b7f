//! The leader's view of one follower: how much of the log it holds, what is in flight to it,
//! and whether it has answered lately (for CheckQuorum and the read lease).
//!
//! A follower is probed (one append at a time, until its match point is found), replicated
//! (appends pipelined up to a window), or sent a snapshot (the entries it needs are compacted).

use ballot_core::LogIndex;
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplicationState {
    /// One append in flight at a time until the follower's log is known to match.
    Probe,
    /// Appends are pipelined optimistically; `next_index` runs ahead of `match_index`.
    Replicate,
    /// Sending snapshot chunks; `sent_bytes` have been sent, `acked_bytes` confirmed.
    Snapshot {
        last_included: LogIndex,
        acked_bytes: u64,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub(crate) match_index: LogIndex,
    pub(crate) next_index: LogIndex,
    pub(crate) state: ReplicationState,
    /// In probe or snapshot state: a message is out and we wait for its answer or a heartbeat.
    pub(crate) waiting: bool,
    /// Last index of each append in flight, oldest first (pipelining window).
    pub(crate) inflight: VecDeque<LogIndex>,
    /// Heard from this follower since the last CheckQuorum round.
    pub(crate) recent_active: bool,
    /// Highest heartbeat round this follower acknowledged (ReadIndex and lease).
    pub(crate) acked_round: u64,
    /// Highest commit index sent to it.
    pub(crate) commit_sent: LogIndex,
    /// `match_index` when the previous heartbeat answer arrived, to spot a stalled pipeline.
    pub(crate) match_at_last_heartbeat: LogIndex,
    /// Heartbeat answers in a row that brought no progress while entries were outstanding.
    pub(crate) stalled_heartbeats: u8,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex) -> Self {
        Self {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            waiting: false,
            inflight: VecDeque::new(),
            recent_active: true,
            acked_round: 0,
            commit_sent: 0,
            match_at_last_heartbeat: 0,
            stalled_heartbeats: 0,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        if let ReplicationState::Snapshot { last_included, .. } = self.state {
            self.next_index = self.next_index.max(last_included + 1);
        }
        self.state = ReplicationState::Probe;
        self.waiting = false;
        self.inflight.clear();
        self.next_index = self.next_index.max(self.match_index + 1);
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.waiting = false;
        self.inflight.clear();
        self.next_index = self.match_index + 1;
    }

    pub(crate) fn become_snapshot(&mut self, last_included: LogIndex) {
        self.state = ReplicationState::Snapshot {
            last_included,
            acked_bytes: 0,
        };
        self.waiting = false;
        self.inflight.clear();
    }

    /// A follower acknowledged entries up to `index`. Returns whether that is news.
    pub(crate) fn acknowledge(&mut self, index: LogIndex) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
            self.waiting = false;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        advanced
    }

    /// Whether another append may be sent now.
    pub(crate) fn can_send(&self, inflight_max: usize) -> bool {
        match self.state {
            ReplicationState::Probe => !self.waiting,
            ReplicationState::Replicate => self.inflight.len() < inflight_max,
            ReplicationState::Snapshot { .. } => !self.waiting,
        }
    }

    pub(crate) fn sent_append(&mut self, last_index: LogIndex) {
        match self.state {
            ReplicationState::Probe => self.waiting = true,
            ReplicationState::Replicate => {
                if last_index >= self.next_index {
                    self.next_index = last_index + 1;
                    self.inflight.push_back(last_index);
                }
            }
            ReplicationState::Snapshot { .. } => {
                unreachable!("appends are not sent while a snapshot is being sent")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelining_window_fills_and_drains() {
        let mut progress = Progress::new(1);
        progress.acknowledge(0);
        progress.become_replicate();
        for last in [5, 10] {
            assert!(progress.can_send(2));
            progress.sent_append(last);
        }
        assert!(!progress.can_send(2), "window of 2 is full");
        assert_eq!(progress.next_index, 11);
        progress.acknowledge(5);
        assert!(progress.can_send(2));
        assert_eq!(progress.inflight.len(), 1);
    }

    #[test]
    fn probe_waits_for_an_answer() {
        let mut progress = Progress::new(7);
        progress.sent_append(6);
        assert!(!progress.can_send(64));
        assert!(progress.acknowledge(6));
        assert!(progress.can_send(64));
    }
}
