//! Damage to snapshot files, as a crash or the disk would leave them: a damaged newest snapshot is
//! refused with an error naming the file (never a silent fallback to an older one), and a save
//! interrupted before its rename leaves the previous snapshot intact.

use ballot_core::{LogPosition, Membership, Snapshot, SnapshotMeta};
use ballot_storage::snapshot_store::{SnapshotDefect, SnapshotError, SnapshotStore};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fs;

fn snapshot(index: u64, data: &[u8]) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            last_included: LogPosition::new(index, 3),
            membership: Membership::with_voters([1, 2, 3]),
        },
        data: Bytes::copy_from_slice(data),
    }
}

#[test]
fn a_flipped_bit_anywhere_in_the_newest_snapshot_is_refused_naming_the_file() {
    let seed = 0x5A4B;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for case_number in 0..16 {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), 3).unwrap();
        store.save(&snapshot(10, b"older state")).unwrap();
        let newest = store.save(&snapshot(20, &[7; 300])).unwrap();
        let mut bytes = fs::read(&newest).unwrap();
        let bit = rng.random_range(0..bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        fs::write(&newest, bytes).unwrap();

        let case = format!("seed {seed:#x} case {case_number}: bit {bit}");
        let error = store.latest().expect_err(&case);
        assert!(
            matches!(&error, SnapshotError::Corrupt { file, .. } if *file == newest),
            "{case}: {error}"
        );
        assert!(
            error.to_string().contains(&newest.display().to_string()),
            "{case}: {error}"
        );
        // Nothing was deleted or hidden: an operator's tool can list and choose.
        let kept = store.list().unwrap();
        assert_eq!(kept.len(), 2, "{case}");
        assert_eq!(
            store.load(&kept[0].path).unwrap(),
            snapshot(10, b"older state")
        );
    }
}

#[test]
fn a_truncated_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), 2).unwrap();
    let path = store.save(&snapshot(5, &[1; 100])).unwrap();
    let length = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(length - 10)
        .unwrap();
    match store.latest() {
        Err(SnapshotError::Corrupt {
            defect: SnapshotDefect::LengthMismatch { .. },
            file,
        }) => assert_eq!(file, path),
        other => panic!("expected a length mismatch, got {other:?}"),
    }
}

#[test]
fn a_snapshot_renamed_to_another_position_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), 2).unwrap();
    let path = store.save(&snapshot(5, b"x")).unwrap();
    let renamed = dir
        .path()
        .join("00000000000000000009-00000000000000000003.snap");
    fs::rename(&path, &renamed).unwrap();
    assert!(matches!(
        store.latest(),
        Err(SnapshotError::Corrupt {
            defect: SnapshotDefect::NameMismatch { .. },
            ..
        })
    ));
}

#[test]
fn an_interrupted_save_leaves_the_previous_snapshot_intact() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), 2).unwrap();
    let previous = snapshot(10, b"previous state");
    store.save(&previous).unwrap();

    // What a save of the next snapshot leaves when the process dies before its rename: the first
    // part of the file, under the temporary name.
    let elsewhere = tempfile::tempdir().unwrap();
    let complete = SnapshotStore::open(elsewhere.path(), 1)
        .unwrap()
        .save(&snapshot(20, &[9; 4000]))
        .unwrap();
    let bytes = fs::read(&complete).unwrap();
    let temporary = dir.path().join(format!(
        "{}.tmp",
        complete.file_name().unwrap().to_str().unwrap()
    ));
    fs::write(&temporary, &bytes[..bytes.len() / 2]).unwrap();

    let reopened = SnapshotStore::open(dir.path(), 2).unwrap();
    assert!(!temporary.exists(), "the leftover is deleted at open");
    assert_eq!(reopened.latest().unwrap(), Some(previous));
    assert_eq!(reopened.list().unwrap().len(), 1);
}
