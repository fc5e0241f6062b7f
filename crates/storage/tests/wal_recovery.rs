//! Damage injected into WAL files, as a crash or the disk would leave them
//! (docs/design/storage.md, "What we assume of the disk" and "Tail repair and corruption"):
//!
//! - the last segment cut at every kind of offset, with or without the zeros that unwritten
//!   preallocated space reads as, and bits flipped in its tail: recovery returns a clean prefix of
//!   what was written, reports the repair, and takes appends afterwards;
//! - a bit flipped in an earlier segment, or in the last one before valid records: open fails with
//!   `WalError::Corrupt` naming the file and the offset of the damaged record.
//!
//! Every case is seeded; a failure message names the seed and the case.

use ballot_core::{Entry, EntryPayload, HardState, LogIndex};
use ballot_storage::wal::{dump_segment, RecordInfo, RecordKind, Wal, WalError, WalOptions};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

const OPTIONS: WalOptions = WalOptions {
    segment_size_bytes: 4096,
    record_bytes_max: 4096,
};
const ENTRY_COUNT: u64 = 150;
const CASES: usize = 24;

fn entry(index: LogIndex) -> Entry {
    // Payload lengths vary so that records do not line up with anything.
    let length = 20 + (index * 7 % 50) as usize;
    Entry {
        index,
        term: 1 + index / 40,
        payload: EntryPayload::Command(Bytes::from(vec![(index % 251) as u8 + 1; length])),
    }
}

/// A WAL of `ENTRY_COUNT` entries, one record each, spread over several segments.
struct Fixture {
    _root: tempfile::TempDir,
    segments: Vec<PathBuf>,
}

impl Fixture {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("wal");
        let (mut wal, _) = Wal::open(&dir, OPTIONS).unwrap();
        let hard_state = HardState {
            term: 1,
            voted_for: Some(1),
            commit_index: 0,
        };
        wal.append(&[], Some(hard_state)).unwrap();
        for index in 1..=ENTRY_COUNT {
            wal.append(&[entry(index)], None).unwrap();
        }
        wal.sync().unwrap();
        let segments = wal.segment_paths();
        assert!(segments.len() >= 3, "the fixture spans several segments");
        Self {
            _root: root,
            segments,
        }
    }

    /// A private copy of the WAL directory for one case.
    fn copy(&self) -> (tempfile::TempDir, PathBuf, Vec<PathBuf>) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("wal");
        fs::create_dir(&dir).unwrap();
        let segments = self
            .segments
            .iter()
            .map(|path| {
                let target = dir.join(path.file_name().unwrap());
                fs::copy(path, &target).unwrap();
                target
            })
            .collect();
        (root, dir, segments)
    }

    fn records(&self, segment: usize) -> Vec<RecordInfo> {
        dump_segment(&self.segments[segment], OPTIONS.record_bytes_max).unwrap()
    }

    fn last_segment(&self) -> usize {
        self.segments.len() - 1
    }
}

fn flip_bit(path: &Path, bit: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
    fs::write(path, bytes).unwrap();
}

/// Entries written before `offset` in the last segment, counting every earlier segment.
fn entries_before(records: &[RecordInfo], offset: u64) -> Vec<Entry> {
    let first_in_segment = records.iter().find_map(|r| r.index).unwrap();
    let last_whole = records
        .iter()
        .rev()
        .filter(|r| r.offset + r.bytes <= offset)
        .find_map(|r| r.index)
        .unwrap_or(first_in_segment - 1);
    (1..=last_whole).map(entry).collect()
}

