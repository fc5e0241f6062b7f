//! The shared WAL's writer and replay together: what each group appends is what open returns for
//! it, whatever the other groups did, and segments go only when no group needs them.

use super::*;
use ballot_core::{EntryPayload, Term};
use bytes::Bytes;

fn small() -> WalOptions {
    WalOptions {
        segment_size_bytes: 1024,
        record_bytes_max: 512,
    }
}

fn entry(group: GroupId, index: LogIndex, term: Term) -> Entry {
    Entry {
        index,
        term,
        payload: EntryPayload::Command(Bytes::from(format!("group {group} cmd {index}@{term}"))),
    }
}

fn entries(group: GroupId, range: std::ops::RangeInclusive<LogIndex>, term: Term) -> Vec<Entry> {
    range.map(|index| entry(group, index, term)).collect()
}

fn hard_state(term: Term, commit_index: LogIndex) -> HardState {
    HardState {
        term,
        voted_for: Some(1),
        commit_index,
    }
}

fn positions(recovered: &Recovered) -> Vec<(LogIndex, Term)> {
    recovered
        .entries
        .iter()
        .map(|e| (e.index, e.term))
        .collect()
}

fn open(dir: &Path) -> SharedOpened {
    match SharedWal::open(dir, small()) {
        Ok(opened) => opened,
        Err(error) => {
            let mut names: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for path in names {
                eprintln!("{}", path.display());
                let bytes = std::fs::read(&path).unwrap();
                let _ = crate::wal::segment::scan(&bytes, 512, |offset, _, record| {
                    eprintln!("  {offset} {record:?}");
                    Ok(())
                });
            }
            panic!("the shared WAL opens: {error}");
        }
    }
}

#[test]
fn each_group_recovers_its_own_log_from_interleaved_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path()).wal;
    for index in 1..=30 {
        wal.append(1, &[entry(1, index, 1)], Some(hard_state(1, index - 1)))
            .unwrap();
        wal.append(2, &[entry(2, index, 2)], None).unwrap();
    }
    // Group 2 replaces its tail from 25 on, in a later term.
    wal.append(2, &entries(2, 25..=26, 3), Some(hard_state(3, 20)))
        .unwrap();
    wal.sync().unwrap();
    assert!(wal.segment_paths().len() > 2, "the test crosses segments");
    drop(wal);

    let opened = open(dir.path());
    assert_eq!(opened.groups.len(), 2);
    let one = &opened.groups[&1];
    assert_eq!(positions(one), (1..=30).map(|i| (i, 1)).collect::<Vec<_>>());
    assert_eq!(one.hard_state, hard_state(1, 29));
    assert_eq!(one.entries[4], entry(1, 5, 1), "payloads come back whole");
    let two = &opened.groups[&2];
    let mut expected: Vec<_> = (1..=24).map(|i| (i, 2)).collect();
    expected.extend([(25, 3), (26, 3)]);
    assert_eq!(positions(two), expected);
    assert_eq!(two.hard_state, hard_state(3, 20));
    assert_eq!(two.snapshot, None);
}

#[test]
fn a_refused_append_writes_nothing_for_any_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path()).wal;
    wal.append(1, &entries(1, 1..=3, 1), None).unwrap();
    let appended = wal.appended_sequence();
    let gap = wal.append(1, &[entry(1, 5, 1)], None).unwrap_err();
    assert!(matches!(
        gap,
        WalError::InvalidAppend {
            violation: Violation::IndexGap { .. }
        }
    ));
    // Another group's log is its own: index 1 is where it starts.
    let start_late = wal.append(2, &[entry(2, 4, 1)], None).unwrap_err();
    assert!(matches!(start_late, WalError::InvalidAppend { .. }));
    let big = Entry {
        index: 4,
        term: 1,
        payload: EntryPayload::Command(Bytes::from(vec![7; 600])),
    };
    assert!(matches!(
        wal.append(1, &[big], None),
        Err(WalError::RecordTooLarge { .. })
    ));
    assert_eq!(wal.appended_sequence(), appended);
    wal.sync().unwrap();
    drop(wal);
    let opened = open(dir.path());
    assert_eq!(positions(&opened.groups[&1]).len(), 3);
    assert!(!opened.groups.contains_key(&2));
}

