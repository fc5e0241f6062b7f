//! The conformance suite for the storage traits: every rule [`LogStore`], [`SnapshotStore`] and
//! [`StateMachine`] state, checked the same way against every implementation (the server's WAL,
//! snapshot directory and MVCC store; the simulator's in-memory disk and map). An
//! implementation's tests call [`log_store`], [`snapshot_store`] and [`state_machine`] with a
//! harness that opens it over fresh storage.
//!
//! Each check panics with a sentence naming the rule it found broken.

use crate::storage::{LogStore, RecoveredLog, SnapshotStore, StateMachine};
use crate::{Entry, EntryPayload, HardState, LogIndex, LogPosition, Snapshot, SnapshotMeta, Term};
use bytes::Bytes;

/// Opens a log store over storage the harness keeps, and closes it as a process exit would.
pub trait LogStoreHarness {
    type Store: LogStore;
    /// Opens the store over the harness's storage (empty the first time) and returns it with
    /// what it recovered.
    fn open(&mut self) -> (Self::Store, RecoveredLog);
    /// The store goes away without another sync; the next [`LogStoreHarness::open`] reads what
    /// it made durable.
    fn close(&mut self, store: Self::Store);
}

/// Opens a snapshot store over storage the harness keeps.
pub trait SnapshotStoreHarness {
    type Store: SnapshotStore;
    fn open(&mut self) -> Self::Store;
    fn close(&mut self, store: Self::Store);
}

/// Builds fresh state machines and speaks their command language for the checks: keys and
/// values are numbers, each implementation encodes them its own way.
pub trait StateMachineHarness {
    type Machine: StateMachine;
    /// A new, empty state machine, independent of every other this harness made.
    fn fresh(&mut self) -> Self::Machine;
    /// The command that sets `key` to `value`.
    fn put(&self, key: u64, value: u64) -> <Self::Machine as StateMachine>::Command;
    /// The value of `key` in `machine`, if it has one.
    fn get(&self, machine: &Self::Machine, key: u64) -> Option<u64>;
}

/// Runs every state machine check on one harness.
pub fn state_machine<H: StateMachineHarness>(harness: &mut H) {
    commands_apply_in_order_and_a_replay_applies_nothing_twice(harness);
    an_image_restores_the_whole_state_and_a_bad_one_changes_nothing(harness);
}

/// Runs every log store check, each on a harness from `new_harness` (fresh, empty storage).
pub fn log_store<H: LogStoreHarness>(mut new_harness: impl FnMut() -> H) {
    synced_appends_and_the_last_hard_state_survive_a_restart(&mut new_harness());
    an_entry_at_a_stored_index_replaces_it_and_every_later_one(&mut new_harness());
    an_append_that_leaves_a_gap_is_refused_whole(&mut new_harness());
    compaction_moves_the_floor_and_keeps_later_entries(&mut new_harness());
    an_installed_snapshot_keeps_the_log_only_if_it_holds_the_snapshot_position(&mut new_harness());
    an_installed_snapshot_that_conflicts_drops_the_whole_log(&mut new_harness());
}

/// Runs every snapshot store check, each on a harness from `new_harness`.
pub fn snapshot_store<H: SnapshotStoreHarness>(mut new_harness: impl FnMut() -> H) {
    the_newest_saved_snapshot_survives_a_restart(&mut new_harness());
    an_older_snapshot_is_refused_and_changes_nothing(&mut new_harness());
}

fn entries(indexes: std::ops::RangeInclusive<LogIndex>, term: Term) -> Vec<Entry> {
    indexes
        .map(|index| Entry {
            index,
            term,
            payload: EntryPayload::Command(Bytes::from(format!("command {index}@{term}"))),
        })
        .collect()
}

fn positions(entries: &[Entry]) -> Vec<(LogIndex, Term)> {
    entries.iter().map(|e| (e.index, e.term)).collect()
}

fn reopen<H: LogStoreHarness>(harness: &mut H, store: H::Store) -> (H::Store, RecoveredLog) {
    harness.close(store);
    harness.open()
}

fn synced_appends_and_the_last_hard_state_survive_a_restart<H: LogStoreHarness>(harness: &mut H) {
    let (mut store, recovered) = harness.open();
    assert_eq!(
        recovered,
        RecoveredLog::default(),
        "a store over empty storage recovers nothing"
    );
    let first = HardState {
        term: 1,
        voted_for: Some(1),
        commit_index: 0,
    };
    let last = HardState {
        term: 2,
        voted_for: Some(3),
        commit_index: 2,
    };
    store.append(&entries(1..=2, 1), Some(first)).unwrap();
    store.append(&entries(3..=3, 2), Some(last)).unwrap();
    store.append(&[], None).unwrap();
    store.sync().unwrap();
    let (_, recovered) = reopen(harness, store);
    assert_eq!(
        recovered.entries,
        [entries(1..=2, 1), entries(3..=3, 2)].concat(),
        "every synced entry comes back, payloads included"
    );
    assert_eq!(
        recovered.hard_state, last,
        "the last hard state written wins"
    );
    assert_eq!(recovered.floor, None, "nothing was compacted");
}