/// After a repair the WAL takes an append at the next index, and a reopen returns it.
fn assert_appendable(dir: &Path, expected: &[Entry], case: &str) {
    let (mut wal, _) = Wal::open(dir, OPTIONS).unwrap();
    let next = entry(expected.len() as u64 + 1);
    wal.append(std::slice::from_ref(&next), None)
        .unwrap_or_else(|error| panic!("{case}: append after repair: {error}"));
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = Wal::open(dir, OPTIONS).unwrap();
    assert_eq!(recovered.tail_repair, None, "{case}: repaired once only");
    assert_eq!(recovered.entries.len(), expected.len() + 1, "{case}");
    assert_eq!(recovered.entries.last(), Some(&next), "{case}");
}

#[derive(Debug, Clone, Copy)]
enum Cut {
    AtRecordStart,
    InsideHeader,
    AfterHeader,
    InsidePayload,
    OneByteShort,
}

#[test]
fn a_last_segment_cut_anywhere_recovers_a_clean_prefix_and_takes_appends() {
    let fixture = Fixture::new();
    let last = fixture.last_segment();
    let records = fixture.records(last);
    let entry_records: Vec<RecordInfo> = records
        .iter()
        .copied()
        .filter(|r| r.kind == RecordKind::Entry)
        .collect();
    let kinds = [
        Cut::AtRecordStart,
        Cut::InsideHeader,
        Cut::AfterHeader,
        Cut::InsidePayload,
        Cut::OneByteShort,
    ];
    let seed = 0xC0FFEE;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for case_number in 0..CASES {
        let record = entry_records[rng.random_range(0..entry_records.len())];
        let kind = kinds[case_number % kinds.len()];
        let offset = record.offset
            + match kind {
                Cut::AtRecordStart => 0,
                Cut::InsideHeader => rng.random_range(1..9),
                Cut::AfterHeader => 9,
                Cut::InsidePayload => rng.random_range(10..record.bytes),
                Cut::OneByteShort => record.bytes - 1,
            };
        let zeros_after = rng.random_bool(0.5);
        let case = format!(
            "seed {seed:#x} case {case_number}: cut {kind:?} at byte {offset} of entry {:?}, \
             zeros after: {zeros_after}",
            record.index
        );
        let (_root, dir, segments) = fixture.copy();
        let file = OpenOptions::new()
            .write(true)
            .open(&segments[last])
            .unwrap();
        let length = file.metadata().unwrap().len();
        file.set_len(offset).unwrap();
        if zeros_after {
            file.set_len(length).unwrap();
        }
        drop(file);

        let (wal, recovered) =
            Wal::open(&dir, OPTIONS).unwrap_or_else(|error| panic!("{case}: {error}"));
        let expected = entries_before(&records, offset);
        assert_eq!(recovered.entries, expected, "{case}");
        assert_eq!(recovered.hard_state.voted_for, Some(1), "{case}");
        match (kind, recovered.tail_repair) {
            (Cut::AtRecordStart, repair) => assert_eq!(repair, None, "{case}"),
            (_, Some(repair)) => {
                assert_eq!(repair.file, segments[last], "{case}");
                assert_eq!(repair.offset, record.offset, "{case}");
                // Up to the last non-zero byte: the cut may follow zero bytes of the record.
                let cut_bytes = offset - record.offset;
                assert!((1..=cut_bytes).contains(&repair.bytes_discarded), "{case}");
            }
            (_, None) => panic!("{case}: a cut inside a record must be reported"),
        }
        drop(wal);
        assert_appendable(&dir, &expected, &case);
    }
}