#[test]
fn segments_go_only_when_every_group_compacted_past_their_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path()).wal;
    for index in 1..=40 {
        wal.append(1, &[entry(1, index, 1)], None).unwrap();
        wal.append(2, &[entry(2, index, 1)], None).unwrap();
    }
    wal.sync().unwrap();
    let written = wal.segment_paths().len();
    assert!(written >= 4, "the test spans several segments: {written}");
    // Group 1 alone compacting frees nothing: group 2's entries are in every segment.
    assert_eq!(wal.compact_to(1, 40).unwrap(), 0);
    assert_eq!(wal.segment_paths().len(), written);
    // Group 2 compacting half of its log frees the segments before its entry 21.
    let freed = wal.compact_to(2, 20).unwrap();
    assert!(
        freed > 0 && freed < written - 1,
        "freed {freed} of {written}"
    );
    drop(wal);

    let opened = open(dir.path());
    let one = &opened.groups[&1];
    assert_eq!(one.snapshot, Some(LogPosition::new(40, 1)));
    assert!(one.entries.is_empty());
    assert_eq!(one.first_index, 41);
    let two = &opened.groups[&2];
    assert_eq!(two.snapshot, Some(LogPosition::new(20, 1)));
    assert_eq!(
        positions(two),
        (21..=40).map(|i| (i, 1)).collect::<Vec<_>>()
    );
    let mut wal = opened.wal;
    wal.compact_to(2, 40).unwrap();
    assert_eq!(
        wal.segment_paths().len(),
        1,
        "no live entry keeps an old segment"
    );
}

#[test]
fn the_groups_keeping_old_segments_are_named_once_the_wal_grows_past_a_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path()).wal;
    // Group 1 writes once and goes quiet; group 2 keeps writing and compacting.
    wal.append(1, &[entry(1, 1, 1)], None).unwrap();
    for index in 1..=60 {
        wal.append(2, &[entry(2, index, 1)], None).unwrap();
        wal.compact_to(2, index).unwrap();
    }
    wal.sync().unwrap();
    let kept = wal.segment_paths().len();
    assert!(kept >= 4, "group 1's one entry keeps every segment: {kept}");
    assert_eq!(wal.groups_keeping_old_segments(kept), Vec::<GroupId>::new());
    assert_eq!(wal.groups_keeping_old_segments(2), vec![1]);
    wal.compact_to(1, 1).unwrap();
    assert_eq!(
        wal.segment_paths().len(),
        1,
        "once the quiet group compacted, its old segments go"
    );
    assert_eq!(wal.groups_keeping_old_segments(0), Vec::<GroupId>::new());
}

#[test]
fn a_hard_state_in_a_preamble_before_the_first_live_entry_is_kept() {
    // Group 1 writes entries and a hard state, then only much later entries and a compaction:
    // the oldest kept segment shows its hard state before anything says where its log starts.
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path()).wal;
    wal.append(1, &entries(1, 1..=10, 1), Some(hard_state(1, 10)))
        .unwrap();
    for index in 1..=30 {
        wal.append(2, &[entry(2, index, 1)], None).unwrap();
    }
    wal.append(1, &entries(1, 11..=14, 2), Some(hard_state(2, 12)))
        .unwrap();
    wal.compact_to(1, 12).unwrap();
    wal.compact_to(2, 30).unwrap();
    assert!(
        wal.segment_paths().len() < 4,
        "the segments with group 1's first entries went"
    );
    drop(wal);
    let opened = open(dir.path());
    let one = &opened.groups[&1];
    assert_eq!(one.hard_state, hard_state(2, 12));
    assert_eq!(one.snapshot, Some(LogPosition::new(12, 2)));
    assert_eq!(positions(one), vec![(13, 2), (14, 2)]);
}

#[test]
fn a_removed_group_is_forgotten_and_frees_its_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path()).wal;
    wal.append(1, &[entry(1, 1, 1)], Some(hard_state(1, 0)))
        .unwrap();
    wal.compact_to(1, 1).unwrap();
    for index in 1..=40 {
        wal.append(2, &[entry(2, index, 1)], None).unwrap();
    }
    let before = wal.segment_paths().len();
    assert!(before > 2);
    wal.remove_group(2).unwrap();
    assert_eq!(
        wal.segment_paths().len(),
        1,
        "only the active segment stays"
    );
    wal.sync().unwrap();
    drop(wal);
    let opened = open(dir.path());
    assert_eq!(opened.groups.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!(opened.groups[&1].hard_state, hard_state(1, 0));
    // The id may even come back (the catalog never reuses one): it starts empty.
    let mut wal = opened.wal;
    wal.append(2, &[entry(2, 1, 5)], None).unwrap();
    wal.sync().unwrap();
    drop(wal);
    assert_eq!(positions(&open(dir.path()).groups[&2]), vec![(1, 5)]);
}

