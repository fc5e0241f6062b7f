//! Unit tests of the writer and replay together: what is appended is what open returns.
//! Crash and corruption tests are in `crates/storage/tests/wal_*.rs`.

use super::*;
use ballot_core::{EntryPayload, MembershipChange};
use bytes::Bytes;
use std::fs::OpenOptions;

fn small() -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        record_bytes_max: 1024,
    }
}

fn entry(index: LogIndex, term: Term) -> Entry {
    Entry {
        index,
        term,
        payload: EntryPayload::Command(Bytes::from(format!("cmd {index}@{term}"))),
    }
}

fn entries(range: std::ops::RangeInclusive<LogIndex>, term: Term) -> Vec<Entry> {
    range.map(|index| entry(index, term)).collect()
}

fn reopen(dir: &Path) -> (Wal, Recovered) {
    Wal::open(dir, small()).expect("reopen")
}

fn positions(recovered: &Recovered) -> Vec<(LogIndex, Term)> {
    recovered
        .entries
        .iter()
        .map(|e| (e.index, e.term))
        .collect()
}

fn segment_count(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

#[test]
fn a_new_wal_is_empty_and_starts_at_index_one() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, recovered) = Wal::open(dir.path().join("wal"), small()).unwrap();
    assert_eq!(recovered.first_index, 1);
    assert_eq!(recovered.last_index(), 0);
    assert_eq!(recovered.tail_repair, None);
    assert_eq!(wal.segment_paths().len(), 1);
    drop(wal);
    let (_, recovered) = reopen(&dir.path().join("wal"));
    assert_eq!(recovered.first_index, 1);
    assert!(recovered.entries.is_empty());
}

#[test]
fn entries_and_every_payload_kind_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path());
    let written = vec![
        Entry {
            index: 1,
            term: 1,
            payload: EntryPayload::Noop,
        },
        entry(2, 1),
        Entry {
            index: 3,
            term: 2,
            payload: EntryPayload::Membership(
                MembershipChange::AddLearner(9),
                ballot_core::Membership::with_voters([1, 2, 3]),
            ),
        },
    ];
    let sequence = wal.append(&written, None).unwrap();
    assert_eq!(wal.sync().unwrap(), sequence);
    drop(wal);
    let (wal, recovered) = reopen(dir.path());
    assert_eq!(recovered.entries, written);
    assert_eq!(wal.last_index(), 3);
    assert_eq!(wal.term_at(3), Some(2));
}

#[test]
fn an_append_at_a_stored_index_replaces_it_and_every_later_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path());
    wal.append(&entries(1..=5, 1), None).unwrap();
    wal.append(&entries(3..=4, 2), None).unwrap();
    assert_eq!(wal.last_index(), 4);
    wal.append(&entries(5..=5, 2), None).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = reopen(dir.path());
    assert_eq!(
        positions(&recovered),
        vec![(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]
    );
    assert_eq!(recovered.entries[2], entry(3, 2), "the replacing payload");
}

#[test]
fn the_latest_hard_state_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path());
    let first = HardState {
        term: 1,
        voted_for: Some(1),
        commit_index: 0,
    };
    let second = HardState {
        term: 2,
        voted_for: None,
        commit_index: 3,
    };
    wal.append(&entries(1..=3, 1), Some(first)).unwrap();
    wal.append(&[], Some(second)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, recovered) = reopen(dir.path());
    assert_eq!(recovered.hard_state, second);
    assert_eq!(wal.hard_state(), second);
}

#[test]
fn segments_roll_over_and_replay_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path());
    let hard_state = HardState {
        term: 3,
        voted_for: Some(2),
        commit_index: 0,
    };
    wal.append(&[], Some(hard_state)).unwrap();
    for index in 1..=300 {
        wal.append(&[entry(index, 3)], None).unwrap();
    }
    wal.sync().unwrap();
    let paths = wal.segment_paths();
    assert!(paths.len() >= 3, "4 KiB segments roll over: {paths:?}");
    for path in &paths[..paths.len() - 1] {
        let length = fs::metadata(path).unwrap().len();
        assert!(length <= 4096, "a full segment is cut to its last record");
        let records = dump_segment(path, 1024).unwrap();
        assert_eq!(records[0].kind, RecordKind::SegmentHeader);
        let last = records.last().unwrap();
        assert_eq!(last.offset + last.bytes, length);
    }
    let second = dump_segment(&paths[1], 1024).unwrap();
    assert_eq!(second[1].kind, RecordKind::HardState, "preamble repeats it");
    drop(wal);
    let (_, recovered) = reopen(dir.path());
    assert_eq!(recovered.entries, entries(1..=300, 3));
    assert_eq!(recovered.hard_state, hard_state);
}