fn an_entry_at_a_stored_index_replaces_it_and_every_later_one<H: LogStoreHarness>(harness: &mut H) {
    let (mut store, _) = harness.open();
    store.append(&entries(1..=5, 1), None).unwrap();
    store.sync().unwrap();
    store.append(&entries(3..=4, 2), None).unwrap();
    store.sync().unwrap();
    let (mut store, recovered) = reopen(harness, store);
    assert_eq!(
        positions(&recovered.entries),
        [(1, 1), (2, 1), (3, 2), (4, 2)],
        "entry 5 of term 1 followed a replaced entry and must be gone"
    );
    store.append(&entries(5..=5, 3), None).unwrap();
    store.sync().unwrap();
    let (_, recovered) = reopen(harness, store);
    assert_eq!(
        recovered.entries.len(),
        5,
        "the log goes on after a replacement"
    );
}

fn an_append_that_leaves_a_gap_is_refused_whole<H: LogStoreHarness>(harness: &mut H) {
    let (mut store, _) = harness.open();
    store.append(&entries(1..=2, 1), None).unwrap();
    store.sync().unwrap();
    let hard_state = HardState {
        term: 5,
        voted_for: None,
        commit_index: 0,
    };
    assert!(
        store.append(&entries(4..=4, 1), Some(hard_state)).is_err(),
        "entry 4 after entry 2 leaves a gap"
    );
    let mut skipping = entries(3..=3, 1);
    skipping.extend(entries(5..=5, 1));
    assert!(
        store.append(&skipping, None).is_err(),
        "entries 3 and 5 do not follow each other"
    );
    store.sync().unwrap();
    let (_, recovered) = reopen(harness, store);
    assert_eq!(
        positions(&recovered.entries),
        [(1, 1), (2, 1)],
        "a refused append writes none of its entries"
    );
    assert_eq!(
        recovered.hard_state,
        HardState::default(),
        "a refused append writes no hard state either"
    );
}

fn compaction_moves_the_floor_and_keeps_later_entries<H: LogStoreHarness>(harness: &mut H) {
    let (mut store, _) = harness.open();
    store.append(&entries(1..=6, 1), None).unwrap();
    store.sync().unwrap();
    store.compact_to(3).unwrap();
    let (mut store, recovered) = reopen(harness, store);
    assert_eq!(recovered.floor, Some(LogPosition::new(3, 1)));
    assert!(
        recovered.entries.first().is_none_or(|e| e.index > 3)
            && recovered.entries.last().map(|e| e.index) == Some(6),
        "entries after the floor stay, none through it comes back: {:?}",
        positions(&recovered.entries)
    );
    store.compact_to(2).unwrap();
    assert!(
        store.compact_to(7).is_err(),
        "compacting past the last entry is refused"
    );
    assert!(
        store.append(&entries(2..=2, 2), None).is_err(),
        "an entry at or below the floor cannot be written"
    );
    store.append(&entries(7..=7, 1), None).unwrap();
    store.sync().unwrap();
    let (_, recovered) = reopen(harness, store);
    assert_eq!(
        recovered.floor,
        Some(LogPosition::new(3, 1)),
        "compacting below the floor changes nothing"
    );
    assert_eq!(recovered.entries.last().map(|e| e.index), Some(7));
}

fn an_installed_snapshot_keeps_the_log_only_if_it_holds_the_snapshot_position<
    H: LogStoreHarness,
>(
    harness: &mut H,
) {
    let (mut store, _) = harness.open();
    store.append(&entries(1..=6, 1), None).unwrap();
    store.sync().unwrap();
    store.install_snapshot(LogPosition::new(4, 1)).unwrap();
    let (_, recovered) = reopen(harness, store);
    assert_eq!(recovered.floor, Some(LogPosition::new(4, 1)));
    assert_eq!(
        recovered.entries.last().map(|e| e.index),
        Some(6),
        "the log holds the snapshot's last entry, so entries after it stay"
    );
    assert!(recovered.entries.iter().all(|e| e.index > 4));
}

fn an_installed_snapshot_that_conflicts_drops_the_whole_log<H: LogStoreHarness>(harness: &mut H) {
    let (mut store, _) = harness.open();
    store.append(&entries(1..=6, 1), None).unwrap();
    store.sync().unwrap();
    store.install_snapshot(LogPosition::new(5, 2)).unwrap();
    let (mut store, recovered) = reopen(harness, store);
    assert_eq!(recovered.floor, Some(LogPosition::new(5, 2)));
    assert!(
        recovered.entries.is_empty(),
        "entry 5 has another term than the snapshot's: every entry goes, 6 included"
    );
    assert!(
        store.append(&entries(7..=7, 2), None).is_err(),
        "the next entry must follow the snapshot"
    );
    store.install_snapshot(LogPosition::new(3, 1)).unwrap();
    store.append(&entries(6..=6, 2), None).unwrap();
    store.sync().unwrap();
    let (_, recovered) = reopen(harness, store);
    assert_eq!(
        recovered.floor,
        Some(LogPosition::new(5, 2)),
        "a snapshot below the floor changes nothing"
    );
    assert_eq!(positions(&recovered.entries), [(6, 2)]);
}

