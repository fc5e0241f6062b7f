//! The storage a replica's driver writes to, as traits: the log store (entries and hard state,
//! HashiCorp Raft's LogStore and StableStore in one) and the snapshot store (images and
//! compaction points). The server implements them with its WAL and `snap/` directory, the
//! simulator with its in-memory disk, and one conformance suite (`conformance`, behind the
//! feature of that name) holds every implementation to the same rules.
//!
//! The state machine's storage is the third trait, [`StateMachine`]: applying commands in log
//! order, at most once each, and images of the whole state. What a command means, and whom its
//! outcome answers, is each host's: the driver asks its host to apply
//! ([`crate::driver::ReadyHost::apply`]), and the host decodes its entries into its state
//! machine's commands.

use crate::{Entry, HardState, LogIndex, LogPosition, Snapshot};
use bytes::Bytes;

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

/// A replicated state machine's storage: the MVCC store on a server, the simulator's map.
///
/// Rules every implementation keeps (the conformance suite checks each):
/// - [`StateMachine::apply`] applies commands in log order; a command at or below the applied
///   index is skipped (its outcome is `None`), so replaying a log after a restart applies
///   nothing twice;
/// - [`StateMachine::mark_applied`] moves the applied index past an entry that carries no
///   command, changing no state;
/// - [`StateMachine::image`] holds the whole state and its applied index, and
///   [`StateMachine::restore`] replaces the whole state with one (keys the image lacks are
///   gone); an image that does not decode is refused and changes nothing.
pub trait StateMachine {
    /// One entry's command, decoded from the log by the host.
    type Command;
    /// What applying one command answers.
    type Outcome;
    type Error: std::error::Error + Send + Sync + 'static;

    fn apply(
        &mut self,
        commands: &[(LogIndex, Self::Command)],
    ) -> Result<Vec<Option<Self::Outcome>>, Self::Error>;

    fn mark_applied(&mut self, index: LogIndex) -> Result<(), Self::Error>;

    fn applied_index(&self) -> LogIndex;

    fn image(&self) -> Result<Bytes, Self::Error>;

    fn restore(&mut self, image: &[u8]) -> Result<(), Self::Error>;
}
