//! The batch of outputs a replica hands to whoever drives it (the server or the simulator).
//!
//! Contract for handling a [`Ready`], in this order:
//!
//! 1. send [`Ready::messages`] at once: they do not depend on this batch being durable (a
//!    leader may replicate entries in parallel with writing them itself, dissertation §10.2.1);
//! 2. persist [`Ready::snapshot`] (it replaces the stored log: drop every stored entry), then
//!    [`Ready::entries`] (an entry at an index that is already stored replaces it and every entry
//!    after it), then [`Ready::hard_state`], and make them durable (fsync) when
//!    [`Ready::must_persist`] says so (a hard state that only moves the commit index need not be);
//! 3. only then send [`Ready::messages_after_persist`] (votes, append acknowledgements);
//! 4. restore the state machine from [`Ready::snapshot`] if any, then apply
//!    [`Ready::committed_entries`] in order;
//! 5. serve each [`ReadState`] once the applied index reaches its index;
//! 6. call [`crate::Replica::advance`];
//! 7. if [`Ready::compaction_wanted`], call [`crate::Replica::compact`]; if
//!    [`Ready::snapshot_wanted`], build an image and call [`crate::Replica::snapshot_taken`]
//!    (either may also happen later, off the caller's hot path).
//!
//! A driver may do steps 4 and 5 before step 2 when [`Ready::may_apply_before_persist`]: the
//! replica said so ([`Ready::apply_early`]: a Raft leader, whose committed entries are durable
//! on a quorum that includes itself, since its own entries count towards a commit only once
//! persisted), and the batch allows it. Applying and answering clients then never depends on
//! this batch's write. A Raft follower keeps the order, since its acknowledgements (step 3) are
//! what commits wait for.
//!
//! Storage may tear a batch on a crash: some of `entries` durable, `hard_state` not. Replicas
//! accept such a state on restart (a log entry newer than the persisted term), since nothing that
//! depended on the lost part was sent.
//!
//! A replica hands out no new `Ready` until `advance` is called, so at most one batch is in
//! flight between the protocol and the disk.

use crate::{Entry, HardState, LogIndex, Snapshot};

/// A read barrier that has been confirmed: a read with this id may be served from the local state
/// machine once it has applied `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    pub request_id: u64,
    pub index: LogIndex,
}

/// One batch of outputs. See the module documentation for the order in which to handle it.
#[derive(Debug, Clone)]
pub struct Ready<M> {
    pub messages: Vec<M>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// Whether [`Ready::hard_state`] must be synced: its term or vote changed. A hard state that
    /// only moves the commit index may be written without an fsync (as etcd does): the commit
    /// index is volatile state in Raft, and a restart that finds an older one relearns it from the
    /// leader. Every entry at or below any commit index written was synced with an earlier batch
    /// (or is in this one, which then syncs for its entries).
    pub hard_state_needs_sync: bool,
    pub messages_after_persist: Vec<M>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Reads that will never be confirmed by this replica (it lost leadership, or the read was
    /// refused after being queued); the caller should retry elsewhere.
    pub dropped_reads: Vec<u64>,
    /// The log has grown past the configured threshold since the last compaction: the caller
    /// should call [`crate::Replica::compact`] with an index its state machine has made durable,
    /// and persist the metadata it returns before dropping stored entries.
    pub compaction_wanted: bool,
    /// A follower needs entries the log no longer holds: the caller should snapshot its state
    /// machine at its applied index and hand the image over with
    /// [`crate::Replica::snapshot_taken`]. Images are built only on this request, never
    /// periodically: a large state machine costs seconds to encode.
    pub snapshot_wanted: bool,
    /// The replica allows [`Ready::committed_entries`] to be applied (and the reads served)
    /// before this batch is persisted: everything it hands out as committed is durable on a
    /// quorum without this batch. Whether that holds is the protocol's knowledge (for Raft: this
    /// replica leads); the driver asks [`Ready::may_apply_before_persist`], which also checks
    /// the batch.
    pub apply_early: bool,
}

impl<M> Default for Ready<M> {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            snapshot: None,
            entries: Vec::new(),
            hard_state: None,
            hard_state_needs_sync: false,
            messages_after_persist: Vec::new(),
            committed_entries: Vec::new(),
            read_states: Vec::new(),
            dropped_reads: Vec::new(),
            compaction_wanted: false,
            snapshot_wanted: false,
            apply_early: false,
        }
    }
}

impl<M> Ready<M> {
    /// Whether anything must be durable (synced) before `messages_after_persist` may leave.
    /// A commit-only [`Ready::hard_state`] is still to be written, just not waited for.
    pub fn must_persist(&self) -> bool {
        self.snapshot.is_some() || !self.entries.is_empty() || self.hard_state_needs_sync
    }

    /// Whether the driver may apply [`Ready::committed_entries`] (and serve the reads) before
    /// this batch is durable: the replica allows it ([`Ready::apply_early`]), there is no
    /// snapshot to restore first, and every committed entry precedes the batch's new ones, so
    /// it was synced by an earlier batch (each batch with entries syncs them). A replica that
    /// allows it always hands out such batches; drivers check rather than trust it.
    pub fn may_apply_before_persist(&self) -> bool {
        if !self.apply_early || self.snapshot.is_some() {
            return false;
        }
        match (self.committed_entries.last(), self.entries.first()) {
            (Some(last_committed), Some(first_new)) => last_committed.index < first_new.index,
            _ => true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && !self.must_persist()
            && self.hard_state.is_none()
            && self.messages_after_persist.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.dropped_reads.is_empty()
            && !self.compaction_wanted
            && !self.snapshot_wanted
    }
}

#[cfg(test)]
mod tests {
    use super::Ready;
    use crate::{Entry, EntryPayload, HardState};

    #[test]
    fn a_commit_only_hard_state_is_not_empty_and_needs_no_sync() {
        let ready: Ready<()> = Ready {
            hard_state: Some(HardState {
                term: 1,
                voted_for: None,
                commit_index: 3,
            }),
            ..Ready::default()
        };
        assert!(!ready.must_persist(), "only the commit index moved");
        assert!(!ready.is_empty(), "the hard state is still to be written");
    }

    fn entries(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes
            .map(|index| Entry {
                index,
                term: 1,
                payload: EntryPayload::Noop,
            })
            .collect()
    }

    fn ready(committed: Vec<Entry>, new: Vec<Entry>) -> Ready<()> {
        Ready {
            committed_entries: committed,
            entries: new,
            apply_early: true,
            ..Ready::default()
        }
    }

    #[test]
    fn applying_before_the_sync_needs_every_committed_entry_synced_already() {
        assert!(ready(entries(1..=4), entries(5..=6)).may_apply_before_persist());
        assert!(ready(entries(1..=4), vec![]).may_apply_before_persist());
        assert!(ready(vec![], entries(5..=6)).may_apply_before_persist());
        assert!(
            !ready(entries(1..=5), entries(5..=6)).may_apply_before_persist(),
            "entry 5 is committed and written in this very batch: it must be synced first"
        );
        let not_allowed = Ready {
            apply_early: false,
            ..ready(entries(1..=4), entries(5..=6))
        };
        assert!(
            !not_allowed.may_apply_before_persist(),
            "only the replica knows whether its commits are durable without this batch"
        );
    }
}