fn snapshot(index: LogIndex, term: Term, data: &'static str) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            last_included: LogPosition::new(index, term),
            membership: crate::Membership::default(),
        },
        data: Bytes::from_static(data.as_bytes()),
    }
}

fn the_newest_saved_snapshot_survives_a_restart<H: SnapshotStoreHarness>(harness: &mut H) {
    let mut store = harness.open();
    assert_eq!(
        store.latest().unwrap(),
        None,
        "empty storage holds no snapshot"
    );
    store.save(&snapshot(4, 1, "four")).unwrap();
    store.save(&snapshot(9, 2, "nine")).unwrap();
    harness.close(store);
    let store = harness.open();
    assert_eq!(
        store.latest().unwrap(),
        Some(snapshot(9, 2, "nine")),
        "the newest snapshot comes back whole, data included"
    );
}

fn an_older_snapshot_is_refused_and_changes_nothing<H: SnapshotStoreHarness>(harness: &mut H) {
    let mut store = harness.open();
    store.save(&snapshot(9, 2, "nine")).unwrap();
    assert!(
        store.save(&snapshot(4, 1, "four")).is_err(),
        "a snapshot older than the newest kept is refused"
    );
    harness.close(store);
    let store = harness.open();
    assert_eq!(store.latest().unwrap(), Some(snapshot(9, 2, "nine")));
}

fn commands_apply_in_order_and_a_replay_applies_nothing_twice<H: StateMachineHarness>(
    harness: &mut H,
) {
    let mut machine = harness.fresh();
    assert_eq!(
        machine.applied_index(),
        0,
        "a fresh state machine has applied nothing"
    );
    let outcomes = machine
        .apply(&[
            (1, harness.put(1, 10)),
            (2, harness.put(2, 20)),
            (3, harness.put(1, 11)),
        ])
        .unwrap();
    assert!(
        outcomes.iter().all(Option::is_some),
        "every new command has an outcome"
    );
    assert_eq!(harness.get(&machine, 1), Some(11), "later commands win");
    assert_eq!(harness.get(&machine, 2), Some(20));
    assert_eq!(machine.applied_index(), 3);
    let outcomes = machine
        .apply(&[
            (2, harness.put(2, 99)),
            (3, harness.put(1, 99)),
            (4, harness.put(3, 30)),
        ])
        .unwrap();
    assert!(
        outcomes[0].is_none() && outcomes[1].is_none() && outcomes[2].is_some(),
        "commands at or below the applied index are skipped, later ones applied"
    );
    assert_eq!(
        harness.get(&machine, 2),
        Some(20),
        "a replayed command changed nothing"
    );
    assert_eq!(harness.get(&machine, 1), Some(11));
    assert_eq!(harness.get(&machine, 3), Some(30));
    machine.mark_applied(6).unwrap();
    assert_eq!(
        machine.applied_index(),
        6,
        "an entry without a command moves the index"
    );
    let outcomes = machine.apply(&[(5, harness.put(5, 50))]).unwrap();
    assert!(outcomes[0].is_none(), "index 5 is behind the applied index");
    assert_eq!(harness.get(&machine, 5), None);
}

fn an_image_restores_the_whole_state_and_a_bad_one_changes_nothing<H: StateMachineHarness>(
    harness: &mut H,
) {
    let mut machine = harness.fresh();
    machine
        .apply(&[(1, harness.put(1, 10)), (2, harness.put(2, 20))])
        .unwrap();
    let image = machine.image().unwrap();
    let mut copy = harness.fresh();
    copy.apply(&[(1, harness.put(9, 90))]).unwrap();
    copy.restore(&image).unwrap();
    assert_eq!(
        copy.applied_index(),
        2,
        "the image carries its applied index"
    );
    assert_eq!(harness.get(&copy, 1), Some(10));
    assert_eq!(harness.get(&copy, 2), Some(20));
    assert_eq!(
        harness.get(&copy, 9),
        None,
        "a restore replaces the whole state: what the image lacks is gone"
    );
    machine.apply(&[(3, harness.put(4, 40))]).unwrap();
    machine.restore(&image).unwrap();
    assert_eq!(
        machine.applied_index(),
        2,
        "a restore can move the applied index back"
    );
    assert_eq!(harness.get(&machine, 4), None);
    assert!(
        machine.restore(b"this is not an image").is_err(),
        "an image that does not decode is refused"
    );
    assert_eq!(
        machine.applied_index(),
        2,
        "a refused image changes nothing"
    );
    assert_eq!(harness.get(&machine, 1), Some(10));
}
