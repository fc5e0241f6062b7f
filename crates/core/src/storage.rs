//! The storage a replica's driver writes to, as traits: the log store (entries and hard state,
//! HashiCorp Raft's LogStore and StableStore in one) and the snapshot store (images and
//! compaction points). The server implements them with its WAL and `snap/` directory, the
//! simulator with its in-memory disk, and one conformance suite (`conformance`, behind the
//! feature of that name) holds every implementation to the same rules.
//!
//! The state machine is not a trait here: what applying an entry means (and whom it answers) is
//! each host's, so it is a question the driver asks its host ([`crate::driver::ReadyHost`]).

use crate::{Entry, HardState, LogIndex, LogPosition, Snapshot};

/// A replica's log and hard state, as the driver writes them.
///
/// Rules every implementation keeps (the conformance suite checks each):
/// - [`LogStore::append`] writes entries, then the hard state; an entry at an index already
///   stored replaces it and every later entry; entries must follow each other and the stored
///   log (or the floor) without a gap, or the whole append is refused and changes nothing.
/// - Nothing appended is durable until [`LogStore::sync`] returns; everything appended before it
///   is durable once it does.
/// - [`LogStore::install_snapshot`] and [`LogStore::compact_to`] are durable when they return.
pub trait LogStore {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Writes `entries`, then `hard_state`, without making them durable.
    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Result<(), Self::Error>;

    /// Makes every append so far durable.
    fn sync(&mut self) -> Result<(), Self::Error>;

    /// An image through `position` was saved: the log now starts after it. Entries after it are
    /// kept if the log holds `position` itself (same index and term), else every entry goes
    /// (Raft §7). A position at or below the floor changes nothing.
    fn install_snapshot(&mut self, position: LogPosition) -> Result<(), Self::Error>;

    /// The state machine is durable through `index`: entries through it may go. An index at or
    /// below the floor changes nothing; one past the last stored entry is refused.
    fn compact_to(&mut self, index: LogIndex) -> Result<(), Self::Error>;
}

/// What a log store gives back when it is opened: its durable state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveredLog {
    pub hard_state: HardState,
    /// The position the log starts after (its last compaction or installed snapshot), if any.
    pub floor: Option<LogPosition>,
    /// Every entry after the floor, contiguous.
    pub entries: Vec<Entry>,
}

/// Where images of the state machine and compaction points are kept. The newest one is what a
/// restart begins from.
///
/// Rules every implementation keeps: [`SnapshotStore::save`] is durable when it returns; a
/// snapshot older than the newest one kept is refused and changes nothing; one at the same
/// position replaces it.
pub trait SnapshotStore {
    type Error: std::error::Error + Send + Sync + 'static;

    fn save(&mut self, snapshot: &Snapshot) -> Result<(), Self::Error>;

    /// The newest snapshot kept, if any.
    fn latest(&self) -> Result<Option<Snapshot>, Self::Error>;
}