#[test]
fn zeros_written_ahead_of_appends_stay_within_the_segment_and_under_the_records() {
    // Three 1 MiB zero-ahead windows and a bit: the zeros go ahead of every batch, never over a
    // record already written (reopen reads them all back) and never past the preallocated size
    // (the file would grow, and the segment would no longer end where the options say).
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_size_bytes: 3 * 1024 * 1024 + 12_345,
        record_bytes_max: 64 * 1024,
    };
    let (mut wal, _) = Wal::open(dir.path(), options).unwrap();
    let payload =
        |index: LogIndex| vec![(index % 251) as u8 + 1; 700 + (index as usize % 3) * 9_000];
    let written: Vec<Entry> = (1..=700)
        .map(|index| Entry {
            index,
            term: 1,
            payload: EntryPayload::Command(Bytes::from(payload(index))),
        })
        .collect();
    for batch in written.chunks(7) {
        wal.append(batch, None).unwrap();
        wal.sync().unwrap();
        for path in wal.segment_paths() {
            let length = fs::metadata(&path).unwrap().len();
            assert!(
                length <= options.segment_size_bytes,
                "{} grew to {length} bytes",
                path.display()
            );
        }
    }
    assert!(
        wal.segment_paths().len() >= 2,
        "the records fill more than a segment"
    );
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), options).unwrap();
    assert_eq!(recovered.entries, written);
}

#[test]
fn a_record_larger_than_a_segment_extends_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_size_bytes: 1024,
        record_bytes_max: 8192,
    };
    let (mut wal, _) = Wal::open(dir.path(), options).unwrap();
    let big = |index| Entry {
        index,
        term: 1,
        payload: EntryPayload::Command(Bytes::from(vec![index as u8; 3000])),
    };
    wal.append(&[big(1), big(2)], None).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.segment_paths().len(), 2);
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), options).unwrap();
    assert_eq!(recovered.entries, vec![big(1), big(2)]);
}

#[test]
fn compaction_deletes_only_segments_wholly_at_or_below_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path());
    for index in 1..=300 {
        wal.append(&[entry(index, 1)], None).unwrap();
    }
    let names: Vec<SegmentName> = wal.files.segments.clone();
    assert!(names.len() >= 3);
    let second_start = names[1].first_index;
    // One below the second segment's start: the first segment still holds index + 1.
    assert_eq!(wal.compact_to(second_start - 2).unwrap(), 0);
    assert_eq!(wal.compact_to(second_start - 1).unwrap(), 1);
    assert_eq!(wal.first_index(), second_start);
    assert_eq!(
        wal.compact_to(400).unwrap_err().to_string(),
        "cannot compact the WAL to index 400: its last index is 300"
    );
    drop(wal);
    let (mut wal, recovered) = reopen(dir.path());
    assert_eq!(recovered.first_index, second_start);
    assert_eq!(recovered.entries, entries(second_start..=300, 1));
    assert_eq!(
        recovered.snapshot,
        Some(LogPosition::new(second_start - 1, 1))
    );
    // Compacting to the last index keeps only the last segment, which now holds no entry.
    let kept = wal.segment_paths().len();
    assert_eq!(wal.compact_to(300).unwrap(), kept - 1);
    wal.append(&[entry(301, 2)], None).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = reopen(dir.path());
    assert_eq!(recovered.first_index, 301);
    assert_eq!(recovered.entries, vec![entry(301, 2)]);
}

#[test]
fn compaction_after_replacements_across_segments_recovers_the_live_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path());
    for index in 1..=150 {
        wal.append(&[entry(index, 1)], None).unwrap();
    }
    // A follower conflict: replace from 40, then grow again across more segments.
    for index in 40..=320 {
        wal.append(&[entry(index, 2)], None).unwrap();
    }
    wal.compact_to(200).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = reopen(dir.path());
    assert_eq!(recovered.first_index, 201);
    assert_eq!(recovered.entries, entries(201..=320, 2));
}

#[test]
fn installing_a_snapshot_that_does_not_match_discards_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path());
    wal.append(&entries(1..=200, 1), None).unwrap();
    // Not held: a snapshot from a leader beyond our log.
    assert!(wal.install_snapshot(LogPosition::new(1000, 3)).unwrap() >= 1);
    assert_eq!(wal.segment_paths().len(), 1);
    assert_eq!((wal.first_index(), wal.last_index()), (1001, 1000));
    assert_eq!(
        wal.append(&[entry(1000, 3)], None)
            .unwrap_err()
            .to_string(),
        "WAL append rejected, nothing was written: entry 1000 is covered by the snapshot through 1000"
    );
    wal.append(&[entry(1001, 3)], None).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (mut wal, recovered) = reopen(dir.path());
    assert_eq!(recovered.first_index, 1001);
    assert_eq!(recovered.entries, vec![entry(1001, 3)]);
    assert_eq!(recovered.snapshot, Some(LogPosition::new(1000, 3)));
    // Held with the same term: a plain compaction that keeps the later entries.
    wal.append(&entries(1002..=1003, 3), None).unwrap();
    wal.install_snapshot(LogPosition::new(1002, 3)).unwrap();
    drop(wal);
    let (_, recovered) = reopen(dir.path());
    assert_eq!(recovered.entries, vec![entry(1003, 3)]);
}