#[test]
fn a_flipped_bit_in_the_last_record_or_after_it_is_a_repaired_tail() {
    let fixture = Fixture::new();
    let last = fixture.last_segment();
    let records = fixture.records(last);
    let last_record = *records.last().unwrap();
    let end = last_record.offset + last_record.bytes;
    let seed = 0x5EED;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for case_number in 0..CASES {
        let in_last_record = case_number % 2 == 0;
        let byte = if in_last_record {
            rng.random_range(last_record.offset..end)
        } else {
            rng.random_range(end..OPTIONS.segment_size_bytes)
        };
        let bit = byte * 8 + rng.random_range(0..8);
        let case = format!("seed {seed:#x} case {case_number}: bit {bit} (byte {byte})");
        let (_root, dir, segments) = fixture.copy();
        flip_bit(&segments[last], bit);

        let (wal, recovered) =
            Wal::open(&dir, OPTIONS).unwrap_or_else(|error| panic!("{case}: {error}"));
        let repair = recovered
            .tail_repair
            .clone()
            .unwrap_or_else(|| panic!("{case}: a flipped bit must be reported"));
        assert_eq!(repair.file, segments[last], "{case}");
        let expected: Vec<Entry> = if in_last_record {
            assert_eq!(repair.offset, last_record.offset, "{case}");
            (1..ENTRY_COUNT).map(entry).collect()
        } else {
            assert_eq!(repair.offset, end, "{case}");
            assert_eq!(repair.bytes_discarded, byte - end + 1, "{case}");
            (1..=ENTRY_COUNT).map(entry).collect()
        };
        assert_eq!(recovered.entries, expected, "{case}");
        drop(wal);
        assert_appendable(&dir, &expected, &case);
    }
}

/// The record holding `byte`, from a segment's listing.
fn record_holding(records: &[RecordInfo], byte: u64) -> RecordInfo {
    *records
        .iter()
        .find(|r| r.offset <= byte && byte < r.offset + r.bytes)
        .expect("the byte is inside a record")
}

fn assert_corrupt_at(dir: &Path, file: &Path, offset: u64, case: &str) {
    match Wal::open(dir, OPTIONS) {
        Err(error @ WalError::Corrupt { .. }) => {
            let WalError::Corrupt {
                file: named,
                offset: at,
                ..
            } = &error
            else {
                unreachable!()
            };
            assert_eq!((named.as_path(), *at), (file, offset), "{case}: {error}");
            let message = error.to_string();
            assert!(
                message.contains(&file.display().to_string())
                    && message.contains(&format!("byte offset {offset}")),
                "{case}: the message names the file and the offset: {message}"
            );
        }
        Err(other) => panic!("{case}: expected Corrupt, got {other}"),
        Ok((_, recovered)) => panic!(
            "{case}: opened a damaged WAL ({} entries, repair {:?})",
            recovered.entries.len(),
            recovered.tail_repair
        ),
    }
}

#[test]
fn a_flipped_bit_in_an_earlier_segment_refuses_to_open() {
    let fixture = Fixture::new();
    let seed = 0xBAD5EC;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for case_number in 0..CASES {
        let segment = rng.random_range(0..fixture.last_segment());
        let records = fixture.records(segment);
        let length = fs::metadata(&fixture.segments[segment]).unwrap().len();
        let byte = rng.random_range(0..length);
        let bit = byte * 8 + rng.random_range(0..8);
        let case = format!("seed {seed:#x} case {case_number}: segment {segment}, bit {bit}");
        let (_root, dir, segments) = fixture.copy();
        flip_bit(&segments[segment], bit);
        let damaged = record_holding(&records, byte);
        assert_corrupt_at(&dir, &segments[segment], damaged.offset, &case);
    }
}

#[test]
fn a_flipped_bit_before_valid_records_in_the_last_segment_refuses_to_open() {
    let fixture = Fixture::new();
    let last = fixture.last_segment();
    let records = fixture.records(last);
    let last_record = *records.last().unwrap();
    let seed = 0x31DD1E;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for case_number in 0..CASES {
        // Anywhere but the last record, which no valid record follows.
        let byte = rng.random_range(0..last_record.offset);
        let bit = byte * 8 + rng.random_range(0..8);
        let case = format!("seed {seed:#x} case {case_number}: bit {bit} of the last segment");
        let (_root, dir, segments) = fixture.copy();
        flip_bit(&segments[last], bit);
        let damaged = record_holding(&records, byte);
        assert_corrupt_at(&dir, &segments[last], damaged.offset, &case);
    }
}