#[test]
fn a_snapshot_that_conflicts_empties_only_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path()).wal;
    wal.append(1, &entries(1, 1..=5, 1), None).unwrap();
    wal.append(2, &entries(2, 1..=5, 1), None).unwrap();
    wal.install_snapshot(1, LogPosition::new(9, 3)).unwrap();
    wal.append(1, &[entry(1, 10, 3)], None).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let opened = open(dir.path());
    assert_eq!(opened.groups[&1].snapshot, Some(LogPosition::new(9, 3)));
    assert_eq!(positions(&opened.groups[&1]), vec![(10, 3)]);
    assert_eq!(positions(&opened.groups[&2]).len(), 5);
}

#[test]
fn each_kind_of_wal_refuses_the_other_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path()).wal;
    wal.append(1, &[entry(1, 1, 1)], None).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let error = crate::wal::Wal::open(dir.path(), small()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("format version 3 is not supported (this build reads version 2)"),
        "{error}"
    );
    let single = tempfile::tempdir().unwrap();
    let (mut one, _) = crate::wal::Wal::open(single.path(), small()).unwrap();
    one.append(&[entry(0, 1, 1)], None).unwrap();
    one.sync().unwrap();
    drop(one);
    let error = SharedWal::open(single.path(), small()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("format version 2 is not supported (this build reads version 3)"),
        "{error}"
    );
}

#[test]
fn unsynced_appends_may_be_lost_but_never_half_of_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path()).wal;
    wal.append(1, &entries(1, 1..=3, 1), None).unwrap();
    wal.sync().unwrap();
    wal.append(1, &entries(1, 4..=5, 1), None).unwrap();
    // Written (appends wait in memory for the next sync), then torn: the last record's bytes
    // cut short on disk.
    wal.files.flush().unwrap();
    let active = wal.files.active.path.clone();
    let written = wal.files.active.write_offset;
    drop(wal);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap();
    file.set_len(written - 3).unwrap();
    let opened = open(dir.path());
    assert!(opened.tail_repair.is_some(), "the torn record was cut");
    assert_eq!(
        positions(&opened.groups[&1]),
        (1..=4).map(|i| (i, 1)).collect::<Vec<_>>()
    );
}

#[test]
fn a_group_that_compacts_as_it_writes_comes_back_after_its_old_segments_went() {
    // The oldest kept segment's preamble repeats a marker older than the compaction that let
    // the segments before it go: replay meets entries past that marker's end, covered by a
    // later marker.
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path()).wal;
    for index in 1..=300 {
        wal.append(2, &[entry(2, index, 1)], Some(hard_state(1, index)))
            .unwrap();
        if index % 10 == 0 {
            wal.compact_to(2, index - 2).unwrap();
        }
    }
    wal.sync().unwrap();
    assert!(wal.segment_paths().len() <= 3, "old segments went");
    drop(wal);
    let opened = open(dir.path());
    let two = &opened.groups[&2];
    assert_eq!(two.snapshot, Some(LogPosition::new(298, 1)));
    assert_eq!(positions(two), vec![(299, 1), (300, 1)]);
    assert_eq!(two.hard_state, hard_state(1, 300));
}