#[test]
fn bad_appends_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path());
    wal.append(&entries(1..=3, 2), None).unwrap();
    wal.sync().unwrap();
    let active = wal.files.active.path.clone();
    let before = fs::read(&active).unwrap();
    let oversized = Entry {
        index: 4,
        term: 2,
        payload: EntryPayload::Command(Bytes::from(vec![0; 2000])),
    };
    let refusals = [
        (
            vec![entry(4, 2), oversized],
            "WAL record of 2026 bytes (entry Some(4)) exceeds record_bytes_max of 1024 bytes; nothing was written",
        ),
        (
            entries(5..=5, 2),
            "WAL append rejected, nothing was written: entry 5 leaves a gap after the last index 3",
        ),
        (
            vec![entry(4, 2), entry(6, 2)],
            "WAL append rejected, nothing was written: entries not consecutive: 6 follows 4",
        ),
        (
            entries(4..=4, 1),
            "WAL append rejected, nothing was written: entry 4 has term 1, lower than term 2 before it",
        ),
    ];
    for (batch, message) in refusals {
        let error = wal.append(&batch, None).unwrap_err();
        assert_eq!(error.to_string(), message);
    }
    let lower_term = HardState {
        term: 1,
        voted_for: None,
        commit_index: 0,
    };
    wal.append(
        &[],
        Some(HardState {
            term: 2,
            ..lower_term
        }),
    )
    .unwrap();
    assert!(matches!(
        wal.append(&entries(4..=4, 2), Some(lower_term)),
        Err(WalError::InvalidAppend {
            violation: Violation::HardStateTermDecreased { .. }
        })
    ));
    assert_eq!(wal.last_index(), 3, "in memory: unchanged");
    wal.sync().unwrap();
    let after = fs::read(&active).unwrap();
    let hard_state_record = format::HARD_STATE_RECORD_BYTES;
    let written = wal.files.active.write_offset as usize;
    assert_eq!(
        after[..written - hard_state_record],
        before[..written - hard_state_record],
        "only the accepted hard state was written"
    );
    assert!(after[written..].iter().all(|&b| b == 0));
}

#[test]
fn options_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let error = Wal::open(
        dir.path(),
        WalOptions {
            segment_size_bytes: 10,
            ..WalOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "WAL option segment_size_bytes = 10 is invalid: below the minimum of 1024 bytes"
    );
    assert_eq!(segment_count(dir.path()), 0, "nothing created");
}

#[test]
fn leftover_temporary_segments_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = reopen(dir.path());
    drop(wal);
    let leftover = dir
        .path()
        .join("00000000000000000002-00000000000000000001.wal.tmp");
    fs::write(&leftover, b"half a segment").unwrap();
    let (wal, _) = reopen(dir.path());
    assert!(!leftover.exists());
    assert_eq!(wal.segment_paths().len(), 1);
}

#[test]
fn a_missing_middle_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path());
    for index in 1..=300 {
        wal.append(&[entry(index, 1)], None).unwrap();
    }
    wal.sync().unwrap();
    let paths = wal.segment_paths();
    drop(wal);
    fs::remove_file(&paths[1]).unwrap();
    let error = Wal::open(dir.path(), small()).unwrap_err();
    assert!(
        matches!(&error, WalError::Corrupt { file, offset: 0, defect: Defect::Invariant(Violation::SegmentNumberGap { previous: 1, found: 3 }) } if *file == paths[2]),
        "{error}"
    );
}

#[test]
fn a_deleted_oldest_segment_without_a_marker_is_missing_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path());
    for index in 1..=300 {
        wal.append(&[entry(index, 1)], None).unwrap();
    }
    wal.sync().unwrap();
    let paths = wal.segment_paths();
    drop(wal);
    fs::remove_file(&paths[0]).unwrap();
    let error = Wal::open(dir.path(), small()).unwrap_err();
    assert!(
        matches!(
            error,
            WalError::MissingEntries {
                first_missing: 1,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_renamed_segment_disagrees_with_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = reopen(dir.path());
    let path = wal.segment_paths()[0].clone();
    drop(wal);
    let renamed = dir
        .path()
        .join("00000000000000000001-00000000000000000007.wal");
    fs::rename(&path, &renamed).unwrap();
    let error = Wal::open(dir.path(), small()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "WAL segment {} is corrupt at byte offset 0: a valid record that breaks a replay \
             invariant: segment header says first index 1, the file name says 7",
            renamed.display()
        )
    );
}

#[test]
fn zeros_after_the_last_record_of_an_earlier_segment_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path());
    for index in 1..=300 {
        wal.append(&[entry(index, 1)], None).unwrap();
    }
    wal.sync().unwrap();
    let first = wal.segment_paths()[0].clone();
    drop(wal);
    let length = fs::metadata(&first).unwrap().len();
    let file = OpenOptions::new().write(true).open(&first).unwrap();
    file.set_len(length + 100).unwrap();
    let error = Wal::open(dir.path(), small()).unwrap_err();
    assert!(
        matches!(&error, WalError::Corrupt { file, offset, defect: Defect::ZerosBeforeEnd } if *file == first && *offset == length),
        "{error}"
    );
}