mod model {
    //! Random histories of several groups against a model of each group's log: whatever the
    //! roll-overs, deletions and copies did, a reopened WAL returns every group's log as the
    //! model has it.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Entries from `back` before the end (truncating), `count` of them, in the last term
        /// plus `term_step`.
        Append {
            group: GroupId,
            back: u64,
            count: u64,
            term_step: u64,
        },
        HardState {
            group: GroupId,
            term_step: u64,
        },
        /// Compact to the live index `fraction`/8 of the way through the log.
        Compact {
            group: GroupId,
            fraction: u64,
        },
        /// A snapshot `ahead` entries past the end, in a later term (discarding the log).
        InstallAhead {
            group: GroupId,
            ahead: u64,
        },
        Remove {
            group: GroupId,
        },
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        let group = 1..4u32;
        prop_oneof![
            8 => (group.clone(), 0..3u64, 1..6u64, 0..2u64).prop_map(|(group, back, count, term_step)| Op::Append { group, back, count, term_step }),
            2 => (group.clone(), 0..2u64).prop_map(|(group, term_step)| Op::HardState { group, term_step }),
            3 => (group.clone(), 0..9u64).prop_map(|(group, fraction)| Op::Compact { group, fraction }),
            1 => (group.clone(), 1..4u64).prop_map(|(group, ahead)| Op::InstallAhead { group, ahead }),
            1 => group.prop_map(|group| Op::Remove { group }),
            1 => Just(Op::Reopen),
        ]
    }

    /// One group as it should come back.
    #[derive(Debug, Clone, Default)]
    struct Expected {
        floor: Option<LogPosition>,
        entries: Vec<Entry>,
        hard_state: HardState,
    }

    impl Expected {
        fn last(&self) -> (LogIndex, Term) {
            match self.entries.last() {
                Some(entry) => (entry.index, entry.term),
                None => self.floor.map_or((0, 0), |floor| (floor.index, floor.term)),
            }
        }
    }

    fn check(dir: &Path, model: &BTreeMap<GroupId, Expected>) -> SharedWal {
        let opened = open(dir);
        for group in 1..4 {
            let expected = model.get(&group).cloned().unwrap_or_default();
            let found = opened.groups.get(&group).cloned().unwrap_or_default();
            assert_eq!(found.entries, expected.entries, "group {group}'s entries");
            assert_eq!(found.snapshot, expected.floor, "group {group}'s floor");
            assert_eq!(
                found.hard_state, expected.hard_state,
                "group {group}'s hard state"
            );
        }
        opened.wal
    }

    fn run(ops: Vec<Op>) {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open(dir.path()).wal;
        let mut model: BTreeMap<GroupId, Expected> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Append {
                    group,
                    back,
                    count,
                    term_step,
                } => {
                    let expected = model.entry(group).or_default();
                    let (last, term) = expected.last();
                    let floor = expected.floor.map_or(0, |floor| floor.index);
                    let first = (last + 1).saturating_sub(back).max(floor + 1);
                    let term = term.max(expected.hard_state.term).max(1) + term_step;
                    let batch = entries(group, first..=first + count - 1, term);
                    wal.append(group, &batch, None).unwrap();
                    expected.entries.retain(|entry| entry.index < first);
                    expected.entries.extend(batch);
                }
                Op::HardState { group, term_step } => {
                    let expected = model.entry(group).or_default();
                    let state = hard_state(expected.hard_state.term + term_step, 0);
                    wal.append(group, &[], Some(state)).unwrap();
                    expected.hard_state = state;
                }
                Op::Compact { group, fraction } => {
                    let Some(expected) = model.get_mut(&group) else {
                        continue;
                    };
                    if expected.entries.is_empty() {
                        continue;
                    }
                    let at = (expected.entries.len() as u64 * fraction / 8)
                        .min(expected.entries.len() as u64 - 1);
                    let position = expected.entries[at as usize].position();
                    wal.compact_to(group, position.index).unwrap();
                    expected.floor = Some(position);
                    expected
                        .entries
                        .retain(|entry| entry.index > position.index);
                }
                Op::InstallAhead { group, ahead } => {
                    let expected = model.entry(group).or_default();
                    let (last, term) = expected.last();
                    let position = LogPosition::new(last + ahead, term + 1);
                    wal.install_snapshot(group, position).unwrap();
                    expected.floor = Some(position);
                    expected.entries.clear();
                }
                Op::Remove { group } => {
                    wal.remove_group(group).unwrap();
                    model.remove(&group);
                }
                Op::Reopen => {
                    wal.sync().unwrap();
                    drop(wal);
                    wal = check(dir.path(), &model);
                }
            }
        }
        wal.sync().unwrap();
        drop(wal);
        check(dir.path(), &model);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn every_group_comes_back_as_the_model_says(ops in proptest::collection::vec(op(), 1..120)) {
            run(ops);
        }
    }
}
